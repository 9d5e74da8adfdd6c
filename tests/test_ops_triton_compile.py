"""The Triton kernels compile for a real GPU target (sm_90 cubin) without a GPU.

The interpreter (test_ops_triton.py) checks the numerics but accepts code that the GPU compiler rejects;
this compiles forward and backward through Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin) for
the dtypes the model uses. About 2 s per kernel.
"""
import os

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
    assert len(fwd.asm["cubin"]) > 0
    acc_t = "fp64" if value_t == "fp64" else "fp32"
    for fixed in (False, True):  # float atomics / deterministic int64 fixed point
        bwd = _compile(triton_msda._msda_bwd_kernel,
                       {"value_ptr": f"*{value_t}", "loc_ptr": f"*{loc_t}", "attn_ptr": f"*{loc_t}",
                        "grad_out_ptr": f"*{value_t}", "grad_value_ptr": "*i64" if fixed else f"*{acc_t}",
                        "grad_loc_ptr": f"*{acc_t}", "grad_attn_ptr": f"*{acc_t}"}, dict(consts, FIXED_POINT=fixed))
        assert len(bwd.asm["cubin"]) > 0
        ptx = bwd.asm["ptx"]
        assert ("atom" in ptx or "red." in ptx) and (".u64" in ptx or ".s64" in ptx or not fixed)
