"""Mask2Former's masked-attention transformer decoder (mmcv ``DetrTransformerDecoder`` of
``DetrTransformerDecoderLayer`` with ``operation_order=('cross_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm')``).

Each layer (post-norm, sequence-first (L, N, C) tensors)::

    q = norms.0(q + cross_attn(q + query_pos, memory + memory_pos, memory, attn_mask))
    q = norms.1(q + self_attn(q + query_pos, q + query_pos, q))
    q = norms.2(q + ffn(q))

``post_norm`` (a LayerNorm) is applied to the queries before every prediction (the head calls it). Keys:
``layers.{i}.attentions.{0,1}.attn.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``,
``layers.{i}.ffns.0.layers.{0.0,1}.*``, ``layers.{i}.norms.{0,1,2}.*``, ``post_norm.*``.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import FFN, MultiheadAttention


class MaskedAttentionDecoderLayer(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, ffn_drop: float = 0.0, with_cp: bool = False):
        super().__init__()
        self.attentions = nn.ModuleList([MultiheadAttention(embed_dims, num_heads, attn_drop, proj_drop),
                                         MultiheadAttention(embed_dims, num_heads, attn_drop, proj_drop)])
        self.ffns = nn.ModuleList([FFN(embed_dims, feedforward_channels, ffn_drop, with_cp=with_cp)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(self, query, memory, query_pos, memory_pos, attn_mask=None):
        """query (Q, N, C), memory (HW, N, C); ``attn_mask`` (N * heads, Q, HW) bool, True = masked out."""
        query = self.norms[0](self.attentions[0](query, memory, memory, query_pos, memory_pos, attn_mask))
        query = self.norms[1](self.attentions[1](query, query, query, query_pos, query_pos))
        return self.norms[2](self.ffns[0](query))


class MaskedAttentionDecoder(nn.Module):
    """``num_layers`` :class:`MaskedAttentionDecoderLayer` s and the shared ``post_norm``."""

    def __init__(self, num_layers: int, embed_dims: int, num_heads: int, feedforward_channels: int,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, ffn_drop: float = 0.0, with_cp: bool = False):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims={embed_dims} is not divisible by num_heads={num_heads}")
        self.embed_dims = int(embed_dims)
        self.num_heads = int(num_heads)
        self.num_layers = int(num_layers)
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(embed_dims, num_heads, feedforward_channels, attn_drop, proj_drop, ffn_drop,
                                        with_cp) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(embed_dims)


def fill_fully_masked_rows(attn_mask: torch.Tensor) -> torch.Tensor:
    """Rows of a boolean attention mask (..., Q, K) that mask out every key are cleared (attend everywhere),
    as Mask2Former does, so no query attends to nothing."""
    full = attn_mask.all(dim=-1, keepdim=True)
    return attn_mask & ~full
