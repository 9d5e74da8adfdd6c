#!/usr/bin/env python
"""Evaluate a checkpoint on shards: segmentation mIoU, or detection box / mask AP (COCO, pycocotools) for a
detection recipe (see ``vit_adapter_ds/engine/eval_cli.py``).

    python launch/eval.py --config upernet_deit_adapter_tiny_512_160k_ade20k --checkpoint model.pth [--aug-test]
    python launch/eval.py --config synthetic_mask_rcnn --checkpoint model.pth --out metrics.json [--out-json res]
    torchrun --nproc_per_node 4 launch/eval.py --config ... --checkpoint ... --shards shards/ade20k/val

Each image is evaluated once over all ranks; rank 0 prints and writes. Bad flags, recipes, checkpoints or shards
end with one ``error:`` line and exit status 2.
"""
import sys

from vit_adapter_ds.engine.eval_cli import eval_main, run_cli

if __name__ == "__main__":
    sys.exit(run_cli(eval_main))
