"""The Triton kernels compile for a real GPU target (sm_90 cubin) without a GPU.

The interpreter (test_ops_triton.py) checks the numerics but accepts code that the GPU compiler rejects;
this compiles forward and backward through Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) for
the dtypes the model uses. About 2 s per kernel.

What is checked in the result is what the source prescribes, read from the PTX by instruction (any scope /
ordering qualifiers, atom or red, vector forms: those vary with the Triton version) rather than by substring: the
entry function of the kernel; the forward without atomics (each program owns its output rows); the backward
scatters the value gradient only with atomic adds of the grad_value element type: floating point of the
accumulation type (float atomics) or 64-bit integer (deterministic fixed point), never the other kind.
"""
import os
import re

import pytest

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: kernels are interpreted, not compiled", allow_module_level=True)

import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vit_adapter_ds.ops import triton_msda  # noqa: E402

COMMON = {"shapes_ptr": "*i64", "starts_ptr": "*i64", "S": "i32", "Lq": "i32", "M": "i32", "fixed_exp": "i32"}
CONSTS = ("D", "L", "P", "BLOCK_Q", "BLOCK_D", "ACC_DTYPE", "FIXED_POINT")


ATOMIC = re.compile(r"^\s*(?:@!?%\w+\s+)?((?:atom|red)(?:\.\w+)+)", re.M)
PTX_TYPE = re.compile(r"^(?:[fsub]\d+|bf16|f16x2|bf16x2)$")


def atomic_adds(ptx):
    """The element types of the atomic adds in ``ptx`` (``atom.global.gpu.relaxed.add.f32`` -> ``f32``); any other
    atomic / reduction instruction is returned as ``'<op>'``."""
    out = set()
    for ins in ATOMIC.findall(ptx):
        parts = ins.split(".")[1:]
        types = [p for p in parts if PTX_TYPE.match(p)]
        out.add(types[-1] if "add" in parts and types else f"<{ins}>")
    return out


def _check(compiled, kernel, adds, what):
    ptx = compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0, what
    assert re.search(rf"\.entry\s+{kernel.fn.__name__}\b", ptx), f"{what}: no entry {kernel.fn.__name__} in the PTX"
    got = atomic_adds(ptx)
    ok = bool(got) and got <= adds if adds else not got  # adds: the element types allowed; none: no atomics
    assert ok, f"{what}: atomic adds of {sorted(got)} in the PTX, the source prescribes {sorted(adds) or 'none'} " \
               f"(triton {triton.__version__})"


def test_atomic_adds_reads_ptx_instructions():
    ptx = """
    @%p1 atom.global.gpu.relaxed.add.f32 %f1, [%rd1], %f2;
      red.global.add.u64 [%rd2], %rd3;
    @!%p2 red.relaxed.gpu.global.add.noftz.v2.f32 [%rd4], {%f3, %f4};
    add.s64 %rd5, %rd6, %rd7;
    ld.global.u64 %rd8, [%rd9];
    atom.global.cas.b32 %r1, [%rd1], %r2, %r3;
    """
    assert atomic_adds(ptx) == {"f32", "u64", "<atom.global.cas.b32>"}
    assert atomic_adds("add.s64 %rd5, %rd6, %rd7;\nst.global.f32 [%rd1], %f1;") == set()


def _compile(kernel, ptr_types, consts):
    sig = dict(COMMON, **ptr_types, **{k: "constexpr" for k in CONSTS})
    names = list(kernel.arg_names)
    sig = {name: sig[name] for name in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32))


@pytest.mark.parametrize("value_t,loc_t,acc,d", [("fp32", "fp32", tl.float32, 32), ("bf16", "fp32", tl.float32, 32),
                                                  ("fp16", "fp16", tl.float32, 20),
                                                  ("fp64", "fp64", tl.float64, 5)])
def test_kernels_compile_for_sm90(value_t, loc_t, acc, d):
    block_d = triton.next_power_of_2(d)
    consts = {"D": d, "L": 3, "P": 4, "BLOCK_Q": 64, "BLOCK_D": block_d, "ACC_DTYPE": acc, "FIXED_POINT": False}
    fwd = _compile(triton_msda._msda_fwd_kernel,
                   {"value_ptr": f"*{value_t}", "loc_ptr": f"*{loc_t}", "attn_ptr": f"*{loc_t}",
                    "out_ptr": f"*{value_t}"}, {k: v for k, v in consts.items() if k != "FIXED_POINT"})
    _check(fwd, triton_msda._msda_fwd_kernel, set(), f"forward {value_t}")
    acc_t = "fp64" if value_t == "fp64" else "fp32"
    for fixed in (False, True):  # float atomics / deterministic int64 fixed point
        bwd = _compile(triton_msda._msda_bwd_kernel,
                       {"value_ptr": f"*{value_t}", "loc_ptr": f"*{loc_t}", "attn_ptr": f"*{loc_t}",
                        "grad_out_ptr": f"*{value_t}", "grad_value_ptr": "*i64" if fixed else f"*{acc_t}",
                        "grad_loc_ptr": f"*{acc_t}", "grad_attn_ptr": f"*{acc_t}"}, dict(consts, FIXED_POINT=fixed))
        # grad_value's element type: int64 (PTX u64 / s64 / b64) or the accumulation float (f32 / f64)
        adds = {"u64", "s64", "b64"} if fixed else {acc_t.replace("fp", "f")}
        _check(bwd, triton_msda._msda_bwd_kernel, adds, f"backward {value_t} {'fixed point' if fixed else 'float'}")
