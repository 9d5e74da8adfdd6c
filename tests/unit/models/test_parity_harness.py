"""``tests/helpers/parity/harness.py``'s ``compare``: hand-computed relative errors, and a golden that holds other quantities
(another number of outputs, other shapes, other gradient keys) is refused, never compared in part."""
import copy
import math

import pytest
import torch

from parity.harness import LayoutMismatch, compare


def _golden():
    return {
        "loss": 1.0,
        "output_shapes": [[1, 2, 4, 4], [1, 2, 2, 2]],
        "outputs": [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0, 0.0])],
        "output_norms": [5.0, 2.0],
        "input_grad": torch.tensor([0.0, 2.0]),
        "input_grad_norm": 2.0,
        "param_grads": {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([2.0])},
        "param_grad_norms": {"w": math.sqrt(2.0), "b": 2.0},
    }


def test_hand_computed_errors():
    g = _golden()
    r = copy.deepcopy(g)
    r["outputs"][0] = torch.tensor([3.0, 4.5])  # ||(0, .5)|| / ||(3, 4)|| = 0.1
    r["output_norms"][1] = 2.5  # |2.5 - 2| / 2
    r["input_grad"] = torch.tensor([0.0, 1.0])  # 1 / 2
    r["param_grads"]["b"] = torch.tensor([2.2])  # 0.2 / 2
    errs = compare(r, g)
    assert set(errs) == {"out1", "out2", "out1.norm", "out2.norm", "input_grad", "input_grad.norm", "grad:w",
                         "grad:w.norm", "grad:b", "grad:b.norm"}
    expected = {"out1": 0.1, "out2.norm": 0.25, "input_grad": 0.5, "grad:b": 0.1}
    for k, v in errs.items():
        assert v == pytest.approx(expected.get(k, 0.0), abs=1e-6), k  # float32 subsets
    assert all(v == 0 for v in compare(g, copy.deepcopy(g)).values())


def _drop_last_output(r):
    for k in ("outputs", "output_norms", "output_shapes"):
        r[k] = r[k][:-1]


def _other_shape(r):
    r["output_shapes"][1] = [1, 2, 1, 4]  # same number of elements


def _short_subset(r):
    r["outputs"][1] = torch.tensor([1.0])  # would broadcast against the golden's 3 values


def _missing_grad(r):
    del r["param_grads"]["b"]
    del r["param_grad_norms"]["b"]


def _extra_grad(r):
    r["param_grads"]["c"] = torch.tensor([1.0])
    r["param_grad_norms"]["c"] = 1.0


def _grad_subset_shape(r):
    r["param_grads"]["w"] = torch.tensor([1.0, 1.0, 0.0])


@pytest.mark.parametrize("change,message", [
    (_drop_last_output, "1 outputs"), (_other_shape, "out2 has shape [1, 2, 1, 4], golden [1, 2, 2, 2]"),
    (_short_subset, "out2 subset has shape [1], golden [3]"), (_missing_grad, "missing ['b']"),
    (_extra_grad, "unexpected ['c']"), (_grad_subset_shape, "grad:w subset has shape [3], golden [2]")])
@pytest.mark.parametrize("side", ["result", "golden"])
def test_different_quantities_are_refused(change, message, side):
    g = _golden()
    r = copy.deepcopy(g)
    change(r)
    if side == "golden":  # symmetric: a golden with more or fewer quantities than the result is refused as well
        r, g = g, r
    with pytest.raises(LayoutMismatch) as info:
        compare(r, g)
    if side == "result":
        assert message in str(info.value)
