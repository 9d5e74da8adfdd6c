"""BEiT-Adapter: a BEiT backbone (relative position bias, q/v biases, layer scale) with the adapter (spec §2.9).

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

from .adapter import AdapterMixin
from .layers import PatchEmbed, make_drop_path, maybe_checkpoint, resize_pos_embed_grid


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
    """The cached index on ``device``. Private: only read here, never handed out (``state_dict`` copies it)."""
    key = (wh, ww, with_cls, str(device))
    if key not in _DEVICE_INDEX:
        _DEVICE_INDEX[key] = relative_position_index(wh, ww, with_cls).to(device)
    return _DEVICE_INDEX[key]


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
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=self.scale)
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
                          f"cls={module.with_cls}); resize the checkpoint with vit_adapter_ds.models.weights")


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


class BEiTAdapter(AdapterMixin, nn.Module):
    """BEiT-Adapter backbone. Keyword arguments are those of the official ``backbone=dict(type='BEiTAdapter', ...)``
    (segmentation and detection copies) plus ``task`` ('segmentation' | 'detection') and ``norm`` ('bn'|'syncbn').

    ``forward(x)`` returns 4 NCHW maps (``embed_dim`` channels) at strides 4, 8, 16, 32.
    """

    def __init__(self, img_size: int = 512, patch_size: int = 16, in_chans: int = 3, num_classes: int = 80,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, init_values: float = 0.0,
                 use_abs_pos_emb: bool = False, use_rel_pos_bias: bool = True, window_attn=False, window_size=14,
                 pretrain_size: int = 224, conv_inplane: int = 64, n_points: int = 4, deform_num_heads: int = 6,
                 interaction_indexes=None, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 deform_ratio: float = 1.0, add_vit_feature: bool = True, use_extra_extractor: bool = True,
                 with_cp: bool = False, pretrained: str | None = None, task: str = "segmentation", norm: str = "bn"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm_layer = norm_layer
        self.embed_dim = self.num_features = embed_dim
        self.drop_path_rate = drop_path_rate
        self.pretrain_size = (pretrain_size, pretrain_size)
        segmentation = task == "segmentation"
        window_attn = [window_attn] * depth if not isinstance(window_attn, (list, tuple)) else list(window_attn)
        window_size = [window_size] * depth if not isinstance(window_size, (list, tuple)) else list(window_size)
        if len(window_attn) != depth or len(window_size) != depth:
            raise ValueError(f"window_attn / window_size need {depth} entries (one per block)")
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
                            norm_layer=norm_layer, with_cp=with_cp, task=task, norm=norm)
        if pretrained is not None:
            from ..weights import load_pretrained
            load_pretrained(self, pretrained)

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
