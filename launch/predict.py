#!/usr/bin/env python
"""Write colourised segmentation masks (indexed PNGs) for images (see ``vit_adapter_ds/evaluation/cli.py``).

    python launch/predict.py --config RECIPE --checkpoint model.pth --images img.jpg dir/ --out predictions/
"""
import sys

from vit_adapter_ds.evaluation.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
