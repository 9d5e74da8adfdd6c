"""The model registries: one :class:`Registry` per family (``BACKBONES``, ``NECKS``, ``HEADS``, ``SEGMENTORS``,
``DETECTORS``), official ``type`` name -> class, filled by the classes themselves (timm's ``@register_model``,
detectron2's ``META_ARCH_REGISTRY.register()``)::

    @BACKBONES.register()                       # official type name = class name (or register(name=...))
    class MyBackbone(nn.Module):
        presets = {"my_backbone_small": dict(embed_dim=384, depth=12)}   # create_backbone(name) presets
        checkpoint_kinds = ("vit",)             # pretrained file kinds it loads (pretrained.detect_checkpoint_kind)
        checkpoint_mismatch = "{source} is {what}, not ..."             # the refusal of any other kind

        @staticmethod
        def checkpoint_filter_fn(state_dict, model, report=None, kind=None):  # load_pretrained's key adaptation
            ...

        @classmethod
        def from_config(cls, cfg, where): ...   # the official config dict -> instance (ConfigError naming where)

    @SEGMENTORS.register()                      # likewise HEADS, NECKS, DETECTORS
    class MySegmentor(nn.Module):
        task = "segmentation"                   # the task that trains it ('detection' for a detector)

Each class owns the translation of its official config dict in a ``from_config(cfg, where)`` classmethod that
refuses unknown or ill-typed keys with a :class:`~vit_adapter_ds.config.errors.ConfigError` naming the dotted path.
A segmentor or detector names its task in a class attribute (``task = 'segmentation'`` / ``'detection'``;
:func:`task_of`). This module imports no model module; importing any module of :mod:`vit_adapter_ds.models` runs the
package ``__init__``, which imports the model modules, so every built-in class is registered before a lookup.

``build_model(model_cfg)`` builds a whole model from a recipe's ``model`` dict and then loads pretrained backbone
weights (``model.pretrained`` / ``model.backbone.pretrained``); constructors never read files. Recipe validation
builds the same model on the meta device (``build_model(cfg, device="meta")``), so validator and builder cannot
disagree.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config.errors import ConfigError


class Registry:
    """Official ``type`` name -> class for one family of modules. ``@REG.register()`` (or ``@REG.register``,
    ``REG.register(cls, name=...)``) adds a class under its ``__name__``; registering another class under a taken
    name raises unless ``force=True``."""

    def __init__(self, family: str):
        self.family = family
        self._classes: dict[str, type] = {}

    def register(self, cls: type | None = None, *, name: str | None = None, force: bool = False):
        def add(c: type) -> type:
            key = name or c.__name__
            old = self._classes.get(key)
            if old is not None and old is not c and not force and \
                    (old.__module__, old.__qualname__) != (c.__module__, c.__qualname__):
                raise KeyError(f"{self.family} {key!r} is already registered ({old.__module__}.{old.__qualname__})")
            self._classes[key] = c
            return c

        return add(cls) if cls is not None else add

    def unregister(self, name: str) -> type:
        return self._classes.pop(name)

    def get(self, name, default=None):
        return self._classes.get(name, default) if isinstance(name, str) else default

    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._classes

    def __iter__(self):
        return iter(list(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def items(self):
        return list(self._classes.items())

    def classes(self) -> list[type]:
        return list(self._classes.values())

    def __repr__(self) -> str:
        return f"Registry({self.family!r}: {sorted(self._classes)})"

    def lookup(self, cfg, where: str, default: str | None = None) -> type:
        """The class named by ``cfg['type']`` (or ``default``); ConfigError naming ``where`` otherwise."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"recipe: {where} must be a dict, got {type(cfg).__name__}")
        kind = cfg.get("type", default)
        if kind not in self:
            raise ConfigError(f"recipe: {where}.type={kind!r} is not supported; choose one of {sorted(self._classes)}")
        return self._classes[kind]

    def build(self, cfg, where: str, default: str | None = None):
        """``lookup(cfg).from_config(cfg, where)``."""
        return self.lookup(cfg, where, default).from_config(cfg, where)


BACKBONES = Registry("backbone")
NECKS = Registry("neck")
HEADS = Registry("head")
SEGMENTORS = Registry("segmentor")
DETECTORS = Registry("detector")
FAMILIES = {r.family: r for r in (BACKBONES, NECKS, HEADS, SEGMENTORS, DETECTORS)}


def task_of(model_type: str | None) -> str | None:
    """The task (``'segmentation'`` / ``'detection'``, the class attribute ``task``) of a registered segmentor or
    detector ``model.type``; None for a type of neither registry."""
    cls = SEGMENTORS.get(model_type) or DETECTORS.get(model_type)
    return getattr(cls, "task", None) if cls is not None else None


def model_types(task: str | None = None) -> list[str]:
    """The registered segmentor and detector types (of ``task`` only, when given), sorted."""
    return sorted(n for reg in (SEGMENTORS, DETECTORS) for n, c in reg.items()
                  if task is None or getattr(c, "task", None) == task)


def presets() -> dict[str, tuple[type, dict]]:
    """Every registered backbone's presets (class attribute ``presets``): name -> (class, constructor kwargs)."""
    out = {}
    for cls in BACKBONES.classes():
        for name, kwargs in (getattr(cls, "presets", None) or {}).items():
            if name in out:
                raise KeyError(f"backbone preset {name!r} is declared by {out[name][0].__name__} and {cls.__name__}")
            out[name] = (cls, kwargs)
    return out


def lookup(table, cfg, where: str, default: str | None = None):
    """The class of ``table`` (a :class:`Registry`) named by ``cfg['type']`` (or ``default``)."""
    return table.lookup(cfg, where, default)


def build_backbone(cfg: dict, where: str = "model.backbone"):
    return BACKBONES.build(cfg, where)


def build_head(cfg: dict, where: str = "model.decode_head"):
    return HEADS.build(cfg, where)


def build_detection_backbone(backbone_cfg, pretrained: str | None, where: str = "model"):
    """A detector's backbone from the official ``model.backbone`` dict with the detection forward (``task``
    'detection', the default for a detector; another task is refused), and the pretrained file of ``model.pretrained``
    (``pretrained``) or ``model.backbone.pretrained`` (setting both is an error): ``(backbone, pretrained)``. The
    file is only recorded here (the builder reads it)."""
    if not isinstance(backbone_cfg, Mapping) or backbone_cfg.get("type") not in BACKBONES:
        raise ConfigError(f"recipe: {where}.backbone must be a dict with type one of {sorted(BACKBONES)}")
    kw = {k: v for k, v in backbone_cfg.items() if k not in ("type", "_delete_")}
    inner = kw.pop("pretrained", None)
    if inner is not None and pretrained is not None:
        raise ConfigError(f"recipe: set pretrained weights either in {where}.pretrained or {where}.backbone.pretrained")
    kw.setdefault("task", "detection")
    if kw["task"] != "detection":
        raise ConfigError(f"recipe: {where}.backbone.task must be 'detection' for a detector")
    return BACKBONES[backbone_cfg["type"]].from_config(kw, f"{where}.backbone"), inner or pretrained


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
    cls = SEGMENTORS.lookup(cfg, where, default="EncoderDecoder")
    path = pretrained_path(cfg)
    if device is not None:
        with torch.device(device):
            model = cls.from_config(cfg, where)
    else:
        model = cls.from_config(cfg, where)
    model.pretrained_report = None
    if path and load_pretrained and str(device) != "meta":
        from .pretrained import load_pretrained as load_backbone_weights
        model.pretrained_report = load_backbone_weights(model.backbone, path)
    return model
