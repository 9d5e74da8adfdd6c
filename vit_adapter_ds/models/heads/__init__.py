"""Decode heads with mmseg semantics and state-dict keys: UPerHead (decode head), FCNHead (auxiliary head)."""
from .common import BaseDecodeHead, ConvModule, norm_class
from .fcn import FCNHead
from .uper import PPM, UPerHead

__all__ = ["UPerHead", "FCNHead", "PPM", "ConvModule", "BaseDecodeHead", "norm_class"]
