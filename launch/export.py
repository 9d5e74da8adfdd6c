#!/usr/bin/env python
"""Export consolidated fp32 weights from a DeepSpeed checkpoint (any ZeRO stage).

    python launch/export.py work_dirs/x/checkpoints/iter_1000 --out model.pth              # mmcv format (default)
    python launch/export.py work_dirs/x --out model.pth                                    # newest complete checkpoint
    python launch/export.py CKPT --out model.safetensors --format safetensors              # plain tensors

``mmcv`` format: ``{'meta': {...}, 'state_dict': {...}}``, the layout of the officially released ViT-Adapter
checkpoints: ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*`` for segmentors; for a detector (the run's
``config.py`` has a detection ``model.type``) the official mmdet keys ``backbone.*``, ``neck.*``, ``rpn_head.*``,
``roi_head.*`` (``vit_adapter_ds/models/detectors/keymap.py``). ``torch`` / ``safetensors``: this package's keys.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch


def official_layout(state_dict: dict, config_py: Path) -> dict:
    """Detectors (by the run's ``model.type``) -> the official mmdet keys; segmentors' keys are already official."""
    from mmengine import Config

    from vit_adapter_ds.models.detectors import DETECTORS
    from vit_adapter_ds.models.detectors.keymap import to_official

    model_type = Config.fromfile(str(config_py)).model.get("type")
    return to_official(state_dict, model_type) if model_type in DETECTORS else state_dict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint tag dir (iter_N), a checkpoints dir or a work dir")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--format", choices=("mmcv", "torch", "safetensors"), default="mmcv")
    args = p.parse_args(argv)

    from vit_adapter_ds.checkpoint_io import consolidate_deepspeed
    from vit_adapter_ds.engine.checkpoint import find_resume, to_mmcv

    try:
        found = find_resume(args.checkpoint, args.checkpoint)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if found is None:
        print(f"error: no complete checkpoint under {args.checkpoint}", file=sys.stderr)
        return 2
    tag_dir, meta = found
    sd = consolidate_deepspeed(tag_dir)  # read with weights_only=True, never unpickling objects
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(out))  # no shared storage (BEiT indexes)
    elif args.format == "torch":
        torch.save(sd, out)
    else:
        work_dir = tag_dir.parent.parent
        info = {"iter": meta.get("iteration"), "exported_from": str(tag_dir), "time": time.asctime(),
                "zero_stage": meta.get("zero_stage"), "precision": meta.get("precision")}
        if (work_dir / "config.py").is_file():
            info["config"] = (work_dir / "config.py").read_text()
            sd = official_layout(sd, work_dir / "config.py")
        torch.save(to_mmcv(sd, info), out)
    print(json.dumps({"checkpoint": str(tag_dir), "out": str(out), "format": args.format, "tensors": len(sd)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
