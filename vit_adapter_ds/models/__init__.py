"""Models: backbones (ViT-Adapter, BEiT-Adapter), heads, segmentors, and the tables that build them from recipes
(:mod:`.registry`: ``BACKBONES``, ``HEADS``, ``SEGMENTORS``, ``build_model``)."""
from .backbones import BEiTAdapter, MSDeformAttn, ViTAdapter
from .factory import PRESETS, create_backbone

__all__ = ["ViTAdapter", "BEiTAdapter", "MSDeformAttn", "create_backbone", "PRESETS"]
