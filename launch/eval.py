#!/usr/bin/env python
"""Evaluate a segmentor checkpoint (mIoU) on validation shards (see ``vit_adapter_ds/evaluation/cli.py``).

    python launch/eval.py --config upernet_deit_adapter_tiny_512_160k_ade20k --checkpoint model.pth [--aug-test]
    torchrun --nproc_per_node 4 launch/eval.py --config ... --checkpoint ... --shards shards/ade20k/val
"""
import sys

from vit_adapter_ds.evaluation.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
