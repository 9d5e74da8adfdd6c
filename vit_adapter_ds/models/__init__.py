"""Models: backbones (ViT-Adapter, BEiT-Adapter), heads and segmentors."""
from .backbones import BEiTAdapter, MSDeformAttn, ViTAdapter
from .factory import PRESETS, create_backbone

__all__ = ["ViTAdapter", "BEiTAdapter", "MSDeformAttn", "create_backbone", "PRESETS"]
