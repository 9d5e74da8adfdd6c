"""Generate the official-parity goldens (tests/parity/goldens/<variant>.pt) from the OFFICIAL ViT-Adapter code.

The official code is never part of this repository. To regenerate:

1. Put the official backbone files (github.com/czczup/ViT-Adapter) in a folder OUTSIDE the repo, laid out as in the
   official repo::

       <dir>/segmentation/mmseg_custom/models/backbones/{adapter_modules,vit_adapter,beit_adapter}.py, base/{vit,beit}.py
       <dir>/detection/mmdet_custom/models/backbones/{adapter_modules,vit_adapter,beit_adapter}.py, base/{vit,beit}.py
       <dir>/detection/ops/modules/ms_deform_attn.py, <dir>/detection/ops/functions/ms_deform_attn_func.py

   with empty ``__init__.py`` files for ``mmseg_custom``, ``mmseg_custom.models``, ``...backbones`` and ``...base``
   (likewise ``mmdet_custom``; the official package inits import every model and mmseg/mmdet).
2. Add shims in ``<dir>/shims`` so the files import on current torch without OpenMMLab 1.x:
   ``mmseg.models.builder.BACKBONES`` / ``mmdet.models.builder.BACKBONES`` (a registry whose ``register_module()``
   returns the class), ``mmseg.utils.get_root_logger`` / ``mmdet.utils.get_root_logger``,
   ``mmcv.runner.BaseModule`` (``nn.Module``) and ``load_checkpoint``, ``mmcv_custom.load_checkpoint`` /
   ``my_load_checkpoint`` (never called: pretrained=None). In ``ms_deform_attn_func.py`` the CUDA extension import is
   dropped and ``MSDeformAttnFunction.apply(value, shapes, level_start, locations, weights, im2col_step)`` calls the
   official pure-PyTorch ``ms_deform_attn_core_pytorch(value, shapes, locations, weights)`` (exact: the CUDA kernel
   computes the same bilinear sampling). ``timm.models.layers`` is timm's deprecated alias (timm 1.x).
3. ``python tests/parity/make_goldens.py --official-dir <dir>`` (all variants, ~5 min and ~8 GB on 2 cores;
   ``--variants`` to pick some). Last run: 2026-11-24, torch 2.14.1, timm 1.0.31, CPU.

The goldens committed here were generated from these official file versions (the store of the search tool; the
spec describes HEAD fd64a51 and these files agree with it for everything the goldens exercise):
  segmentation: adapter_modules.py @5cf0b2d, vit_adapter.py @fa32e74, beit_adapter.py @5cf0b2d,
                base/vit.py @fa32e74 (layer_scale=True default), base/beit.py @2a55d7c
  detection:    adapter_modules.py @5cf0b2d, vit_adapter.py @e14d75a, beit_adapter.py @e14d75a,
                base/vit.py @d8901a3, base/beit.py @b9c2a70
  ops:          modules/ms_deform_attn.py @efdba25, functions/ms_deform_attn_func.py @dac983f
The only edits to official code are the ``MSDeformAttnFunction`` replacement above and the omission of unused classes
(``HybridEmbed``) and commented-out code. In train mode the official ``nn.SyncBatchNorm`` layers are replaced by
``nn.BatchNorm2d`` with the same state (no process group on CPU); in eval mode they are used as they are.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

from parity.harness import SUBSET, run_case  # noqa: E402
from parity.seeded_state import load_seeded, named_shapes  # noqa: E402
from parity.variants import TRAIN_VARIANTS, VARIANTS, grad_keys  # noqa: E402

SEED = 20240613
GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
OFFICIAL_SOURCES = {
    "segmentation/mmseg_custom/models/backbones/adapter_modules.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "segmentation/mmseg_custom/models/backbones/vit_adapter.py": "fa32e74b2e69d676e263b561353a45871523f701",
    "segmentation/mmseg_custom/models/backbones/beit_adapter.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "segmentation/mmseg_custom/models/backbones/base/vit.py": "fa32e74b2e69d676e263b561353a45871523f701",
    "segmentation/mmseg_custom/models/backbones/base/beit.py": "2a55d7c927138b8add47d8086ad53f7e1de71be8",
    "detection/mmdet_custom/models/backbones/adapter_modules.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "detection/mmdet_custom/models/backbones/vit_adapter.py": "e14d75a5075cfba137d9b188d782944e64927d32",
    "detection/mmdet_custom/models/backbones/beit_adapter.py": "e14d75a5075cfba137d9b188d782944e64927d32",
    "detection/mmdet_custom/models/backbones/base/vit.py": "d8901a32835b98f1dd2e24519e54b1a86b1abf70",
    "detection/mmdet_custom/models/backbones/base/beit.py": "b9c2a7060c1984bb2eaac6d193a2efd2aabb481b",
    "detection/ops/modules/ms_deform_attn.py": "efdba25798722fc1f03861c101553d3ab5b91915",
    "detection/ops/functions/ms_deform_attn_func.py": "dac983f185defb6b39cf382f19d176d892a0d66b",
}


def load_official(official_dir: str) -> dict:
    """Import the four official backbone classes from ``official_dir`` (shims first on sys.path)."""
    for sub in ("detection", "segmentation", "shims"):
        path = os.path.join(official_dir, sub)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is missing; see this script's docstring for the expected layout")
        sys.path.insert(0, path)
    for name in [m for m in sys.modules if m.split(".")[0] in ("mmcv", "mmseg", "mmdet", "mmcv_custom", "ops")]:
        del sys.modules[name]  # make sure the shims, not an installed OpenMMLab, are used
    from mmdet_custom.models.backbones.beit_adapter import BEiTAdapter as DetBEiTAdapter
    from mmdet_custom.models.backbones.vit_adapter import ViTAdapter as DetViTAdapter
    from mmseg_custom.models.backbones.beit_adapter import BEiTAdapter as SegBEiTAdapter
    from mmseg_custom.models.backbones.vit_adapter import ViTAdapter as SegViTAdapter
    return {"seg_vit": SegViTAdapter, "seg_beit": SegBEiTAdapter, "det_vit": DetViTAdapter,
            "det_beit": DetBEiTAdapter}


def sync_bn_to_bn(module: nn.Module) -> nn.Module:
    """Replace every nn.SyncBatchNorm by an nn.BatchNorm2d with the same parameters and statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            sync_bn_to_bn(child)
    return module


def generate(name: str, classes: dict, train: bool = False) -> dict:
    base = TRAIN_VARIANTS.get(name, name)
    cfg = VARIANTS[base]
    torch.manual_seed(0)
    model = classes[cfg["official"]](**cfg["kwargs"])
    load_seeded(model, SEED)
    if train:
        sync_bn_to_bn(model).train()
    else:
        model.eval()
    keys = grad_keys(base)
    result = run_case(model, cfg["input"], SEED, keys)
    return {
        "variant": name,
        "base_variant": base,
        "train": train,
        "official_class": cfg["official"],
        "task": cfg["task"],
        "kwargs": cfg["kwargs"],
        "input_shape": list(cfg["input"]),
        "seed": SEED,
        "subset": SUBSET,
        "state_keys": [f"{k}:{list(s)}:{str(d).replace('torch.', '')}" for k, (s, d) in named_shapes(model).items()],
        "result": result,
        "meta": {"generator": "tests/parity/make_goldens.py", "torch": str(torch.__version__),
                 "date": datetime.date.today().isoformat(), "official_sources": OFFICIAL_SOURCES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-dir", required=True, help="official code + shims (outside this repo)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS) + list(TRAIN_VARIANTS))
    parser.add_argument("--out", default=GOLDEN_DIR)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    classes = load_official(os.path.abspath(args.official_dir))
    os.makedirs(args.out, exist_ok=True)
    for name in args.variants:
        t0 = time.time()
        golden = generate(name, classes, train=name in TRAIN_VARIANTS)
        path = os.path.join(args.out, f"{name}.pt")
        torch.save(golden, path)
        print(f"{name}: loss {golden['result']['loss']:.6g}, {os.path.getsize(path) / 1024:.0f} KiB, "
              f"{time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
