"""The plain BEiT baseline of the official segmentation code (``segmentation/mmseg_custom/models/backbones/
beit_baseline.py``, ``BEiTBaseline``; the ``upernet_beit_large_512_160k_ade20k_{ss,ms}`` configs): the segmentation
BEiT (class token, relative-position tables sized by the whole image, q/v biases, layer scale) without an adapter.
The tokens after the blocks ``out_indices`` become 4 maps at strides 4, 8, 16, 32 through ``fpn1`` (2 transposed
convolutions with BatchNorm + GELU between them), ``fpn2`` (one transposed convolution), ``fpn3`` (identity) and
``fpn4`` (2x2 max pooling); with ``patch_size=8`` the official 8 / 16 / 32 variant. There is no final norm.

Parameters and buffers have the official ``state_dict()`` keys (``fpn1.1`` is the official ``nn.SyncBatchNorm``,
built as BatchNorm under the project's one rule, :mod:`vit_adapter_ds.models.norm`: ``norm='syncbn'`` marks it for
synchronisation on several GPUs). Pretrained BEiT files load through :func:`.beit.beit_checkpoint_filter_fn` (the
official ``mmcv_custom`` rules: shared table fanned out, tables resampled to the image size).
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..layer_decay import VIT_NO_WEIGHT_DECAY, vit_layer_id
from ..norm import norm_class
from ..registry import BACKBONES
from .adapter import build_from_signature
from .beit import BEiTBlock, _beit_init_weights, _IndexCopies, beit_checkpoint_filter_fn
from .layers import PatchEmbed
from .vit import refuse_pretrained_path

BEIT_BASELINE_PRESETS = {
    # upernet_beit_large_512_160k_ade20k_{ss,ms}: exactly the official backbone=dict(...)
    "beit_large_512": dict(img_size=512, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                           qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6,
                           drop_path_rate=0.2, out_indices=[7, 11, 15, 23]),
}


@BACKBONES.register()
class BEiTBaseline(nn.Module):
    """Plain segmentation BEiT with the official keyword arguments of ``backbone=dict(type='BEiTBaseline', ...)``
    plus ``norm`` ('bn' | 'syncbn', the ``fpn1`` norm). ``forward(x)`` returns 4 NCHW maps of ``embed_dim``
    channels; with relative-position tables the input must be exactly ``img_size`` x ``img_size``. The constructor
    reads no file (``pretrained`` only as ``None``); ``hybrid_backbone`` and ``use_shared_rel_pos_bias`` (unused by
    every official config) are refused."""

    presets = BEIT_BASELINE_PRESETS
    checkpoint_kinds = ("beit",)
    checkpoint_mismatch = ("{source} is {what}, but the model is a BEiTBaseline, which loads BEiT weights (q_bias/"
                           "v_bias, relative_position_bias_table, gamma_1/gamma_2) or its own segmentor checkpoint")
    no_weight_decay_names = VIT_NO_WEIGHT_DECAY  # layer decay with official_wd_quirk=False

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None, kind: str | None = None) -> dict:
        """:func:`.beit.beit_checkpoint_filter_fn` (tables of the same size keep and verify their index)."""
        return beit_checkpoint_filter_fn(state_dict, model, report, keep_index=True)

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.backbone"):
        """Build from the official ``backbone=dict(...)``: every key must be a constructor argument (``pretrained``
        is loaded by the builder after construction)."""
        return build_from_signature(cls, cfg, where, skip=("type", "pretrained"))

    def layer_id(self, name: str, num_layers: int) -> int:
        """Layer decay, the official ViT rule: embeddings 0, block i -> i + 1, the fpn layers L - 1."""
        return vit_layer_id(name, num_layers)

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 80,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, hybrid_backbone=None, norm_layer=None,
                 init_values: float | None = None, with_cp: bool = False, use_abs_pos_emb: bool = True,
                 use_rel_pos_bias: bool = False, use_shared_rel_pos_bias: bool = False,
                 out_indices=(3, 5, 7, 11), pretrained: None = None, norm: str = "bn"):
        super().__init__()
        refuse_pretrained_path(pretrained)
        if hybrid_backbone is not None or norm_layer is not None:
            raise ValueError("hybrid_backbone / norm_layer are not supported (no official config sets them)")
        if use_shared_rel_pos_bias:
            raise ValueError("use_shared_rel_pos_bias=True is not supported (no official config sets it); shared "
                             "tables of a checkpoint are fanned out to the blocks when it is loaded")
        if patch_size not in (8, 16):
            raise ValueError(f"patch_size must be 16 or 8 (the official fpn variants), got {patch_size}")
        out_indices = [int(i) for i in out_indices]
        if len(out_indices) != 4 or not all(0 <= i < depth for i in out_indices):
            raise ValueError(f"out_indices must be 4 block indices below depth {depth}, got {out_indices}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.out_indices = out_indices
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim)) if use_abs_pos_emb else None
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        layer_norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([
            BEiTBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                      drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=layer_norm,
                      init_values=init_values,
                      window_size=self.patch_embed.patch_shape if use_rel_pos_bias else None,
                      with_cls=True, with_cp=with_cp)
            for i in range(depth)])
        copies = _IndexCopies()  # one index copy per state_dict() call, shared by the blocks (as BEiTAdapter)
        for blk in self.blocks:
            blk.attn._index_copies = copies
        self.register_state_dict_pre_hook(copies.begin)
        self._register_state_dict_hook(copies.end)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if patch_size == 16:
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
                                      norm_class(norm)(embed_dim), nn.GELU(),
                                      nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
            self.fpn2 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        else:
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
            self.fpn2 = nn.Identity()
            self.fpn3 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
            self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=4, stride=4))
        self.apply(_beit_init_weights)

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        if self.blocks[0].attn.relative_position_bias_table is not None and \
                tuple(x.shape[-2:]) != self.patch_embed.img_size:
            raise ValueError(f"BEiTBaseline needs inputs of exactly img_size {self.patch_embed.img_size}, got "
                             f"{tuple(x.shape[-2:])} (its relative position tables cover the whole image; use slide "
                             "inference with this crop size)")
        x, h, w = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        features = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, h, w)
            if i in self.out_indices:
                features.append(x[:, 1:, :].permute(0, 2, 1).reshape(b, -1, h, w).contiguous())
        return [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), features)]
