"""Import mmseg 1.2.2 reference modules (decode heads, necks, losses) without mmcv-full.

``mmseg.models`` imports its whole model zoo, part of which needs the compiled ``mmcv._ext``. We bypass the package
``__init__`` files (registering bare package modules) and stub ``mmcv.ops`` (only referenced, never called, by the
modules used here). Returns None when mmseg / mmcv-lite are not installed (tests then skip).

The stubs stay in ``sys.modules`` for the session: the imported mmseg modules cannot be dropped and re-imported,
because mmengine refuses to create a registry scope twice. ``test_interop.py`` and ``test_data_transforms.py``
pass before and after these tests in one session.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
import warnings


def _stub_ops():
    if "mmcv.ops" in sys.modules:
        return
    try:
        importlib.import_module("mmcv.ops")
        return
    except Exception:  # noqa: BLE001  (mmcv-lite: no _ext)
        sys.modules.pop("mmcv.ops", None)
    ops = types.ModuleType("mmcv.ops")

    def _getattr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None

    ops.__getattr__ = _getattr
    sys.modules["mmcv.ops"] = ops


def load(module: str):
    """``load('decode_heads.uper_head')`` -> the mmseg.models submodule, or None if mmseg is unavailable."""
    try:
        import mmcv  # noqa: F401
        import mmseg
    except Exception:  # noqa: BLE001
        return None
    _stub_ops()
    root = os.path.dirname(mmseg.__file__)
    for name in ("mmseg.models", "mmseg.models.decode_heads", "mmseg.models.losses", "mmseg.models.necks",
                 "mmseg.models.segmentors"):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [os.path.join(root, *name.split(".")[1:])]
            sys.modules[name] = m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importlib.import_module("mmseg.models.losses.cross_entropy_loss")  # registers CrossEntropyLoss
            return importlib.import_module(f"mmseg.models.{module}")
        except Exception:  # noqa: BLE001
            return None
