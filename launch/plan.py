#!/usr/bin/env python
"""Will a recipe fit on a cluster, and how fast will it run? (``vit_adapter_ds/plan``; ``--help`` for the options)

    python launch/plan.py mask2former_beit_adapter_large_896_80k_ade20k_ss --gpus 16 --gpu-memory 80 --nodes 2 \\
        --ds_config ds_configs/zero2_bf16.json
"""
import sys

from vit_adapter_ds.engine.eval_cli import run_cli
from vit_adapter_ds.plan.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
