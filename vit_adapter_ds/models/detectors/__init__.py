"""Detectors: Mask R-CNN with the detection ViT-Adapter / BEiT-Adapter on torchvision's detection parts.

* :class:`~.mask_rcnn.MaskRCNN` (``from_config`` of the official mmdet ``model`` dict), :class:`~.fpn.FPN`,
  :mod:`.keymap` (official mmdet checkpoint keys <-> these modules, both ways).
* HTC++ building blocks so far: :class:`~.extra_attention.ExtraAttention` (neck), :mod:`.soft_nms`,
  :class:`~.semantic_head.FusedSemanticHead`, :mod:`.htc_heads` (``Shared4Conv1FCBBoxHead``, ``HTCMaskHead``,
  the mask information flow). Not implemented yet
  (``detection/configs/htc++/htc++_beit{,v2}_adapter_large_fpn_3x_coco.py``): the ``HybridTaskCascadeRoIHead``
  that drives them (3 interleaved stages, stage loss weights [1, 0.5, 0.25], IoU 0.5/0.6/0.7, target stds
  [0.1, 0.1, 0.2, 0.2] / 2 / 3, SmoothL1(beta=1) box loss, refined boxes re-assigned for the mask branch,
  semantic RoI features (stride 8) added to the box and mask RoI features, test-time mean of the stage class
  scores and of the stage mask probabilities, soft-NMS); the RPN variant (SmoothL1 beta 1/9, ``allowed_border=0``,
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
