"""Mask R-CNN (mmdet 2.x ``MaskRCNN`` of the official ``mask_rcnn_r50_fpn`` base config) on torchvision's
maintained detection parts: ``RegionProposalNetwork`` / ``RPNHead``, ``RoIHeads``, ``TwoMLPHead``,
``FastRCNNPredictor``, ``MaskRCNNHeads`` / ``MaskRCNNPredictor``, ``BoxCoder``, ``Matcher``,
``BalancedPositiveNegativeSampler``, ``batched_nms`` and ``roi_align``.

Where mmdet and torchvision differ, the mmdet behaviour of the official config is kept:

* anchors: mmdet ``AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides=[4, 8, 16, 32, 64])`` -- fixed strides
  (torchvision infers them as ``image // feature`` size, wrong for the max-pool level of odd sizes) and unrounded
  base anchors (torchvision rounds them);
* box losses: ``L1Loss`` (torchvision: smooth L1 with beta 1/9), summed over positives and divided by the number
  of sampled anchors / RoIs as mmdet's ``avg_factor``;
* assigners: ``MaxIoUAssigner`` (:class:`MaxIoUMatcher`): low-quality matches only at IoU >= ``min_pos_iou``
  (0.3 RPN, 0.5 R-CNN), and every anchor / proposal at a box's best IoU goes to *that* box, later boxes overwriting
  earlier ones (torchvision keeps the anchor's own best box);
* RPN anchor targets (:meth:`RPN.assign_targets_to_anchors`): anchors outside an image's own padded size
  (mmdet's ``valid_flags`` of ``pad_shape``) and, with ``allowed_border >= 0``, beyond the image by more than
  ``allowed_border`` are removed *before* the assignment (mmdet ``anchor_inside_flags``): they are neither positive
  nor negative and never take a box in the low-quality step;
* RoI pooling: mmcv ``RoIAlign(aligned=True)`` with mmdet's level mapping (:mod:`.roi_extractor`);
* mask targets: the ground-truth bitmaps, zero-padded to the image's ``pad_shape`` (mmdet's ``Pad`` step), cropped
  with ``roi_align(aligned=True)`` inside the RoIs clipped to the padded bitmap and binarised at 0.5 (mmdet
  ``mask_target_single`` / ``BitmapMasks.crop_and_resize``); torchvision uses unbinarised ``aligned=False`` crops
  of unpadded bitmaps;
* initialisation: mmdet's (RPN convs normal 0.01; shared FCs Xavier uniform; ``fc_cls`` normal 0.01,
  ``fc_reg`` normal 0.001; mask convs, ``upsample`` and ``conv_logits`` Kaiming normal fan-out, biases 0);
* mask pasting: mmdet's ``_do_paste_mask`` (:func:`paste_masks`: ``grid_sample`` of the 28 x 28 probabilities at
  the pixel centres inside each box, then ``>= mask_thr_binary``); torchvision's ``paste_masks_in_image`` pads and
  expands the box first.

The upgraded Mask R-CNN (Li et al., ``upgraded_mask_rcnn/mask_rcnn_mae_adapter_base_lsj_fpn_*ep_coco.py``) changes
four parts, each as mmdet 2.22 builds it: the FPN's convs followed by a norm (``neck.norm_cfg``, :mod:`.fpn`);
``rpn_head.num_convs=2`` (mmdet ``RPNHead``: ``num_convs`` ConvModules conv + ReLU, ``rpn_conv.{i}.conv``,
= torchvision ``RPNHead(conv_depth)``, same init normal 0.01); ``Shared4Conv1FCBBoxHead`` (:class:`ConvFCBBoxHead`
with 4 shared 3x3 convs + norm + ReLU and 1 FC, official key names, its mmdet-order outputs put in torchvision's
order by :class:`TorchvisionOrder`); ``FCNMaskHead(norm_cfg)`` (torchvision ``MaskRCNNHeads(norm_layer)``: conv
without bias -> norm -> ReLU). ``MMSyncBN`` is trained as SyncBN (:mod:`~vit_adapter_ds.models.norm`; mmcv's
``stats_mode='default'`` averages the ranks' statistics with equal weights, torch's SyncBN by their counts: equal
when every rank normalises as many RoIs, e.g. the box head's sampled 512 per image).

Class indices: targets and predictions use 0-based class indices ``0 .. num_classes - 1`` (mmdet's labels); the
torchvision predictors have ``num_classes + 1`` outputs with background at index 0 (mmdet puts it last, see
:mod:`.keymap`).

Train mode: ``model(images, targets)`` with ``images`` (B, 3, H, W) normalised and padded to a multiple of 32 and
``targets`` a list of dicts ``boxes`` (N, 4) float x1y1x2y2 in input pixels, ``labels`` (N,) int64 class indices,
``masks`` (N, H', W') uint8 bitmaps (H' x W' at least the unpadded image, aligned at the top-left; what lies
beyond ``img_shape`` is not read) and optionally ``img_shape`` (h, w) of the unpadded image (default: the padded
size) and ``pad_shape`` (h, w), the image padded by its own ``Pad(size_divisor=32)`` step before the batch padding
(default: ``img_shape`` rounded up to multiples of 32, :func:`padded_shape`). Returns a dict of scalar tensors:
``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``, ``loss_mask``, their sum ``loss`` and the
detached metric ``acc`` (R-CNN classification accuracy, %).

Eval: :meth:`MaskRCNN.predict` returns per image ``boxes`` (K, 4), ``labels`` (K,), ``scores`` (K,) and
``masks`` (K, h, w) bool, in original-image pixels when ``ori_shapes`` is given.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import roi_align

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, Raw, parse
from ..heads.common import ConvModule
from ..norm import norm_class, norm_from_cfg
from ..registry import DETECTORS, NECKS, build_detection_backbone
from .fpn import FPN
from .roi_extractor import LevelRoIAlign
from .semantic_head import ConvReLU


class FixedStrideAnchorGenerator(AnchorGenerator):
    """mmdet 2.x ``AnchorGenerator`` (``center_offset=0``): base anchor sizes ``stride * scale`` per level, ratio
    ``h / w``, ratio-major order, not rounded; anchors at ``(x * stride, y * stride)``."""

    def __init__(self, strides=(4, 8, 16, 32, 64), scales=(8,), ratios=(0.5, 1.0, 2.0)):
        self.strides = tuple(int(s) for s in strides)
        sizes = tuple(tuple(float(s * k) for k in scales) for s in self.strides)
        super().__init__(sizes, (tuple(float(r) for r in ratios),) * len(self.strides))

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides")
        dtype, device = torch.float32, feature_maps[0].device  # box math in float32 (bf16/fp16 models too)
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]

    def valid_flags(self, grid_sizes, pad_shape, device=None) -> torch.Tensor:
        """mmdet ``AnchorGenerator.valid_flags``: (num anchors,) bool, in the order of :meth:`forward`'s anchors,
        True for the anchors whose grid position ``(x, y)`` of a level of stride ``s`` lies inside the image's
        padded size ``pad_shape`` (h, w): ``x < ceil(w / s)`` and ``y < ceil(h / s)``."""
        ph, pw = (int(v) for v in pad_shape)
        flags = []
        for (fh, fw), s, a in zip(grid_sizes, self.strides, self.num_anchors_per_location()):
            vh, vw = min(-(-ph // s), int(fh)), min(-(-pw // s), int(fw))
            vy = torch.arange(int(fh), device=device) < vh
            vx = torch.arange(int(fw), device=device) < vw
            flags.append((vy[:, None] & vx[None, :]).reshape(-1, 1).expand(-1, a).reshape(-1))
        return torch.cat(flags)


def padded_shape(hw, divisor: int = 32) -> tuple[int, int]:
    """mmdet ``Pad(size_divisor=divisor)``'s ``pad_shape`` of an image of size ``hw`` (h, w): each side rounded up
    to a multiple of ``divisor``."""
    return tuple(-(-int(v) // divisor) * divisor for v in hw)


def pad_gt_masks(masks: torch.Tensor, img_shape, pad_shape) -> torch.Tensor:
    """mmdet ``Pad``'s ``BitmapMasks.pad``: the (N, H', W') bitmaps' top-left ``img_shape`` part, zero-padded (or
    cut) to ``pad_shape`` (h, w) -> (N, pad_h, pad_w), same dtype."""
    ph, pw = (int(v) for v in pad_shape)
    h = min(int(img_shape[0]), masks.shape[-2], ph)
    w = min(int(img_shape[1]), masks.shape[-1], pw)
    out = masks.new_zeros((masks.shape[0], ph, pw))
    out[:, :h, :w] = masks[:, :h, :w]
    return out


class FloatRPNHead(RPNHead):
    """torchvision ``RPNHead`` whose outputs are float32, so that proposals are decoded in float32 also when the
    model runs in bf16 / fp16 (torchvision's ``BoxCoder`` decodes in the dtype of the deltas)."""

    def forward(self, x):
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class FloatFastRCNNPredictor(FastRCNNPredictor):
    """torchvision ``FastRCNNPredictor`` with float32 outputs (box decoding and losses in float32)."""

    def forward(self, x):
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


class MaxIoUMatcher(det_utils.Matcher):
    """torchvision ``Matcher`` with mmdet ``MaxIoUAssigner.assign_wrt_overlaps`` (``gt_max_assign_all=True``):
    negatives at max IoU < ``neg_iou_thr``, positives (the best box) at max IoU >= ``pos_iou_thr``; then, with
    ``match_low_quality``, for each box ``i`` in order whose best IoU is >= ``min_pos_iou``, every anchor/proposal
    at exactly that IoU with box ``i`` is assigned to box ``i`` (a later box overwrites an earlier one, and the
    anchor's own best box is not kept)."""

    def __init__(self, pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality=True):
        super().__init__(pos_iou_thr, neg_iou_thr, allow_low_quality_matches=match_low_quality)
        self.min_pos_iou = float(min_pos_iou)

    def set_low_quality_matches_(self, matches, all_matches, match_quality_matrix):
        best, _ = match_quality_matrix.max(dim=1)
        gt, anchor = torch.where((match_quality_matrix == best[:, None]) & (best >= self.min_pos_iou)[:, None])
        last = torch.full_like(matches, -1).scatter_reduce_(0, anchor, gt, reduce="amax")  # the last box wins
        hit = last >= 0
        matches[hit] = last[hit]


class RPN(RegionProposalNetwork):
    """torchvision ``RegionProposalNetwork`` with mmdet ``RPNHead`` losses (sigmoid CE + L1, or SmoothL1 with
    ``smooth_l1_beta``, weighted), mmdet's anchor targets (:meth:`assign_targets_to_anchors`: the valid flags of
    each image's ``pad_shape`` and ``allowed_border``, ``-1``: no border rule) and the proposal NMS ``nms_type``:
    ``'nms'`` (torchvision's, per level) or ``'soft_nms'`` (the HTC++ BEiT-L recipe's
    ``nms=dict(type='soft_nms', iou_threshold=0.7)``: mmcv linear soft-NMS per level, ``min_score`` 1e-3, the
    proposals ranked by their decayed objectness)."""

    def __init__(self, in_channels=256, *, anchor_generator, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                 match_low_quality=True, num=256, pos_fraction=0.5, train_nms_pre=2000, train_max_per_img=1000,
                 train_nms_iou=0.7, test_nms_pre=1000, test_max_per_img=1000, test_nms_iou=0.7,
                 target_stds=(1.0, 1.0, 1.0, 1.0), loss_cls_weight=1.0, loss_bbox_weight=1.0,
                 smooth_l1_beta=None, allowed_border=-1, nms_type="nms", num_convs=1):
        # num_convs 3x3 conv + ReLU layers (mmdet RPNHead.num_convs; torchvision's conv_depth)
        head = FloatRPNHead(in_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=num_convs)
        super().__init__(anchor_generator, head, pos_iou_thr, neg_iou_thr, num, pos_fraction,
                         dict(training=train_nms_pre, testing=test_nms_pre),
                         dict(training=train_max_per_img, testing=test_max_per_img), train_nms_iou)
        if train_nms_iou != test_nms_iou:
            raise ValueError("torchvision's RPN has one NMS threshold for training and testing")
        self.proposal_matcher = MaxIoUMatcher(pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality)
        self.box_coder = det_utils.BoxCoder(tuple(1.0 / s for s in target_stds))
        self.loss_cls_weight, self.loss_bbox_weight = float(loss_cls_weight), float(loss_bbox_weight)
        self.smooth_l1_beta = smooth_l1_beta  # None: L1 (Mask R-CNN); HTC++: SmoothL1 with beta 1/9
        self.allowed_border = allowed_border  # >= 0: anchors beyond the image by more are removed (mmdet)
        self._image_sizes = self._grid_sizes = None  # of the current forward (read by assign_targets_to_anchors)
        if nms_type not in ("nms", "soft_nms"):
            raise ValueError(f"nms_type must be 'nms' or 'soft_nms', got {nms_type!r}")
        self.nms_type = nms_type

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        if self.nms_type == "nms":
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        from torchvision.ops import boxes as box_ops

        from .soft_nms import batched_soft_nms

        n = proposals.shape[0]
        objectness = objectness.detach().reshape(n, -1)
        levels = torch.cat([torch.full((k,), i, dtype=torch.int64, device=proposals.device)
                            for i, k in enumerate(num_anchors_per_level)]).reshape(1, -1).expand_as(objectness)
        top = self._get_top_n_idx(objectness, num_anchors_per_level)  # nms_pre per level
        rows = torch.arange(n, device=proposals.device)[:, None]
        objectness, levels, proposals = objectness[rows, top], levels[rows, top], proposals[rows, top]
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape in zip(proposals, torch.sigmoid(objectness), levels, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep, decayed = batched_soft_nms(boxes, scores, lvl, iou_threshold=self.nms_thresh)
            keep, decayed = keep[:self.post_nms_top_n()], decayed[:self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(decayed)
        return final_boxes, final_scores

    def forward(self, images, features, targets=None):
        self._image_sizes = images.image_sizes
        self._grid_sizes = [tuple(f.shape[-2:]) for f in features.values()]
        return super().forward(images, features, targets)

    def inside_flags(self, anchors: torch.Tensor, image_size, pad_shape=None) -> torch.Tensor:
        """mmdet ``anchor_inside_flags``: (num anchors,) bool, the anchors of one image that take part in the
        assignment: valid (:meth:`FixedStrideAnchorGenerator.valid_flags` of ``pad_shape``, default
        :func:`padded_shape` of ``image_size``; every anchor when the grid sizes of the current forward are not
        known) and, with ``allowed_border >= 0``, ``x1, y1 >= -allowed_border``, ``x2 < w + allowed_border``,
        ``y2 < h + allowed_border`` for ``image_size`` (h, w), the unpadded image."""
        n = anchors.shape[0]
        flags = torch.ones(n, dtype=torch.bool, device=anchors.device)
        gen = self.anchor_generator
        if self._grid_sizes is not None and hasattr(gen, "valid_flags"):
            valid = gen.valid_flags(self._grid_sizes, pad_shape or padded_shape(image_size), anchors.device)
            if valid.numel() == n:
                flags = valid
        if self.allowed_border >= 0:
            b, (h, w) = self.allowed_border, image_size
            flags = flags & (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & \
                (anchors[:, 3] < h + b)
        return flags

    def assign_targets_to_anchors(self, anchors, targets):
        """Per image: labels (num anchors,) float 1 positive / 0 negative / -1 neither, and the matched box of each
        anchor (the anchor itself where no box applies). As mmdet ``AnchorHead._get_targets_single``, only the
        :meth:`inside_flags` anchors are assigned (:class:`MaxIoUMatcher`); the others are -1. ``targets[i]``
        may carry ``pad_shape``."""
        labels, matched_boxes = [], []
        sizes = self._image_sizes or [None] * len(anchors)
        for a, t, size in zip(anchors, targets, sizes):
            if size is None:
                raise ValueError("the RPN assigns anchors inside forward() (image sizes unknown)")
            pad = t.get("pad_shape")
            inside = self.inside_flags(a, size, tuple(int(v) for v in pad) if pad is not None else None)
            lab = torch.full((a.shape[0],), -1.0, dtype=torch.float32, device=a.device)
            box = a.clone()
            gt = t["boxes"]
            if gt.numel() == 0:
                lab[inside] = 0.0
            elif inside.any():
                m = self.proposal_matcher(self.box_similarity(gt, a[inside]))
                sub = (m >= 0).to(torch.float32)
                sub[m == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
                sub[m == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
                lab[inside] = sub
                box[inside] = gt[m.clamp(min=0)].to(box.dtype)
            labels.append(lab)
            matched_boxes.append(box)
        return labels, matched_boxes

    def sampled_anchors(self, labels):
        """(positive, negative) rows of the images' concatenated anchors drawn by the fg / bg sampler."""
        pos, neg = self.fg_bg_sampler(labels)
        return torch.where(torch.cat(pos, dim=0))[0], torch.where(torch.cat(neg, dim=0))[0]

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.sampled_anchors(labels)
        sampled = torch.cat([pos, neg], dim=0)
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        n = max(1, sampled.numel())
        if self.smooth_l1_beta is None:
            box_loss = F.l1_loss(pred_bbox_deltas[pos], regression_targets[pos], reduction="sum") / n
        else:
            box_loss = F.smooth_l1_loss(pred_bbox_deltas[pos], regression_targets[pos], beta=self.smooth_l1_beta,
                                        reduction="sum") / n
        cls_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled],
                                                      reduction="sum") / n
        return self.loss_cls_weight * cls_loss, self.loss_bbox_weight * box_loss


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int, threshold: float = 0.5):
    """mmdet 2.x ``_do_paste_mask`` (``skip_empty``) + binarisation: (K, M, M) mask probabilities of boxes (K, 4)
    (x1y1x2y2, image pixels) -> (K, height, width) bool. Each pixel ``(x, y)`` inside the box's integer hull
    (+ 1 pixel) samples the probabilities bilinearly (``align_corners=False``, zero outside) at
    ``((x + 0.5 - x1) / (x2 - x1)) * 2 - 1`` (same for y)."""
    out = torch.zeros(probs.shape[0], height, width, dtype=torch.bool, device=probs.device)
    for k in range(probs.shape[0]):
        x1, y1, x2, y2 = boxes[k].tolist()
        x0i, y0i = max(int(math.floor(x1)) - 1, 0), max(int(math.floor(y1)) - 1, 0)
        x1i, y1i = min(int(math.ceil(x2)) + 1, width), min(int(math.ceil(y2)) + 1, height)
        if x1i <= x0i or y1i <= y0i:
            continue
        ys = (torch.arange(y0i, y1i, device=probs.device, dtype=torch.float32) + 0.5 - y1) / max(y2 - y1, 1e-6) * 2 - 1
        xs = (torch.arange(x0i, x1i, device=probs.device, dtype=torch.float32) + 0.5 - x1) / max(x2 - x1, 1e-6) * 2 - 1
        grid = torch.stack([xs[None, :].expand(len(ys), len(xs)), ys[:, None].expand(len(ys), len(xs))], dim=-1)
        m = F.grid_sample(probs[k][None, None].float(), grid[None], align_corners=False)[0, 0]
        out[k, y0i:y1i, x0i:x1i] = m >= threshold
    return out


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int) -> torch.Tensor:
    """mmdet ``mask_target_single`` (``BitmapMasks.crop_and_resize``, binarised): (K, size, size) float 0/1
    targets of the matched ground-truth bitmaps (N, H, W) inside ``boxes`` (K, 4), the boxes clipped to
    ``[0, W] x [0, H]`` first, ``roi_align(aligned=True, sampling_ratio=0)`` in float32, ``>= 0.5``. mmdet's
    bitmaps are zero-padded to the image's ``pad_shape`` (:func:`pad_gt_masks`); pass them so."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, size, size)
    h, w = gt_masks.shape[-2:]
    boxes = boxes.float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    rois = torch.cat([matched[:, None].to(boxes.dtype), boxes], dim=1)
    crops = roi_align(gt_masks[:, None].float(), rois, (size, size), 1.0, 0, aligned=True)[:, 0]
    return (crops >= 0.5).float()


def train_targets(images: torch.Tensor, targets, sizes, label_offset: int = 0) -> list[dict]:
    """The detectors' per-image training targets on ``images``' device: ``boxes`` (N, 4) float32, ``labels``
    (N,) int64 (+ ``label_offset``), ``pad_shape`` (the target's, default :func:`padded_shape` of the image size
    in ``sizes``) and ``masks`` cut to the image and zero-padded to ``pad_shape`` (:func:`pad_gt_masks`)."""
    out = []
    for t, size in zip(targets, sizes):
        boxes = t["boxes"].to(device=images.device, dtype=torch.float32).reshape(-1, 4)
        labels = t["labels"].to(device=images.device, dtype=torch.int64).reshape(-1) + label_offset
        masks = t["masks"].to(images.device)
        if masks.shape[0] != boxes.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes but {masks.shape[0]} masks")
        pad = tuple(int(v) for v in t["pad_shape"][:2]) if t.get("pad_shape") is not None else padded_shape(size)
        out.append({"boxes": boxes, "labels": labels, "masks": pad_gt_masks(masks, size, pad), "pad_shape": pad})
    return out


class ConvFCBBoxHead(nn.Module):
    """mmdet ``ConvFCBBoxHead`` with shared branches only: ``num_shared_convs`` 3x3 ConvModules (conv -> BN /
    SyncBN -> ReLU, mmcv keys ``shared_convs.i.conv`` / ``.bn``; without ``norm`` conv with bias -> ReLU), flatten,
    ``num_shared_fcs`` FC + ReLU (``shared_fcs.i``), ``fc_cls`` (``num_classes + 1``, background last) and ``fc_reg``
    (4 or 4 ``num_classes``). Init as mmdet: convs Kaiming normal fan-out (norm weight 1, bias 0), shared FCs Xavier
    uniform, ``fc_cls`` normal 0.01, ``fc_reg`` normal 0.001, biases 0. ``forward(x (N, C, S, S))`` ->
    (cls_score, bbox_pred)."""

    def __init__(self, in_channels: int = 256, conv_out_channels: int = 256, fc_out_channels: int = 1024,
                 roi_feat_size: int = 7, num_classes: int = 80, num_shared_convs: int = 4, num_shared_fcs: int = 1,
                 reg_class_agnostic: bool = False, norm: str | None = "syncbn"):
        super().__init__()
        if num_shared_convs + num_shared_fcs == 0:
            raise ValueError("ConvFCBBoxHead needs shared convs or shared fcs")
        self.num_classes, self.reg_class_agnostic = int(num_classes), bool(reg_class_agnostic)
        convs = []
        for i in range(num_shared_convs):
            cin = in_channels if i == 0 else conv_out_channels
            if norm is None:
                conv = ConvReLU(cin, conv_out_channels, 3)
                nn.init.kaiming_normal_(conv.conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.conv.bias)
            else:
                conv = ConvModule(cin, conv_out_channels, 3, padding=1, norm=norm)
            convs.append(conv)
        self.shared_convs = nn.ModuleList(convs)
        last = (conv_out_channels if num_shared_convs else in_channels) * roi_feat_size ** 2
        fcs = []
        for i in range(num_shared_fcs):
            fcs.append(nn.Linear(last if i == 0 else fc_out_channels, fc_out_channels))
        self.shared_fcs = nn.ModuleList(fcs)
        last = fc_out_channels if num_shared_fcs else last
        self.fc_cls = nn.Linear(last, self.num_classes + 1)
        self.fc_reg = nn.Linear(last, 4 if self.reg_class_agnostic else 4 * self.num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x):
        for conv in self.shared_convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def deltas_at(self, bbox_pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, 4) deltas of each RoI at ``labels`` (N,) (mmdet ``regress_by_class``'s gather; class-agnostic: all)."""
        if self.reg_class_agnostic:
            return bbox_pred.reshape(-1, 4)
        per_class = bbox_pred.reshape(bbox_pred.shape[0], bbox_pred.shape[1] // 4, 4)
        return per_class[torch.arange(len(labels), device=labels.device), labels]


class TorchvisionOrder(nn.Module):
    """The box predictor of a :class:`ConvFCBBoxHead` box head inside torchvision's ``RoIHeads``: the head gives
    mmdet-order ``(cls_score (N, C + 1) background last, bbox_pred (N, 4 C))``; this returns float32 ``(logits with
    the background first, deltas (N, 4 (C + 1)) with 4 zeros for the background, never read)``. No parameters."""

    def forward(self, x):
        cls, reg = x
        cls, reg = cls.float(), reg.float()
        return torch.cat([cls[:, -1:], cls[:, :-1]], dim=1), torch.cat([reg.new_zeros(reg.shape[0], 4), reg], dim=1)


def foreground_rows(labels: torch.Tensor) -> torch.Tensor:
    """Rows of the foreground (``label > 0``) among sampled RoIs: ``torch.where(labels > 0)[0]`` (the one
    data-dependent selection of the R-CNN losses; the capacity planner replaces it by the sampler's sizes)."""
    return torch.where(labels > 0)[0]


class MaskRCNNRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` (box + mask branches) with mmdet ``StandardRoIHead`` losses: CE classification,
    L1 class-specific box regression (``/ num sampled RoIs``), binary CE on the binarised mask targets."""

    def __init__(self, *, box_roi_pool, box_head, box_predictor, mask_roi_pool, mask_head, mask_predictor,
                 pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True, num=512,
                 pos_fraction=0.25, target_stds=(0.1, 0.1, 0.2, 0.2), score_thr=0.05, nms_iou=0.5, max_per_img=100,
                 mask_size=28, mask_thr_binary=0.5, loss_cls_weight=1.0, loss_bbox_weight=1.0,
                 loss_mask_weight=1.0):
        super().__init__(box_roi_pool, box_head, box_predictor, pos_iou_thr, neg_iou_thr, num, pos_fraction,
                         tuple(1.0 / s for s in target_stds), score_thr, nms_iou, max_per_img,
                         mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        self.proposal_matcher = MaxIoUMatcher(pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality)
        self.mask_size, self.mask_thr_binary = int(mask_size), float(mask_thr_binary)
        self.loss_cls_weight, self.loss_bbox_weight = float(loss_cls_weight), float(loss_bbox_weight)
        self.loss_mask_weight = float(loss_mask_weight)

    def _box_losses(self, class_logits, box_regression, labels, regression_targets):
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        n = max(1, labels.numel())
        loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / n
        pos = foreground_rows(labels)
        box_regression = box_regression.reshape(box_regression.shape[0], -1, 4)
        loss_bbox = F.l1_loss(box_regression[pos, labels[pos]], regression_targets[pos], reduction="sum") / n
        acc = (class_logits.detach().argmax(1) == labels).float().mean() * 100 if labels.numel() else \
            class_logits.new_zeros(())
        return self.loss_cls_weight * loss_cls, self.loss_bbox_weight * loss_bbox, acc

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_feats)
        if not self.training:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals,
                                                                image_shapes)
            result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
            for prob, r in zip(maskrcnn_inference(mask_logits, labels), result):
                r["masks"] = prob
            return result, {}
        loss_cls, loss_bbox, acc = self._box_losses(class_logits, box_regression, labels, regression_targets)
        pos_boxes, pos_labels, pos_targets = [], [], []
        for p, m, lab, t in zip(proposals, matched_idxs, labels, targets):
            keep = foreground_rows(lab)
            pos_boxes.append(p[keep])
            pos_labels.append(lab[keep])
            pos_targets.append(mask_targets(t["masks"], p[keep], m[keep], self.mask_size))
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, pos_boxes, image_shapes)))
        pos_labels = torch.cat(pos_labels)
        if pos_labels.numel() == 0:
            loss_mask = mask_logits.sum() * 0
        else:
            picked = mask_logits[torch.arange(pos_labels.numel(), device=pos_labels.device), pos_labels]
            loss_mask = F.binary_cross_entropy_with_logits(picked.float(), torch.cat(pos_targets))
        return [], {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_mask": self.loss_mask_weight * loss_mask,
                    "acc": acc}


def _init_box_branch(box_head: TwoMLPHead, predictor: FastRCNNPredictor) -> None:
    for fc in (box_head.fc6, box_head.fc7):
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


def _box(v):
    return tuple(float(x) for x in v)


_LOSS_CE = lambda prefix, use_sigmoid: {  # noqa: E731
    "type": Fixed("CrossEntropyLoss"), "use_sigmoid": Fixed(use_sigmoid), "use_mask": Fixed(False),
    "reduction": Fixed("mean"), "class_weight": Fixed(None), "ignore_index": Fixed(None),
    "loss_weight": Param(prefix + "_weight", (float,), 1.0)}
_LOSS_L1 = lambda prefix: {  # noqa: E731
    "type": Fixed("L1Loss"), "reduction": Fixed("mean"), "loss_weight": Param(prefix + "_weight", (float,), 1.0)}
_CODER = lambda prefix, stds: {  # noqa: E731
    "type": Fixed("DeltaXYWHBBoxCoder"), "target_means": Fixed([0.0, 0.0, 0.0, 0.0]),
    "target_stds": Param(prefix + "_target_stds", (list, tuple), stds), "clip_border": Fixed(True)}
_ROI_EXTRACTOR = lambda prefix, size: {  # noqa: E731
    "type": Fixed("SingleRoIExtractor"),
    "roi_layer": {"type": Fixed("RoIAlign"), "output_size": Param(prefix + "_roi_size", (int,), size),
                  "sampling_ratio": Param(prefix + "_sampling_ratio", (int,), 0),
                  "aligned": Param(prefix + "_aligned", (bool,), True), "pool_mode": Fixed("avg"),
                  "use_torchvision": Fixed(False)},
    "out_channels": Param(prefix + "_roi_channels", (int,), 256),
    "featmap_strides": Param(prefix + "_featmap_strides", (list, tuple), (4, 8, 16, 32)),
    "finest_scale": Param(prefix + "_finest_scale", (int,), 56), "init_cfg": Fixed(None)}
_ASSIGNER = lambda prefix, pos, neg, mn: {  # noqa: E731
    "type": Fixed("MaxIoUAssigner"), "pos_iou_thr": Param(prefix + "_pos_iou_thr", (float,), pos),
    "neg_iou_thr": Param(prefix + "_neg_iou_thr", (float,), neg),
    "min_pos_iou": Param(prefix + "_min_pos_iou", (float,), mn),
    "match_low_quality": Param(prefix + "_match_low_quality", (bool,), True), "ignore_iof_thr": Fixed(-1),
    "gt_max_assign_all": Fixed(True)}
_SAMPLER = lambda prefix, num, frac, add_gt: {  # noqa: E731
    "type": Fixed("RandomSampler"), "num": Param(prefix + "_num", (int,), num),
    "pos_fraction": Param(prefix + "_pos_fraction", (float,), frac), "neg_pos_ub": Fixed(-1),
    "add_gt_as_proposals": Fixed(add_gt)}
_PROPOSAL = lambda prefix, nms_pre, max_per_img: {  # noqa: E731
    "nms_pre": Param(prefix + "_nms_pre", (int,), nms_pre),
    "max_per_img": Param(prefix + "_max_per_img", (int,), max_per_img),
    "nms": {"type": Fixed("nms"), "iou_threshold": Param(prefix + "_nms_iou", (float,), 0.7)},
    "min_bbox_size": Fixed(0)}
_RPN_HEAD = lambda loss_bbox: {  # noqa: E731  (mmdet RPNHead; the detectors differ in its box loss)
    "type": Fixed("RPNHead"), "in_channels": Param("rpn_in_channels", (int,), 256),
    "feat_channels": Param("rpn_feat_channels", (int,), 256), "init_cfg": Fixed(None),
    "anchor_generator": {"type": Fixed("AnchorGenerator"),
                         "scales": Param("anchor_scales", (list, tuple), (8,)),
                         "ratios": Param("anchor_ratios", (list, tuple), (0.5, 1.0, 2.0)),
                         "strides": Param("anchor_strides", (list, tuple), (4, 8, 16, 32, 64)),
                         "center_offset": Fixed(0.0)},
    "bbox_coder": _CODER("rpn", (1.0, 1.0, 1.0, 1.0)),
    "loss_cls": _LOSS_CE("rpn_loss_cls", True),
    "loss_bbox": loss_bbox}

MASK_RCNN_SPEC = {
    "type": Fixed("MaskRCNN"),
    "backbone": Raw("backbone"),
    "neck": Raw("neck"),
    "pretrained": Param("pretrained", (str, type(None)), None),
    "init_cfg": Fixed(None),
    "rpn_head": {**_RPN_HEAD(_LOSS_L1("rpn_loss_bbox")), "num_convs": Param("rpn_num_convs", (int,), 1, minimum=1)},
    "roi_head": {
        "type": Fixed("StandardRoIHead"), "init_cfg": Fixed(None),
        "bbox_roi_extractor": _ROI_EXTRACTOR("box", 7),
        "bbox_head": {
            "type": Param("box_head_type", (str,), "Shared2FCBBoxHead",
                          choices=("Shared2FCBBoxHead", "Shared4Conv1FCBBoxHead")),
            "in_channels": Param("box_in_channels", (int,), 256),
            "conv_out_channels": Param("box_conv_channels", (int,), 256), "conv_cfg": Fixed(None),
            "norm_cfg": Raw("box_norm_cfg", None),
            "fc_out_channels": Param("fc_out_channels", (int,), 1024),
            "roi_feat_size": Param("box_roi_feat_size", (int,), 7),
            "num_classes": Param("num_classes", (int,), 80), "reg_class_agnostic": Fixed(False),
            "reg_decoded_bbox": Fixed(False), "with_avg_pool": Fixed(False), "init_cfg": Fixed(None),
            "bbox_coder": _CODER("rcnn", (0.1, 0.1, 0.2, 0.2)),
            "loss_cls": _LOSS_CE("rcnn_loss_cls", False), "loss_bbox": _LOSS_L1("rcnn_loss_bbox")},
        "mask_roi_extractor": _ROI_EXTRACTOR("mask", 14),
        "mask_head": {
            "type": Fixed("FCNMaskHead"), "num_convs": Param("mask_num_convs", (int,), 4),
            "in_channels": Param("mask_in_channels", (int,), 256),
            "conv_out_channels": Param("mask_conv_channels", (int,), 256),
            "num_classes": Param("mask_num_classes", (int,), 80), "roi_feat_size": Fixed(14),
            "conv_kernel_size": Fixed(3), "class_agnostic": Fixed(False),
            "upsample_cfg": Fixed({"type": "deconv", "scale_factor": 2}), "init_cfg": Fixed(None),
            "conv_cfg": Fixed(None), "norm_cfg": Raw("mask_norm_cfg", None),
            "loss_mask": {"type": Fixed("CrossEntropyLoss"), "use_mask": Fixed(True), "use_sigmoid": Fixed(False),
                          "reduction": Fixed("mean"), "loss_weight": Param("mask_loss_weight", (float,), 1.0)}},
    },
    "train_cfg": {
        "rpn": {"assigner": _ASSIGNER("rpn", 0.7, 0.3, 0.3), "sampler": _SAMPLER("rpn", 256, 0.5, False),
                "allowed_border": Fixed(-1), "pos_weight": Fixed(-1), "debug": Fixed(False)},
        "rpn_proposal": _PROPOSAL("rpn_train", 2000, 1000),
        "rcnn": {"assigner": _ASSIGNER("rcnn", 0.5, 0.5, 0.5), "sampler": _SAMPLER("rcnn", 512, 0.25, True),
                 "mask_size": Param("mask_size", (int,), 28), "pos_weight": Fixed(-1), "debug": Fixed(False)},
    },
    "test_cfg": {
        "rpn": _PROPOSAL("rpn_test", 1000, 1000),
        "rcnn": {"score_thr": Param("score_thr", (float,), 0.05),
                 "nms": {"type": Fixed("nms"), "iou_threshold": Param("rcnn_nms_iou", (float,), 0.5)},
                 "max_per_img": Param("max_per_img", (int,), 100),
                 "mask_thr_binary": Param("mask_thr_binary", (float,), 0.5)},
    },
}


@DETECTORS.register()
class MaskRCNN(nn.Module):
    """Backbone (4 maps, strides 4-32) -> :class:`~.fpn.FPN` (or the official no-FPN neck
    :class:`~.channel_mapper.ChannelMapperWithPooling`) -> :class:`RPN` -> :class:`MaskRCNNRoIHeads`.

    ``pretrained``: a backbone checkpoint path recorded for the builder (``self.pretrained``); nothing is read
    here (constructors never read files).
    """

    task = "detection"  # the task that trains it (models.registry.task_of)

    def __init__(self, backbone: nn.Module, neck: nn.Module, rpn: RPN, roi_heads: MaskRCNNRoIHeads, num_classes: int,
                 pretrained: str | None = None):
        super().__init__()
        self.backbone, self.neck, self.rpn, self.roi_heads = backbone, neck, rpn, roi_heads
        self.num_classes = int(num_classes)
        self.pretrained = pretrained

    @classmethod
    def build(cls, backbone: nn.Module, num_classes: int = 80, in_channels=(768,) * 4, *, out_channels=256,
              fc_out_channels=1024, mask_convs=4, **kw) -> "MaskRCNN":
        """The official ``mask_rcnn_r50_fpn`` detector around ``backbone`` (defaults are its values); ``kw`` are
        the flat parameter names of :data:`MASK_RCNN_SPEC` (e.g. ``score_thr``, ``rpn_train_nms_pre``)."""
        p = parse({"backbone": None, "neck": None}, MASK_RCNN_SPEC, "model")  # the built parts are given
        p.update(num_classes=num_classes, mask_num_classes=num_classes, fc_out_channels=fc_out_channels,
                 mask_num_convs=mask_convs, rpn_in_channels=out_channels, rpn_feat_channels=out_channels,
                 box_in_channels=out_channels, box_roi_channels=out_channels, mask_roi_channels=out_channels,
                 mask_in_channels=out_channels, mask_conv_channels=out_channels)
        unknown = sorted(set(kw) - set(p))
        if unknown:
            raise TypeError(f"unknown MaskRCNN.build arguments {unknown}")
        p.update(kw)
        return cls._from_params(backbone, FPN(in_channels, out_channels, 5), p, "model")

    @classmethod
    def _from_params(cls, backbone, neck, p, where):
        nc = p["num_classes"]
        if p["mask_num_classes"] != nc:
            raise ConfigError(f"recipe: {where}.roi_head.mask_head.num_classes={p['mask_num_classes']} differs from "
                              f"bbox_head.num_classes={nc}")
        c = neck.out_channels
        for key, name in (("rpn_in_channels", "rpn_head.in_channels"), ("rpn_feat_channels", "rpn_head.feat_channels"),
                          ("box_in_channels", "roi_head.bbox_head.in_channels"),
                          ("box_roi_channels", "roi_head.bbox_roi_extractor.out_channels"),
                          ("mask_roi_channels", "roi_head.mask_roi_extractor.out_channels"),
                          ("mask_in_channels", "roi_head.mask_head.in_channels")):
            if p[key] != c:
                raise ConfigError(f"recipe: {where}.{name}={p[key]} must equal the neck's out_channels {c}")
        if p["box_roi_feat_size"] != p["box_roi_size"]:
            raise ConfigError(f"recipe: {where}.roi_head.bbox_head.roi_feat_size={p['box_roi_feat_size']} must "
                              f"equal bbox_roi_extractor.roi_layer.output_size={p['box_roi_size']}")
        if p["mask_size"] != 2 * p["mask_roi_size"]:
            raise ConfigError(f"recipe: {where}.train_cfg.rcnn.mask_size={p['mask_size']} must be twice "
                              f"mask_roi_extractor.roi_layer.output_size={p['mask_roi_size']} (one deconv x2)")
        if p["rpn_train_nms_iou"] != p["rpn_test_nms_iou"]:
            raise ConfigError(f"recipe: {where}.train_cfg.rpn_proposal.nms.iou_threshold and test_cfg.rpn.nms."
                              "iou_threshold must be equal (torchvision's RPN has one NMS threshold)")
        if len(p["anchor_strides"]) != len(neck.names):
            raise ConfigError(f"recipe: {where}.rpn_head.anchor_generator.strides has {len(p['anchor_strides'])} "
                              f"levels, the neck gives {len(neck.names)}")
        for pre in ("box", "mask"):
            if len(p[pre + "_featmap_strides"]) > len(neck.names):
                raise ConfigError(f"recipe: {where}.roi_head.{pre}_roi_extractor.featmap_strides has more levels than "
                                  "the neck")
        anchors = FixedStrideAnchorGenerator(p["anchor_strides"], p["anchor_scales"], p["anchor_ratios"])
        rpn = RPN(c, anchor_generator=anchors, pos_iou_thr=p["rpn_pos_iou_thr"], neg_iou_thr=p["rpn_neg_iou_thr"],
                  min_pos_iou=p["rpn_min_pos_iou"], match_low_quality=p["rpn_match_low_quality"], num=p["rpn_num"],
                  pos_fraction=p["rpn_pos_fraction"], train_nms_pre=p["rpn_train_nms_pre"],
                  train_max_per_img=p["rpn_train_max_per_img"], train_nms_iou=p["rpn_train_nms_iou"],
                  test_nms_pre=p["rpn_test_nms_pre"], test_max_per_img=p["rpn_test_max_per_img"],
                  test_nms_iou=p["rpn_test_nms_iou"], target_stds=_box(p["rpn_target_stds"]),
                  loss_cls_weight=p["rpn_loss_cls_weight"], loss_bbox_weight=p["rpn_loss_bbox_weight"],
                  num_convs=p["rpn_num_convs"])
        names = neck.names
        box_pool = LevelRoIAlign(names[:len(p["box_featmap_strides"])], p["box_roi_size"], p["box_featmap_strides"],
                                 p["box_sampling_ratio"], p["box_aligned"], p["box_finest_scale"])
        mask_pool = LevelRoIAlign(names[:len(p["mask_featmap_strides"])], p["mask_roi_size"],
                                  p["mask_featmap_strides"], p["mask_sampling_ratio"], p["mask_aligned"],
                                  p["mask_finest_scale"])
        bw = f"{where}.roi_head.bbox_head"
        box_norm = None if p["box_norm_cfg"] is None else norm_from_cfg(p["box_norm_cfg"], f"{bw}.norm_cfg")
        if p["box_head_type"] == "Shared4Conv1FCBBoxHead":  # mmdet ConvFCBBoxHead(4 shared convs, 1 shared fc)
            box_head = ConvFCBBoxHead(c, p["box_conv_channels"], p["fc_out_channels"], p["box_roi_size"], nc, 4, 1,
                                      False, box_norm)
            box_predictor = TorchvisionOrder()
        else:
            if p["box_norm_cfg"] is not None:
                raise ConfigError(f"recipe: {bw}.norm_cfg: Shared2FCBBoxHead has no convs to normalise (mmdet "
                                  "ignores it); remove it or use Shared4Conv1FCBBoxHead")
            box_head = TwoMLPHead(c * p["box_roi_size"] ** 2, p["fc_out_channels"])
            box_predictor = FloatFastRCNNPredictor(p["fc_out_channels"], nc + 1)
            _init_box_branch(box_head, box_predictor)
        mask_norm = None if p["mask_norm_cfg"] is None else \
            norm_from_cfg(p["mask_norm_cfg"], f"{where}.roi_head.mask_head.norm_cfg")
        mask_head = MaskRCNNHeads(c, [p["mask_conv_channels"]] * p["mask_num_convs"], 1,
                                  norm_layer=None if mask_norm is None else norm_class(mask_norm))
        mask_predictor = MaskRCNNPredictor(p["mask_conv_channels"], p["mask_conv_channels"], nc + 1)
        for m in (mask_predictor.conv5_mask, mask_predictor.mask_fcn_logits):
            nn.init.zeros_(m.bias)  # mmdet FCNMaskHead.init_weights (torchvision leaves PyTorch's default bias init)
        roi_heads = MaskRCNNRoIHeads(
            box_roi_pool=box_pool, box_head=box_head, box_predictor=box_predictor, mask_roi_pool=mask_pool,
            mask_head=mask_head, mask_predictor=mask_predictor, pos_iou_thr=p["rcnn_pos_iou_thr"],
            neg_iou_thr=p["rcnn_neg_iou_thr"], min_pos_iou=p["rcnn_min_pos_iou"],
            match_low_quality=p["rcnn_match_low_quality"], num=p["rcnn_num"], pos_fraction=p["rcnn_pos_fraction"],
            target_stds=_box(p["rcnn_target_stds"]), score_thr=p["score_thr"], nms_iou=p["rcnn_nms_iou"],
            max_per_img=p["max_per_img"], mask_size=p["mask_size"], mask_thr_binary=p["mask_thr_binary"],
            loss_cls_weight=p["rcnn_loss_cls_weight"], loss_bbox_weight=p["rcnn_loss_bbox_weight"],
            loss_mask_weight=p["mask_loss_weight"])
        return cls(backbone, neck, rpn, roi_heads, nc, pretrained=p.get("pretrained"))

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model") -> "MaskRCNN":
        """Build from the official mmdet ``model=dict(type='MaskRCNN', backbone=..., neck=..., rpn_head=...,
        roi_head=..., train_cfg=..., test_cfg=...)``. Unknown keys anywhere raise ConfigError naming the dotted
        path; official keys without a knob here are accepted only with their official value. The backbone's
        ``pretrained`` path is recorded in ``model.pretrained`` (loaded by the builder, not here)."""
        p = parse(cfg, MASK_RCNN_SPEC, where)
        bcfg = p["backbone"]
        backbone, p["pretrained"] = build_detection_backbone(bcfg, p["pretrained"], where)
        # a neck giving named pyramid levels (``names``, ``out_channels``): FPN, or the official no-FPN
        # ChannelMapperWithPooling; an absent type is FPN
        neck_cls = NECKS.lookup(p["neck"], f"{where}.neck", default="FPN")
        if not hasattr(neck_cls, "names"):
            raise ConfigError(f"recipe: {where}.neck.type={p['neck'].get('type')!r} gives no feature pyramid; "
                              "Mask R-CNN takes FPN or ChannelMapperWithPooling")
        neck = neck_cls.from_config(p["neck"], f"{where}.neck")
        return cls._from_params(backbone, neck, p, where)

    # ----------------------------------------------------------------------------------------------------------
    def extract_feat(self, images: torch.Tensor):
        return self.neck(self.backbone(images))

    @staticmethod
    def _image_sizes(images, targets=None, image_sizes=None):
        if image_sizes is None and targets is not None and all("img_shape" in t for t in targets):
            image_sizes = [t["img_shape"] for t in targets]
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return [(int(h), int(w)) for h, w in image_sizes]

    def forward(self, images: torch.Tensor, targets=None, image_sizes=None):
        """Train mode: dict of losses (see module docstring). Eval mode: :meth:`predict`."""
        if not self.training:
            return self.predict(images, image_sizes)
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError("training needs one target dict per image")
        sizes = self._image_sizes(images, targets, image_sizes)
        tv_targets = train_targets(images, targets, sizes, label_offset=1)  # torchvision: background is class 0
        feats = self.extract_feat(images)
        image_list = ImageList(images, sizes)
        proposals, rpn_losses = self.rpn(image_list, feats, tv_targets)
        _, roi_losses = self.roi_heads(feats, proposals, sizes, tv_targets)
        losses = {"loss_rpn_cls": rpn_losses["loss_objectness"], "loss_rpn_bbox": rpn_losses["loss_rpn_box_reg"]}
        losses.update(roi_losses)
        losses["loss"] = sum(v for k, v in losses.items() if k.startswith("loss"))
        return losses

    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes=None, ori_shapes=None):
        """Detections per image: ``boxes`` (K, 4), ``labels`` (K,) 0-based, ``scores`` (K,), ``masks`` (K, h, w)
        bool (``mask_thr_binary``). ``image_sizes``: unpadded (h, w) of each resized image (default: padded size);
        ``ori_shapes``: original (h, w) to rescale boxes and paste masks into (default: ``image_sizes``)."""
        sizes = self._image_sizes(images, None, image_sizes)
        feats = self.extract_feat(images)
        proposals, _ = self.rpn(ImageList(images, sizes), feats)
        dets, _ = self.roi_heads(feats, proposals, sizes)
        out = []
        for i, d in enumerate(dets):
            (h, w), (oh, ow) = sizes[i], (ori_shapes[i] if ori_shapes is not None else sizes[i])
            scale = d["boxes"].new_tensor([ow / w, oh / h, ow / w, oh / h])
            boxes = d["boxes"] * scale
            masks = paste_masks(d["masks"][:, 0], boxes, int(oh), int(ow), self.roi_heads.mask_thr_binary)
            out.append({"boxes": boxes.float(), "labels": d["labels"] - 1, "scores": d["scores"].float(),
                        "masks": masks})
        return out
