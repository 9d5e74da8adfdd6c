"""``ExtraAttention`` neck of the official HTC++ configs (``detection/mmdet_custom/models/necks/extra_attention.py``):
one pre-norm global self-attention + MLP block (with drop path) on the last (stride-32) map only, then a final
LayerNorm; the other maps pass through. Parameter names are the official ones (``norm1``, ``attn.qkv``,
``attn.proj``, ``norm2``, ``ffn.fc1``, ``ffn.fc2``, ``final_norm``, ``gamma_1``/``gamma_2`` with ``init_values``),
so ``neck.0.*`` checkpoint keys load unchanged. Init: Linear truncated normal (std 0.02), bias 0; LayerNorm 1 / 0.
``with_cp`` (the Objects365 -> COCO recipes) runs the block under activation checkpointing when the map needs a
gradient, as the official ``cp.checkpoint(_inner_forward, feat)``; the values are the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from ...config.keys import Fixed, Param, parse
from ..backbones.layers import make_drop_path, maybe_checkpoint
from ..registry import NECKS


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_head {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


_SPEC = {
    "type": Fixed("ExtraAttention"),
    "in_channels": Param("in_channels", (list, tuple)),
    "num_head": Param("num_head", (int,)),
    "with_ffn": Param("with_ffn", (bool,), True),
    "ffn_ratio": Param("ffn_ratio", (float,), 4.0),
    "drop_path": Param("drop_path", (float,), 0.0),
    "init_values": Param("init_values", (float, type(None)), None),
    "use_final_norm": Param("use_final_norm", (bool,), True),
    "with_cp": Param("with_cp", (bool,), False),
}


@NECKS.register()
class ExtraAttention(nn.Module):
    """``forward(feats)``: a list of maps; the last one (B, C, H, W) goes through the attention block."""

    def __init__(self, in_channels, num_head: int, with_ffn: bool = True, ffn_ratio: float = 4.0,
                 drop_path: float = 0.0, init_values: float | None = None, use_final_norm: bool = True,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = bool(with_cp)
        self.in_channels = [int(c) for c in in_channels]
        dim = self.in_channels[-1]
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_head)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = nn.LayerNorm(dim) if with_ffn else None
        self.ffn = _Mlp(dim, int(dim * ffn_ratio)) if with_ffn else None
        if init_values is not None:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None
        self.final_norm = nn.LayerNorm(dim) if use_final_norm else None
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats):
        if len(feats) != len(self.in_channels):
            raise ValueError(f"ExtraAttention expects {len(self.in_channels)} maps, got {len(feats)}")
        return list(feats[:-1]) + [maybe_checkpoint(self.with_cp, self._block, feats[-1])]

    def _block(self, feat):
        b, c, h, w = feat.shape
        x = feat.flatten(2).transpose(1, 2)
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        if self.ffn is not None:
            y = self.ffn(self.norm2(x))
            x = x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x.transpose(1, 2).reshape(b, c, h, w).contiguous()

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.neck[0]") -> "ExtraAttention":
        p = parse(cfg, _SPEC, where)
        return cls(p["in_channels"], p["num_head"], p["with_ffn"], p["ffn_ratio"], p["drop_path"], p["init_values"],
                   p["use_final_norm"], p["with_cp"])
