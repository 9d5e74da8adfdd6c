"""Detectors: Mask R-CNN with the detection ViT-Adapter / BEiT-Adapter on torchvision's detection parts.

* :class:`~.mask_rcnn.MaskRCNN` (``from_config`` of the official mmdet ``model`` dict), :class:`~.fpn.FPN`,
  :class:`~.channel_mapper.ChannelMapperWithPooling` (the official no-FPN neck),
  :mod:`.keymap` (official mmdet checkpoint keys <-> these modules, both ways).
* HTC++: :class:`~.htc.HybridTaskCascade` / :class:`~.htc.HybridTaskCascadeRoIHead` (3 interleaved stages, mask
  information flow, semantic branch, stage-averaged testing with soft-NMS, the RPN's optional soft-NMS
  (``nms.type='soft_nms'`` in ``train_cfg.rpn_proposal`` / ``test_cfg.rpn``; the official recipes use ``'nms'``);
  ``HybridTaskCascade.from_config`` of the official model dict),
  :class:`~.htc_aug.HybridTaskCascadeAug` (the official multi-scale + flip test-time augmentation),
  :class:`~.extra_attention.ExtraAttention`, :class:`~.semantic_head.FusedSemanticHead`, :mod:`.htc_heads`,
  :mod:`.soft_nms`; key maps in :mod:`.keymap`.
* Cascade Mask R-CNN: :class:`~.cascade_mask_rcnn.CascadeRCNN` / :class:`~.cascade_mask_rcnn.CascadeRoIHead`
  (mmdet 2.22 ``CascadeRoIHead``: ``ConvFCBBoxHead`` stages with GIoU on decoded boxes, a mask head per stage,
  stage-averaged scores and masks at test time; ``CascadeRCNN.from_config`` of the official model dict).
* Sparse R-CNN: :class:`~.sparse_rcnn.SparseRCNN` (mmdet 2.22 ``EmbeddingRPNHead`` + ``SparseRoIHead`` of
  ``DIIHead`` stages, Hungarian assignment; boxes only; ``SparseRCNN.from_config`` of the official model dict).
* Mask2Former (COCO panoptic): :class:`~.mask2former_panoptic.Mask2Former` (mmdet ``Mask2Former``: the project's
  Mask2Former head, panoptic targets, ``MaskFormerFusionHead`` panoptic / instance inference).
* One-stage: :class:`~.single_stage.ATSS` (and ``GFL``), box-only, with the dense heads of :mod:`.dense_heads`
  (mmdet 2.22 ``ATSSHead`` / ``GFLHead``, ``ATSSAssigner``); ``from_config`` of the official model dict.

Each detector and neck registers itself (``@DETECTORS.register()``, ``@NECKS.register()``); ``DETECTORS`` and
``NECKS`` are the registries of :mod:`vit_adapter_ds.models.registry` (official ``type`` -> class).
"""
from .cascade_mask_rcnn import CascadeRCNN
from .channel_mapper import ChannelMapperWithPooling
from .extra_attention import ExtraAttention
from .fpn import FPN
from .htc import HybridTaskCascade
from .htc_aug import HybridTaskCascadeAug
from .mask2former_panoptic import Mask2Former
from .mask_rcnn import MaskRCNN
from .single_stage import ATSS, GFL
from .sparse_rcnn import SparseRCNN
from ..registry import DETECTORS, NECKS

__all__ = ["FPN", "ChannelMapperWithPooling", "ExtraAttention", "MaskRCNN", "CascadeRCNN", "HybridTaskCascade",
           "HybridTaskCascadeAug", "SparseRCNN", "Mask2Former", "ATSS", "GFL", "DETECTORS",
           "NECKS"]
