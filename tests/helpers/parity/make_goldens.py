"""Generate the official-parity goldens (tests/helpers/parity/goldens/<variant>.pt) from the OFFICIAL ViT-Adapter code.

The official code is never part of this repository. To regenerate, point the script at a checkout of
github.com/czczup/ViT-Adapter (or a folder with the same relative paths for the files listed in
``tests/helpers/parity/layout_official.py``)::

    python tests/helpers/parity/make_goldens.py --official-dir ~/src/ViT-Adapter [--variants vit_adapter_small_det_b1 ...]

It lays out the official backbone files and the stand-ins of ``tests/helpers/parity/shims`` in a temporary work folder
(``tests/helpers/parity/layout_official.py``; ``--work-dir`` keeps it): ``mmseg``/``mmdet`` ``BACKBONES`` registries,
``get_root_logger``, ``mmcv.runner.BaseModule`` (``nn.Module``), ``mmcv_custom`` checkpoint loaders (never called:
``pretrained=None``), and ``MultiScaleDeformableAttention``, the compiled Deformable-DETR op, replaced by the official
pure-PyTorch ``ms_deform_attn_core_pytorch`` (forward) and autograd through it (backward) -- exact, since the CUDA
kernel computes the same bilinear sampling. ``timm.models.layers`` is timm's deprecated alias (timm 1.x). The
official files are copied unchanged. All variants take ~5 min and ~8 GB on 2 cores.

The goldens committed here were generated from these official file versions (the store of the search tool; the
spec describes HEAD fd64a51 and these files agree with it for everything the goldens exercise):
  segmentation: adapter_modules.py @5cf0b2d, vit_adapter.py @fa32e74, beit_adapter.py @5cf0b2d,
                base/vit.py @fa32e74 (layer_scale=True default), base/beit.py @2a55d7c,
                beit_baseline.py @fd64a51 (the beit_large_baseline golden)
  detection:    adapter_modules.py @5cf0b2d, vit_adapter.py @e14d75a, beit_adapter.py @e14d75a,
                base/vit.py @d8901a3, base/beit.py @b9c2a70;
                vit_baseline.py with base/vit.py @fd64a51 (the vit_baseline_small_det golden)
  ops:          modules/ms_deform_attn.py @efdba25, functions/ms_deform_attn_func.py @dac983f
The goldens uniperceiver_adapter_base, uniperceiver_adapter_base_det and vit_adapter_light_base were generated from
a checkout of HEAD fd64a51, whose files there were last changed in 5cf0b2d (2025-05-31):
  segmentation: uniperceiver_adapter.py, base/uniperceiver.py, adapter_modules.py; vit_adapter.py and base/vit.py
                (the light adapter: layer_scale=True default, use_extra_extractor)
  detection:    uniperceiver_adapter.py, base/uniperceiver.py, adapter_modules.py
  ops:          modules/ms_deform_attn.py and functions/ms_deform_attn_func.py @7417df9
The goldens mae_adapter_base_det and dinov2_adapter_small_det (detection vit_adapter.py with layer_scale /
use_extra_extractor / pretrain_size 592) were generated on 2026-12-07 from a HEAD snapshot without git metadata
(files dated 2025-06-03; md5 of detection vit_adapter.py f513a9a9, base/vit.py b377f09a, adapter_modules.py
685eb932), the detection files and ops listed above at HEAD.
The official model runs with oneDNN (mkldnn) convolutions off, as ours does in the parity test
(tests/unit/models/test_official_parity.py): on some CPUs (AMD EPYC) oneDNN sums the spm stem convolution in another
order and the stem / input gradients then differ by ~4e-3 relative from PyTorch's own convolution, even in eval mode;
the goldens listed first were generated on a CPU where both agree.
In train mode the official ``nn.SyncBatchNorm`` layers are replaced by ``nn.BatchNorm2d`` with the same state (no
process group on CPU); in eval mode they are used as they are. Each golden records the torch version and date of
its generation in ``meta``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

from parity.harness import SUBSET, run_case  # noqa: E402
from parity.layout_official import import_official, layout  # noqa: E402
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
    "segmentation/mmseg_custom/models/backbones/beit_baseline.py": "fd64a51 (HEAD)",
    "detection/mmdet_custom/models/backbones/adapter_modules.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "detection/mmdet_custom/models/backbones/vit_adapter.py": "e14d75a5075cfba137d9b188d782944e64927d32",
    "detection/mmdet_custom/models/backbones/beit_adapter.py": "e14d75a5075cfba137d9b188d782944e64927d32",
    "detection/mmdet_custom/models/backbones/base/vit.py": "d8901a32835b98f1dd2e24519e54b1a86b1abf70",
    "detection/mmdet_custom/models/backbones/base/beit.py": "b9c2a7060c1984bb2eaac6d193a2efd2aabb481b",
    "detection/mmdet_custom/models/backbones/vit_baseline.py": "fd64a51 (HEAD; with base/vit.py at HEAD)",
    "detection/ops/modules/ms_deform_attn.py": "efdba25798722fc1f03861c101553d3ab5b91915",
    "detection/ops/functions/ms_deform_attn_func.py": "dac983f185defb6b39cf382f19d176d892a0d66b",
    # the uniperceiver_adapter_base{,_det} and vit_adapter_light_base goldens: a checkout of HEAD fd64a51
    "segmentation/mmseg_custom/models/backbones/uniperceiver_adapter.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "segmentation/mmseg_custom/models/backbones/base/uniperceiver.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "detection/mmdet_custom/models/backbones/uniperceiver_adapter.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "detection/mmdet_custom/models/backbones/base/uniperceiver.py": "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "segmentation/mmseg_custom/models/backbones/vit_adapter.py (vit_adapter_light_base)":
        "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "segmentation/mmseg_custom/models/backbones/base/vit.py (vit_adapter_light_base)":
        "5cf0b2d766adadfce2c9b6a17cb449e0fe21b3b9",
    "detection/ops (uniperceiver_adapter_base{,_det}, vit_adapter_light_base)":
        "7417df9 (modules/ms_deform_attn.py, functions/ms_deform_attn_func.py at HEAD fd64a51)",
    "detection/mmdet_custom/models/backbones/{vit_adapter,adapter_modules,base/vit}.py and detection/ops "
    "(mae_adapter_base_det, dinov2_adapter_small_det)": "a HEAD snapshot (files dated 2025-06-03; md5 of vit_adapter.py "
                                                        "f513a9a9fd7487dec0a81b6f171b1933)",
}


def load_official(official_dir: str, classes, work_dir: str | None = None) -> dict:
    """Lay out ``official_dir`` + shims in ``work_dir`` (default: a temporary folder) and import the official
    classes named in ``classes`` (keys of ``layout_official.OFFICIAL_FILES``)."""
    work_dir = work_dir or tempfile.mkdtemp(prefix="vit_adapter_official_")
    layout(official_dir, work_dir, classes)
    return import_official(work_dir, classes)


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
    with torch.backends.mkldnn.flags(enabled=False):  # PyTorch's own convolutions, as the parity test runs them
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
        "meta": {"generator": "tests/helpers/parity/make_goldens.py", "torch": str(torch.__version__),
                 "date": datetime.date.today().isoformat(), "official_sources": OFFICIAL_SOURCES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-dir", required=True, help="an official ViT-Adapter checkout (outside this repo)")
    parser.add_argument("--work-dir", default=None, help="where to lay out official files + shims (default: temp)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS) + list(TRAIN_VARIANTS))
    parser.add_argument("--out", default=GOLDEN_DIR)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    unknown = sorted(set(args.variants) - set(VARIANTS) - set(TRAIN_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {sorted(VARIANTS) + sorted(TRAIN_VARIANTS)}")
    needed = sorted({VARIANTS[TRAIN_VARIANTS.get(n, n)]["official"] for n in args.variants})
    classes = load_official(os.path.abspath(args.official_dir), needed, args.work_dir)
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
