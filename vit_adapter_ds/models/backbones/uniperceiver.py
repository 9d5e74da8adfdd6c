"""Uni-Perceiver-Adapter: the Uni-Perceiver encoder (the official ``UnifiedBertEncoder``: BERT-style pre-norm
layers with ``in_proj`` / ``out_proj`` attention and zero-initialised layer scales, a patch embedding with a
separate spatial and temporal position table and a LayerNorm) with the ViT-Adapter parts of :mod:`.adapter`.

Key names, shapes, initialisation order and float32 numerics follow the official
``segmentation/mmseg_custom/models/backbones/{uniperceiver_adapter.py,base/uniperceiver.py}`` and the detection
copies; ``task=`` selects how ViT features are fused, as for :class:`~.vit.ViTAdapter`: ``'segmentation'`` adds
the tokens after interaction k to level k, ``'detection'`` the last interaction's tokens to every level. Where the
two official copies differ otherwise (``with_cp`` reaches the adapter's interactions only in the detection copy)
the selected copy is followed. Every LayerNorm has PyTorch's default eps 1e-5 (the official ``nn.LayerNorm``), not
the 1e-6 of the ViT / BEiT backbones.

Differences from the ViT encoder that matter numerically: the layer scales multiply *after* drop-path
(``x + gamma * drop_path(f(x))``); windowed attention zero-pads the normalised tokens *before* the ``in_proj``
projection (padded positions get the projection biases as keys and values, with no mask); the position table is
resized bicubically from the ``img_size // 16`` grid on every forward (``pretrain_size`` is stored, unused, as in the
official code) and a temporal embedding (row 0 of an 8-row table) is added to every token.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..layer_decay import vit_layer_id
from ..registry import BACKBONES
from .adapter import AdapterMixin
from .layers import attention, make_drop_path, maybe_checkpoint, per_block, resize_pos_embed_grid
from .vit import refuse_pretrained_path

PATCH = 16  # the official PatchEmbed divides image sizes by 16 whatever its patch_size
TEMPORAL_POSITIONS = 8  # rows of the official temporal position table; images use row 0


class UniPerceiverAttention(nn.Module):
    """Multi-head self-attention with the official ``in_proj`` (q, k, v) / ``out_proj`` names; global, or inside
    non-overlapping ``window_size`` windows (zero padding before the projection, no mask)."""

    def __init__(self, dim: int, num_heads: int, window_size: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.window_size = window_size
        self.in_proj = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.out_proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """(B', N, C) tokens -> (B', N, C) attention outputs before ``out_proj``."""
        b, n, c = x.shape
        q, k, v = self.in_proj(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4) \
            .unbind(0)
        drop = self.attn_drop.p if self.training else 0.0
        return attention(q, k, v, self.scale, dropout_p=drop).transpose(1, 2).reshape(b, n, c)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        if self.window_size is None:
            return self.proj_drop(self.out_proj(self._attend(x)))
        b, n, c = x.shape
        w = self.window_size
        hp, wp = math.ceil(H / w) * w, math.ceil(W / w) * w
        x = F.pad(x.view(b, H, W, c), [0, 0, 0, wp - W, 0, hp - H])
        x = x.view(b, hp // w, w, wp // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        x = self._attend(x)
        x = x.view(b, hp // w, wp // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        x = x[:, :H, :W].reshape(b, n, c)
        return self.proj_drop(self.out_proj(x))


class BertLayer(nn.Module):
    """The official Uni-Perceiver layer: ``x + gamma_1 * drop_path(attn(norm1(x)))``, then the same with the MLP
    ``linear1 -> GELU -> linear2``; ``gamma_1`` / ``gamma_2`` start at zero (the pretrained weights set them)."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_attention_heads: int, drop_path_ratio: float,
                 window_size: int | None = None, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.self_attn = UniPerceiverAttention(hidden_size, num_attention_heads, window_size)
        self.linear1 = nn.Linear(hidden_size, intermediate_size)
        self.act_fn = nn.GELU()
        self.linear2 = nn.Linear(intermediate_size, hidden_size)
        self.drop_path = make_drop_path(drop_path_ratio)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.gamma_1 = nn.Parameter(torch.zeros(hidden_size), requires_grad=True)
        self.gamma_2 = nn.Parameter(torch.zeros(hidden_size), requires_grad=True)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        def _inner(x):
            x = x + self.gamma_1 * self.drop_path(self.self_attn(self.norm1(x), H, W))
            return x + self.gamma_2 * self.drop_path(self.linear2(self.act_fn(self.linear1(self.norm2(x)))))

        return maybe_checkpoint(self.with_cp, _inner, x)


class UniPerceiverPatchEmbed(nn.Module):
    """Conv patch projection plus the spatial position table (an ``nn.Embedding`` over the ``img_size // 16``
    grid, resized bicubically to the input's grid on every forward) and row 0 of the temporal table."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid = (img_size // PATCH, img_size // PATCH)
        self.num_patches = (img_size // patch_size) ** 2
        self.spatial_pos_embed = nn.Embedding(self.num_patches, embed_dim)
        self.temporal_pos_embed = nn.Embedding(TEMPORAL_POSITIONS, embed_dim)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor):
        h, w = x.shape[2] // PATCH, x.shape[3] // PATCH
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        pos = resize_pos_embed_grid(self.spatial_pos_embed.weight.unsqueeze(0), self.grid, (h, w))
        temporal = self.temporal_pos_embed.weight[:1].unsqueeze(0)
        return tokens + pos + temporal, h, w


class VisualPatchEmbedding(nn.Module):
    """``patch_embed`` then ``embeddings_norm`` (LayerNorm) and ``embeddings_dropout`` (p = 0)."""

    # Layer decay without the official quirk (engine/optim.py): the official no-decay list names 'visual_embed',
    # the whole module; every parameter below it ends in 'weight' or 'bias'.
    no_weight_decay_names = ("weight", "bias")

    def __init__(self, in_dim: int, out_dim: int, patch_size: int, image_size: int):
        super().__init__()
        self.embeddings_norm = nn.LayerNorm(out_dim)
        self.embeddings_dropout = nn.Dropout(0.0)
        self.patch_embed = UniPerceiverPatchEmbed(image_size, patch_size, in_dim, out_dim)

    def forward(self, x: torch.Tensor):
        x, h, w = self.patch_embed(x)
        return self.embeddings_dropout(self.embeddings_norm(x)), h, w


_I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
_I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
_UNI_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, conv_inplane=64, n_points=4,
              deform_num_heads=12, cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=_I12)
_UNI_L = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64,
              n_points=4, deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=_I24)

# create_backbone(name) presets: exactly the official backbone=dict(...) of the named config
UNIPERCEIVER_PRESETS = {
    # upernet_uniperceiver_adapter_large_512_160k_ade20k
    "uniperceiver_adapter_large": dict(with_cp=True, window_attn=[False] * 24, window_size=[None] * 24, **_UNI_L),
    # mask_rcnn_uniperceiver_adapter_base_fpn_3x_coco
    "uniperceiver_adapter_base_det": dict(drop_path_rate=0.2, window_attn=[True, True, False] * 4,
                                          window_size=[14, 14, None] * 4, task="detection", **_UNI_B),
    # htc++_uniperceiver_adapter_large_fpn_3x_coco
    "uniperceiver_adapter_large_det": dict(with_cp=False, window_attn=[True, True, True, True, True, False] * 4,
                                           window_size=[14, 14, 14, 14, 14, None] * 4, task="detection", **_UNI_L),
}


@BACKBONES.register()
class UniPerceiverAdapter(AdapterMixin, nn.Module):
    """Uni-Perceiver-Adapter backbone. Keyword arguments are those of the official
    ``backbone=dict(type='UniPerceiverAdapter', ...)`` (the official ``norm_layer`` / ``embed_layer`` classes are
    not configurable here; no official config sets them) plus ``task`` ('segmentation' | 'detection') and ``norm``
    ('bn' | 'syncbn', the SPM / output norms). There is no ``use_extra_extractor``: the last interaction always has
    the two extra extractors, as in the official class. The constructor reads no files: pretrained weights (the
    released Uni-Perceiver files, raw or converted, or released Uni-Perceiver-Adapter detectors) are loaded after
    construction (:func:`vit_adapter_ds.models.factory.load_pretrained`, with
    :func:`uniperceiver_checkpoint_filter_fn`); ``pretrained`` is accepted only as ``None``.

    ``forward(x)`` returns 4 NCHW maps (``embed_dim`` channels) at strides 4, 8, 16, 32.
    """

    presets = UNIPERCEIVER_PRESETS
    # pretrained files it loads (models/pretrained.py detect_checkpoint_kind) and the refusal of any other kind
    checkpoint_kinds = ("uniperceiver", "uniperceiver-adapter")
    checkpoint_mismatch = ("{source} is {what}, but the model is a UniPerceiverAdapter, which needs Uni-Perceiver "
                           "weights (layers.*.self_attn.in_proj, visual_embed.*; raw or converted by the official "
                           "uniperceiver_converter.py); build a ViTAdapter / BEiTAdapter for this file")

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None, kind: str | None = None) -> dict:
        return uniperceiver_checkpoint_filter_fn(state_dict, model, report)

    def __init__(self, pretrain_size: int = 224, num_heads: int = 12, conv_inplane: int = 64, n_points: int = 4,
                 deform_num_heads: int = 6, init_values: float = 0.0, with_cffn: bool = True,
                 cffn_ratio: float = 0.25, deform_ratio: float = 1.0, add_vit_feature: bool = True,
                 interaction_indexes=None, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 window_attn=False, window_size=14, with_cp: bool = False, pretrained: None = None,
                 task: str = "segmentation", norm: str = "bn"):
        super().__init__()
        refuse_pretrained_path(pretrained)
        if patch_size != PATCH:
            raise ValueError(f"patch_size must be 16 (the official Uni-Perceiver patch embedding divides image sizes "
                             f"by 16 for its position grid), got {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = self.num_features = embed_dim
        self.drop_path_rate = drop_path_rate
        self.pretrain_size = (pretrain_size, pretrain_size)  # stored as in the official class; img_size gives the grid
        window_attn = per_block(window_attn, depth, "window_attn")
        window_size = per_block(window_size, depth, "window_size")
        for i, (windowed, size) in enumerate(zip(window_attn, window_size)):
            if windowed and not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
                raise ValueError(f"layer {i} has windowed attention but window_size {size!r}")

        # the official construction order (layers, then visual_embed): it decides each tensor's random numbers
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]  # also under meta
        self.layers = nn.ModuleList([
            BertLayer(hidden_size=embed_dim, intermediate_size=int(embed_dim * mlp_ratio),
                      num_attention_heads=num_heads, drop_path_ratio=dpr[i],
                      window_size=window_size[i] if window_attn[i] else None, with_cp=with_cp)
            for i in range(depth)])
        self.visual_embed = VisualPatchEmbedding(in_dim=in_chans, out_dim=embed_dim, patch_size=patch_size,
                                                 image_size=img_size)
        self._build_adapter(embed_dim=embed_dim, conv_inplane=conv_inplane, n_points=n_points,
                            deform_num_heads=deform_num_heads, init_values=init_values,
                            interaction_indexes=interaction_indexes, with_cffn=with_cffn, cffn_ratio=cffn_ratio,
                            deform_ratio=deform_ratio, add_vit_feature=add_vit_feature, extra_extractor=True,
                            drop_path_rate=drop_path_rate, norm_layer=nn.LayerNorm,
                            with_cp=with_cp and task == "detection", task=task, norm=norm)

    # the names AdapterMixin uses for the host's blocks and patch embedding (aliases: no extra state-dict keys)
    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    @property
    def patch_embed(self) -> UniPerceiverPatchEmbed:
        return self.visual_embed.patch_embed

    def layer_id(self, name: str, num_layers: int) -> int:
        """Layer decay (the official ``get_num_layer_for_vit``): ``visual_embed*`` is layer 0, ``layers.i.*``
        layer i + 1, the adapter L - 1."""
        if name.startswith("visual_embed"):
            return 0
        return vit_layer_id(name, num_layers)

    def _embed_tokens(self, x: torch.Tensor):
        x, H, W = self.visual_embed(x)
        return x, H, W, None


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained checkpoints
# ----------------------------------------------------------------------------------------------------------------------

# The official detection/mmcv_custom/uniperceiver_converter.py, in its order: (old, new) substring replacements,
# then the keys containing these words are dropped (the text embedding and the pre-training losses).
UNIPERCEIVER_RENAMES = (
    ("fused_encoder.", ""),
    ("in_proj_", "in_proj."),
    ("video_embed.", "visual_embed."),
    ("visual_embed.embeddings.weight", "visual_embed.patch_embed.proj.weight"),
    ("visual_embed.embeddings.bias", "visual_embed.patch_embed.proj.bias"),
    ("visual_embed.embeddings_st_pos.spatial_pos_embed.weight", "visual_embed.patch_embed.spatial_pos_embed.weight"),
    ("visual_embed.embeddings_st_pos.temporal_pos_embed.weight",
     "visual_embed.patch_embed.temporal_pos_embed.weight"),
)
UNIPERCEIVER_DROPPED_WORDS = ("loss_prepare", "token_embed")


def convert_uniperceiver_key(key: str) -> str | None:
    """A released Uni-Perceiver key under the official converter's rules; None if the converter drops it."""
    for old, new in UNIPERCEIVER_RENAMES:
        key = key.replace(old, new)
    return None if any(word in key for word in UNIPERCEIVER_DROPPED_WORDS) else key


def uniperceiver_checkpoint_filter_fn(state_dict: dict, model: nn.Module, report=None) -> dict:
    """Adapt a released Uni-Perceiver state dict (``checkpoint['model']`` of ``uni-perceiver-*-pretrained.pth``)
    to a ``UniPerceiverAdapter``: the official ``uniperceiver_converter.py`` (:data:`UNIPERCEIVER_RENAMES`, then the
    ``loss_prepare`` / ``token_embed`` keys are dropped). Already converted files and our own / released adapter
    backbones pass unchanged (the rules leave their names alone). Keys the model lacks (e.g. the pre-training
    ``visual_embed.embeddings_type``) stay and are reported as unexpected, as the official non-strict load ignores
    them. A file of another width, depth or position grid raises a
    :class:`~vit_adapter_ds.checkpoint.reader.CheckpointError` naming the model to build. What was renamed or
    dropped is recorded in ``report`` (a :class:`~vit_adapter_ds.checkpoint.loading.LoadReport`) when given."""
    from collections import OrderedDict

    from ...checkpoint.loading import LoadReport
    from ...checkpoint.reader import CheckpointError, square_grid_side

    report = report if report is not None else LoadReport("<state dict>")
    out = OrderedDict()
    for key, value in state_dict.items():
        new = convert_uniperceiver_key(key)
        if new is None:
            report.dropped.append(key)
            continue
        if new != key:
            report.renamed.append((key, new))
        if new in out:
            raise CheckpointError(f"two keys of the file become {new!r} under the official Uni-Perceiver conversion")
        out[new] = value
    if report.renamed or report.dropped:
        report.notes.append("converted with the rules of the official uniperceiver_converter.py")

    proj = out.get("visual_embed.patch_embed.proj.weight")
    own = model.patch_embed.proj.weight
    if proj is not None and proj.shape[0] != own.shape[0]:
        raise CheckpointError(f"the file has embed_dim {proj.shape[0]} but the model has {own.shape[0]}; build the "
                              "matching model size (Uni-Perceiver-B: 768, -L: 1024)")
    depth = 1 + max((int(m.group(1)) for m in map(re.compile(r"layers\.(\d+)\.").match, out) if m), default=-1)
    if depth and depth != len(model.layers):
        raise CheckpointError(f"the file has {depth} layers but the model has {len(model.layers)}; build the "
                              "matching model size (Uni-Perceiver-B: 12, -L: 24)")
    pos = out.get("visual_embed.patch_embed.spatial_pos_embed.weight")
    own_pos = model.patch_embed.spatial_pos_embed.weight
    if pos is not None and pos.shape[0] != own_pos.shape[0]:
        side = square_grid_side(pos.shape[0])
        raise CheckpointError(
            f"the file's spatial position table covers {pos.shape[0]} patches"
            + (f" (img_size {side * PATCH})" if side else "")
            + f" but the model's covers {own_pos.shape[0]}; position tables are not resized at load time (official "
            f"behaviour): build the model with img_size={side * PATCH if side else '?'}")
    return out
