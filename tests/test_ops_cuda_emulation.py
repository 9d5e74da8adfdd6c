"""The CUDA kernels (ops/csrc/ms_deform_attn_kernels.cuh) executed on the CPU against the float64 reference.

``cuda_emu/msda_emu.cpp`` compiles the unmodified kernel templates with the host compiler and runs each warp
as 32 cooperative lane contexts (ucontext; ``__shfl_xor_sync`` waits for all 32 lanes, a divergent shuffle fails
the launch with rc 2), so CPU-only CI exercises the kernels' index math, grid-stride loop, warp reductions and gradient scatter. The ATen launch
glue (ms_deform_attn_cuda.cu) is covered by the nvcc build test and the GPU tests.
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from msda_naive import make_inputs
from vit_adapter_ds.ops import cuda_ext, ms_deform_attn_reference

try:
    from vit_adapter_ds.ops.triton_msda import fixed_point_scale
except ImportError:  # triton missing: the same rule, spelled out
    import math

    def fixed_point_scale(attn, grad_out):
        bound = float(attn.double().abs().sum()) * float(grad_out.double().abs().max()) * 1.01
        return 2.0 ** min(max(math.floor(62 - math.log2(bound)), -60), 120)

HERE = Path(__file__).resolve().parent
CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 2e-2}
LEVELS = [(5, 7), (3, 4), (1, 2)]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    cuda_include = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    if cxx is None or not (cuda_include / "cuda_bf16.h").exists():
        pytest.skip("needs g++ and the CUDA headers (CUDA_HOME)")
    so = tmp_path_factory.mktemp("msda_emu") / "msda_emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-shared", "-fPIC", f"-I{cuda_include}", f"-I{cuda_ext.CSRC}",
           str(HERE / "cuda_emu" / "msda_emu.cpp"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(so))
    lib.msda_emu_forward.restype = ctypes.c_int
    lib.msda_emu_backward.restype = ctypes.c_int
    return lib


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def _sizes(value, loc, blocks, threads):
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = loc.shape
    i64 = ctypes.c_int64
    return [i64(n), i64(s), i64(m), i64(d), i64(lq), ctypes.c_int(n_levels), ctypes.c_int(n_points), i64(blocks),
            ctypes.c_int(threads)]


def run_emulated(lib, value, shapes, starts, loc, attn, grad_out, blocks=None, threads=64, deterministic=False):
    """Forward output and (value, loc, attn) gradients from the emulated CUDA kernels (acc-dtype gradients).

    ``deterministic`` uses the fixed-point value gradient with the host launcher's scale rule."""
    n, s, m, d = value.shape
    lq = loc.shape[1]
    if blocks is None:  # the launcher's rule: one warp per (n, q, m)
        blocks = (n * lq * m * 32 + threads - 1) // threads
    loc_float = int(loc.dtype != value.dtype)
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    out = torch.full((n, lq, m, d), float("nan"), dtype=value.dtype)
    rc = lib.msda_emu_forward(CODES[value.dtype], loc_float, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc),
                              _ptr(attn), _ptr(out), *_sizes(value, loc, blocks, threads))
    assert rc == 0
    scale = 0.0
    if deterministic:  # same rule as ms_deform_attn_cuda.cu
        scale = fixed_point_scale(attn, grad_out)
    grad_value = torch.zeros(value.shape, dtype=torch.int64 if deterministic else acc)
    grad_loc = torch.full(loc.shape, float("nan"), dtype=acc)  # every entry must be written
    grad_attn = torch.full(attn.shape, float("nan"), dtype=acc)
    rc = lib.msda_emu_backward(CODES[value.dtype], loc_float, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc),
                               _ptr(attn), _ptr(grad_out), _ptr(grad_value), _ptr(grad_loc), _ptr(grad_attn),
                               *_sizes(value, loc, blocks, threads), ctypes.c_double(scale))
    assert rc == 0
    if deterministic:
        grad_value = (grad_value.double() / scale).to(acc)
    return out.view(n, lq, m * d), (grad_value, grad_loc, grad_attn)


def _check(lib, inputs, dtype, **launch):
    value, shapes, starts, loc, attn = [t.contiguous() for t in inputs]
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
                           generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    out, grads = run_emulated(lib, value, shapes, starts, loc, attn, grad_out, **launch)
    leaves = [t.double().requires_grad_() if t.is_floating_point() else t for t in (value, shapes, starts, loc, attn)]
    ref = ms_deform_attn_reference(*leaves)
    ref.backward(grad_out.double())
    for got, want in zip((out, *grads), (ref, leaves[0].grad, leaves[3].grad, leaves[4].grad)):
        want = want.detach()
        scale = max(float(want.abs().max()), 1e-3)
        assert float((got.double() - want).abs().max()) <= RTOL[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_emulated_kernels_match_reference(emu, dtype):
    # D = 37 > 32 exercises the lanes' loop over the head dim; locations partly outside the maps
    _check(emu, make_inputs(2, 5, 2, 37, LEVELS, 2, dtype=dtype, seed=CODES[dtype]), dtype)


def test_emulated_small_head_dim_batch_and_grid_stride(emu):
    # D = 3 (most lanes idle), one block of 2 warps for 3*4*2 = 24 (n, q, m) warps: grid-stride loop
    _check(emu, make_inputs(3, 4, 2, 3, [(3, 5), (2, 1)], 3, dtype=torch.float32, seed=7), torch.float32,
           blocks=1, threads=64)


def test_emulated_bf16_value_float_locations(emu):
    value, shapes, starts, loc, attn = make_inputs(2, 4, 2, 8, LEVELS, 2, dtype=torch.float64, seed=9)
    _check(emu, (value.bfloat16(), shapes, starts, loc.float(), attn.float()), torch.bfloat16)


def test_emulated_far_points_give_zero(emu):
    value, shapes, starts, loc, attn = make_inputs(1, 3, 1, 4, LEVELS, 2, dtype=torch.float32, seed=11)
    loc[0, 0] = 1e9
    loc[0, 1] = -1e9
    loc[0, 2] = float("inf")
    grad_out = torch.ones(1, 3, 4)
    out, (gv, gl, ga) = run_emulated(emu, value, shapes, starts, loc, attn, grad_out)
    assert out.abs().max() == 0 and gv.abs().max() == 0 and gl.abs().max() == 0 and ga.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_deterministic_value_gradient(emu, dtype):
    """Fixed-point scatter: matches the reference, and is bitwise identical across launch shapes (the
    accumulation order changes with blocks/threads; float atomics would round differently)."""
    inputs = make_inputs(2, 6, 2, 8, LEVELS, 3, dtype=dtype, lo=0.1, hi=0.9, seed=13)  # many shared pixels
    _check(emu, inputs, dtype, deterministic=True)
    value, shapes, starts, loc, attn = [t.contiguous() for t in inputs]
    grad_out = torch.randn(2, 6, 16, dtype=torch.float64).to(dtype)
    runs = [run_emulated(emu, value, shapes, starts, loc, attn, grad_out, blocks=b, threads=t, deterministic=True)
            for b, t in ((None, 64), (1, 32), (3, 96))]
    for _, grads in runs[1:]:
        assert torch.equal(grads[0], runs[0][1][0])
    if dtype == torch.float32:  # sanity: float atomics do depend on the order for these inputs
        fast = [run_emulated(emu, value, shapes, starts, loc, attn, grad_out, blocks=b, threads=t)[1][0]
                for b, t in ((None, 64), (3, 96))]
        assert not torch.equal(fast[0], fast[1])
