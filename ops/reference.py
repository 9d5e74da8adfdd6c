"""Pure-PyTorch multi-scale deformable attention (the reference every kernel is tested against).

Semantics (identical to Deformable-DETR's CUDA op and ViT-Adapter's ``ms_deform_attn_core_pytorch``):
each sampling location ``(x, y)`` in [0, 1] addresses the pixel ``(x * W - 0.5, y * H - 0.5)`` of its level,
values are bilinearly interpolated with zeros outside the map (``grid_sample`` with ``align_corners=False``,
``padding_mode='zeros'``), and the samples are summed with ``attention_weights``.
"""
from __future__ import annotations

if __package__ != "vit_adapter_ds.ops":
    raise ImportError(f"{__name__}: import the kernels as vit_adapter_ds.ops, not from the ops/ folder "
                      "(see vit_adapter_ds/ops/__init__.py)")

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention with ``F.grid_sample``.

    Args:
        value: (N, S, M, D) values of all levels, flattened and concatenated (S = sum of H_l * W_l).
        spatial_shapes: (L, 2) long tensor of (H_l, W_l).
        level_start_index: (L,) start offset of each level in ``S``.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) locations.
        attention_weights: (N, Lq, M, L, P) weights (already softmax-ed by the caller).

    Returns:
        (N, Lq, M * D) in value's dtype. When the dtypes differ (e.g. bf16 value with float32 locations, as the
        model passes them), the sampling runs in the promoted dtype, like the fused kernels' float32 arithmetic.
    """
    out_dtype = value.dtype
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(i) for i in level_start_index.tolist()]
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, starts[lvl]:starts[lvl] + h * w]  # (N, HW, M, D)
        v = v.flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L, P) weighted by (N*M, 1, Lq, L, P)
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels, n_points)
    out = (stacked * weights).sum(dim=(-1, -2)).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous().to(out_dtype)
