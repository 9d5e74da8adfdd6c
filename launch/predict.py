#!/usr/bin/env python
"""Predict images: colourised segmentation masks (indexed PNGs), or for a detection recipe the images with the
boxes, class names, scores and masks drawn (see ``vit_adapter_ds/engine/eval_cli.py``).

    python launch/predict.py --config RECIPE --checkpoint model.pth --images img.jpg dir/ --out predictions/
    python launch/predict.py --config synthetic_mask_rcnn --checkpoint model.pth --images dir/ --out drawn/ \
        [--score-thr 0.3] [--save-json] [--image-format jpg]

Under torchrun / srun each rank writes its share of the images (each image once).
"""
import sys

from vit_adapter_ds.engine.eval_cli import predict_main, run_cli

if __name__ == "__main__":
    sys.exit(run_cli(predict_main))
