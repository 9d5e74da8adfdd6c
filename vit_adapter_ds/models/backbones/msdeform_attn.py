"""Multi-scale deformable attention module (ViT-Adapter's ``MSDeformAttn``, with the extra ``ratio`` argument).

Parameterisation and initialisation follow the official module exactly (docs/official-architecture.md §2.4): the value/output
projections are ``d_model -> int(d_model * ratio)`` and back, the sampling-offset bias is the "grid" init,
attention-weight logits start at zero, and the attention itself is ``vit_adapter_ds.ops.ms_deform_attn``.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vit_adapter_ds.ops import ms_deform_attn


def _is_power_of_2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Args:
        d_model: query / input channels.
        n_levels: number of feature levels sampled from.
        n_heads: attention heads.
        n_points: sampling points per head and level.
        ratio: width of the value projection relative to ``d_model`` (0.5 for ViT-Adapter-B/L).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, but got {d_model} and {n_heads}")
        value_dim = int(d_model * ratio)
        if value_dim % n_heads != 0:
            raise ValueError(f"int(d_model * ratio) = {value_dim} must be divisible by n_heads = {n_heads}")
        if not _is_power_of_2(d_model // n_heads):
            warnings.warn("You'd better set d_model in MSDeformAttn to make the dimension of each attention head "
                          "a power of 2 (this only affects the efficiency of some kernels).", stacklevel=2)
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.ratio = ratio
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """The official initialisation (same random-number consumption as the official module)."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        # The official code replaces the Parameter object; copying keeps optimiser/ZeRO references valid.
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                input_spatial_shapes: torch.Tensor, input_level_start_index: torch.Tensor,
                input_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N or 1, Lq, n_levels or 1, 2) normalised (x, y) in [0, 1], or (..., 4) boxes
                (cx, cy, w, h).
            input_flatten: (N, S, C) flattened levels, S = sum(H_l * W_l).
            input_spatial_shapes: (n_levels, 2) long (H_l, W_l).
            input_level_start_index: (n_levels,) long.
            input_padding_mask: optional (N, S) bool, True at padding.
        Returns:
            (N, Lq, C)
        """
        n, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        # the geometry (spatial shapes vs len_in, start index) is checked by ms_deform_attn itself, without a host
        # sync per call on GPUs (once per geometry), see ops/README.md
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, int(self.ratio * self.d_model) // self.n_heads)
        sampling_offsets = self.sampling_offsets(query).view(n, len_q, self.n_heads, self.n_levels, self.n_points, 2)
        attention_weights = self.attention_weights(query).view(n, len_q, self.n_heads, self.n_levels * self.n_points)
        attention_weights = F.softmax(attention_weights, -1).view(n, len_q, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
            sampling_locations = (reference_points[:, :, None, :, None, :]
                                  + sampling_offsets / offset_normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            sampling_locations = (reference_points[:, :, None, :, None, :2]
                                  + sampling_offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"last dim of reference_points must be 2 or 4, got {reference_points.shape[-1]}")
        # With a bf16/fp16 model the locations stay float32 (reference points are float32; bf16 locations would be
        # off by up to half a pixel): the op samples in float32 like the official code under AMP, and returns
        # value's dtype.
        output = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, sampling_locations,
                                attention_weights)
        return self.output_proj(output)
