"""Decode heads with mmseg semantics and state-dict keys: UPerHead and FPNHead (Semantic FPN) (decode heads),
FCNHead (auxiliary head)."""
from .common import BaseDecodeHead, ConvModule, norm_class
from .fcn import FCNHead
from .fpn_head import FPNHead
from .uper import PPM, UPerHead

__all__ = ["UPerHead", "FPNHead", "FCNHead", "PPM", "ConvModule", "BaseDecodeHead", "norm_class"]
