"""Builder functions for the official backbone configurations, timm style, and pretrained-weight loading.

    from vit_adapter_ds.models import create_backbone
    model = create_backbone("vit_adapter_large", pretrained="pretrained/L_16-i21k-...-res_384.pth")

Each preset is exactly the official ``backbone=dict(...)`` of the named config (drop-path of the UperNet recipes);
keyword overrides win. Constructors never read files: :func:`load_pretrained` loads a local file into a built
backbone, through :mod:`vit_adapter_ds.checkpoint.reader` (safe reading, one load report) and the family's
``checkpoint_filter_fn`` (:data:`CHECKPOINT_FILTERS`). Three kinds of files are understood, recognised by their keys:

* **timm ViTs** (DeiT, AugReg, DINOv2 converted or not) for ``ViTAdapter``: names are copied as they are, like the
  official ``my_load_checkpoint``; ``pos_embed`` keeps its class-token slot and must cover the model's patch grid
  (it is resized at run time from ``pretrain_size``, never at load time). ``cls_token``/``norm``/``head``/
  ``dist_token``/``head_dist``/``mask_token`` are reported as unexpected and ignored; ``gamma1``/``gamma2`` are
  missing and stay 1. See :func:`~vit_adapter_ds.models.backbones.vit.vit_checkpoint_filter_fn`.
* **BEiT / BEiTv2** (microsoft/unilm) for ``BEiTAdapter``, with the official ``mmcv_custom/checkpoint.py`` rules:
  see :func:`~vit_adapter_ds.models.backbones.beit.beit_checkpoint_filter_fn`.
* **Released ViT-Adapter segmentors/detectors** (mmcv ``{'meta', 'state_dict', 'optimizer'}``, keys ``backbone.*``,
  ``decode_head.*``, ...): the ``backbone.`` part is loaded (:func:`split_segmentor_state_dict`). A state dict saved
  from our own backbones is loaded the same way.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict

from torch import nn

from ..checkpoint.reader import CheckpointError, LoadReport, extract_state_dict, load_into, read_state_dict
from .backbones import BEiTAdapter, ViTAdapter
from .backbones.beit import beit_checkpoint_filter_fn
from .backbones.vit import vit_checkpoint_filter_fn

_I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
_I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
_BEIT_L = dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False,
               use_rel_pos_bias=True, init_values=1e-6, conv_inplane=64, n_points=4, deform_num_heads=16,
               cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=_I24)

PRESETS: dict[str, tuple[type, dict]] = {
    # UperNet ADE20K 512 (DeiT-T/S/B, AugReg-L)
    "vit_adapter_tiny": (ViTAdapter, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4,
                                          drop_path_rate=0.1, conv_inplane=64, n_points=4, deform_num_heads=6,
                                          cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=_I12)),
    "vit_adapter_small": (ViTAdapter, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                                           drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                                           cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=_I12)),
    "vit_adapter_base": (ViTAdapter, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                                          drop_path_rate=0.3, conv_inplane=64, n_points=4, deform_num_heads=12,
                                          cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=_I12)),
    "vit_adapter_large": (ViTAdapter, dict(img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24,
                                           num_heads=16, mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64, n_points=4,
                                           deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5, with_cp=True,
                                           interaction_indexes=_I24)),
    # UperNet ADE20K 640 and Mask2Former 896 (segmentation BEiT: img_size = crop size)
    "beit_adapter_large_640": (BEiTAdapter, dict(img_size=640, drop_path_rate=0.3, with_cp=True, **_BEIT_L)),
    "beit_adapter_large_896": (BEiTAdapter, dict(img_size=896, drop_path_rate=0.3, with_cp=True, **_BEIT_L)),
    # Mask R-CNN 3x (detection ViT-Adapter) and HTC++ (detection BEiT-Adapter)
    "vit_adapter_small_det": (ViTAdapter, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                                               drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                                               cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=_I12,
                                               window_attn=[True, True, False] * 4, window_size=[14] * 12,
                                               task="detection")),
    "beit_adapter_large_det": (BEiTAdapter, dict(img_size=224, drop_path_rate=0.4, window_attn=[True] * 24,
                                                 window_size=[14, 14, 14, 14, 14, 56] * 4, task="detection",
                                                 **_BEIT_L)),
}


def create_backbone(name: str, pretrained: str | os.PathLike | None = None, **overrides):
    """Build an official backbone preset by name; ``overrides`` replace preset arguments. With ``pretrained`` (a
    local file or DeepSpeed folder) the weights are loaded after construction by :func:`load_pretrained`; its
    report is kept as ``model.pretrained_report``."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; choose one of {sorted(PRESETS)}")
    cls, cfg = PRESETS[name]
    model = cls(**{**cfg, **overrides})
    model.pretrained_report = load_pretrained(model, pretrained) if pretrained is not None else None
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained weights
# ----------------------------------------------------------------------------------------------------------------------

CHECKPOINT_FILTERS = {ViTAdapter: vit_checkpoint_filter_fn, BEiTAdapter: beit_checkpoint_filter_fn}

_KIND_WORDS = {"vit": "a timm ViT checkpoint (DeiT/AugReg/DINOv2 style)", "beit": "a BEiT/BEiTv2 checkpoint",
               "vit-adapter": "a ViT-Adapter backbone", "beit-adapter": "a BEiT-Adapter backbone"}


def split_segmentor_state_dict(state_dict: dict) -> dict[str, "OrderedDict"]:
    """Split a whole-model state dict (mmseg/mmdet ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``,
    ``neck.*``, ...) by its first name component: ``{'backbone': {...}, 'decode_head': {...}, ...}`` with the prefix
    removed. A full checkpoint dict (with ``'state_dict'``) is accepted too."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    parts: dict[str, OrderedDict] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if not rest:
            raise CheckpointError(f"key {key!r} has no '<part>.' prefix; this is not a whole-segmentor state dict")
        parts.setdefault(head, OrderedDict())[rest] = value
    return parts


def _is_beit(keys) -> bool:
    return any(k.endswith(("attn.q_bias", "attn.relative_position_bias_table")) or k.startswith("rel_pos_bias.")
               or re.search(r"\.gamma_[12]$", k) for k in keys)


def _is_adapter(keys) -> bool:
    return any(k.startswith(("spm.", "interactions.")) or k == "level_embed" for k in keys)


def detect_checkpoint_kind(state_dict: dict) -> str:
    """'segmentor' (``backbone.*`` keys), 'vit-adapter'/'beit-adapter' (our own or the released backbone format),
    'beit' (unilm BEiT/BEiTv2) or 'vit' (timm DeiT/AugReg/DINOv2)."""
    keys = list(state_dict)
    if any(k.startswith("backbone.") for k in keys):
        return "segmentor"
    if _is_beit(keys):
        return "beit-adapter" if _is_adapter(keys) else "beit"
    if any(re.match(r"blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys):
        return "vit-adapter" if _is_adapter(keys) else "vit"
    raise CheckpointError("unrecognised checkpoint: expected timm ViT keys (blocks.0.attn.qkv.weight, pos_embed), "
                          "BEiT keys (blocks.0.attn.q_bias, relative_position_bias_table) or a released segmentor "
                          f"(backbone.*); first keys are {keys[:8]}")


def _check_family(kind: str, model: nn.Module, source: str) -> None:
    beit_file = kind.startswith("beit")
    if isinstance(model, BEiTAdapter) and not beit_file:
        raise CheckpointError(
            f"{source} is {_KIND_WORDS[kind]} (qkv biases, absolute pos_embed, no relative position tables), but the "
            "model is a BEiTAdapter, which needs BEiT weights (q_bias/v_bias, relative_position_bias_table, "
            "gamma_1/gamma_2); build a ViTAdapter for this file or pass a BEiT checkpoint")
    if isinstance(model, ViTAdapter) and beit_file:
        raise CheckpointError(
            f"{source} is {_KIND_WORDS[kind]} (q_bias/v_bias, relative position tables), but the model is a "
            "ViTAdapter, which needs timm ViT weights (DeiT/AugReg); build a BEiTAdapter for this file")


def _block_index(key: str) -> int | None:
    found = re.match(r"blocks\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def _check_size(state_dict: dict, model: nn.Module, source: str) -> None:
    """Clear errors for a checkpoint of another width or depth than the model."""
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is not None and weight.shape[0] != model.patch_embed.proj.weight.shape[0]:
        raise CheckpointError(f"{source} has embed_dim {weight.shape[0]} but the model has "
                              f"{model.patch_embed.proj.weight.shape[0]}; build the matching model size")
    depth = 1 + max((i for i in map(_block_index, state_dict) if i is not None), default=-1)
    if depth and depth != len(model.blocks):
        raise CheckpointError(f"{source} has {depth} transformer blocks but the model has {len(model.blocks)}; "
                              "build the matching model size")


def load_pretrained(model: nn.Module, checkpoint: str | os.PathLike | dict, strict: bool = False) -> LoadReport:
    """Load a pretrained (timm ViT, BEiT/BEiTv2) or released (ViT-Adapter segmentor/detector, or our own backbone)
    checkpoint into a ``ViTAdapter``/``BEiTAdapter`` and return (and log) a
    :class:`~vit_adapter_ds.checkpoint.reader.LoadReport`.

    ``checkpoint`` is anything :func:`~vit_adapter_ds.checkpoint.reader.read_state_dict` reads (read safely) or an
    already loaded (state) dict. The kind is recognised from the keys (:func:`detect_checkpoint_kind`); a released
    segmentor contributes its ``backbone.`` part. Loading is ``strict=False`` (pretrained backbones have no adapter
    weights); with ``strict=True`` any missing or unexpected key raises. A file of the wrong family (ViT weights for
    a BEiTAdapter or the reverse), of another width or depth, or with an incompatible ``pos_embed`` raises
    :class:`~vit_adapter_ds.checkpoint.reader.CheckpointError` naming the problem.
    """
    filter_fn = next((fn for cls, fn in CHECKPOINT_FILTERS.items() if isinstance(model, cls)), None)
    if filter_fn is None:
        raise TypeError(f"load_pretrained expects one of {[c.__name__ for c in CHECKPOINT_FILTERS]}, "
                        f"got {type(model).__name__}")
    if isinstance(checkpoint, dict):
        source, state_dict = "<state dict>", extract_state_dict(checkpoint, "<state dict>")
    else:
        source, state_dict = str(checkpoint), read_state_dict(checkpoint)
    notes = []
    kind = detect_checkpoint_kind(state_dict)
    if kind == "segmentor":
        parts = split_segmentor_state_dict(state_dict)
        ignored = {name: len(part) for name, part in parts.items() if name != "backbone"}
        state_dict = parts["backbone"]
        if ignored:
            notes.append("released whole-model checkpoint: loaded its backbone part; ignored "
                         + ", ".join(f"{name} ({n} tensors)" for name, n in ignored.items()))
        kind = detect_checkpoint_kind(state_dict)
        if kind == "segmentor":
            raise CheckpointError(f"{source}: nested 'backbone.backbone.' keys; not a segmentor checkpoint")
    _check_family(kind, model, source)
    _check_size(state_dict, model, source)

    def adapt(sd, m, report):
        report.kind, report.description = kind, _KIND_WORDS[kind]
        report.notes += notes
        if filter_fn is beit_checkpoint_filter_fn:
            return beit_checkpoint_filter_fn(sd, m, report, keep_index=kind == "beit-adapter")
        return filter_fn(sd, m, report)

    return load_into(model, state_dict, filter_fn=adapt, strict=strict, source=source)
