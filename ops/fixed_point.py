"""Scale of the deterministic (int64 fixed-point) value gradient.

Used by ``triton_msda.msda_backward`` and by the CUDA emulation tests; ``csrc/ms_deform_attn_cuda.cu``
implements the same rule in C++. Every partial sum of one value-gradient element is bounded by
``bound = sum|attention_weights| * max|grad_output|`` (each sample adds ``a * w * go`` to an element at most
once, with bilinear weights ``w <= 1``), so with ``scale = 2**e`` and ``e = 62 - exponent(bound)``
(``bound < 2**(62 - e)``) no int64 partial sum can overflow, whatever the magnitude of the inputs: the scale
follows the actual maximum (no cap at 2**120 or 2**-60), so gradients of 1e-38 (subnormal) keep float32
accuracy as well as gradients of 1e35. Each contribution is rounded to a multiple of ``2**-e``, i.e. about
``2**-62 * bound`` (far below float32's rounding of the result).
"""
from __future__ import annotations

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

import math  # noqa: E402

import torch  # noqa: E402

FIXED_POINT_BITS = 62
MAX_EXPONENT = 960  # |e| limit: 2**e stays a normal float64 (only reachable with float64 inputs)


def fixed_point_exponent(attention_weights: torch.Tensor, grad_output: torch.Tensor) -> int | None:
    """``e`` of the fixed-point scale ``2**e`` (0 when everything is zero), or ``None`` when the bound is not
    finite (NaN / infinite weights or grad_output: the deterministic value gradient is then all NaN).
    One device-to-host sync."""
    if attention_weights.numel() == 0 or grad_output.numel() == 0:
        return 0
    attn_sum, go_max = torch.stack([attention_weights.detach().double().abs().sum(),
                                    grad_output.detach().double().abs().max()]).tolist()
    bound = attn_sum * go_max
    if not math.isfinite(bound):
        return None
    if bound == 0:
        return 0
    exponent = math.frexp(bound)[1]  # bound = f * 2**exponent, 0.5 <= f < 1
    return max(-MAX_EXPONENT, min(MAX_EXPONENT, FIXED_POINT_BITS - exponent))
