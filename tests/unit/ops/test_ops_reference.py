"""The grid_sample reference against an explicit-loop float64 bilinear implementation, plus gradcheck."""
import pytest
import torch

from msda_naive import make_inputs, msda_naive
from vit_adapter_ds.ops import ms_deform_attn_reference

CASES = [
    # n, lq, m, d, level shapes (H, W), points
    (2, 5, 2, 3, [(5, 7), (3, 4), (1, 2)], 2),
    (1, 4, 3, 5, [(4, 3), (7, 1)], 3),
    (3, 2, 1, 2, [(2, 9)], 4),
]


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_explicit_bilinear(case):
    n, lq, m, d, shapes, p = case
    inputs = make_inputs(n, lq, m, d, shapes, p, seed=len(shapes))
    ref = ms_deform_attn_reference(*inputs)
    naive = msda_naive(*inputs)
    assert ref.shape == (n, lq, m * d)
    torch.testing.assert_close(ref, naive, rtol=1e-12, atol=1e-12)


def test_out_of_range_points_are_zero_and_edges_blend_with_zero():
    value, shapes, starts, loc, attn = make_inputs(1, 1, 1, 2, [(3, 4)], 3)
    attn.fill_(1.0)
    loc[0, 0, 0, 0] = torch.tensor([[-0.6, 0.5], [1.5, 0.5], [0.5, 2.0]], dtype=torch.float64)
    assert ms_deform_attn_reference(value, shapes, starts, loc, attn).abs().max() == 0
    # x = 0 addresses pixel -0.5: half of column 0, half of the zero padding.
    loc[0, 0, 0, 0] = torch.tensor([[0.0, 0.5 / 3], [2.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    out = ms_deform_attn_reference(value, shapes, starts, loc, attn)
    torch.testing.assert_close(out[0, 0], 0.5 * value[0, 0, 0], rtol=1e-12, atol=1e-12)


def test_reference_gradients_match_explicit_bilinear():
    inputs = make_inputs(2, 3, 2, 3, [(5, 7), (3, 4)], 2, seed=5)
    grads = []
    for fn in (ms_deform_attn_reference, msda_naive):
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        grads.append([leaves[i].grad for i in (0, 3, 4)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_gradcheck_float64():
    value, shapes, starts, loc, attn = make_inputs(1, 3, 2, 2, [(3, 5), (2, 2)], 2, seed=3)
    value.requires_grad_()
    loc.requires_grad_()
    attn.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn_reference(v, shapes, starts, l, a),
                                    (value, loc, attn), eps=1e-6, atol=1e-5)
