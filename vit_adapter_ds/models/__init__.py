"""Models: backbones (ViT-Adapter, BEiT-Adapter), necks, heads, segmentors and detectors, each registered beside its
class in one registry per family (:mod:`.registry`: ``BACKBONES``, ``NECKS``, ``HEADS``, ``SEGMENTORS``,
``DETECTORS``; ``build_model``, ``task_of``). Importing this package imports the model modules, so every built-in
class is registered before any lookup."""
from . import detectors, heads, segmentor, segmentor_mask2former  # noqa: F401  (they register themselves)
from .backbones import BEiTAdapter, MSDeformAttn, ViTAdapter
from .factory import PRESETS, create_backbone
from .heads import mask2former  # noqa: F401  (registers Mask2FormerHead)

__all__ = ["ViTAdapter", "BEiTAdapter", "MSDeformAttn", "create_backbone", "PRESETS"]
