"""Detectors: Mask R-CNN with the detection ViT-Adapter / BEiT-Adapter on torchvision's detection parts.

* :class:`~.mask_rcnn.MaskRCNN` (``from_config`` of the official mmdet ``model`` dict), :class:`~.fpn.FPN`,
  :mod:`.keymap` (official mmdet checkpoint keys <-> these modules, both ways).
* HTC++: :class:`~.htc.HybridTaskCascade` / :class:`~.htc.HybridTaskCascadeRoIHead` (3 interleaved stages, mask
  information flow, semantic branch, stage-averaged testing with soft-NMS; ``HybridTaskCascade.from_config`` of the
  official model dict), :class:`~.extra_attention.ExtraAttention`, :class:`~.semantic_head.FusedSemanticHead`,
  :mod:`.htc_heads`, :mod:`.soft_nms`; key maps in :mod:`.keymap`. Still missing for HTC++ training as the
  official recipes: InstaBoost, COCO-Stuff ``stuffthingmaps`` in the instance shards + ``SegRescale(1/8)`` (the
  semantic labels), the BEiT-L recipe variant whose RPN uses soft-NMS, the TTA detector
  (``HybridTaskCascadeAug``) and the engine wiring.
"""
from .extra_attention import ExtraAttention
from .fpn import FPN
from .mask_rcnn import MaskRCNN

DETECTORS = {"MaskRCNN": MaskRCNN}
NECKS = {"FPN": FPN, "ExtraAttention": ExtraAttention}

__all__ = ["FPN", "ExtraAttention", "MaskRCNN", "DETECTORS", "NECKS"]
