"""The input contract of ``ms_deform_attn`` on the pytorch backend, and the checks module itself.

The same edge-case checks (``msda_edge_cases.py``) run on the Triton kernels (``test_ops_triton.py``), the
emulated CUDA kernels (``test_ops_cuda_emulation.py``) and on a GPU (``test_ops_gpu.py``).
"""
import pytest
import torch

from msda_edge_cases import (autograd_fwd_bwd, check_bad_geometry_refused, check_input_types,
                             check_non_finite_locations)
from msda_naive import make_inputs, msda_naive
from vit_adapter_ds.ops import checks, ms_deform_attn


def _pytorch(*args):
    return ms_deform_attn(*args, backend="pytorch")


def test_bad_geometry_is_refused():
    check_bad_geometry_refused(_pytorch)


def test_input_types():
    check_input_types(_pytorch)


def test_non_finite_locations_are_nan():
    # grid_sample leaves the finite coordinate's gradient at 0, the fused kernels make both NaN
    check_non_finite_locations(autograd_fwd_bwd(_pytorch), fused=False)


def test_double_backward_works_on_the_reference():
    """The pytorch backend is twice differentiable (the fused backends refuse: once differentiable), and its
    second derivatives are right: ``gradgradcheck`` against float64 finite differences of the first derivatives,
    and the Hessian-vector products of a loss equal those of the explicit-loop definition (``msda_naive``, no
    ``grid_sample``). Locations in [-0.25, 1.25]: some samples straddle or leave the map."""
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 2, [(3, 4), (2, 3)], 2, seed=1)
    assert value.dtype == loc.dtype == attn.dtype == torch.float64
    for t in (value, loc, attn):
        t.requires_grad_()

    def op(v, lo, a):
        return _pytorch(v, shapes, starts, lo, a)

    assert torch.autograd.gradgradcheck(op, (value, loc, attn))

    def hvp(fn):
        (grad,) = torch.autograd.grad(fn(value, shapes, starts, loc, attn).square().sum(), loc, create_graph=True)
        return torch.autograd.grad(grad.sum(), (value, loc, attn))

    got, ref = hvp(_pytorch), hvp(msda_naive)
    assert all(r.abs().max() > 1 for r in ref)  # a nonzero second-order signal in every input
    for g, r, name in zip(got, ref, ("value", "sampling_locations", "attention_weights")):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=f"d/d{name} of d(loss)/d(locations)")


@pytest.mark.parametrize("shapes,starts,rows,match", [
    ([[5, 7], [2, 5]], [0, 35], 20, r"need 45 rows of value .* value\.shape\[1\] is 20"),
    ([[5, 7], [2, 5]], [0, 50], 45, r"level_start_index \[0, 50\] must be the exclusive cumulative sum"),
    ([[5, 7], [0, 5]], [0, 35], 35, "must be positive"),
])
def test_geometry_values(shapes, starts, rows, match):
    with pytest.raises(ValueError, match=match):
        checks.check_geometry_values(shapes, starts, rows)
    checks.check_geometry_values([[5, 7], [2, 5]], [0, 35], 45)  # the consistent one passes


def test_bad_check_mode_is_reported(monkeypatch):
    monkeypatch.setenv(checks.CHECK_ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        checks._check_mode()
