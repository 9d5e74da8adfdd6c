"""Hybrid Task Cascade (HTC, mmdet 2.x ``HybridTaskCascadeRoIHead`` with ``interleaved=True``,
``mask_info_flow=True``) on torchvision ops, for the HTC++ recipes.

Training, per stage ``i`` (IoU thresholds / box-coder stds / loss weights per stage):

1. assign + sample RoIs from the current proposals (ground truth added first, mmdet ``MaxIoUAssigner`` +
   ``RandomSampler``), box head on the RoI features (+ the semantic RoI feature, average-pooled to 7 x 7), CE +
   SmoothL1(beta=1) class-agnostic box loss (``/ number of sampled RoIs``), or with ``reg_decoded_bbox`` (the
   Objects365 -> COCO recipes) the GIoU loss of the decoded boxes (mmdet ``delta2bbox``, no clipping) against the
   matched ground-truth boxes, times its ``loss_weight`` (10), ``/ number of sampled RoIs`` (as Cascade's);
2. interleaved: the sampled RoIs are regressed by this stage's box head (no grad; ground-truth RoIs dropped),
   re-assigned and re-sampled, and the mask branch of stage ``i`` is trained on those positives: mask RoI feature
   (+ semantic RoI feature), mask information flow through the mask heads of stages ``< i`` (features only), mask
   BCE at the ground-truth class;
3. the regressed proposals are the next stage's proposals.

Test: the class logits of all stages are averaged (then softmax), boxes decoded by the last stage
(:meth:`HybridTaskCascadeRoIHead.cascade_boxes`), multiclass soft-NMS (:func:`multiclass_nms`: ``score_thr``,
``max_per_img``); masks: the sigmoid of every stage's mask logits (information flow) averaged
(:meth:`HybridTaskCascadeRoIHead.mask_probs`), pasted as mmdet. The test-time augmentation of the ``_ms`` recipes
(:mod:`.htc_aug`) reuses these steps per augmentation. The RPN's proposal NMS is ``'nms'`` or (BEiT-L recipe)
``'soft_nms'``. Loss names: ``s{i}.loss_cls``, ``s{i}.loss_bbox``, ``s{i}.acc``, ``s{i}.loss_mask``
(stage weights applied) and ``loss_semantic_seg``. Class order is mmdet's (background last).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou, clip_boxes_to_image

from ..registry import BACKBONES, DETECTORS, NECKS
from .bbox_ops import delta2bbox, giou_loss
from .mask_rcnn import MaxIoUMatcher, mask_targets, paste_masks
from .soft_nms import batched_soft_nms


def multiclass_nms(boxes, probs, score_thr, iou_threshold, max_per_img, nms_type="soft_nms"):
    """mmdet ``multiclass_nms`` of class-agnostic boxes (N, 4) or class-specific boxes (N, C, 4) and class
    probabilities (N, C + 1) (background last): every (box, class) pair above ``score_thr``, (soft-)NMS within
    each class, the best ``max_per_img`` -> (boxes (K, 4), labels (K,), scores (K,)) sorted by score."""
    p = probs[:, :-1]
    box_idx, cls_idx = torch.where(p > score_thr)
    b, s = (boxes[box_idx] if boxes.dim() == 2 else boxes[box_idx, cls_idx]), p[box_idx, cls_idx]
    if nms_type == "soft_nms":
        keep, s = batched_soft_nms(b, s, cls_idx, iou_threshold=iou_threshold)
    elif nms_type == "nms":
        from torchvision.ops import batched_nms

        keep = batched_nms(b.float(), s.float(), cls_idx, iou_threshold)
        s = s[keep]
    else:
        raise ValueError(f"nms type must be 'soft_nms' or 'nms', got {nms_type!r}")
    keep, s = keep[:max_per_img], s[:max_per_img]
    return b[keep], cls_idx[keep], s


class CascadeStage:
    """Train settings of one stage: assigner (:class:`~.mask_rcnn.MaxIoUMatcher`: IoU thresholds and the config's
    ``match_low_quality``, mmdet's default True, which the official HTC++ configs keep), sampler, box-coder stds."""

    def __init__(self, pos_iou_thr, neg_iou_thr=None, min_pos_iou=None, num=512, pos_fraction=0.25,
                 target_stds=(0.1, 0.1, 0.2, 0.2), match_low_quality=True):
        neg_iou_thr = pos_iou_thr if neg_iou_thr is None else neg_iou_thr
        min_pos_iou = pos_iou_thr if min_pos_iou is None else min_pos_iou
        self.matcher = MaxIoUMatcher(pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality)
        self.num, self.pos_fraction = int(num), float(pos_fraction)
        self.coder = det_utils.BoxCoder(tuple(1.0 / s for s in target_stds))


def sample_rois(stage: CascadeStage, proposals, target, num_classes: int) -> dict:
    """One image's RoIs of a cascade stage (mmdet ``MaxIoUAssigner`` + ``RandomSampler`` with
    ``add_gt_as_proposals``): the ground-truth boxes go first, then the proposals; ``num * pos_fraction`` positives
    at most, negatives fill up to ``num``. Returns ``boxes`` (K, 4) positives first, ``labels`` (K,) (``num_classes``
    = background), ``targets`` (K, 4) the stage coder's deltas of the positives, ``num_pos``, ``pos_gt`` (the
    matched box of each positive) and ``pos_is_gt``."""
    gt, gt_labels = target["boxes"], target["labels"]
    boxes = torch.cat([gt, proposals.detach()])
    is_gt = torch.cat([torch.ones(len(gt), dtype=torch.bool, device=boxes.device),
                       torch.zeros(len(proposals), dtype=torch.bool, device=boxes.device)])
    if len(gt):
        matched = stage.matcher(box_iou(gt, boxes))
    else:
        matched = torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device)
    pos, neg = torch.where(matched >= 0)[0], torch.where(matched == -1)[0]
    n_pos = min(len(pos), int(stage.num * stage.pos_fraction))
    pos = pos[torch.randperm(len(pos), device=pos.device)[:n_pos]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[:min(len(neg), stage.num - n_pos)]]
    idx = torch.cat([pos, neg])
    labels = torch.full((len(idx),), num_classes, dtype=torch.int64, device=boxes.device)
    labels[:n_pos] = gt_labels[matched[pos]]
    targets = boxes.new_zeros(len(idx), 4)
    if n_pos:
        targets[:n_pos] = stage.coder.encode_single(gt[matched[pos]], boxes[pos])
    return {"boxes": boxes[idx], "labels": labels, "targets": targets, "num_pos": n_pos,
            "pos_gt": matched[pos], "pos_is_gt": is_gt[pos]}


def positive_rows(samples) -> torch.Tensor:
    """Row indices of the positives in the concatenation of ``samples`` (:func:`sample_rois`: each sample's
    ``num_pos`` positives come first, labelled ``< num_classes``; the rest is background): the same rows as
    ``torch.where(labels < num_classes)[0]`` of the concatenated labels, from the sample sizes alone."""
    rows, start = [], 0
    for s in samples:
        rows.append(torch.arange(start, start + s["num_pos"], dtype=torch.int64, device=s["labels"].device))
        start += len(s["labels"])
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)


def drop_gt_rois(boxes, sample):
    """mmdet ``refine_bboxes``' ``pos_is_gts`` rule: the rows of ``boxes`` (the sample's RoIs, regressed) without
    the ground-truth RoIs among the sample's positives."""
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    keep[:sample["num_pos"]] = ~sample["pos_is_gt"]
    return boxes[keep]


def matched_gt_boxes(sample, target):
    """(K, 4): the matched ground-truth box of each positive of ``sample`` (:func:`sample_rois`; positives first),
    zeros for the negatives."""
    out = sample["boxes"].new_zeros(len(sample["boxes"]), 4)
    out[:sample["num_pos"]] = target["boxes"][sample["pos_gt"]].to(out.dtype)
    return out


HTC_PLUS_PLUS_STAGES = ((0.5, (0.1, 0.1, 0.2, 0.2)), (0.6, (0.05, 0.05, 0.1, 0.1)), (0.7, (0.033, 0.033, 0.067, 0.067)))


class HybridTaskCascadeRoIHead(nn.Module):
    def __init__(self, *, bbox_roi_extractor, mask_roi_extractor, bbox_heads, mask_heads, stages,
                 stage_loss_weights=(1.0, 0.5, 0.25), semantic_head=None, semantic_roi_extractor=None,
                 num_classes=80, mask_size=28, score_thr=0.001, nms_iou=0.5, max_per_img=100, mask_thr_binary=0.5,
                 box_losses=None):
        super().__init__()
        if not len(bbox_heads) == len(mask_heads) == len(stages) == len(stage_loss_weights):
            raise ValueError("one box head, mask head, stage setting and loss weight per stage")
        # per stage ('smooth_l1',) or ('giou', loss_weight, target_stds) (reg_decoded_bbox)
        self.box_losses = [tuple(b) for b in (box_losses or [("smooth_l1",)] * len(stages))]
        self.bbox_roi_extractor, self.mask_roi_extractor = bbox_roi_extractor, mask_roi_extractor
        self.bbox_head, self.mask_head = nn.ModuleList(bbox_heads), nn.ModuleList(mask_heads)
        self.semantic_head, self.semantic_roi_extractor = semantic_head, semantic_roi_extractor
        self.stages, self.stage_loss_weights = list(stages), [float(w) for w in stage_loss_weights]
        self.num_classes, self.mask_size = int(num_classes), int(mask_size)
        self.score_thr, self.nms_iou, self.max_per_img = float(score_thr), float(nms_iou), int(max_per_img)
        self.mask_thr_binary = float(mask_thr_binary)

    @property
    def num_stages(self):
        return len(self.stages)

    # ------------------------------------------------------------------------------------------ sampling
    def _sample(self, stage: CascadeStage, proposals, target):
        return sample_rois(stage, proposals, target, self.num_classes)

    # ------------------------------------------------------------------------------------------ features
    def _add_semantic(self, feats, semantic_feat, boxes):
        if semantic_feat is None:
            return feats
        sem = self.semantic_roi_extractor({"semantic": semantic_feat}, boxes)
        if sem.shape[-2:] != feats.shape[-2:]:
            sem = F.adaptive_avg_pool2d(sem, feats.shape[-2:])
        return feats + sem

    def _bbox_forward(self, i, features, boxes, semantic_feat):
        feats = self._add_semantic(self.bbox_roi_extractor(features, boxes), semantic_feat, boxes)
        cls, reg = self.bbox_head[i](feats)
        return cls.float(), reg.float()

    def _mask_logits(self, i, features, boxes, semantic_feat, all_stages=False):
        feats = self._add_semantic(self.mask_roi_extractor(features, boxes), semantic_feat, boxes)
        last, outs = None, []
        for j in range(i + 1):
            if j < i and not all_stages:
                last = self.mask_head[j](feats, last, return_logits=False)
            else:
                lg, last = self.mask_head[j](feats, last)
                outs.append(lg.float())
        return outs

    # ------------------------------------------------------------------------------------------ train
    def forward_train(self, features, proposals, image_shapes, targets, semantic_labels=None):
        losses = {}
        semantic_feat = None
        if self.semantic_head is not None:
            logits, semantic_feat = self.semantic_head(list(features.values()))
            if semantic_labels is None:
                raise ValueError("this HTC has a semantic head (FusedSemanticHead) but no semantic labels were given: "
                                 "the train pipeline needs LoadAnnotations(with_seg=True) and SegRescale(1/8) over "
                                 "shards with semantic maps (the batch's 'semantic_seg')")
            if tuple(semantic_labels.shape[-2:]) != tuple(logits.shape[-2:]) or semantic_labels.shape[0] != \
                    logits.shape[0]:
                raise ValueError(f"semantic labels {tuple(semantic_labels.shape)} do not match the semantic head's "
                                 f"logits {tuple(logits.shape)} (SegRescale 1/8 of the padded batch)")
            losses["loss_semantic_seg"] = self.semantic_head.loss(logits, semantic_labels.to(logits.device))
        for i, stage in enumerate(self.stages):
            w = self.stage_loss_weights[i]
            samples = [self._sample(stage, p, t) for p, t in zip(proposals, targets)]
            boxes = [s["boxes"] for s in samples]
            cls, reg = self._bbox_forward(i, features, boxes, semantic_feat)
            labels = torch.cat([s["labels"] for s in samples])
            n = max(1, labels.numel())
            pos = positive_rows(samples)  # = torch.where(labels < self.num_classes)[0]
            losses[f"s{i}.loss_cls"] = w * F.cross_entropy(cls, labels, reduction="sum") / n
            if self.box_losses[i][0] == "giou":
                _, weight, stds = self.box_losses[i]
                gt = torch.cat([matched_gt_boxes(s, t) for s, t in zip(samples, targets)])
                pred = delta2bbox(torch.cat(boxes)[pos], reg.reshape(-1, 4)[pos], stds)
                losses[f"s{i}.loss_bbox"] = w * weight * giou_loss(pred, gt[pos].to(pred.dtype)).sum() / n \
                    if pos.numel() else reg.reshape(-1, 4)[pos].sum()
            else:
                losses[f"s{i}.loss_bbox"] = w * F.smooth_l1_loss(reg.reshape(-1, 4)[pos],
                                                                 torch.cat([s["targets"] for s in samples])[pos],
                                                                 beta=1.0, reduction="sum") / n
            losses[f"s{i}.acc"] = (cls.detach().argmax(1) == labels).float().mean() * 100
            # interleaved: regress the sampled RoIs, drop the ground-truth ones, re-sample for the mask branch
            with torch.no_grad():
                refined = []
                for s, r, size in zip(samples, reg.split([len(b) for b in boxes]), image_shapes):
                    dec = clip_boxes_to_image(stage.coder.decode_single(r.reshape(-1, 4), s["boxes"]), size)
                    refined.append(drop_gt_rois(dec, s))
                proposals = refined
                mask_samples = [self._sample(stage, p, t) for p, t in zip(proposals, targets)]
            pos_boxes = [s["boxes"][:s["num_pos"]] for s in mask_samples]
            pos_labels = torch.cat([s["labels"][:s["num_pos"]] for s in mask_samples])
            mask_logits = self._mask_logits(i, features, pos_boxes, semantic_feat)[-1]
            if pos_labels.numel() == 0:
                losses[f"s{i}.loss_mask"] = mask_logits.sum() * 0
            else:
                tgt = torch.cat([mask_targets(t["masks"], b, s["pos_gt"], self.mask_size)
                                 for t, b, s in zip(targets, pos_boxes, mask_samples)])
                picked = mask_logits[torch.arange(len(pos_labels), device=pos_labels.device), pos_labels]
                losses[f"s{i}.loss_mask"] = w * F.binary_cross_entropy_with_logits(picked, tgt)
        return losses

    # ------------------------------------------------------------------------------------------ test
    def semantic_feature(self, features):
        """The semantic branch's feature map (None without a semantic head)."""
        if self.semantic_head is None:
            return None
        return self.semantic_head(list(features.values()))[1]

    @torch.no_grad()
    def cascade_boxes(self, features, proposals, image_shapes, semantic_feat=None):
        """mmdet ``HybridTaskCascadeRoIHead.simple_test`` up to (not including) the NMS: per image the boxes
        (N, 4) decoded by the last stage and clipped to the image, and the class probabilities (N, C + 1) of the
        stage-averaged logits (background last)."""
        counts = [len(p) for p in proposals]
        rois = [p.float() for p in proposals]
        scores = []
        for i, stage in enumerate(self.stages):
            cls, reg = self._bbox_forward(i, features, rois, semantic_feat)
            scores.append(cls)
            if i < self.num_stages - 1:
                dec = stage.coder.decode_single(reg.reshape(-1, 4), torch.cat(rois))
                rois = [clip_boxes_to_image(d, s) for d, s in zip(dec.split(counts), image_shapes)]
        prob = F.softmax(sum(scores) / len(scores), dim=1)
        boxes = stage.coder.decode_single(reg.reshape(-1, 4), torch.cat(rois))
        return [(clip_boxes_to_image(b, size), p) for b, p, size in zip(boxes.split(counts), prob.split(counts),
                                                                        image_shapes)]

    @torch.no_grad()
    def mask_probs(self, features, boxes, semantic_feat=None):
        """The sigmoid of every stage's mask logits (information flow), averaged over the stages: per image
        (K, C, M, M) for its boxes (K, 4)."""
        if not sum(len(b) for b in boxes):
            return [torch.zeros(len(b), self.num_classes, self.mask_size, self.mask_size, device=b.device)
                    for b in boxes]
        stage_logits = self._mask_logits(self.num_stages - 1, features, boxes, semantic_feat, all_stages=True)
        merged = sum(torch.sigmoid(lg) for lg in stage_logits) / len(stage_logits)
        return list(merged.split([len(b) for b in boxes]))

    @torch.no_grad()
    def simple_test(self, features, proposals, image_shapes):
        """Per image ``boxes`` (K, 4), ``labels`` (K,) 0-based, ``scores`` (K,), ``mask_probs`` (K, M, M) at
        the input (resized-image) scale."""
        semantic_feat = self.semantic_feature(features)
        results = []
        for b, p in self.cascade_boxes(features, proposals, image_shapes, semantic_feat):
            boxes, labels, scores = multiclass_nms(b, p, self.score_thr, self.nms_iou, self.max_per_img)
            results.append({"boxes": boxes, "labels": labels, "scores": scores})
        probs = self.mask_probs(features, [r["boxes"] for r in results], semantic_feat)
        for r, m in zip(results, probs):
            r["mask_probs"] = m[torch.arange(len(r["labels"]), device=m.device), r["labels"]]
        return results

    def paste(self, result, scale_xy, ori_shape):
        """Rescale one :meth:`simple_test` result to the original image and paste its masks (mmdet)."""
        boxes = result["boxes"] * result["boxes"].new_tensor([scale_xy[0], scale_xy[1]] * 2)
        masks = paste_masks(result["mask_probs"], boxes, int(ori_shape[0]), int(ori_shape[1]), self.mask_thr_binary)
        return {"boxes": boxes, "labels": result["labels"], "scores": result["scores"], "masks": masks}


@DETECTORS.register()
class HybridTaskCascade(nn.Module):
    """Backbone -> neck (e.g. ``[ExtraAttention, FPN]``) -> RPN -> :class:`HybridTaskCascadeRoIHead`.

    Train: ``model(images, targets, semantic_labels=None)`` (targets as :class:`~.mask_rcnn.MaskRCNN`; labels
    0-based; ``semantic_labels`` int64 (B, H / 8, W / 8), 255 = ignore, required with a semantic head) -> losses with
    the total under ``loss``. Eval: :meth:`predict` as ``MaskRCNN.predict``.
    """

    task = "detection"  # the task that trains it (models.registry.task_of)

    def __init__(self, backbone, necks, rpn, roi_head):
        super().__init__()
        self.backbone, self.neck, self.rpn, self.roi_head = backbone, nn.ModuleList(necks), rpn, roi_head

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model") -> "HybridTaskCascade":
        """:func:`htc_from_config` (a ``model.type`` of a registered subclass, e.g. ``'HybridTaskCascadeAug'``,
        builds that subclass)."""
        return htc_from_config(cfg, where, cls)

    @classmethod
    def _from_parts(cls, backbone, necks, rpn, roi_head, aug, where: str) -> "HybridTaskCascade":
        """The detector from its built parts; ``aug``: the recipe's ``test_cfg.aug`` (refused here, read by
        the test-time augmentation subclass)."""
        from ...config.errors import ConfigError

        if aug is not None:
            raise ConfigError(f"recipe: {where}.test_cfg.aug is read by type='HybridTaskCascadeAug' only")
        return cls(backbone, necks, rpn, roi_head)

    def extract_feat(self, images):
        x = self.backbone(images)
        for neck in self.neck:
            x = neck(x)
        return x

    def forward(self, images, targets=None, semantic_labels=None, image_sizes=None):
        if not self.training:
            return self.predict(images, image_sizes)
        from torchvision.models.detection.image_list import ImageList

        from .mask_rcnn import MaskRCNN, train_targets
        sizes = MaskRCNN._image_sizes(images, targets, image_sizes)
        tv = train_targets(images, targets, sizes)  # masks zero-padded to each image's pad_shape (mmdet Pad)
        feats = self.extract_feat(images)
        proposals, rpn_losses = self.rpn(ImageList(images, sizes), feats, tv)
        losses = {"loss_rpn_cls": rpn_losses["loss_objectness"], "loss_rpn_bbox": rpn_losses["loss_rpn_box_reg"]}
        losses.update(self.roi_head.forward_train(feats, proposals, sizes, tv, semantic_labels))
        losses["loss"] = sum(v for k, v in losses.items() if k.split(".")[-1].startswith("loss"))
        return losses

    @torch.no_grad()
    def predict(self, images, image_sizes=None, ori_shapes=None):
        from torchvision.models.detection.image_list import ImageList

        from .mask_rcnn import MaskRCNN
        sizes = MaskRCNN._image_sizes(images, None, image_sizes)
        feats = self.extract_feat(images)
        proposals, _ = self.rpn(ImageList(images, sizes), feats)
        out = []
        for r, (h, w), ori in zip(self.roi_head.simple_test(feats, proposals, sizes), sizes,
                                  ori_shapes if ori_shapes is not None else sizes):
            out.append(self.roi_head.paste(r, (ori[1] / w, ori[0] / h), ori))
        return out


# ---------------------------------------------------------------------------------------------- from_config
def _htc_specs():
    from ...config.keys import Fixed, Param, Raw
    from .mask_rcnn import _ASSIGNER, _CODER, _LOSS_CE, _ROI_EXTRACTOR, _RPN_HEAD, _SAMPLER

    def proposal(prefix, nms_pre, max_per_img):  # mmdet RPN proposals; nms 'nms' (official) or 'soft_nms'
        return {"nms_pre": Param(prefix + "_nms_pre", (int,), nms_pre),
                "max_per_img": Param(prefix + "_max_per_img", (int,), max_per_img),
                "nms": {"type": Param(prefix + "_nms_type", (str,), "nms"),
                        "iou_threshold": Param(prefix + "_nms_iou", (float,), 0.7)},
                "min_bbox_size": Fixed(0)}

    def smooth_l1(prefix, beta):
        return {"type": Param(prefix + "_type", (str,), "SmoothL1Loss"),
                "beta": Param(prefix + "_beta", (float,), beta), "reduction": Fixed("mean"),
                "loss_weight": Param(prefix + "_weight", (float,), 1.0)}

    top = {
        "type": Fixed("HybridTaskCascade", "HybridTaskCascadeAug"), "backbone": Raw("backbone"), "neck": Raw("neck"),
        "pretrained": Param("pretrained", (str, type(None)), None), "init_cfg": Fixed(None),
        "rpn_head": _RPN_HEAD(smooth_l1("rpn_loss_bbox", 1.0 / 9.0)),
        "roi_head": {
            "type": Fixed("HybridTaskCascadeRoIHead"), "interleaved": Fixed(True), "mask_info_flow": Fixed(True),
            "num_stages": Param("num_stages", (int,), 3),
            "stage_loss_weights": Param("stage_loss_weights", (list,), (1.0, 0.5, 0.25)),
            "bbox_roi_extractor": _ROI_EXTRACTOR("box", 7), "mask_roi_extractor": _ROI_EXTRACTOR("mask", 14),
            "semantic_roi_extractor": _ROI_EXTRACTOR("sem", 14), "bbox_head": Raw("bbox_heads"),
            "mask_head": Raw("mask_heads"), "semantic_head": Raw("semantic_head", None),
            "semantic_fusion": Fixed(("bbox", "mask"), ["bbox", "mask"]), "init_cfg": Fixed(None)},
        "train_cfg": {
            "rpn": {"assigner": _ASSIGNER("rpn", 0.7, 0.3, 0.3), "sampler": _SAMPLER("rpn", 256, 0.5, False),
                    "allowed_border": Param("allowed_border", (int,), 0), "pos_weight": Fixed(-1),
                    "debug": Fixed(False)},
            "rpn_proposal": proposal("rpn_train", 2000, 2000), "rcnn": Raw("rcnn_train")},
        "test_cfg": {
            "rpn": proposal("rpn_test", 1000, 1000), "aug": Raw("aug", None),
            "rcnn": {"score_thr": Param("score_thr", (float,), 0.001),
                     "nms": {"type": Fixed("soft_nms"), "iou_threshold": Param("rcnn_nms_iou", (float,), 0.5),
                             "min_score": Fixed(1e-3), "method": Fixed("linear")},
                     "max_per_img": Param("max_per_img", (int,), 100),
                     "mask_thr_binary": Param("mask_thr_binary", (float,), 0.5)}},
    }
    bbox = {"type": Fixed("Shared4Conv1FCBBoxHead"), "in_channels": Param("in_channels", (int,), 256),
            "conv_out_channels": Param("conv_out_channels", (int,), 256),
            "fc_out_channels": Param("fc_out_channels", (int,), 1024),
            "roi_feat_size": Param("roi_feat_size", (int,), 7), "num_classes": Param("num_classes", (int,), 80),
            "reg_class_agnostic": Fixed(True), "reg_decoded_bbox": Param("reg_decoded_bbox", (bool,), False),
            "conv_cfg": Fixed(None), "norm_cfg": Raw("norm_cfg", None), "init_cfg": Fixed(None),
            "bbox_coder": _CODER("box", (0.1, 0.1, 0.2, 0.2)), "loss_cls": _LOSS_CE("loss_cls", False),
            "loss_bbox": dict(smooth_l1("loss_bbox", 1.0), eps=Fixed(1e-6))}  # eps: GIoULoss's
    mask = {"type": Fixed("HTCMaskHead"), "with_conv_res": Param("with_conv_res", (bool,), True),
            "num_convs": Param("num_convs", (int,), 4), "in_channels": Param("in_channels", (int,), 256),
            "conv_out_channels": Param("conv_out_channels", (int,), 256),
            "num_classes": Param("num_classes", (int,), 80), "roi_feat_size": Fixed(14), "conv_kernel_size": Fixed(3),
            "class_agnostic": Fixed(False), "upsample_cfg": Fixed({"type": "deconv", "scale_factor": 2}),
            "conv_cfg": Fixed(None), "norm_cfg": Fixed(None), "init_cfg": Fixed(None),
            "loss_mask": {"type": Fixed("CrossEntropyLoss"), "use_mask": Fixed(True), "use_sigmoid": Fixed(False),
                          "reduction": Fixed("mean"), "loss_weight": Fixed(1.0)}}
    rcnn = {"assigner": _ASSIGNER("stage", 0.5, 0.5, 0.5), "sampler": _SAMPLER("stage", 512, 0.25, True),
            "mask_size": Param("mask_size", (int,), 28), "pos_weight": Fixed(-1), "debug": Fixed(False)}
    return top, bbox, mask, rcnn


def _list_of(value, n, where):
    from ...config.errors import ConfigError

    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"recipe: {where} must be a list of {n} dicts (one per stage)")
    return value


def htc_from_config(cfg: dict, where: str = "model", cls: type | None = None) -> HybridTaskCascade:
    """Build :class:`HybridTaskCascade` from the official HTC++ ``model`` dict (every nested key checked, the
    dotted path named in errors; a ``[ExtraAttention, FPN]`` neck list; the backbone's ``pretrained`` recorded
    as ``model.pretrained``, not read)."""
    from ...config.errors import ConfigError
    from ...config.keys import parse
    from ..norm import norm_from_cfg
    from .fpn import FPN
    from .mask_rcnn import RPN, FixedStrideAnchorGenerator
    from .roi_extractor import LevelRoIAlign
    from .semantic_head import FusedSemanticHead
    from .htc_heads import HTCMaskHead, Shared4Conv1FCBBoxHead

    top, bbox_spec, mask_spec, rcnn_spec = _htc_specs()
    p = parse(cfg, top, where)
    b = p["backbone"]
    if not isinstance(b, dict) or b.get("type") not in BACKBONES:
        raise ConfigError(f"recipe: {where}.backbone must be a dict with type one of {sorted(BACKBONES)}")
    bkw = {k: v for k, v in b.items() if k not in ("type", "_delete_")}
    pretrained = bkw.pop("pretrained", None) or p["pretrained"]
    bkw.setdefault("task", "detection")
    backbone = BACKBONES[b["type"]].from_config(bkw, f"{where}.backbone")
    necks_cfg = p["neck"] if isinstance(p["neck"], (list, tuple)) else [p["neck"]]
    necks = []
    for i, n in enumerate(necks_cfg):
        w = f"{where}.neck[{i}]"
        kind = n.get("type") if isinstance(n, dict) else None
        if kind not in NECKS:
            raise ConfigError(f"recipe: {w}.type={kind!r} is not supported ({', '.join(sorted(NECKS))})")
        necks.append(NECKS[kind].from_config(n, w))
    fpn = necks[-1]
    if not isinstance(fpn, FPN):
        raise ConfigError(f"recipe: {where}.neck must end with an FPN")
    c, ns = fpn.out_channels, p["num_stages"]
    for split in ("train", "test"):
        if p[f"rpn_{split}_nms_type"] not in ("nms", "soft_nms"):
            raise ConfigError(f"recipe: {where}.{split}_cfg.rpn{'_proposal' if split == 'train' else ''}.nms.type="
                              f"{p[f'rpn_{split}_nms_type']!r}: only 'nms' or 'soft_nms'")
    if p["rpn_train_nms_type"] != p["rpn_test_nms_type"]:
        raise ConfigError(f"recipe: {where}: train_cfg.rpn_proposal.nms.type and test_cfg.rpn.nms.type differ "
                          "(one RPN NMS here, as in the official recipes)")
    if p["rpn_loss_bbox_type"] not in ("SmoothL1Loss", "L1Loss"):
        raise ConfigError(f"recipe: {where}.rpn_head.loss_bbox.type={p['rpn_loss_bbox_type']!r}: only SmoothL1Loss "
                          "or L1Loss")
    rpn = RPN(c, anchor_generator=FixedStrideAnchorGenerator(p["anchor_strides"], p["anchor_scales"],
                                                             p["anchor_ratios"]),
              pos_iou_thr=p["rpn_pos_iou_thr"], neg_iou_thr=p["rpn_neg_iou_thr"], min_pos_iou=p["rpn_min_pos_iou"],
              match_low_quality=p["rpn_match_low_quality"], num=p["rpn_num"], pos_fraction=p["rpn_pos_fraction"],
              train_nms_pre=p["rpn_train_nms_pre"], train_max_per_img=p["rpn_train_max_per_img"],
              train_nms_iou=p["rpn_train_nms_iou"], test_nms_pre=p["rpn_test_nms_pre"],
              test_max_per_img=p["rpn_test_max_per_img"], test_nms_iou=p["rpn_test_nms_iou"],
              target_stds=tuple(p["rpn_target_stds"]), loss_cls_weight=p["rpn_loss_cls_weight"],
              loss_bbox_weight=p["rpn_loss_bbox_weight"],
              smooth_l1_beta=p["rpn_loss_bbox_beta"] if p["rpn_loss_bbox_type"] == "SmoothL1Loss" else None,
              allowed_border=p["allowed_border"], nms_type=p["rpn_train_nms_type"])
    bboxes, masks, stages, box_losses = [], [], [], []
    rcnn = _list_of(p["rcnn_train"], ns, f"{where}.train_cfg.rcnn")
    for i, (bc, mc, rc) in enumerate(zip(_list_of(p["bbox_heads"], ns, f"{where}.roi_head.bbox_head"),
                                         _list_of(p["mask_heads"], ns, f"{where}.roi_head.mask_head"), rcnn)):
        bp = parse(bc, bbox_spec, f"{where}.roi_head.bbox_head[{i}]")
        mp = parse(mc, mask_spec, f"{where}.roi_head.mask_head[{i}]")
        rp = parse(rc, rcnn_spec, f"{where}.train_cfg.rcnn[{i}]")
        bw, kind = f"{where}.roi_head.bbox_head[{i}]", bp["loss_bbox_type"]
        if bp["reg_decoded_bbox"] != (kind == "GIoULoss"):
            raise ConfigError(f"recipe: {bw}: loss_bbox.type={kind!r} needs reg_decoded_bbox={kind == 'GIoULoss'} "
                              "(GIoU compares decoded boxes, SmoothL1 encoded deltas)")
        if kind == "GIoULoss":
            if "beta" in (bc.get("loss_bbox") or {}):
                raise ConfigError(f"recipe: {bw}.loss_bbox.beta is a SmoothL1Loss key, not a GIoULoss one")
            if bp["loss_cls_weight"] != 1.0:
                raise ConfigError(f"recipe: {bw}.loss_cls.loss_weight: only 1.0 (the official value) is implemented")
        elif "eps" in (bc.get("loss_bbox") or {}):
            raise ConfigError(f"recipe: {bw}.loss_bbox.eps is a GIoULoss key, not a SmoothL1Loss one")
        elif (kind, bp["loss_bbox_beta"], bp["loss_cls_weight"], bp["loss_bbox_weight"]) != \
                ("SmoothL1Loss", 1.0, 1.0, 1.0):
            raise ConfigError(f"recipe: {bw}: only SmoothL1Loss(beta=1.0) or GIoULoss (reg_decoded_bbox) and unit "
                              "classification / SmoothL1 loss weights (the official HTC++ values) are implemented")
        if bp["num_classes"] != mp["num_classes"]:
            raise ConfigError(f"recipe: {where}.roi_head.mask_head[{i}].num_classes differs from the bbox head's")
        if mp["with_conv_res"] != (i > 0):
            raise ConfigError(f"recipe: {where}.roi_head.mask_head[{i}].with_conv_res must be {i > 0} "
                              "(mask information flow)")
        norm = None if bp["norm_cfg"] is None else norm_from_cfg(bp["norm_cfg"], f"{bw}.norm_cfg")
        bboxes.append(Shared4Conv1FCBBoxHead(bp["in_channels"], bp["conv_out_channels"], bp["fc_out_channels"],
                                             bp["roi_feat_size"], bp["num_classes"], norm=norm))
        box_losses.append(("giou", bp["loss_bbox_weight"], tuple(bp["box_target_stds"])) if kind == "GIoULoss"
                          else ("smooth_l1",))
        masks.append(HTCMaskHead(mp["with_conv_res"], mp["num_convs"], mp["in_channels"], mp["conv_out_channels"],
                                 mp["num_classes"]))
        stages.append(CascadeStage(rp["stage_pos_iou_thr"], rp["stage_neg_iou_thr"], rp["stage_min_pos_iou"],
                                   rp["stage_num"], rp["stage_pos_fraction"], tuple(bp["box_target_stds"]),
                                   rp["stage_match_low_quality"]))
    sem_head = None
    if p["semantic_head"] is not None:
        sem_head = FusedSemanticHead.from_config(p["semantic_head"], f"{where}.roi_head.semantic_head")
    names = fpn.names
    roi = HybridTaskCascadeRoIHead(
        bbox_roi_extractor=LevelRoIAlign(names[:len(p["box_featmap_strides"])], p["box_roi_size"],
                                         p["box_featmap_strides"], p["box_sampling_ratio"], p["box_aligned"],
                                         p["box_finest_scale"]),
        mask_roi_extractor=LevelRoIAlign(names[:len(p["mask_featmap_strides"])], p["mask_roi_size"],
                                         p["mask_featmap_strides"], p["mask_sampling_ratio"], p["mask_aligned"],
                                         p["mask_finest_scale"]),
        bbox_heads=bboxes, mask_heads=masks, stages=stages, stage_loss_weights=p["stage_loss_weights"],
        semantic_head=sem_head,
        semantic_roi_extractor=LevelRoIAlign(("semantic",), p["sem_roi_size"], p["sem_featmap_strides"],
                                             p["sem_sampling_ratio"], p["sem_aligned"]) if sem_head else None,
        num_classes=bboxes[0].num_classes, mask_size=rp["mask_size"], score_thr=p["score_thr"],
        nms_iou=p["rcnn_nms_iou"], max_per_img=p["max_per_img"], mask_thr_binary=p["mask_thr_binary"],
        box_losses=box_losses)
    named = DETECTORS.get(cfg.get("type"))  # the registered class of model.type (the TTA subclass, say)
    if cls is None or (named is not None and issubclass(named, cls)):
        cls = named if named is not None and issubclass(named, HybridTaskCascade) else HybridTaskCascade
    model = cls._from_parts(backbone, necks, rpn, roi, p["aug"], where)
    model.pretrained = pretrained
    model.num_classes = roi.num_classes
    return model

