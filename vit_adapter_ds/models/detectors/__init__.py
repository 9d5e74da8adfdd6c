"""Detectors: Mask R-CNN with the detection ViT-Adapter / BEiT-Adapter on torchvision's detection parts.

* :class:`~.mask_rcnn.MaskRCNN` (``from_config`` of the official mmdet ``model`` dict), :class:`~.fpn.FPN`,
  :mod:`.keymap` (official mmdet checkpoint keys <-> these modules, both ways).
* HTC++ building blocks so far: :class:`~.extra_attention.ExtraAttention` (neck) and :mod:`.soft_nms`.
  Not implemented yet (``detection/configs/htc++/htc++_beit{,v2}_adapter_large_fpn_3x_coco.py``):
  ``HybridTaskCascadeRoIHead`` (3 interleaved stages, stage loss weights [1, 0.5, 0.25], IoU 0.5/0.6/0.7,
  target stds /1, /2, /3, class-agnostic ``Shared4Conv1FCBBoxHead`` with SmoothL1(beta=1), ``HTCMaskHead`` with
  mask information flow (``conv_res``), test-time mean of the stage scores and of the stage mask probabilities);
  ``FusedSemanticHead`` (5 inputs fused at stride 8, 4 convs, 183 classes, CE weight 0.2, semantic RoI features
  added to the box and mask RoI features); the RPN variant (SmoothL1 beta 1/9, ``allowed_border=0``,
  2000 proposals); a neck list ``[ExtraAttention, FPN]``; data: InstaBoost, ``Resize`` range mode
  (1600 x 400..1400), COCO-Stuff ``stuffthingmaps`` in the instance shards + ``SegRescale(1/8)``; the TTA
  detector (``HybridTaskCascadeAug``); recipes and key mapping.
"""
from .extra_attention import ExtraAttention
from .fpn import FPN
from .mask_rcnn import MaskRCNN

DETECTORS = {"MaskRCNN": MaskRCNN}
NECKS = {"FPN": FPN, "ExtraAttention": ExtraAttention}

__all__ = ["FPN", "ExtraAttention", "MaskRCNN", "DETECTORS", "NECKS"]
