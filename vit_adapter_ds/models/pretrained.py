"""Pretrained-weight loading into a built backbone: :func:`load_pretrained` reads a local file through
:mod:`vit_adapter_ds.checkpoint.reader` (safe reading, one load report), recognises its kind from the keys
(:func:`detect_checkpoint_kind`) and adapts the keys with the backbone class's ``checkpoint_filter_fn``; the class's
``checkpoint_kinds`` / ``checkpoint_mismatch`` refuse a file of another family (declared beside each registered
backbone, e.g. :class:`~vit_adapter_ds.models.backbones.vit.ViTAdapter`). This module reads no registry, so the
builders of :mod:`.registry` can use it. :mod:`.factory` re-exports these names.
"""
from __future__ import annotations

import inspect
import os
import re
from collections import OrderedDict

from torch import nn

from ..checkpoint.reader import CheckpointError, extract_state_dict
from ..checkpoint.loading import LoadReport, load_into, read_state_dict

_KIND_WORDS = {"vit": "a timm ViT checkpoint (DeiT/AugReg/DINOv2 style)", "beit": "a BEiT/BEiTv2 checkpoint",
               "vit-adapter": "a ViT-Adapter backbone", "beit-adapter": "a BEiT-Adapter backbone",
               "uniperceiver": "a Uni-Perceiver checkpoint (released or converted by uniperceiver_converter.py)",
               "uniperceiver-adapter": "a Uni-Perceiver-Adapter backbone"}


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


def _is_uniperceiver(keys) -> bool:
    """Released Uni-Perceiver keys (``fused_encoder.``, ``video_embed.``) or converted ones (``visual_embed.``,
    ``layers.i.self_attn.in_proj``); checked before BEiT, whose ``gamma_1`` / ``gamma_2`` names they share."""
    return any(k.startswith(("fused_encoder.", "video_embed.", "visual_embed."))
               or re.match(r"layers\.\d+\.self_attn\.in_proj[._]", k) for k in keys)


def _is_adapter(keys) -> bool:
    return any(k.startswith(("spm.", "interactions.")) or k == "level_embed" for k in keys)


def detect_checkpoint_kind(state_dict: dict) -> str:
    """'segmentor' (``backbone.*`` keys), 'vit-adapter'/'beit-adapter'/'uniperceiver-adapter' (our own or the
    released backbone format), 'uniperceiver' (released or converted Uni-Perceiver), 'beit' (unilm BEiT/BEiTv2) or
    'vit' (timm DeiT/AugReg/DINOv2)."""
    keys = list(state_dict)
    if any(k.startswith("backbone.") for k in keys):
        return "segmentor"
    if _is_uniperceiver(keys):
        return "uniperceiver-adapter" if _is_adapter(keys) else "uniperceiver"
    if _is_beit(keys):
        return "beit-adapter" if _is_adapter(keys) else "beit"
    if any(re.match(r"blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys):
        return "vit-adapter" if _is_adapter(keys) else "vit"
    raise CheckpointError("unrecognised checkpoint: expected timm ViT keys (blocks.0.attn.qkv.weight, pos_embed), "
                          "BEiT keys (blocks.0.attn.q_bias, relative_position_bias_table), Uni-Perceiver keys "
                          "(fused_encoder.layers.0.self_attn.in_proj_weight, video_embed.*) or a released segmentor "
                          f"(backbone.*); first keys are {keys[:8]}")


def _check_family(kind: str, model: nn.Module, source: str) -> None:
    """The backbone class's ``checkpoint_kinds`` (the file kinds it loads) and ``checkpoint_mismatch`` (the message
    for any other kind: ``{source}`` and ``{what}``, the file's description, are filled in)."""
    cls = type(model)
    kinds = getattr(cls, "checkpoint_kinds", None)
    if kinds is not None and kind not in kinds:
        raise CheckpointError(cls.checkpoint_mismatch.format(source=source, what=_KIND_WORDS[kind]))


def _block_index(key: str) -> int | None:
    found = re.match(r"blocks\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def _check_size(state_dict: dict, model: nn.Module, source: str) -> None:
    """Clear errors for a checkpoint of another width or depth than the model (a ViT-like backbone: ``patch_embed``,
    ``blocks``)."""
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        return
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
    :class:`~vit_adapter_ds.checkpoint.loading.LoadReport`.

    ``checkpoint`` is anything :func:`~vit_adapter_ds.checkpoint.loading.read_state_dict` reads (read safely) or an
    already loaded (state) dict. The kind is recognised from the keys (:func:`detect_checkpoint_kind`); a released
    segmentor contributes its ``backbone.`` part. Loading is ``strict=False`` (pretrained backbones have no adapter
    weights); with ``strict=True`` any missing or unexpected key raises. A file of the wrong family (ViT weights for
    a BEiTAdapter or the reverse), of another width or depth, or with an incompatible ``pos_embed`` raises
    :class:`~vit_adapter_ds.checkpoint.reader.CheckpointError` naming the problem.
    """
    filter_fn = getattr(type(model), "checkpoint_filter_fn", None)
    if filter_fn is None:
        raise TypeError("load_pretrained expects a registered backbone with a checkpoint_filter_fn (ViTAdapter, "
                        f"BEiTAdapter, ...), got {type(model).__name__}")
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
        if "kind" in inspect.signature(filter_fn).parameters:  # the file kind, for filters that depend on it
            return filter_fn(sd, m, report, kind=kind)
        return filter_fn(sd, m, report)

    return load_into(model, state_dict, filter_fn=adapt, strict=strict, source=source)
