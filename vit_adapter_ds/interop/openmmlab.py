"""Optional OpenMMLab interop: register the backbones (every class of ``models.registry.BACKBONES``) in mmseg 1.x /
mmdet 3.x ``MODELS`` under the official names.

Importing this module registers whatever of mmseg / mmdet is installed (``pip install -e '.[mm]'``), so an existing
OpenMMLab config can name the backbones after adding::

    custom_imports = dict(imports=['vit_adapter_ds.interop.openmmlab'], allow_failed_imports=False)

In mmdet the official backbones are the detection copies, so there ``task`` defaults to ``'detection'``.
Nothing here needs ``mmcv._ext``.
"""
from __future__ import annotations

import logging

from vit_adapter_ds.models.registry import BACKBONES

logger = logging.getLogger(__name__)


def _detection_builder(cls):
    def build(**kwargs):
        kwargs.setdefault("task", "detection")
        return cls(**kwargs)

    build.__name__ = cls.__name__
    build.__doc__ = f"{cls.__name__} with task='detection' by default (the official mmdet backbone)."
    return build


def _skip_unimportable_model_zoo(registry, name: str) -> None:
    """mmengine imports the library's whole model zoo (``mmseg.models`` / ``mmdet.models``) on the first ``build``;
    without mmcv-full that import fails on ``mmcv._ext``. Then mark the registry as imported, so that what is
    registered (our backbones) can still be built."""
    try:
        registry.import_from_location()
    except ImportError as err:
        registry._imported = True
        logger.warning("%s's own model zoo cannot be imported here (%s); only modules registered without it, such as "
                       "ViTAdapter/BEiTAdapter, can be built from its MODELS registry", name, err)


def register_openmmlab_backbones() -> list[str]:
    """Register every registered backbone (ViTAdapter, BEiTAdapter, ...) under its registered name in the installed
    OpenMMLab registries; returns what was registered."""
    done = []
    try:
        from mmseg.registry import MODELS as SEG_MODELS
    except ImportError:
        logger.debug("mmsegmentation is not installed; skipping its registry")
    else:
        _skip_unimportable_model_zoo(SEG_MODELS, "mmseg")
        for name, cls in BACKBONES.items():
            SEG_MODELS.register_module(name=name, module=cls, force=True)
            done.append(f"mmseg.{name}")
    try:
        from mmdet.registry import MODELS as DET_MODELS
    except ImportError:
        logger.debug("mmdet is not installed; skipping its registry")
    else:
        _skip_unimportable_model_zoo(DET_MODELS, "mmdet")
        for name, cls in BACKBONES.items():
            DET_MODELS.register_module(name=name, module=_detection_builder(cls), force=True)
            done.append(f"mmdet.{name}")
    return done


REGISTERED = register_openmmlab_backbones()
