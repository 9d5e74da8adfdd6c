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


def compare(result: dict, golden: dict) -> dict[str, float]:
    """Relative L2 error of every compared quantity of ``result`` against ``golden`` (name -> error)."""
    errs = {}
    for i, (a, b) in enumerate(zip(result["outputs"], golden["outputs"])):
        errs[f"out{i + 1}"] = rel_l2(a, b)
    for i, (a, b) in enumerate(zip(result["output_norms"], golden["output_norms"])):
        errs[f"out{i + 1}.norm"] = abs(a - b) / abs(b)
    errs["input_grad"] = rel_l2(result["input_grad"], golden["input_grad"])
    errs["input_grad.norm"] = abs(result["input_grad_norm"] - golden["input_grad_norm"]) / golden["input_grad_norm"]
    for key, b in golden["param_grads"].items():
        errs[f"grad:{key}"] = rel_l2(result["param_grads"][key], b)
        nb = golden["param_grad_norms"][key]
        errs[f"grad:{key}.norm"] = abs(result["param_grad_norms"][key] - nb) / nb
    return errs
