"""Deterministic, model-independent weights for parity checks.

``seeded_state_dict`` fills every floating tensor from ``(seed, key name)`` alone, so the official model and ours get
bit-identical weights whenever their key names and shapes agree. Values are chosen so that every parameter matters:
projections have unit-gain fan-in scaling (activations stay O(1) through 24 blocks), norm weights sit around 1,
layer-scale / injector gammas in [0.5, 1] (a zero injector gamma would hide the injector), BN running variances are
positive, and relative-position tables / embeddings / biases are non-zero. Integer buffers
(``relative_position_index``, ``num_batches_tracked``) are left to the model.
"""
from __future__ import annotations

import zlib

import torch
from torch import nn

_GAMMAS = ("gamma", "gamma1", "gamma2", "gamma_1", "gamma_2")


def _generator(seed: int, key: str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63))
    return g


def seeded_tensor(key: str, shape, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value of one floating tensor named ``key`` (rules in the module docstring)."""
    shape = tuple(shape)
    g = _generator(seed, key)
    leaf = key.rsplit(".", 1)[-1]
    randn = torch.randn(shape, generator=g, dtype=torch.float32)
    if leaf == "running_var":
        value = 0.5 + torch.rand(shape, generator=g, dtype=torch.float32)
    elif leaf == "running_mean":
        value = 0.1 * randn
    elif leaf in _GAMMAS:
        value = 0.5 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float32)
    elif leaf == "relative_position_bias_table":
        value = 0.5 * randn
    elif leaf in ("pos_embed", "cls_token", "level_embed"):
        value = 0.2 * randn
    elif key.endswith("sampling_offsets.weight"):
        # Query-dependent offsets of ~0.1 pixel: float32 noise then moves sampling points by ~1e-8 pixel, so no
        # point crosses a pixel boundary, where bilinear sampling has a gradient discontinuity (a crossing changes
        # parameter gradients by ~1e-4 relative in the large configurations, for any correct implementation).
        value = randn.mul_(0.1 * shape[1] ** -0.5)
    elif key.endswith("sampling_offsets.bias"):  # the spread of the sampling points: ~1 pixel
        value = randn
    elif leaf == "weight" and len(shape) == 1:  # LayerNorm / BatchNorm scale
        value = 1.0 + 0.1 * randn
    elif leaf.endswith("bias") and len(shape) == 1:  # biases, q_bias, v_bias
        value = 0.1 * randn
    elif len(shape) >= 2:  # Linear / Conv / ConvTranspose weights: unit gain on fan-in
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        value = randn.mul_(fan_in ** -0.5)
    else:
        value = 0.1 * randn
    return value.to(dtype)


def seeded_state_dict(named_shapes: dict, seed: int) -> dict:
    """``{key: (shape, dtype)}`` -> ``{key: tensor}`` for every floating-point entry; other entries are skipped."""
    out = {}
    for key, (shape, dtype) in named_shapes.items():
        if torch.empty((), dtype=dtype).is_floating_point():
            out[key] = seeded_tensor(key, shape, seed, dtype)
    return out


def named_shapes(model: nn.Module) -> dict:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def load_seeded(model: nn.Module, seed: int) -> dict:
    """Load seeded weights into ``model`` (strict: every key must be covered) and return them."""
    own = model.state_dict()
    state = seeded_state_dict(named_shapes(model), seed)
    full = {k: state.get(k, v) for k, v in own.items()}
    model.load_state_dict(full, strict=True)
    return state
