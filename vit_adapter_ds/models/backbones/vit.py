"""ViT-Adapter: a plain ViT (the official ``TIMMVisionTransformer``) with the adapter (docs/official-architecture.md §1, §2.9).

Key names, shapes, initialisation and numerics follow the official segmentation/detection code; the two official
copies differ only in how ViT features are fused, which ``task=`` selects.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from ..registry import BACKBONES
from .adapter import AdapterMixin
from .layers import PatchEmbed, attention, make_drop_path, maybe_checkpoint, per_block, resize_pos_embed_grid


class Attention(nn.Module):
    """Global multi-head self-attention (``qkv`` + ``proj``)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (B', N, 3C) -> (B', N, C)."""
        b, n, c3 = qkv.shape
        c = c3 // 3
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop.p if self.training else 0.0
        x = attention(q, k, v, self.scale, dropout_p=drop)
        return x.transpose(1, 2).reshape(b, n, c)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.proj_drop(self.proj(self._attend(self.qkv(x))))


class WindowedAttention(Attention):
    """Attention inside non-overlapping ``window_size`` windows. As in the official code, q/k/v are computed on the
    unpadded tokens and then zero-padded to a multiple of the window, with no attention mask (padded keys give
    logit 0 and value 0)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, window_size: int = 14):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.window_size = window_size

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        b, n, c = x.shape
        w = self.window_size
        hp, wp = math.ceil(H / w) * w, math.ceil(W / w) * w
        qkv = self.qkv(x).transpose(1, 2).reshape(b, 3 * c, H, W)
        qkv = F.pad(qkv, [0, wp - W, 0, hp - H])
        # (B, 3C, hp, wp) -> (B * nWindows, w*w, 3C)
        qkv = qkv.reshape(b, 3 * c, hp // w, w, wp // w, w).permute(0, 2, 4, 3, 5, 1).reshape(-1, w * w, 3 * c)
        out = self._attend(qkv)
        out = out.reshape(b, hp // w, wp // w, w, w, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp, wp)
        out = out[:, :, :H, :W].reshape(b, c, n).transpose(1, 2)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale ``gamma1``/``gamma2`` (the official ViT-Adapter block)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 windowed: bool = False, window_size: int = 14, layer_scale: bool = False, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = norm_layer(dim)
        if windowed:
            self.attn = WindowedAttention(dim, num_heads, qkv_bias, attn_drop, drop, window_size)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.ones(dim), requires_grad=True)
            self.gamma2 = nn.Parameter(torch.ones(dim), requires_grad=True)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        def _inner(x):
            if self.layer_scale:
                x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x), H, W))
                return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
            x = x + self.drop_path(self.attn(self.norm1(x), H, W))
            return x + self.drop_path(self.mlp(self.norm2(x)))

        return maybe_checkpoint(self.with_cp, _inner, x)


_I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
_I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]

# create_backbone(name) presets: exactly the official backbone=dict(...) of the named config (UperNet drop-path)
VIT_PRESETS = {
    # UperNet ADE20K 512 (DeiT-T/S/B, AugReg-L)
    "vit_adapter_tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4, drop_path_rate=0.1,
                             conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
                             interaction_indexes=_I12),
    "vit_adapter_small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, drop_path_rate=0.2,
                              conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
                              interaction_indexes=_I12),
    "vit_adapter_base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, drop_path_rate=0.3,
                             conv_inplane=64, n_points=4, deform_num_heads=12, cffn_ratio=0.25, deform_ratio=0.5,
                             interaction_indexes=_I12),
    "vit_adapter_large": dict(img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                              mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64, n_points=4, deform_num_heads=16,
                              cffn_ratio=0.25, deform_ratio=0.5, with_cp=True, interaction_indexes=_I24),
    # Mask R-CNN 3x (detection ViT-Adapter)
    "vit_adapter_small_det": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                                  drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25,
                                  deform_ratio=1.0, interaction_indexes=_I12, window_attn=[True, True, False] * 4,
                                  window_size=[14] * 12, task="detection"),
}


@BACKBONES.register()
class ViTAdapter(AdapterMixin, nn.Module):
    """ViT-Adapter backbone. Keyword arguments are those of the official ``backbone=dict(type='ViTAdapter', ...)``
    plus ``task`` ('segmentation' | 'detection') and ``norm`` ('bn' | 'syncbn', the SPM/output norms). The
    constructor reads no files: pretrained weights are loaded after construction
    (:func:`vit_adapter_ds.models.factory.load_pretrained`, with :func:`vit_checkpoint_filter_fn`; presets and
    filter are declared here and registered with ``@BACKBONES.register()``); ``pretrained``
    is accepted only as ``None`` (the official configs' neutral value).

    ``forward(x)`` returns 4 NCHW maps (``embed_dim`` channels) at strides 4, 8, 16, 32.
    """

    presets = VIT_PRESETS
    # pretrained files it loads (models/pretrained.py detect_checkpoint_kind) and the refusal of any other kind
    checkpoint_kinds = ("vit", "vit-adapter")
    checkpoint_mismatch = ("{source} is {what}, but the model is a ViTAdapter, which needs timm ViT weights "
                           "(DeiT/AugReg); build a BEiTAdapter for BEiT weights or a UniPerceiverAdapter for "
                           "Uni-Perceiver weights")

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None, kind: str | None = None) -> dict:
        return vit_checkpoint_filter_fn(state_dict, model, report)

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, layer_scale: bool = True, window_attn=False, window_size=14,
                 pretrain_size: int = 224, conv_inplane: int = 64, n_points: int = 4, deform_num_heads: int = 6,
                 init_values: float = 0.0, interaction_indexes=None, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 deform_ratio: float = 1.0, add_vit_feature: bool = True, use_extra_extractor: bool = True,
                 with_cp: bool = False, use_abs_pos_emb: bool = True, use_rel_pos_bias: bool = False,
                 pretrained: None = None, task: str = "segmentation", norm: str = "bn"):
        super().__init__()
        refuse_pretrained_path(pretrained)
        if not use_abs_pos_emb or use_rel_pos_bias:
            raise ValueError("ViTAdapter always uses an absolute position embedding and no relative position bias "
                             "(use BEiTAdapter for relative position bias)")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm_layer = norm_layer
        self.embed_dim = self.num_features = embed_dim
        self.drop_path_rate = drop_path_rate
        self.pretrain_size = (pretrain_size, pretrain_size)
        window_attn = per_block(window_attn, depth, "window_attn")
        window_size = per_block(window_size, depth, "window_size")

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        # One slot for a class token is kept for checkpoint compatibility; ViT-Adapter has no class token.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]  # also under a meta default device
        self.blocks = nn.Sequential(*[
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer, windowed=bool(window_attn[i]),
                  window_size=window_size[i], layer_scale=layer_scale, with_cp=with_cp)
            for i in range(depth)])
        self._build_adapter(embed_dim=embed_dim, conv_inplane=conv_inplane, n_points=n_points,
                            deform_num_heads=deform_num_heads, init_values=init_values,
                            interaction_indexes=interaction_indexes, with_cffn=with_cffn, cffn_ratio=cffn_ratio,
                            deform_ratio=deform_ratio, add_vit_feature=add_vit_feature,
                            extra_extractor=use_extra_extractor, drop_path_rate=drop_path_rate,
                            norm_layer=norm_layer, with_cp=with_cp, task=task, norm=norm)

    def _embed_tokens(self, x: torch.Tensor):
        x, H, W = self.patch_embed(x)
        grid = (self.pretrain_size[0] // 16, self.pretrain_size[1] // 16)
        if grid[0] * grid[1] != self.pos_embed.shape[1] - 1:
            raise ValueError(f"pos_embed holds {self.pos_embed.shape[1] - 1} patches but pretrain_size "
                             f"{self.pretrain_size[0]} implies a {grid[0]}x{grid[1]} grid; set img_size = pretrain_size "
                             "as the official configs do")
        pos = resize_pos_embed_grid(self.pos_embed[:, 1:], grid, (H, W))
        return self.pos_drop(x + pos), H, W, None


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained checkpoints (timm style: the family's checkpoint_filter_fn lives next to the model)
# ----------------------------------------------------------------------------------------------------------------------

def vit_checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None) -> dict:
    """Adapt a timm ViT (DeiT/AugReg/DINOv2) state dict to a ``ViTAdapter`` (official ``my_load_checkpoint``
    semantics: names are kept, no interpolation of ``pos_embed``). Only trivial mappings are made:
    ``blocks.i.ls1.gamma``/``ls2.gamma`` -> ``gamma1``/``gamma2``; a patch kernel of another size (DINOv2's 14x14)
    resized bilinearly; the distillation-token slot of a DeiT-distilled ``pos_embed`` removed; a ``pos_embed``
    without a class-token slot given a zero one (unused by ViT-Adapter). A ``pos_embed`` covering another patch grid
    raises: set ``img_size`` and ``pretrain_size`` to the checkpoint's resolution. What was renamed or resized is
    recorded in ``report`` (a :class:`~vit_adapter_ds.checkpoint.loading.LoadReport`) when given."""
    from collections import OrderedDict
    import re

    from ...checkpoint.reader import CheckpointError, square_grid_side
    from ...checkpoint.loading import LoadReport

    report = report if report is not None else LoadReport("<state dict>")
    out = OrderedDict()
    for key, value in state_dict.items():
        new = re.sub(r"\.ls([12])\.gamma$", r".gamma\1", key)
        if new != key:
            report.renamed.append((key, new))
        out[new] = value

    weight = out.get("patch_embed.proj.weight")
    target = model.patch_embed.proj.weight
    if weight is not None and weight.shape[:2] == target.shape[:2] and weight.shape[2:] != target.shape[2:]:
        out["patch_embed.proj.weight"] = F.interpolate(weight.float(), size=tuple(target.shape[2:]), mode="bilinear",
                                                       align_corners=False).to(weight.dtype)
        report.resized.append(("patch_embed.proj.weight", tuple(weight.shape), tuple(target.shape)))
        report.notes.append("the patch kernel was resized bilinearly (as the official convert_14to16.py does)")

    pos = out.get("pos_embed")
    if pos is not None:
        n_model = model.pos_embed.shape[1]  # grid**2 + 1 (cls slot)
        n = pos.shape[1]
        if n == n_model + 1 and "dist_token" in out:
            out["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
            report.resized.append(("pos_embed", tuple(pos.shape), tuple(out["pos_embed"].shape)))
            report.notes.append("removed the distillation-token slot of pos_embed (DeiT distilled)")
        elif n == n_model - 1 and square_grid_side(n) is not None:
            out["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
            report.resized.append(("pos_embed", tuple(pos.shape), tuple(out["pos_embed"].shape)))
            report.notes.append("pos_embed had no class-token slot; a zero slot was added (ViT-Adapter never uses it)")
        n = out["pos_embed"].shape[1]
        if n != n_model:
            patch = model.patch_embed.patch_size[0]
            side = square_grid_side(n - 1)
            model_side = square_grid_side(n_model - 1)
            size = f"{side}x{side} patch grid (img_size {side * patch})" if side else f"{n - 1} patches"
            raise CheckpointError(
                f"the checkpoint's pos_embed covers a {size} but the model's covers {model_side}x{model_side} "
                f"(img_size {model_side * patch}). Position embeddings are not interpolated at load time (official "
                f"behaviour); build the model with img_size={side * patch if side else '?'} and "
                f"pretrain_size={side * patch if side else '?'}; they are resized at run time to the input")
    return out


def refuse_pretrained_path(pretrained) -> None:
    """Constructors read no files: a ``pretrained`` path given to one is an error that says where it goes."""
    if pretrained is not None:
        raise TypeError(f"pretrained={pretrained!r}: backbone constructors read no files; build the model, then load "
                        "the weights with vit_adapter_ds.models.factory.load_pretrained(model, path) (or "
                        "create_backbone(name, pretrained=path), or model.pretrained in a recipe)")
