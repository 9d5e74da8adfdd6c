"""mmcv 1.x transformer bricks used by Mask2Former, with mmcv's state-dict key names.

* :class:`FFN`: ``layers.0.0`` Linear -> activation -> Dropout, ``layers.1`` Linear, Dropout, plus the identity
  (mmcv ``FFN(num_fcs=2, add_identity=True)``). ``with_cp`` checkpoints it (non-reentrant; same numbers).
* :class:`MultiheadAttention`: mmcv's wrapper of ``nn.MultiheadAttention`` (key ``attn.*``), sequence-first
  (L, N, C) tensors; ``query_pos`` is added to the query, ``key_pos`` to the key (not to the value), the output is
  added to the identity.
* :class:`ConvNorm`: mmcv ``ConvModule`` with a GroupNorm (keys ``conv.*``, ``gn.*``) and an optional ReLU.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint as cp
from torch import nn


class FFN(nn.Module):
    def __init__(self, embed_dims: int, feedforward_channels: int, ffn_drop: float = 0.0, with_cp: bool = False,
                 act_inplace: bool = True):
        super().__init__()
        self.embed_dims = int(embed_dims)
        self.feedforward_channels = int(feedforward_channels)
        self.with_cp = bool(with_cp)
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.ReLU(inplace=act_inplace),
                          nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims), nn.Dropout(ffn_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            return x + cp.checkpoint(self.layers, x, use_reentrant=False)
        return x + self.layers(x)


class MultiheadAttention(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.embed_dims = int(embed_dims)
        self.num_heads = int(num_heads)
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                query_pos: torch.Tensor | None = None, key_pos: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (Lq, N, C), key/value (Lk, N, C); ``attn_mask`` (N * heads, Lq, Lk) bool, True = not attended.
        Returns ``query + attn(...)`` (Lq, N, C)."""
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        out = self.attn(q, k, value, attn_mask=attn_mask, need_weights=False)[0]
        return query + self.proj_drop(out)


class ConvNorm(nn.Module):
    """Conv2d -> GroupNorm (-> ReLU): mmcv ``ConvModule(norm_cfg=dict(type='GN', num_groups=G))``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_groups: int, bias: bool,
                 act: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.gn = nn.GroupNorm(num_groups, out_channels)
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv(x))
        return self.activate(x) if self.activate is not None else x


def caffe2_xavier_init_(module: nn.Module) -> None:
    """mmcv ``caffe2_xavier_init(m, bias=0)``: kaiming-uniform (a=1, fan_in, leaky_relu) weight, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def xavier_uniform_init_(module: nn.Module) -> None:
    """mmcv ``xavier_init(m, gain=1, bias=0, distribution='uniform')``."""
    nn.init.xavier_uniform_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
