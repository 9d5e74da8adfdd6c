"""BEiT-Adapter: a BEiT backbone (relative position bias, q/v biases, layer scale) with the adapter (docs/official-architecture.md §2.9).

``task='segmentation'`` is the official segmentation copy: a class token runs through the blocks and each block has
a relative-position table sized by the whole image (+3 class-token entries), so inputs must be exactly ``img_size``.
``task='detection'`` is the official detection copy: no class token, tables sized by ``window_size`` and (optionally)
windowed attention, where the normalised tokens are zero-padded *before* the qkv projection, without a mask.

``relative_position_index`` appears in ``state_dict()`` (official key names and dtype), but the model keeps no buffer:
the index is computed once per geometry and device into a private cache shared by all blocks and never handed out.
Each ``state_dict()`` call of a ``BEiTAdapter`` makes one fresh copy per geometry, shared by the blocks of that
call only (a checkpoint stores it once), so editing a state dict in place never reaches the model or other state
dicts. When a state dict is loaded the stored index is verified, not copied.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from ..registry import BACKBONES
from .adapter import AdapterMixin
from .layers import PatchEmbed, attention, make_drop_path, maybe_checkpoint, per_block, resize_pos_embed_grid
from .vit import refuse_pretrained_path


def relative_position_index(wh: int, ww: int, with_cls: bool) -> torch.Tensor:
    """BEiT's pair-wise relative position index for a ``wh x ww`` window (a new CPU int64 tensor), with the three
    class-token entries (cls->token, token->cls, cls->cls) when ``with_cls``."""
    cpu = torch.device("cpu")  # also under a meta default device
    coords = torch.stack(torch.meshgrid(torch.arange(wh, device=cpu), torch.arange(ww, device=cpu),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    if not with_cls:
        return rel.sum(-1)
    num = (2 * wh - 1) * (2 * ww - 1) + 3
    index = torch.zeros((wh * ww + 1,) * 2, dtype=rel.dtype, device=cpu)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = num - 3
    index[0:, 0] = num - 2
    index[0, 0] = num - 1
    return index


_DEVICE_INDEX: dict = {}


def _index_on(device: torch.device, wh: int, ww: int, with_cls: bool) -> torch.Tensor:
    """The cached index on ``device``. Private: only read here, never handed out (``state_dict`` copies it). An
    index made under fake tensors (the capacity planner, ``vit_adapter_ds/plan``) claims the device but holds no
    values: it is not cached, so a real model in the same process never receives it."""
    from torch._subclasses.fake_tensor import is_fake

    key = (wh, ww, with_cls, str(device))
    index = _DEVICE_INDEX.get(key)
    if index is None:
        index = relative_position_index(wh, ww, with_cls).to(device)
        if not is_fake(index):
            _DEVICE_INDEX[key] = index
    return index


class BEiTAttention(nn.Module):
    """BEiT attention: ``qkv`` without bias plus ``q_bias``/``v_bias``; relative position bias table per block.

    Args:
        window_size: (Wh, Ww) of the relative-position table, or None for no table.
        with_cls: the table has the 3 extra class-token entries (segmentation BEiT).
        windowed: attend inside non-overlapping windows of ``window_size`` (detection BEiT).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, window_size: tuple[int, int] | None = None,
                 with_cls: bool = True, windowed: bool = False):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.window_size = window_size
        self.with_cls = with_cls
        self.windowed = windowed
        if window_size is not None:
            wh, ww = window_size
            num = (2 * wh - 1) * (2 * ww - 1) + (3 if with_cls else 0)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(num, num_heads))
            self._register_state_dict_hook(_add_index_to_state_dict)
            self.register_load_state_dict_pre_hook(_check_index_in_state_dict)
        else:
            self.relative_position_bias_table = None
        if windowed and window_size is None:
            raise ValueError("windowed attention needs a window_size")
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def expected_index(self) -> torch.Tensor:
        """This block's relative position index (a new CPU int64 tensor, safe to modify)."""
        return _index_on(torch.device("cpu"), self.window_size[0], self.window_size[1], self.with_cls).clone()

    def _rel_pos_bias(self, n: int, device) -> torch.Tensor:
        wh, ww = self.window_size
        tokens = wh * ww + (1 if self.with_cls else 0)
        if n != tokens:
            raise ValueError(f"this BEiT block's relative position table covers {tokens} tokens ({wh}x{ww} patches"
                             f"{' + cls' if self.with_cls else ''}) but got {n}; the segmentation BEiT needs inputs of "
                             "exactly img_size x img_size (pad or slide-crop to it)")
        index = _index_on(device, wh, ww, self.with_cls)
        bias = self.relative_position_bias_table[index.view(-1)].view(tokens, tokens, -1)
        return bias.permute(2, 0, 1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if self.relative_position_bias_table is not None:
            mask = self._rel_pos_bias(n, x.device).unsqueeze(0).to(q.dtype)
        drop = self.attn_drop.p if self.training else 0.0
        out = attention(q, k, v, self.scale, bias=mask, dropout_p=drop, scale_q_first=True)
        return out.transpose(1, 2).reshape(b, n, -1)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        if not self.windowed:
            return self.proj_drop(self.proj(self._attend(x)))
        b, n, c = x.shape
        w = self.window_size[0]
        hp, wp = math.ceil(H / w) * w, math.ceil(W / w) * w
        x = F.pad(x.view(b, H, W, c), [0, 0, 0, wp - W, 0, hp - H])
        x = x.view(b, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        x = self._attend(x)
        x = x.view(b, hp // w, wp // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        x = x[:, :H, :W].reshape(b, H * W, c)
        return self.proj_drop(self.proj(x))


class _IndexCopies:
    """The index copies handed out by the ``BEiTAdapter.state_dict()`` call in progress, one per geometry; shared
    by the model's blocks, opened and closed by the model's state-dict pre-/post-hooks."""

    def __init__(self):
        self.current: dict | None = None

    def begin(self, module, prefix, keep_vars) -> None:
        self.current = {}

    def end(self, module, state_dict, prefix, local_metadata) -> None:
        self.current = None


def _add_index_to_state_dict(module, state_dict, prefix, local_metadata):
    copies = getattr(module, "_index_copies", None)
    if copies is None or copies.current is None:  # a block's own state_dict(): a copy of its own
        index = module.expected_index()
    else:
        geometry = (*module.window_size, module.with_cls)
        if geometry not in copies.current:
            copies.current[geometry] = module.expected_index()
        index = copies.current[geometry]
    state_dict[prefix + "relative_position_index"] = index
    return state_dict


def _check_index_in_state_dict(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                               error_msgs):
    key = prefix + "relative_position_index"
    if key not in state_dict:
        return
    stored = state_dict.pop(key)
    expected = _index_on(torch.device("cpu"), module.window_size[0], module.window_size[1], module.with_cls)
    if tuple(stored.shape) != tuple(expected.shape) or not torch.equal(stored.to(expected.device).long(), expected):
        error_msgs.append(f"{key}: the stored relative position index (shape {tuple(stored.shape)}) does not match "
                          f"this model's geometry (shape {tuple(expected.shape)}, window {module.window_size}, "
                          f"cls={module.with_cls}); load it with models.factory.load_pretrained (it resizes)")


class BEiTMlp(nn.Module):
    """BEiT's MLP (no dropout after the activation)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class BEiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float | None = None, act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 window_size=None, with_cls: bool = True, windowed: bool = False, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = norm_layer(dim)
        self.attn = BEiTAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                  attn_drop=attn_drop, proj_drop=drop, window_size=window_size, with_cls=with_cls,
                                  windowed=windowed)
        self.drop_path = make_drop_path(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = BEiTMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        if init_values is not None:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim), requires_grad=True)
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim), requires_grad=True)
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        def _inner(x):
            if self.gamma_1 is None:
                x = x + self.drop_path(self.attn(self.norm1(x), H, W))
                return x + self.drop_path(self.mlp(self.norm2(x)))
            x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x), H, W))
            return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))

        return maybe_checkpoint(self.with_cp, _inner, x)


def _beit_init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


_BEIT_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False,
               use_rel_pos_bias=True, init_values=1e-6, conv_inplane=64, n_points=4, deform_num_heads=16,
               cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]])

# create_backbone(name) presets: exactly the official backbone=dict(...) of the named config
BEIT_PRESETS = {
    # UperNet ADE20K 640 and Mask2Former 896 (segmentation BEiT: img_size = crop size)
    "beit_adapter_large_640": dict(img_size=640, drop_path_rate=0.3, with_cp=True, **_BEIT_L),
    "beit_adapter_large_896": dict(img_size=896, drop_path_rate=0.3, with_cp=True, **_BEIT_L),
    # HTC++ (detection BEiT-Adapter)
    "beit_adapter_large_det": dict(img_size=224, drop_path_rate=0.4, window_attn=[True] * 24,
                                   window_size=[14, 14, 14, 14, 14, 56] * 4, task="detection", **_BEIT_L),
}


@BACKBONES.register()
class BEiTAdapter(AdapterMixin, nn.Module):
    """BEiT-Adapter backbone. Keyword arguments are those of the official ``backbone=dict(type='BEiTAdapter', ...)``
    (segmentation and detection copies) plus ``task`` ('segmentation' | 'detection') and ``norm`` ('bn'|'syncbn').
    ``version`` is the detection copy's: ``'new'`` (default) adds the last interaction's ViT tokens to all four
    levels, ``'old'`` (``htc++_beit_adapter_large_fpn_3x_coco_old``) adds interaction k's tokens to level k, as the
    segmentation copy does; no parameter differs.
    The constructor reads no files: pretrained weights are loaded after construction
    (:func:`vit_adapter_ds.models.factory.load_pretrained`, with :func:`beit_checkpoint_filter_fn`); ``pretrained``
    is accepted only as ``None`` (the official configs' neutral value).

    ``forward(x)`` returns 4 NCHW maps (``embed_dim`` channels) at strides 4, 8, 16, 32.
    """

    presets = BEIT_PRESETS
    # pretrained files it loads (models/pretrained.py detect_checkpoint_kind) and the refusal of any other kind
    checkpoint_kinds = ("beit", "beit-adapter")
    checkpoint_mismatch = ("{source} is {what}, but the model is a BEiTAdapter, which needs BEiT weights (q_bias/"
                           "v_bias, relative_position_bias_table, gamma_1/gamma_2); build a ViTAdapter for timm ViT "
                           "weights or a UniPerceiverAdapter for Uni-Perceiver weights, or pass a BEiT checkpoint")

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None, kind: str | None = None) -> dict:
        """:func:`beit_checkpoint_filter_fn`; a BEiT-Adapter file (``kind='beit-adapter'``) keeps its indexes."""
        return beit_checkpoint_filter_fn(state_dict, model, report, keep_index=kind == "beit-adapter")

    def __init__(self, img_size: int = 512, patch_size: int = 16, in_chans: int = 3, num_classes: int = 80,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, init_values: float = 0.0,
                 use_abs_pos_emb: bool = False, use_rel_pos_bias: bool = True, window_attn=False, window_size=14,
                 pretrain_size: int = 224, conv_inplane: int = 64, n_points: int = 4, deform_num_heads: int = 6,
                 interaction_indexes=None, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 deform_ratio: float = 1.0, add_vit_feature: bool = True, use_extra_extractor: bool = True,
                 with_cp: bool = False, pretrained: None = None, task: str = "segmentation", norm: str = "bn",
                 version: str = "new"):
        super().__init__()
        refuse_pretrained_path(pretrained)
        if version not in ("new", "old"):
            raise ValueError(f"version must be 'new' or 'old', got {version!r}")
        if version == "old" and task != "detection":
            raise ValueError("version='old' exists only in the detection BEiT-Adapter (task='detection'); the "
                             "segmentation copy always adds each interaction's ViT tokens to its own level")
        self.version = version
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm_layer = norm_layer
        self.embed_dim = self.num_features = embed_dim
        self.drop_path_rate = drop_path_rate
        self.pretrain_size = (pretrain_size, pretrain_size)
        segmentation = task == "segmentation"
        window_attn = per_block(window_attn, depth, "window_attn")
        window_size = per_block(window_size, depth, "window_size")
        if segmentation and any(window_attn):
            raise ValueError("windowed attention exists only in the detection BEiT (task='detection')")

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        if segmentation:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.cls_token = None
        if use_abs_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + (1 if segmentation else 0), embed_dim))
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]  # also under a meta default device

        def table_size(i):
            if segmentation:
                return self.patch_embed.patch_shape if use_rel_pos_bias else None
            return (window_size[i], window_size[i])  # the detection copy always builds the table

        self.blocks = nn.ModuleList([
            BEiTBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                      drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i], norm_layer=norm_layer,
                      init_values=init_values, window_size=table_size(i), with_cls=segmentation,
                      windowed=bool(window_attn[i]), with_cp=with_cp)
            for i in range(depth)])
        copies = _IndexCopies()  # one index copy per geometry and state_dict() call, shared by the blocks
        for blk in self.blocks:
            blk.attn._index_copies = copies
        self.register_state_dict_pre_hook(copies.begin)
        self._register_state_dict_hook(copies.end)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(_beit_init_weights)
        self._build_adapter(embed_dim=embed_dim, conv_inplane=conv_inplane, n_points=n_points,
                            deform_num_heads=deform_num_heads, init_values=init_values,
                            interaction_indexes=interaction_indexes, with_cffn=with_cffn, cffn_ratio=cffn_ratio,
                            deform_ratio=deform_ratio, add_vit_feature=add_vit_feature,
                            extra_extractor=use_extra_extractor, drop_path_rate=drop_path_rate,
                            norm_layer=norm_layer, with_cp=with_cp, task=task, norm=norm,
                            vit_feature_per_interaction=segmentation or version == "old")

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        if self.task == "segmentation" and self.blocks[0].attn.relative_position_bias_table is not None:
            if tuple(x.shape[-2:]) != self.patch_embed.img_size:
                raise ValueError(f"the segmentation BEiT-Adapter needs inputs of exactly img_size "
                                 f"{self.patch_embed.img_size}, got {tuple(x.shape[-2:])} (its relative position "
                                 "tables cover the whole image; use slide inference with this crop size)")

    def _embed_tokens(self, x: torch.Tensor):
        x, H, W = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed[:, 1:] if self.cls_token is not None else self.pos_embed
            grid = (self.pretrain_size[0] // 16, self.pretrain_size[1] // 16)
            x = x + resize_pos_embed_grid(pos, grid, (H, W))
        x = self.pos_drop(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1) if self.cls_token is not None else None
        return x, H, W, cls


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained checkpoints (timm style: the family's checkpoint_filter_fn lives next to the model)
# ----------------------------------------------------------------------------------------------------------------------

NUM_CLS_ROWS = 3  # BEiT's cls->token, token->cls and cls->cls entries at the end of a relative-position table


def _geometric_ratio(src_size: int, dst_size: int) -> float:
    """Bisection in [1.01, 1.5] for q with 1 + q + ... + q^(src_size//2 - 1) ~ dst_size // 2 (BEiT's rule; the
    last midpoint is used, as in the official code)."""
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            right = q
        else:
            left = q
    return q


def geometric_source_coordinates(src_size: int, dst_size: int):
    """Where BEiT places the ``src_size`` relative offsets of a source table when resampling it to ``dst_size``:
    0 and +-(1, 1+q, 1+q+q^2, ...) (a float64 numpy array, ascending). The target offsets are the integers
    ``-(dst_size//2) .. dst_size//2``, so the centre and the +-1 offsets are always copied exactly."""
    import numpy as np

    if src_size % 2 != 1:
        raise ValueError(f"a relative-position table side is 2*window-1, i.e. odd; got {src_size}")
    q = _geometric_ratio(src_size, dst_size)
    dis = np.cumsum(q ** np.arange(src_size // 2, dtype=np.float64))
    return np.concatenate([-dis[::-1], [0.0], dis])


def _odd_square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n and side % 2 == 1 else None


def resize_rel_pos_table(table: torch.Tensor, dst_size: int, src_extra: int = NUM_CLS_ROWS,
                         dst_extra: int = NUM_CLS_ROWS) -> torch.Tensor:
    """Resample a BEiT relative-position bias table to a ``dst_size x dst_size`` offset grid.

    Args:
        table: (src_size**2 + src_extra, heads); row ``dy*src_size + dx`` holds the bias of offset (dy, dx), then
            ``src_extra`` class-token rows (3 or 0).
        dst_size: side of the target offset grid (2*window-1: 27 at 224, 79 at 640, 111 at 896).
        src_extra / dst_extra: class-token rows in the source / target. The segmentation BEiT keeps the 3 rows
            (``dst_extra=3``); the detection BEiT has none (``dst_extra=0``: they are dropped).

    Returns (dst_size**2 + dst_extra, heads) in the table's dtype. Equal sizes give an exact copy. Otherwise each
    head is fitted with an interpolating bicubic spline (``RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)``, i.e.
    what the official ``scipy.interpolate.interp2d(x, y, z, kind='cubic')`` computed on a rectangular grid, with
    z rows along y) at :func:`geometric_source_coordinates` and evaluated on the integer grid; points beyond the
    outermost source offset take the edge value (FITPACK clamps, as interp2d did). As in the official code the
    values are taken in float32 (``.float().numpy()``) and fitted in float64.
    """
    from ...checkpoint.reader import CheckpointError

    if table.ndim != 2:
        raise ValueError(f"expected a (positions, heads) table, got shape {tuple(table.shape)}")
    if dst_extra not in (0, NUM_CLS_ROWS) or src_extra not in (0, NUM_CLS_ROWS):
        raise ValueError("class-token rows are either 3 (segmentation BEiT) or 0 (detection BEiT)")
    if dst_extra and not src_extra:
        raise CheckpointError("the source table has no class-token rows but the model needs them (segmentation "
                              "BEiT); this checkpoint comes from a detection BEiT and cannot provide them")
    src_size = _odd_square_side(table.shape[0] - src_extra)
    if src_size is None:
        raise CheckpointError(f"a relative-position table with {table.shape[0]} rows is not (2w-1)^2 + {src_extra}")
    grid, extra = table[:table.shape[0] - src_extra], table[table.shape[0] - src_extra:]
    if src_size != dst_size and src_size < 5:
        raise CheckpointError(f"a {src_size}x{src_size} relative-position table is too small for cubic resampling "
                              "(it needs at least 5x5 offsets, i.e. a window of 3 patches)")
    if src_size == dst_size:
        resized = grid.clone()
    else:
        import numpy as np
        from scipy.interpolate import RectBivariateSpline

        coords = geometric_source_coordinates(src_size, dst_size)
        half = dst_size // 2.0
        targets = np.arange(-half, half + 0.1, 1.0)
        z = grid.detach().float().cpu().numpy().astype(np.float64).reshape(src_size, src_size, -1)
        heads = [RectBivariateSpline(coords, coords, z[:, :, h], kx=3, ky=3, s=0)(targets, targets).reshape(-1)
                 for h in range(z.shape[2])]
        resized = torch.from_numpy(np.stack(heads, axis=1)).to(table.dtype)
    if dst_extra:
        resized = torch.cat([resized, extra.to(resized.dtype)], dim=0)
    return resized


def _block_index(key: str) -> int | None:
    import re

    found = re.match(r"blocks\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def beit_checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None, keep_index: bool = False) -> dict:
    """Adapt a BEiT/BEiTv2 state dict to a ``BEiTAdapter`` (official ``mmcv_custom/checkpoint.py`` rules): the
    shared ``rel_pos_bias.relative_position_bias_table`` is copied to every block; every ``relative_position_index``
    is dropped (the model computes its own), except with ``keep_index`` where the index of a table that passes
    unchanged is kept so that the model verifies it (released/own checkpoints); tables of another size are resampled
    with :func:`resize_rel_pos_table` (3 class-token rows kept for the segmentation model, dropped for the
    detection one); ``pos_embed``, if both have one, is resized bicubically. What was resized or dropped is recorded
    in ``report`` (a :class:`~vit_adapter_ds.checkpoint.loading.LoadReport`) when given."""
    from collections import OrderedDict

    from ...checkpoint.reader import CheckpointError, square_grid_side
    from ...checkpoint.loading import LoadReport

    report = report if report is not None else LoadReport("<state dict>")
    out = OrderedDict(state_dict)
    shared = out.pop("rel_pos_bias.relative_position_bias_table", None)
    if "rel_pos_bias.relative_position_index" in out:
        out.pop("rel_pos_bias.relative_position_index")
        report.dropped.append("rel_pos_bias.relative_position_index")
    if shared is not None:
        for i in range(len(model.blocks)):
            out[f"blocks.{i}.attn.relative_position_bias_table"] = shared.clone()
        report.notes.append(f"the shared relative position table was copied to each of the {len(model.blocks)} "
                            "blocks")

    unchanged_tables = set()
    for key in [k for k in out if k.endswith("attn.relative_position_bias_table")]:
        i = _block_index(key)
        if i is None or i >= len(model.blocks) or model.blocks[i].attn.relative_position_bias_table is None:
            continue  # reported as unexpected (or a depth mismatch) later
        attn = model.blocks[i].attn
        src = out[key]
        dst_shape = tuple(attn.relative_position_bias_table.shape)
        if src.shape[1] != dst_shape[1]:
            raise CheckpointError(f"{key} has {src.shape[1]} heads but the model has {dst_shape[1]}")
        wh, ww = attn.window_size
        if wh != ww:
            raise CheckpointError(f"non-square relative-position windows ({wh}x{ww}) cannot be resampled")
        dst_extra = NUM_CLS_ROWS if attn.with_cls else 0
        src_extra = NUM_CLS_ROWS if _odd_square_side(src.shape[0] - NUM_CLS_ROWS) else 0
        if tuple(src.shape) == dst_shape and src_extra == dst_extra:
            unchanged_tables.add(key)
            continue
        new = resize_rel_pos_table(src, 2 * wh - 1, src_extra=src_extra, dst_extra=dst_extra)
        out[key] = new
        report.resized.append((key, tuple(src.shape), tuple(new.shape)))
    if any(k.endswith("relative_position_bias_table") for k, _, _ in report.resized):
        report.notes.append("relative position tables were resampled on BEiT's geometric grid (bicubic spline)"
                            + ("; the 3 class-token rows were dropped (detection BEiT)"
                               if getattr(model, "task", "") == "detection" else ""))

    for key in [k for k in out if k.endswith("relative_position_index")]:
        table_key = key[: -len("relative_position_index")] + "relative_position_bias_table"
        if keep_index and table_key in unchanged_tables:
            continue
        out.pop(key)
        report.dropped.append(key)

    pos = out.get("pos_embed")
    if pos is not None and getattr(model, "pos_embed", None) is not None:
        num_patches = model.patch_embed.num_patches
        extra = model.pos_embed.shape[1] - num_patches
        if extra == 0 and square_grid_side(pos.shape[1] - 1) and not square_grid_side(pos.shape[1]):
            pos = pos[:, 1:]  # the checkpoint has a cls slot, the detection model does not
        src_side, dst_side = square_grid_side(pos.shape[1] - extra), square_grid_side(num_patches)
        if src_side is None:
            raise CheckpointError(f"pos_embed with {pos.shape[1]} tokens is not a square grid (+{extra})")
        if src_side != dst_side:
            tokens = pos[:, extra:].reshape(1, src_side, src_side, -1).permute(0, 3, 1, 2).float()
            tokens = F.interpolate(tokens, size=(dst_side, dst_side), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :extra], tokens.permute(0, 2, 3, 1).flatten(1, 2).to(pos.dtype)], dim=1)
        if pos.shape != out["pos_embed"].shape:
            report.resized.append(("pos_embed", tuple(out["pos_embed"].shape), tuple(pos.shape)))
        out["pos_embed"] = pos
    return out
