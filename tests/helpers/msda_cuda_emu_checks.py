"""Checks of the CUDA kernels (ops/csrc/ms_deform_attn_kernels.cuh) executed on the CPU by the emulator.

Run by ``tests/unit/ops/test_ops_cuda_emulation.py`` in child processes (``msda_subprocess.run_checks``), so an
out-of-bounds access in a kernel fails its check by name instead of crashing pytest. ``MSDA_EMU_SO`` names
the emulator library built by the test from ``cuda_emu/msda_emu.cpp`` (the unmodified kernel templates, each
warp run as 32 cooperative lane contexts). Every check compares against the float64 reference.
"""
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from msda_edge_cases import (check_fixed_point_range, check_non_finite_locations,  # noqa: E402
                             check_unchecked_level_is_masked, reference_fwd_bwd)
from msda_naive import make_inputs  # noqa: E402
from msda_subprocess import check, main  # noqa: E402
from vit_adapter_ds.ops.fixed_point import fixed_point_exponent  # noqa: E402

torch.set_num_threads(1)
CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 2e-2}
LEVELS = [(5, 7), (3, 4), (1, 2)]
_lib = None


def lib():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(os.environ["MSDA_EMU_SO"])
        _lib.msda_emu_forward.restype = ctypes.c_int
        _lib.msda_emu_backward.restype = ctypes.c_int
    return _lib


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def _sizes(value, loc, blocks, threads):
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = loc.shape
    i64 = ctypes.c_int64
    return [i64(n), i64(s), i64(m), i64(d), i64(lq), ctypes.c_int(n_levels), ctypes.c_int(n_points), i64(blocks),
            ctypes.c_int(threads)]


def run_emulated(value, shapes, starts, loc, attn, grad_out, blocks=None, threads=64, deterministic=False):
    """Forward output and (value, loc, attn) gradients from the emulated CUDA kernels (acc-dtype gradients).

    ``deterministic`` uses the fixed-point value gradient with the host launcher's scale rule
    (``ms_deform_attn_cuda.cu`` = ``ops/fixed_point.py``)."""
    value, shapes, starts, loc, attn, grad_out = [t.contiguous() for t in (value, shapes, starts, loc, attn,
                                                                             grad_out)]
    n, s, m, d = value.shape
    lq = loc.shape[1]
    if blocks is None:  # the launcher's rule: one warp per (n, q, m)
        blocks = (n * lq * m * 32 + threads - 1) // threads
    loc_float = int(loc.dtype != value.dtype)
    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
    out = torch.full((n, lq, m, d), float("nan"), dtype=value.dtype)
    rc = lib().msda_emu_forward(CODES[value.dtype], loc_float, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc),
                                _ptr(attn), _ptr(out), *_sizes(value, loc, blocks, threads))
    assert rc == 0, f"forward launch failed (rc={rc})"
    exponent = fixed_point_exponent(attn, grad_out) if deterministic else None
    scale = 2.0 ** (exponent or 0) if deterministic else 0.0
    grad_value = torch.zeros(value.shape, dtype=torch.int64 if deterministic else acc)
    grad_loc = torch.full(loc.shape, float("nan"), dtype=acc)  # every entry must be written
    grad_attn = torch.full(attn.shape, float("nan"), dtype=acc)
    rc = lib().msda_emu_backward(CODES[value.dtype], loc_float, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc),
                                 _ptr(attn), _ptr(grad_out), _ptr(grad_value), _ptr(grad_loc), _ptr(grad_attn),
                                 *_sizes(value, loc, blocks, threads), ctypes.c_double(scale))
    assert rc == 0, f"backward launch failed (rc={rc})"
    if deterministic:
        grad_value = (grad_value.double() / scale).to(acc)
        if exponent is None:  # non-finite bound: the launcher returns an all-NaN value gradient
            grad_value.fill_(float("nan"))
    return out.view(n, lq, m * d), (grad_value, grad_loc, grad_attn)


def _fwd_bwd(value, shapes, starts, loc, attn, grad_out):
    out, grads = run_emulated(value, shapes, starts, loc, attn, grad_out)
    return (out, *grads)


def _compare(inputs, dtype, **launch):
    value, shapes, starts, loc, attn = [t.contiguous() for t in inputs]
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
                           generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    out, grads = run_emulated(value, shapes, starts, loc, attn, grad_out, **launch)
    errs = []
    for got, want in zip((out, *grads), reference_fwd_bwd(value, shapes, starts, loc, attn, grad_out)):
        scale = max(float(want.abs().max()), 1e-3)
        err = float((got.double() - want).abs().max()) / scale
        assert err <= RTOL[dtype], (err, RTOL[dtype])
        errs.append(err)
    return "max rel errs " + ", ".join(f"{e:.1e}" for e in errs)


def _matches_reference(dtype):
    # D = 37 > 32 exercises the lanes' loop over the head dim; locations partly outside the maps
    return _compare(make_inputs(2, 5, 2, 37, LEVELS, 2, dtype=dtype, seed=CODES[dtype]), dtype)


@check("matches_reference_float64")
def _():
    return _matches_reference(torch.float64)


@check("matches_reference_float32")
def _():
    return _matches_reference(torch.float32)


@check("matches_reference_float16")
def _():
    return _matches_reference(torch.float16)


@check("matches_reference_bfloat16")
def _():
    return _matches_reference(torch.bfloat16)


@check("small_head_dim_batch_and_grid_stride")
def _():
    # D = 3 (most lanes idle), one block of 2 warps for 3*4*2 = 24 (n, q, m) warps: grid-stride loop
    return _compare(make_inputs(3, 4, 2, 3, [(3, 5), (2, 1)], 3, dtype=torch.float32, seed=7), torch.float32,
                    blocks=1, threads=64)


@check("bf16_value_float_locations")
def _():
    value, shapes, starts, loc, attn = make_inputs(2, 4, 2, 8, LEVELS, 2, dtype=torch.float64, seed=9)
    return _compare((value.bfloat16(), shapes, starts, loc.float(), attn.float()), torch.bfloat16)


@check("far_points_give_zero")
def _():
    value, shapes, starts, loc, attn = make_inputs(1, 3, 1, 4, LEVELS, 2, dtype=torch.float32, seed=11)
    loc[0, 0] = 1e9
    loc[0, 1] = -1e9
    loc[0, 2] = 3e38
    out, (gv, gl, ga) = run_emulated(value, shapes, starts, loc, attn, torch.ones(1, 3, 4))
    assert out.abs().max() == 0 and gv.abs().max() == 0 and gl.abs().max() == 0 and ga.abs().max() == 0


@check("non_finite_locations_are_nan")
def _():
    return check_non_finite_locations(_fwd_bwd)


@check("unchecked_bad_level_is_masked_not_out_of_bounds")
def _():
    return check_unchecked_level_is_masked(_fwd_bwd)


def _deterministic_value_gradient(dtype):
    """Fixed-point scatter: matches the reference, and is bitwise identical across launch shapes (the
    accumulation order changes with blocks/threads; float atomics would round differently)."""
    inputs = make_inputs(2, 6, 2, 8, LEVELS, 3, dtype=dtype, lo=0.1, hi=0.9, seed=13)  # many shared pixels
    detail = _compare(inputs, dtype, deterministic=True)
    value, shapes, starts, loc, attn = [t.contiguous() for t in inputs]
    grad_out = torch.randn(2, 6, 16, dtype=torch.float64).to(dtype)
    runs = [run_emulated(value, shapes, starts, loc, attn, grad_out, blocks=b, threads=t, deterministic=True)
            for b, t in ((None, 64), (1, 32), (3, 96))]
    for _, grads in runs[1:]:
        assert torch.equal(grads[0], runs[0][1][0])
    if dtype == torch.float32:  # sanity: float atomics do depend on the order for these inputs
        fast = [run_emulated(value, shapes, starts, loc, attn, grad_out, blocks=b, threads=t)[1][0]
                for b, t in ((None, 64), (3, 96))]
        assert not torch.equal(fast[0], fast[1])
    return detail


@check("deterministic_value_gradient_float32")
def _():
    return _deterministic_value_gradient(torch.float32)


@check("deterministic_value_gradient_bfloat16")
def _():
    return _deterministic_value_gradient(torch.bfloat16)


@check("deterministic_range_tiny_and_huge_gradients")
def _():
    return check_fixed_point_range(lambda *args: run_emulated(*args, deterministic=True)[1])


if __name__ == "__main__":
    main()
