"""Lay out an official ViT-Adapter checkout's backbone files plus the shims (tests/helpers/parity/shims) in a work folder, so
that the official ``ViTAdapter`` / ``BEiTAdapter`` / ``UniPerceiverAdapter`` (segmentation and detection copies) and
the plain baselines import on current PyTorch.

    python tests/helpers/parity/layout_official.py --official-dir ~/src/ViT-Adapter --out /tmp/official_work

``--official-dir`` is a checkout of github.com/czczup/ViT-Adapter (or a folder with the same relative paths for the
files in :data:`OFFICIAL_FILES`). The files are copied unchanged; the packages around them get empty
``__init__.py`` files (the official package inits import every model and mmseg/mmdet), except ``ops.modules`` /
``ops.functions``, whose one-line official inits are written here. The official code is never part of this repo.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHIMS = os.path.join(HERE, "shims")
SEG = "segmentation/mmseg_custom/models/backbones"
DET = "detection/mmdet_custom/models/backbones"
# What each official class needs (paths relative to the checkout).
OFFICIAL_FILES = {
    "seg_vit": [f"{SEG}/adapter_modules.py", f"{SEG}/vit_adapter.py", f"{SEG}/base/vit.py"],
    "seg_beit": [f"{SEG}/adapter_modules.py", f"{SEG}/beit_adapter.py", f"{SEG}/base/beit.py"],
    "seg_beit_baseline": [f"{SEG}/beit_baseline.py"],
    "det_vit": [f"{DET}/adapter_modules.py", f"{DET}/vit_adapter.py", f"{DET}/base/vit.py"],
    "det_beit": [f"{DET}/adapter_modules.py", f"{DET}/beit_adapter.py", f"{DET}/base/beit.py"],
    "det_vit_baseline": [f"{DET}/vit_baseline.py", f"{DET}/base/vit.py"],
    "seg_uniperceiver": [f"{SEG}/adapter_modules.py", f"{SEG}/uniperceiver_adapter.py", f"{SEG}/base/uniperceiver.py"],
    "det_uniperceiver": [f"{DET}/adapter_modules.py", f"{DET}/uniperceiver_adapter.py", f"{DET}/base/uniperceiver.py"],
}
OPS_FILES = ["detection/ops/modules/ms_deform_attn.py", "detection/ops/functions/ms_deform_attn_func.py"]
PACKAGE_INITS = {  # package -> content of its __init__.py in the work folder
    "segmentation/mmseg_custom": "", "segmentation/mmseg_custom/models": "", SEG: "", f"{SEG}/base": "",
    "detection/mmdet_custom": "", "detection/mmdet_custom/models": "", DET: "", f"{DET}/base": "",
    "detection/ops": "",
    "detection/ops/modules": "from .ms_deform_attn import MSDeformAttn\n",
    "detection/ops/functions": "from .ms_deform_attn_func import MSDeformAttnFunction\n",
}
# The import roots of the work folder, first on sys.path first.
SYS_PATH = ("shims", "detection", "segmentation")


def layout(official_dir: str, out: str, classes=tuple(OFFICIAL_FILES)) -> str:
    """Copy the official files needed by ``classes`` and the shims into ``out`` (created; existing files replaced).
    Returns ``out``. Raises ``FileNotFoundError`` naming every missing official file."""
    unknown = sorted(set(classes) - set(OFFICIAL_FILES))
    if unknown:
        raise ValueError(f"unknown official classes {unknown}; valid: {sorted(OFFICIAL_FILES)}")
    files = sorted({f for c in classes for f in OFFICIAL_FILES[c]} | set(OPS_FILES))
    missing = [f for f in files if not os.path.isfile(os.path.join(official_dir, f))]
    if missing:
        raise FileNotFoundError(f"{official_dir} lacks the official files {missing} (a github.com/czczup/ViT-Adapter "
                                "checkout has them)")
    os.makedirs(out, exist_ok=True)
    for rel in files:
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(official_dir, rel), dst)
    for pkg, text in PACKAGE_INITS.items():
        os.makedirs(os.path.join(out, pkg), exist_ok=True)
        with open(os.path.join(out, pkg, "__init__.py"), "w") as f:
            f.write(text)
    shutil.copytree(SHIMS, os.path.join(out, "shims"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    return out


def import_official(work_dir: str, classes=tuple(OFFICIAL_FILES)) -> dict:
    """Import the official classes from a folder made by :func:`layout` (its roots first on ``sys.path``; any
    already imported mmcv / mmseg / mmdet / mmcv_custom / ops modules are dropped so that the shims are used)."""
    for sub in reversed(SYS_PATH):
        sys.path.insert(0, os.path.join(work_dir, sub))
    roots = ("mmcv", "mmseg", "mmdet", "mmcv_custom", "ops", "mmseg_custom", "mmdet_custom", "_registry",
             "MultiScaleDeformableAttention")
    for name in [m for m in sys.modules if m.split(".")[0] in roots]:
        del sys.modules[name]
    import importlib

    modules = {"seg_vit": ("mmseg_custom.models.backbones.vit_adapter", "ViTAdapter"),
               "seg_beit": ("mmseg_custom.models.backbones.beit_adapter", "BEiTAdapter"),
               "seg_beit_baseline": ("mmseg_custom.models.backbones.beit_baseline", "BEiTBaseline"),
               "det_vit": ("mmdet_custom.models.backbones.vit_adapter", "ViTAdapter"),
               "det_beit": ("mmdet_custom.models.backbones.beit_adapter", "BEiTAdapter"),
               "det_vit_baseline": ("mmdet_custom.models.backbones.vit_baseline", "ViTBaseline"),
               "seg_uniperceiver": ("mmseg_custom.models.backbones.uniperceiver_adapter", "UniPerceiverAdapter"),
               "det_uniperceiver": ("mmdet_custom.models.backbones.uniperceiver_adapter", "UniPerceiverAdapter")}
    return {c: getattr(importlib.import_module(modules[c][0]), modules[c][1]) for c in classes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-dir", required=True, help="an official ViT-Adapter checkout (outside this repo)")
    parser.add_argument("--out", required=True, help="work folder to create")
    parser.add_argument("--classes", nargs="*", default=list(OFFICIAL_FILES), choices=list(OFFICIAL_FILES))
    args = parser.parse_args()
    print(layout(os.path.abspath(args.official_dir), os.path.abspath(args.out), args.classes))


if __name__ == "__main__":
    main()
