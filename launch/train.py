#!/usr/bin/env python
"""Train a ViT-Adapter / BEiT-Adapter segmentor with DeepSpeed (see ``vit_adapter_ds/engine/cli.py``).

    deepspeed --num_gpus 2 launch/train.py --ds_config ds_configs/zero2_fp32.json            # synthetic quickstart
    deepspeed launch/train.py --ds_config ds_configs/zero2_bf16.json --config upernet_deit_adapter_tiny_512_160k_ade20k
"""
import sys

from vit_adapter_ds.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
