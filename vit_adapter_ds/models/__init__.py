"""Models: backbones (ViT-Adapter, BEiT-Adapter), heads and segmentors."""
from .backbones import BEiTAdapter, MSDeformAttn, ViTAdapter

__all__ = ["ViTAdapter", "BEiTAdapter", "MSDeformAttn"]
