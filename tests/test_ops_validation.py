"""The input contract of ``ms_deform_attn`` on the pytorch backend, and the checks module itself.

The same edge-case checks (``msda_edge_cases.py``) run on the Triton kernels (``test_ops_triton.py``), the
emulated CUDA kernels (``test_ops_cuda_emulation.py``) and on a GPU (``test_ops_gpu.py``).
"""
import pytest
import torch

from msda_edge_cases import (autograd_fwd_bwd, check_bad_geometry_refused, check_input_types,
                             check_non_finite_locations)
from msda_naive import make_inputs
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
    value, shapes, starts, loc, attn = make_inputs(1, 2, 1, 2, [(3, 4)], 1, seed=1)
    loc.requires_grad_()
    (grad,) = torch.autograd.grad(_pytorch(value, shapes, starts, loc, attn).square().sum(), loc, create_graph=True)
    grad.sum().backward()  # no error; the fused backends refuse (once differentiable)


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
