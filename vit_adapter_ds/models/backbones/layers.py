"""Small building blocks shared by the ViT and BEiT backbones."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample, drawing random numbers exactly like timm 0.4.12 (used by the official code),
    so that a seeded run drops the same samples."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def make_drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class PatchEmbed(nn.Module):
    """Conv patch embedding returning tokens (B, N, C) and the grid size."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.patch_shape = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.patch_shape[0] * self.patch_shape[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), h, w


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None = None,
              dropout_p: float = 0.0, scale_q_first: bool = False) -> torch.Tensor:
    """Softmax attention over (B, heads, N, head_dim) tensors.

    On CPU float32/float64 tensors it is computed the way the official code does, so that results and gradients round
    like the official ones (CPU fused SDPA kernels round differently, which ill-conditioned gradients, e.g. the input
    gradient through batch-1 BatchNorm statistics, amplify to ~1e-3): ``(q @ k^T) * scale`` (ViT), or
    ``(q * scale) @ k^T`` with ``scale_q_first`` (BEiT), ``+ bias``, softmax, dropout of the attention weights,
    ``@ v``. Elsewhere (GPU, half precision) it is ``F.scaled_dot_product_attention`` (fused kernels).
    """
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64):
        attn = (q * scale) @ k.transpose(-2, -1) if scale_q_first else (q @ k.transpose(-2, -1)) * scale
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        if dropout_p > 0.0:
            attn = F.dropout(attn, dropout_p, training=True)
        return attn @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def per_block(value, depth: int, name: str) -> list:
    """A per-block setting (``window_attn``, ``window_size``): one value for every block, or a list of ``depth``."""
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} entries but depth is {depth} (one per block)")
        return list(value)
    return [value] * depth


def maybe_checkpoint(enabled: bool, fn, *args):
    """Run ``fn(*args)`` under non-reentrant activation checkpointing when enabled and gradients are needed."""
    if enabled and torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def init_adapter_weights(m: nn.Module) -> None:
    """The official ``_init_weights`` of ViTAdapter/BEiTAdapter (docs/official-architecture.md §2.12)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
    elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        fan_out //= m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


def resize_pos_embed_grid(pos_embed: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (1, Hs*Ws, C) grid position embeddings to (1, Hd*Wd, C) (``align_corners=False``), as the
    official ``_get_pos_embed`` does on every forward."""
    c = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, src_hw[0], src_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_hw, mode="bicubic", align_corners=False)
    return grid.reshape(1, c, dst_hw[0] * dst_hw[1]).permute(0, 2, 1)
