"""The model tables: one plain dict per pluggable family, official ``type`` name -> class.

Each class owns the translation of its official config dict in a ``from_config(cfg, where)`` classmethod that
refuses unknown or ill-typed keys with a :class:`~vit_adapter_ds.config.errors.ConfigError` naming the dotted path.
Adding a backbone, head or segmentor is one class with ``from_config`` plus one line here.

``build_model(model_cfg)`` builds a whole model from a recipe's ``model`` dict and then loads pretrained backbone
weights (``model.pretrained`` / ``model.backbone.pretrained``); constructors never read files. Recipe validation
builds the same model on the meta device (``build_model(cfg, device="meta")``), so validator and builder cannot
disagree.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config.errors import ConfigError
from .backbones import BEiTAdapter, ViTAdapter
from .heads import FCNHead, UPerHead
from .heads.mask2former import Mask2FormerHead
from .segmentor import EncoderDecoder
from .segmentor_mask2former import EncoderDecoderMask2Former

BACKBONES = {"ViTAdapter": ViTAdapter, "BEiTAdapter": BEiTAdapter}
HEADS = {"UPerHead": UPerHead, "FCNHead": FCNHead, "Mask2FormerHead": Mask2FormerHead}
SEGMENTORS = {"EncoderDecoder": EncoderDecoder, "EncoderDecoderMask2Former": EncoderDecoderMask2Former}


def lookup(table: dict, cfg, where: str, default: str | None = None):
    """The class of ``table`` named by ``cfg['type']`` (or ``default``)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"recipe: {where} must be a dict, got {type(cfg).__name__}")
    kind = cfg.get("type", default)
    if kind not in table:
        raise ConfigError(f"recipe: {where}.type={kind!r} is not supported; choose one of {sorted(table)}")
    return table[kind]


def build_backbone(cfg: dict, where: str = "model.backbone"):
    return lookup(BACKBONES, cfg, where).from_config(cfg, where)


def build_head(cfg: dict, where: str = "model.decode_head"):
    return lookup(HEADS, cfg, where).from_config(cfg, where)


def pretrained_path(model_cfg: Mapping) -> str | None:
    """``model.pretrained`` or ``model.backbone.pretrained`` (setting both is an error)."""
    top, inner = model_cfg.get("pretrained"), (model_cfg.get("backbone") or {}).get("pretrained")
    if top and inner and top != inner:
        raise ConfigError("recipe: set pretrained weights either in model.pretrained or model.backbone.pretrained")
    return top or inner


def build_model(model_cfg: Mapping, *, device: str | torch.device | None = None, load_pretrained: bool = True,
                where: str = "model"):
    """A segmentor from a recipe's ``model`` dict; with ``load_pretrained`` the backbone then loads the local
    pretrained file (the load report is kept as ``model.pretrained_report``). ``device='meta'`` builds without
    allocating memory (validation) and never loads weights."""
    from ..config.keys import to_plain

    cfg = to_plain(model_cfg)
    cls = lookup(SEGMENTORS, cfg, where, default="EncoderDecoder")
    path = pretrained_path(cfg)
    if device is not None:
        with torch.device(device):
            model = cls.from_config(cfg, where)
    else:
        model = cls.from_config(cfg, where)
    model.pretrained_report = None
    if path and load_pretrained and str(device) != "meta":
        from .factory import load_pretrained as load_backbone_weights
        model.pretrained_report = load_backbone_weights(model.backbone, path)
    return model
