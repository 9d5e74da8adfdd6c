"""The plain-ViT detection baseline of the official code (``detection/mmdet_custom/models/backbones/vit_baseline.py``,
``ViTBaseline``; the ``mask_rcnn_deit_{tiny,small,base}_fpn_3x_coco``, ``mask_rcnn_augreg_large_fpn_3x_coco`` and
``cascade_mask_rcnn_deit_base_fpn_3x_coco`` configs): the detection ViT of ViT-Adapter (window attention per block,
layer scale ``gamma1``/``gamma2``, an absolute position embedding resized bicubically from the ``pretrain_size`` grid
on every forward, no class token) without the adapter. The tokens after the blocks ``out_indices`` (4 blocks, or 1 --
the official "ViTDet" branch, where one map feeds all four levels) go through their own LayerNorm ``norm1``..``norm4``
and become maps at strides 4, 8, 16, 32 through ``up1`` (transposed convolution, GroupNorm(32), GELU, transposed
convolution), ``up2`` (one transposed convolution), ``up3`` (identity) and ``up4`` (2x2 max pooling).

Parameters have the official ``state_dict()`` keys (``pos_embed`` keeps the official class-token slot, unused; there
is no ``cls_token``). As in the official class only ``up1``..``up4`` get the ``_init_weights`` initialisation; the
blocks keep PyTorch's defaults and ``pos_embed`` starts at zero (DeiT / AugReg weights are loaded over them through
:func:`.vit.vit_checkpoint_filter_fn`).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..layer_decay import VIT_NO_WEIGHT_DECAY, vit_layer_id
from ..registry import BACKBONES
from .adapter import build_from_signature
from .layers import PatchEmbed, init_adapter_weights, per_block, resize_pos_embed_grid
from .vit import Block, refuse_pretrained_path, vit_checkpoint_filter_fn

_WIN12 = [True, True, False] * 4
_WIN24 = [True, True, True, True, True, False] * 4

VIT_BASELINE_PRESETS = {
    # exactly the official backbone=dict(...) of the named configs
    "vit_baseline_tiny_det": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4,
                                  drop_path_rate=0.1, out_indices=[2, 5, 8, 11], window_attn=_WIN12,
                                  window_size=[14, 14, None] * 4),
    "vit_baseline_small_det": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                                   drop_path_rate=0.1, out_indices=[2, 5, 8, 11], window_attn=_WIN12,
                                   window_size=[14, 14, None] * 4),
    "vit_baseline_base_det": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                  drop_path_rate=0.1, out_indices=[2, 5, 8, 11], window_attn=_WIN12,
                                  window_size=[14, 14, None] * 4),
    "vit_baseline_large_det": dict(img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24,
                                   num_heads=16, mlp_ratio=4, drop_path_rate=0.4, out_indices=[5, 11, 17, 23],
                                   window_attn=_WIN24, window_size=[14, 14, 14, 14, 14, None] * 4),
}


@BACKBONES.register()
class ViTBaseline(nn.Module):
    """Plain detection ViT with the official keyword arguments of ``backbone=dict(type='ViTBaseline', ...)`` plus
    ``task`` (only 'detection', which the detectors pass as for ViTAdapter).
    ``forward(x)`` returns 4 NCHW maps of ``embed_dim`` channels at strides 4, 8, 16, 32 (``patch_size`` 16). The
    constructor reads no file (``pretrained`` only as ``None``); ``residual_indices`` (unused by every official
    config), a custom ``embed_layer`` / ``norm_layer`` / ``act_layer`` are refused."""

    presets = VIT_BASELINE_PRESETS
    checkpoint_kinds = ("vit",)
    checkpoint_mismatch = ("{source} is {what}, but the model is a ViTBaseline, which loads timm ViT weights "
                           "(DeiT / AugReg) or its own detector checkpoint")
    no_weight_decay_names = VIT_NO_WEIGHT_DECAY  # layer decay with official_wd_quirk=False

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None, kind: str | None = None) -> dict:
        """:func:`.vit.vit_checkpoint_filter_fn` (the official ``my_load_checkpoint``: names kept, no resizing of
        ``pos_embed``; ``cls_token`` / ``norm`` / ``head`` of a DeiT file are unexpected keys)."""
        return vit_checkpoint_filter_fn(state_dict, model, report)

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.backbone"):
        """Build from the official ``backbone=dict(...)``: every key must be a constructor argument (``pretrained``
        is loaded by the builder after construction)."""
        return build_from_signature(cls, cfg, where, skip=("type", "pretrained"),
                                    per_block=("window_attn", "window_size"))

    def layer_id(self, name: str, num_layers: int) -> int:
        """Layer decay, the official ViT rule: embeddings 0, block i -> i + 1, norm1-4 / up1-4 L - 1."""
        return vit_layer_id(name, num_layers)

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, residual_indices=(),
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, layer_scale: bool = True, embed_layer=None, norm_layer=None,
                 act_layer=None, window_attn=False, window_size=14, with_cp: bool = False, pretrained: None = None,
                 pretrain_size: int = 224, out_indices=None, task: str = "detection"):
        super().__init__()
        refuse_pretrained_path(pretrained)
        if task != "detection":
            raise ValueError(f"task={task!r}: ViTBaseline is the official detection baseline (task='detection')")
        if list(residual_indices or ()):
            raise ValueError("residual_indices is not supported (no official config sets it)")
        if embed_layer is not None or norm_layer is not None or act_layer is not None:
            raise ValueError("embed_layer / norm_layer / act_layer are not supported (no official config sets them)")
        if out_indices is None:
            raise ValueError("out_indices is required (the official class asserts it)")
        out_indices = [int(i) for i in out_indices]
        if len(out_indices) not in (1, 4) or not all(0 <= i < depth for i in out_indices):
            raise ValueError(f"out_indices must be 4 block indices (or 1, the ViTDet form) below depth {depth}, got "
                             f"{out_indices}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if embed_dim % 32:
            raise ValueError(f"embed_dim {embed_dim} must be a multiple of 32 (up1's GroupNorm(32))")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.embed_dim = self.num_features = embed_dim
        self.out_indices = out_indices
        self.pretrain_size = (pretrain_size, pretrain_size)
        self.drop_path_rate = drop_path_rate
        window_attn = per_block(window_attn, depth, "window_attn")
        window_size = per_block(window_size, depth, "window_size")

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        # the official class-token slot is kept (checkpoint compatibility); there is no class token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.Sequential(*[
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm, windowed=bool(window_attn[i]),
                  window_size=window_size[i], layer_scale=layer_scale, with_cp=with_cp)
            for i in range(depth)])
        self.norm1 = norm(embed_dim)
        self.norm2 = norm(embed_dim)
        self.norm3 = norm(embed_dim)
        self.norm4 = norm(embed_dim)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2), nn.GroupNorm(32, embed_dim),
                                 nn.GELU(), nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2))
        self.up2 = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        self.up3 = nn.Identity()
        self.up4 = nn.MaxPool2d(kernel_size=2, stride=2)
        for up in (self.up1, self.up2, self.up3, self.up4):
            up.apply(init_adapter_weights)

    def get_num_layers(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, h, w = self.patch_embed(x)
        grid = (self.pretrain_size[0] // 16, self.pretrain_size[1] // 16)  # the official // 16, whatever the patch
        if grid[0] * grid[1] != self.pos_embed.shape[1] - 1:
            raise ValueError(f"pos_embed holds {self.pos_embed.shape[1] - 1} patches but pretrain_size "
                             f"{self.pretrain_size[0]} implies a {grid[0]}x{grid[1]} grid; set img_size = "
                             "pretrain_size as the official configs do")
        x = self.pos_drop(x + resize_pos_embed_grid(self.pos_embed[:, 1:], grid, (h, w)))
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, h, w)
            if i in self.out_indices:
                outs.append(x)
        if len(outs) == 1:  # the official ViTDet form: one map for every level
            outs = outs * 4
        b, _, c = outs[0].shape
        maps = [n(f).transpose(1, 2).reshape(b, c, h, w)
                for n, f in zip((self.norm1, self.norm2, self.norm3, self.norm4), outs)]
        return [up(f).contiguous() for up, f in zip((self.up1, self.up2, self.up3, self.up4), maps)]
