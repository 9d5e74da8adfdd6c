"""The measurement shared by the golden generator and the parity test: a seeded input, one forward pass, a fixed
scalar loss (outputs weighted by seeded random tensors), one backward pass, and deterministic subsets of the
outputs and gradients."""
from __future__ import annotations

import torch
from torch import nn

from .seeded_state import _generator

SUBSET = 2048
_STRIDE = 2654435761  # a prime: k * _STRIDE mod n visits distinct elements spread over the tensor


def subset_index(numel: int, k: int = SUBSET) -> torch.Tensor:
    """``min(k, numel)`` distinct flat indices spread over a tensor of ``numel`` elements (pure integer
    arithmetic, independent of torch's random number generators)."""
    if numel <= k:
        return torch.arange(numel)
    return (torch.arange(k, dtype=torch.int64) * _STRIDE) % numel


def take(t: torch.Tensor, k: int = SUBSET) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    return flat[subset_index(flat.numel(), k)].clone()


def seeded_input(shape, seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=_generator(seed, "input"), dtype=torch.float32)


def loss_weights(shapes, seed: int) -> list[torch.Tensor]:
    return [torch.randn(tuple(s), generator=_generator(seed, f"loss_weight.{i}"), dtype=torch.float32)
            for i, s in enumerate(shapes)]


def run_case(model: nn.Module, input_shape, seed: int, grad_keys: list[str], k: int = SUBSET) -> dict:
    """Forward + backward of ``loss = sum_i <out_i, w_i>``; returns subsets and full norms of everything compared."""
    model.zero_grad(set_to_none=True)
    x = seeded_input(input_shape, seed).requires_grad_(True)
    outs = model(x)
    weights = loss_weights([o.shape for o in outs], seed)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    params = dict(model.named_parameters())
    missing = [key for key in grad_keys if key not in params or params[key].grad is None]
    if missing:
        raise KeyError(f"no gradient for {missing}")
    return {
        "loss": float(loss.detach()),
        "output_shapes": [list(o.shape) for o in outs],
        "outputs": [take(o, k) for o in outs],
        "output_norms": [float(o.detach().norm()) for o in outs],
        "input_grad": take(x.grad, k),
        "input_grad_norm": float(x.grad.norm()),
        "param_grads": {key: take(params[key].grad, k) for key in grad_keys},
        "param_grad_norms": {key: float(params[key].grad.norm()) for key in grad_keys},
    }


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (b is the reference)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class LayoutMismatch(AssertionError):
    """``result`` and ``golden`` do not hold the same quantities: another number of outputs, other output shapes,
    other subset sizes or another set of parameter gradients. Nothing is compared then (``zip`` would silently
    drop what one side lacks, and a length-1 subset would broadcast)."""


def check_layout(result: dict, golden: dict) -> None:
    """Raise :class:`LayoutMismatch` (naming the difference) unless ``result`` and ``golden`` have the same number
    of outputs with the same shapes, subsets of the same shapes and the same parameter-gradient keys."""
    problems = []
    n_res, n_gold = len(result["outputs"]), len(golden["outputs"])
    if not (n_res == n_gold == len(result["output_norms"]) == len(golden["output_norms"])
            == len(result["output_shapes"]) == len(golden["output_shapes"])):
        problems.append(f"{n_res} outputs ({len(result['output_shapes'])} shapes, {len(result['output_norms'])} "
                        f"norms), golden {n_gold} ({len(golden['output_shapes'])} shapes, "
                        f"{len(golden['output_norms'])} norms)")
    for i, (a, b) in enumerate(zip(result["output_shapes"], golden["output_shapes"])):
        if list(a) != list(b):
            problems.append(f"out{i + 1} has shape {list(a)}, golden {list(b)}")
    for i, (a, b) in enumerate(zip(result["outputs"], golden["outputs"])):
        if a.shape != b.shape:
            problems.append(f"out{i + 1} subset has shape {list(a.shape)}, golden {list(b.shape)}")
    if result["input_grad"].shape != golden["input_grad"].shape:
        problems.append(f"input_grad subset has shape {list(result['input_grad'].shape)}, golden "
                        f"{list(golden['input_grad'].shape)}")
    for what in ("param_grads", "param_grad_norms"):
        if set(result[what]) != set(golden[what]):
            problems.append(f"{what}: missing {sorted(set(golden[what]) - set(result[what]))}, unexpected "
                            f"{sorted(set(result[what]) - set(golden[what]))}")
    for key in sorted(set(result["param_grads"]) & set(golden["param_grads"])):
        a, b = result["param_grads"][key], golden["param_grads"][key]
        if a.shape != b.shape:
            problems.append(f"grad:{key} subset has shape {list(a.shape)}, golden {list(b.shape)}")
    if problems:
        raise LayoutMismatch("result and golden hold different quantities: " + "; ".join(problems))


def compare(result: dict, golden: dict) -> dict[str, float]:
    """Relative L2 error of every compared quantity of ``result`` against ``golden`` (name -> error), after
    :func:`check_layout` (which raises :class:`LayoutMismatch` when they hold different quantities)."""
    check_layout(result, golden)
    errs = {}
    for i, (a, b) in enumerate(zip(result["outputs"], golden["outputs"], strict=True)):
        errs[f"out{i + 1}"] = rel_l2(a, b)
    for i, (a, b) in enumerate(zip(result["output_norms"], golden["output_norms"], strict=True)):
        errs[f"out{i + 1}.norm"] = abs(a - b) / abs(b)
    errs["input_grad"] = rel_l2(result["input_grad"], golden["input_grad"])
    errs["input_grad.norm"] = abs(result["input_grad_norm"] - golden["input_grad_norm"]) / golden["input_grad_norm"]
    for key, b in golden["param_grads"].items():
        errs[f"grad:{key}"] = rel_l2(result["param_grads"][key], b)
        nb = golden["param_grad_norms"][key]
        errs[f"grad:{key}.norm"] = abs(result["param_grad_norms"][key] - nb) / nb
    return errs
