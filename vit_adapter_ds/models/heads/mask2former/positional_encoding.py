"""Sine positional encoding of DETR / mmcv ``SinePositionalEncoding`` (no parameters).

For a padding mask (N, H, W) (True = padding) the encoding is (N, 2 * num_feats, H, W): the first ``num_feats``
channels encode y, the last ``num_feats`` x. Along each axis the cumulative count of valid pixels ``e`` (optionally
normalised to ``(e + offset) / (e_last + eps) * scale``) is divided by ``temperature ** (2 * (k // 2) / num_feats)``
for channel k; even channels take the sine, odd ones the cosine (interleaved as mmcv does).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionalEncoding(nn.Module):
    def __init__(self, num_feats: int, temperature: float = 10000, normalize: bool = False,
                 scale: float = 2 * math.pi, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        if num_feats < 2 or num_feats % 2:
            raise ValueError(f"num_feats must be a positive even number, got {num_feats}")
        self.num_feats = int(num_feats)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.scale = float(scale)
        self.eps = float(eps)
        self.offset = float(offset)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (N, H, W) bool (True at padding) -> (N, 2 * num_feats, H, W) float32."""
        not_mask = (~mask.bool()).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        n, h, w = mask.shape
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).view(n, h, w, -1)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).view(n, h, w, -1)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"num_feats={self.num_feats}, temperature={self.temperature:g}, normalize={self.normalize}, "
                f"scale={self.scale:g}, eps={self.eps:g}")
