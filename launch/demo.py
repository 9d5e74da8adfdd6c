#!/usr/bin/env python
"""Run a trained model on an image, a folder of images or a video, or try it in a local web page (``--web``); see
``vit_adapter_ds/apis/demo.py``.

    python launch/demo.py --config RECIPE --checkpoint CKPT --input photos/ --out demo/
    python launch/demo.py --config RECIPE --checkpoint CKPT --input clip.mp4 --out demo/
    python launch/demo.py --config RECIPE --checkpoint CKPT --web
"""
import sys

from vit_adapter_ds.apis.demo import cli

if __name__ == "__main__":
    sys.exit(cli())
