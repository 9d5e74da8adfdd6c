"""Detectors: Mask R-CNN with the detection ViT-Adapter / BEiT-Adapter on torchvision's detection parts."""
from .fpn import FPN
from .mask_rcnn import MaskRCNN

DETECTORS = {"MaskRCNN": MaskRCNN}

__all__ = ["FPN", "MaskRCNN", "DETECTORS"]
