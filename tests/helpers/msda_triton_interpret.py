"""Checks of the Triton MSDA kernels on CPU tensors under ``TRITON_INTERPRET=1`` (run as a subprocess).

``tests/unit/ops/test_ops_triton.py`` runs this script in child processes (so ``TRITON_INTERPRET`` never leaks into
other test modules, and a crash of a kernel fails its check only) through ``msda_subprocess.run_checks``.
Every check compares against float64 references (``ms_deform_attn_reference``, itself checked against an
explicit-loop implementation in ``test_ops_reference.py``). The cases are tiny: the interpreter runs every
program in Python; the whole script takes about 30 s on one core.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ.pop("VIT_ADAPTER_MSDA_BACKEND", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.utils.checkpoint  # noqa: E402

from msda_edge_cases import (autograd_fwd_bwd, check_bad_geometry_refused, check_double_backward_refused,  # noqa: E402
                             check_fixed_point_range, check_input_types, check_non_finite_locations,
                             check_unchecked_level_is_masked)
from msda_naive import make_inputs  # noqa: E402
from msda_subprocess import check, main  # noqa: E402
from vit_adapter_ds.ops import ms_deform_attn, ms_deform_attn_reference  # noqa: E402
from vit_adapter_ds.ops import triton_msda  # noqa: E402

torch.set_num_threads(1)
LEVELS = [(5, 7), (3, 4), (1, 2)]  # non-square, odd, one degenerate-ish level
# Tolerances for low-precision inputs, relative to max |reference| (documented in ops/README.md).
LOW_PRECISION_RTOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def reference_with_grads(inputs, grad_out):
    """float64 reference output and gradients (value, locations, weights)."""
    leaves = [t.detach().to(torch.float64).requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = ms_deform_attn_reference(*leaves)
    out.backward(grad_out.to(torch.float64))
    return out.detach(), [leaves[i].grad for i in (0, 3, 4)]


def triton_with_grads(inputs, grad_out, block_q=None):
    if block_q is not None:  # call the kernels directly with a forced query-block size
        args = [t.contiguous() for t in inputs]
        out = triton_msda.msda_forward(*args, block_q=block_q)
        grads = triton_msda.msda_backward(*args, grad_out.contiguous(), block_q=block_q)
        return out, list(grads)
    leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = ms_deform_attn(*leaves, backend="triton")
    out.backward(grad_out)
    return out.detach(), [leaves[i].grad for i in (0, 3, 4)]


def assert_close_rel(got, want, rtol, name):
    scale = max(float(want.abs().max()), 1e-3)
    err = float((got.to(torch.float64) - want).abs().max())
    if not err <= rtol * scale:
        raise AssertionError(f"{name}: max err {err:.3g} > {rtol:g} * {scale:.3g}")
    return err / scale


def compare_all(inputs, rtol, grad_seed=0, **kwargs):
    out_shape = (inputs[0].shape[0], inputs[3].shape[1], inputs[0].shape[2] * inputs[0].shape[3])
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(grad_seed),
                           dtype=torch.float64).to(inputs[0].dtype)
    ref_out, ref_grads = reference_with_grads(inputs, grad_out)
    out, grads = triton_with_grads(inputs, grad_out, **kwargs)
    assert out.dtype == inputs[0].dtype and out.shape == ref_out.shape
    errs = [assert_close_rel(out, ref_out, rtol, "output")]
    for name, got, want in zip(("grad_value", "grad_loc", "grad_attn"), grads, ref_grads):
        assert got.dtype == want.dtype or got.dtype != torch.float64
        errs.append(assert_close_rel(got, want, rtol, name))
    return "max rel errs " + ", ".join(f"{e:.1e}" for e in errs)


@check("fp64_batch3_levels3")
def _():
    inputs = make_inputs(3, 9, 2, 5, LEVELS, 2, seed=1)
    return compare_all(inputs, 1e-12)


@check("fp64_batch80")
def _():
    inputs = make_inputs(80, 2, 1, 3, [(3, 2), (1, 3)], 1, seed=2)
    return compare_all(inputs, 1e-12)


@check("fp32_query_blocks_and_far_points")
def _():
    value, shapes, starts, loc, attn = make_inputs(2, 13, 2, 6, LEVELS, 2, dtype=torch.float32, seed=3)
    loc[0, 0] = 1e6  # far outside (exercises the clamp before the integer cast)
    loc[1, 1] = -3.0
    loc[0, 2, 0, 0, 0] = torch.tensor([0.0, 1.0])  # exact borders
    return compare_all((value, shapes, starts, loc, attn), 2e-6, block_q=4)  # 13 queries = 4 blocks, last partial


@check("gradcheck_fp64")
def _():
    value, shapes, starts, loc, attn = make_inputs(1, 2, 1, 2, [(3, 4), (2, 1)], 2, seed=4)
    fn = lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (value.requires_grad_(), loc.requires_grad_(), attn.requires_grad_()),
                                    eps=1e-6, atol=1e-6)


@check("bf16")
def _():
    inputs = make_inputs(3, 9, 2, 5, LEVELS, 2, dtype=torch.bfloat16, seed=5)
    return compare_all(inputs, LOW_PRECISION_RTOL[torch.bfloat16])


@check("fp16")
def _():
    inputs = make_inputs(3, 9, 2, 5, LEVELS, 2, dtype=torch.float16, seed=6)
    return compare_all(inputs, LOW_PRECISION_RTOL[torch.float16])


@check("bf16_value_fp32_locations")
def _():
    value, shapes, starts, loc, attn = make_inputs(2, 7, 2, 4, LEVELS, 2, seed=7)
    inputs = (value.to(torch.bfloat16), shapes, starts, loc.float(), attn.float())
    out = ms_deform_attn(*inputs, backend="triton")
    ref = ms_deform_attn_reference(value.to(torch.bfloat16).double(), shapes, starts, loc, attn)
    assert out.dtype == torch.bfloat16
    return f"rel err {assert_close_rel(out, ref, LOW_PRECISION_RTOL[torch.bfloat16], 'output'):.1e}"


@check("non_contiguous_inputs")
def _():
    value, shapes, starts, loc, attn = make_inputs(2, 5, 3, 4, LEVELS, 2, dtype=torch.float32, seed=8)
    value_nc = value.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    loc_nc = loc.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    attn_nc = attn.transpose(0, 1).contiguous().transpose(0, 1)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or attn_nc.is_contiguous())
    return compare_all((value_nc, shapes, starts, loc_nc, attn_nc), 2e-6)


@check("env_var_backend_and_checkpoint")
def _():
    value, shapes, starts, loc, attn = make_inputs(1, 6, 2, 3, LEVELS, 2, dtype=torch.float32, seed=9)
    os.environ["VIT_ADAPTER_MSDA_BACKEND"] = "triton"
    try:
        grads = []
        for reentrant in (False, True):
            v = value.clone().requires_grad_()
            out = torch.utils.checkpoint.checkpoint(ms_deform_attn, v, shapes, starts, loc, attn,
                                                    use_reentrant=reentrant)
            out.square().sum().backward()
            grads.append(v.grad)
    finally:
        os.environ.pop("VIT_ADAPTER_MSDA_BACKEND")
    v_ref = value.double().requires_grad_()
    ms_deform_attn_reference(v_ref, shapes, starts, loc.double(), attn.double()).square().sum().backward()
    errs = [assert_close_rel(g, v_ref.grad, 2e-6, "checkpointed grad_value") for g in grads]
    return f"rel errs {errs[0]:.1e} {errs[1]:.1e}"


@check("grad_fn_is_triton")
def _():
    value, shapes, starts, loc, attn = make_inputs(1, 2, 1, 2, [(2, 3)], 1, dtype=torch.float32)
    out = ms_deform_attn(value.requires_grad_(), shapes, starts, loc, attn, backend="triton")
    assert "_MSDeformAttnFunction" in type(out.grad_fn).__name__, type(out.grad_fn).__name__


@check("deterministic_mode_is_bitwise_reproducible")
def _():
    inputs = make_inputs(1, 8, 2, 4, LEVELS, 3, dtype=torch.float32, lo=0.1, hi=0.9, seed=12)
    value, shapes, starts, loc, attn = [t.contiguous() for t in inputs]
    grad_out = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3))
    # the accumulation order changes with the query-block size; fixed point must not care
    det = [triton_msda.msda_backward(value, shapes, starts, loc, attn, grad_out, block_q=b, deterministic=True)[0]
           for b in (1, 8)]
    assert all(torch.equal(det[0], g) for g in det[1:])
    fast = [triton_msda.msda_backward(value, shapes, starts, loc, attn, grad_out, block_q=b)[0] for b in (1, 8)]
    assert not torch.equal(fast[0], fast[1]), "float atomics happened to agree: the check above proves nothing"
    try:  # the autograd path uses fixed point under use_deterministic_algorithms and stays accurate
        torch.use_deterministic_algorithms(True)
        detail = compare_all(inputs, 2e-6)
    finally:
        torch.use_deterministic_algorithms(False)
    return detail


@check("auto_on_cpu_is_reference")
def _():
    from vit_adapter_ds.ops import resolve_backend

    assert resolve_backend(torch.device("cpu")) == "pytorch"
    assert resolve_backend(torch.device("cpu"), "triton") == "triton"


def _triton_op(*args):
    return ms_deform_attn(*args, backend="triton")


def _triton_grads(value, shapes, starts, loc, attn, grad_out, deterministic=False):
    args = [t.contiguous() for t in (value, shapes, starts, loc, attn)]
    return triton_msda.msda_backward(*args, grad_out.contiguous(), deterministic=deterministic)


@check("bad_geometry_is_refused")
def _():
    return check_bad_geometry_refused(_triton_op)


@check("unchecked_bad_level_is_masked_not_out_of_bounds")
def _():
    def run(value, shapes, starts, loc, attn, grad_out):
        args = [t.contiguous() for t in (value, shapes, starts, loc, attn)]
        return (triton_msda.msda_forward(*args), *triton_msda.msda_backward(*args, grad_out))
    return check_unchecked_level_is_masked(run)


@check("input_types")
def _():
    return check_input_types(_triton_op)


@check("double_backward_is_refused")
def _():
    return check_double_backward_refused(_triton_op)


@check("non_finite_locations_are_nan")
def _():
    return check_non_finite_locations(autograd_fwd_bwd(_triton_op))


@check("deterministic_range_tiny_and_huge_gradients")
def _():
    return check_fixed_point_range(lambda *a: _triton_grads(*a, deterministic=True))


if __name__ == "__main__":
    main()
