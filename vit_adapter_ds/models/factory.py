"""Builder functions for the official backbone configurations, timm style, and pretrained-weight loading.

    from vit_adapter_ds.models import create_backbone
    model = create_backbone("vit_adapter_large", pretrained="pretrained/L_16-i21k-...-res_384.pth")

Presets are declared beside each registered backbone (its class attribute ``presets``, read through
:mod:`.registry`); each preset is exactly the official ``backbone=dict(...)`` of the named config (drop-path of the
UperNet recipes); keyword overrides win. Constructors never read files: :func:`load_pretrained` (:mod:`.pretrained`,
re-exported here) loads a local file into a built backbone, through :mod:`vit_adapter_ds.checkpoint.reader` (safe
reading, one load report) and the backbone class's ``checkpoint_filter_fn``. Four kinds of files are understood,
recognised by their keys:

* **timm ViTs** (DeiT, AugReg, DINOv2 converted or not) for ``ViTAdapter``: names are copied as they are, like the
  official ``my_load_checkpoint``; ``pos_embed`` keeps its class-token slot and must cover the model's patch grid
  (it is resized at run time from ``pretrain_size``, never at load time). ``cls_token``/``norm``/``head``/
  ``dist_token``/``head_dist``/``mask_token`` are reported as unexpected and ignored; ``gamma1``/``gamma2`` are
  missing and stay 1. See :func:`~vit_adapter_ds.models.backbones.vit.vit_checkpoint_filter_fn`.
* **BEiT / BEiTv2** (microsoft/unilm) for ``BEiTAdapter``, with the official ``mmcv_custom/checkpoint.py`` rules:
  see :func:`~vit_adapter_ds.models.backbones.beit.beit_checkpoint_filter_fn`.
* **Uni-Perceiver** (released ``uni-perceiver-*-pretrained.pth``, raw or converted) for ``UniPerceiverAdapter``, with
  the rules of the official ``uniperceiver_converter.py``: see
  :func:`~vit_adapter_ds.models.backbones.uniperceiver.uniperceiver_checkpoint_filter_fn`.
* **Released ViT-Adapter segmentors/detectors** (mmcv ``{'meta', 'state_dict', 'optimizer'}``, keys ``backbone.*``,
  ``decode_head.*``, ...): the ``backbone.`` part is loaded (:func:`split_segmentor_state_dict`). A state dict saved
  from our own backbones is loaded the same way.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .pretrained import (  # noqa: F401  (the loading API, here as before)
    detect_checkpoint_kind, load_pretrained, split_segmentor_state_dict)
from .registry import presets


class _Presets(Mapping):
    """Read-only view of every registered backbone's presets: name -> (class, constructor kwargs)."""

    def __getitem__(self, name):
        return presets()[name]

    def __iter__(self):
        return iter(presets())

    def __len__(self):
        return len(presets())

    def __repr__(self):
        return f"PRESETS({sorted(presets())})"


PRESETS: Mapping[str, tuple[type, dict]] = _Presets()

__all__ = ["PRESETS", "create_backbone", "load_pretrained", "detect_checkpoint_kind", "split_segmentor_state_dict"]


def create_backbone(name: str, pretrained: str | os.PathLike | None = None, **overrides):
    """Build an official backbone preset by name; ``overrides`` replace preset arguments. With ``pretrained`` (a
    local file or DeepSpeed folder) the weights are loaded after construction by :func:`load_pretrained`; its
    report is kept as ``model.pretrained_report``."""
    table = presets()
    if name not in table:
        raise ValueError(f"unknown backbone preset {name!r}; choose one of {sorted(table)}")
    cls, cfg = table[name]
    model = cls(**{**cfg, **overrides})
    model.pretrained_report = load_pretrained(model, pretrained) if pretrained is not None else None
    return model
