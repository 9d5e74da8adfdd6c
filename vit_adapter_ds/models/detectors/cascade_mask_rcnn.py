"""Cascade Mask R-CNN (mmdet 2.22 ``CascadeRCNN`` + ``CascadeRoIHead``) as the official
``cascade_mask_rcnn_deit_adapter_*_fpn_3x_coco`` configs set it up: 3 stages of ``ConvFCBBoxHead`` (4 shared convs
with SyncBN + 1 FC, class-specific regression, ``reg_decoded_bbox=True`` with ``GIoULoss(loss_weight=10)``), one
``FCNMaskHead`` per stage. The RPN, FPN, RoI pooling, stage assigner / sampler (:class:`~.htc.CascadeStage`,
:func:`~.htc.sample_rois`), mask targets, multiclass NMS and mask pasting are the ones of Mask R-CNN / HTC++.

Training, per stage ``i`` (mmdet ``CascadeRoIHead.forward_train``, not interleaved, no mask information flow):

1. assign + sample RoIs from the current proposals (ground truth added first; the stage's ``MaxIoUAssigner``, the
   official ``match_low_quality=False``);
2. box head ``i``: CE over the sampled RoIs (``/ number of sampled RoIs``) and, for the positives, the box loss at
   the ground-truth class: with ``reg_decoded_bbox`` the deltas are decoded (mmdet ``delta2bbox``, no clipping,
   :func:`delta2bbox`) and compared with the ground-truth box by GIoU (:func:`giou_loss`, eps 1e-6), summed and
   divided by the number of sampled RoIs (mmdet's ``avg_factor``); otherwise SmoothL1 on the encoded deltas;
3. mask head ``i`` on the positives of the *same* sampling: BCE at the ground-truth class on the mask targets;
4. every loss times ``stage_loss_weights[i]`` (``s{i}.acc`` is not weighted);
5. refinement (not after the last stage, no grad): each sampled RoI is regressed by box head ``i`` at its label (the
   argmax of the foreground logits for the negatives), decoded with clipping to the image, and the ground-truth RoIs
   among the positives are dropped; these are stage ``i + 1``'s proposals.

Test (mmdet ``CascadeRoIHead.simple_test``): each stage refines the RoIs at its own argmax foreground class (not
after the last); the class logits of all stages are averaged and soft-maxed, the last stage's class-specific boxes
decoded and clipped, mmdet ``multiclass_nms`` (``score_thr``, NMS IoU, ``max_per_img``); masks: every stage's mask
head on the detections, the sigmoids averaged over the stages (mmdet ``merge_aug_masks``), read at the detection's
class and pasted as mmdet. Class order is mmdet's (background last); labels 0-based.

State-dict keys are the official ones for the RoI head (``roi_head.bbox_head.{i}.shared_convs.{j}.conv`` / ``.bn``,
``shared_fcs.0``, ``fc_cls``, ``fc_reg``; ``roi_head.mask_head.{i}.convs.{j}.conv``, ``upsample``,
``conv_logits``); the FPN and RPN use torchvision's names, mapped by :func:`~.keymap.cascade_from_mmdet`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, Raw, parse
from ..norm import norm_from_cfg
from ..registry import DETECTORS, build_detection_backbone
from .bbox_ops import delta2bbox, giou_loss  # (also imported from here by other heads)
from .fpn import FPN
from . import htc as _htc
from .htc import CascadeStage, matched_gt_boxes, multiclass_nms, positive_rows, sample_rois
from .htc_heads import HTCMaskHead
from .mask_rcnn import (_ASSIGNER, _CODER, _LOSS_CE, _PROPOSAL, _ROI_EXTRACTOR, _RPN_HEAD, _SAMPLER, RPN,
                        ConvFCBBoxHead, FixedStrideAnchorGenerator, MaskRCNN, mask_targets, paste_masks, train_targets)
from .roi_extractor import LevelRoIAlign

class CascadeRoIHead(nn.Module):
    """mmdet ``CascadeRoIHead`` with one box and one mask head per stage (see the module docstring).

    ``stages``: :class:`~.htc.CascadeStage` (assigner, sampler) per stage; ``target_stds``: each box head's coder
    stds; ``loss_bbox``: per stage ``('giou', weight)`` (``reg_decoded_bbox``) or ``('smooth_l1', weight, beta)``."""

    def __init__(self, *, bbox_roi_extractor, mask_roi_extractor, bbox_heads, mask_heads, stages, target_stds,
                 loss_bbox, stage_loss_weights=(1.0, 0.5, 0.25), loss_cls_weights=None, loss_mask_weights=None,
                 num_classes=80, mask_size=28, score_thr=0.05, nms_iou=0.5, max_per_img=100, mask_thr_binary=0.5):
        super().__init__()
        n = len(stages)
        if not len(bbox_heads) == len(mask_heads) == len(target_stds) == len(loss_bbox) == \
                len(stage_loss_weights) == n:
            raise ValueError("one box head, mask head, stage setting, coder, box loss and loss weight per stage")
        self.bbox_roi_extractor, self.mask_roi_extractor = bbox_roi_extractor, mask_roi_extractor
        self.bbox_head, self.mask_head = nn.ModuleList(bbox_heads), nn.ModuleList(mask_heads)
        self.stages, self.stage_loss_weights = list(stages), [float(w) for w in stage_loss_weights]
        self.target_stds = [tuple(float(s) for s in t) for t in target_stds]
        self.loss_bbox = [tuple(x) for x in loss_bbox]
        self.loss_cls_weights = [float(w) for w in (loss_cls_weights or [1.0] * n)]
        self.loss_mask_weights = [float(w) for w in (loss_mask_weights or [1.0] * n)]
        self.num_classes, self.mask_size = int(num_classes), int(mask_size)
        self.score_thr, self.nms_iou, self.max_per_img = float(score_thr), float(nms_iou), int(max_per_img)
        self.mask_thr_binary = float(mask_thr_binary)

    @property
    def num_stages(self):
        return len(self.stages)

    def _bbox_forward(self, i, features, boxes):
        cls, reg = self.bbox_head[i](self.bbox_roi_extractor(features, boxes))
        return cls.float(), reg.float()

    def _mask_logits(self, i, features, boxes):
        return self.mask_head[i](self.mask_roi_extractor(features, boxes), return_feat=False).float()

    # ------------------------------------------------------------------------------------------ train
    def stage_box_losses(self, i, cls, reg, rois, labels, gt_boxes, targets, pos=None):
        """Stage ``i``'s ``loss_cls``, ``loss_bbox`` (before the stage weight) and ``acc`` (mmdet ``BBoxHead.loss``)
        of the sampled RoIs (N, 4) with their ``labels`` (N,) (``num_classes`` = background), the matched
        ground-truth boxes ``gt_boxes`` (N, 4) and encoded ``targets`` (N, 4) (both read at the positives)."""
        n = max(1, labels.numel())
        loss_cls = self.loss_cls_weights[i] * F.cross_entropy(cls, labels, reduction="sum") / n
        acc = (cls.detach().argmax(1) == labels).float().mean() * 100 if labels.numel() else cls.new_zeros(())
        if pos is None:  # the positives' rows (forward_train passes them: positive_rows)
            pos = torch.where(labels < self.num_classes)[0]
        if not pos.numel():
            return loss_cls, reg[pos].sum(), acc
        deltas = self.bbox_head[i].deltas_at(reg[pos], labels[pos])
        kind, weight = self.loss_bbox[i][0], self.loss_bbox[i][1]
        if kind == "giou":
            pred = delta2bbox(rois[pos], deltas, self.target_stds[i])
            loss_bbox = weight * giou_loss(pred, gt_boxes[pos]).sum() / n
        else:
            loss_bbox = weight * F.smooth_l1_loss(deltas, targets[pos], beta=self.loss_bbox[i][2], reduction="sum") / n
        return loss_cls, loss_bbox, acc

    def forward_train(self, features, proposals, image_shapes, targets):
        losses = {}
        for i, stage in enumerate(self.stages):
            w = self.stage_loss_weights[i]
            samples = [sample_rois(stage, p, t, self.num_classes) for p, t in zip(proposals, targets)]
            boxes = [s["boxes"] for s in samples]
            cls, reg = self._bbox_forward(i, features, boxes)
            labels = torch.cat([s["labels"] for s in samples])
            gt_boxes = torch.cat([matched_gt_boxes(s, t) for s, t in zip(samples, targets)])
            loss_cls, loss_bbox, acc = self.stage_box_losses(i, cls, reg, torch.cat(boxes), labels, gt_boxes,
                                                             torch.cat([s["targets"] for s in samples]),
                                                             pos=positive_rows(samples))
            losses[f"s{i}.loss_cls"], losses[f"s{i}.loss_bbox"], losses[f"s{i}.acc"] = w * loss_cls, w * loss_bbox, acc
            pos_boxes = [s["boxes"][:s["num_pos"]] for s in samples]
            pos_labels = torch.cat([s["labels"][:s["num_pos"]] for s in samples])
            mask_logits = self._mask_logits(i, features, pos_boxes)
            if pos_labels.numel() == 0:
                loss_mask = mask_logits.sum()
            else:
                tgt = torch.cat([mask_targets(t["masks"], b, s["pos_gt"], self.mask_size)
                                 for t, b, s in zip(targets, pos_boxes, samples)])
                picked = mask_logits[torch.arange(len(pos_labels), device=pos_labels.device), pos_labels]
                loss_mask = F.binary_cross_entropy_with_logits(picked, tgt)
            losses[f"s{i}.loss_mask"] = w * self.loss_mask_weights[i] * loss_mask
            if i < self.num_stages - 1:
                if cls.numel() == 0:  # no RoI in the whole batch (mmdet stops the cascade)
                    break
                proposals = self.refine(i, samples, cls, reg, image_shapes)
        return losses

    @torch.no_grad()
    def refine(self, i, samples, cls, reg, image_shapes):
        """mmdet ``refine_bboxes``: stage ``i``'s regressed RoIs per image (labels: the targets, the negatives the
        argmax foreground class), clipped to the image, the ground-truth RoIs among the positives dropped."""
        labels = torch.cat([s["labels"] for s in samples])
        labels = torch.where(labels == self.num_classes, cls[:, :-1].argmax(1), labels)
        deltas = self.bbox_head[i].deltas_at(reg, labels)
        out, start = [], 0
        for s, size in zip(samples, image_shapes):
            k = len(s["boxes"])
            dec = delta2bbox(s["boxes"], deltas[start:start + k], self.target_stds[i], max_shape=size)
            start += k
            out.append(_htc.drop_gt_rois(dec, s))
        return out

    # ------------------------------------------------------------------------------------------ test
    @torch.no_grad()
    def cascade_boxes(self, features, proposals, image_shapes):
        """mmdet ``CascadeRoIHead.simple_test`` up to the NMS: per image the last stage's class-specific boxes
        (N, C, 4) (class-agnostic: (N, 1, 4) expanded), clipped to the image, and the class probabilities (N, C + 1)
        of the stage-averaged logits."""
        counts = [len(p) for p in proposals]
        rois = [p.float() for p in proposals]
        scores = []
        for i in range(self.num_stages):
            cls, reg = self._bbox_forward(i, features, rois)
            scores.append(cls)
            if i < self.num_stages - 1:
                deltas = self.bbox_head[i].deltas_at(reg, cls[:, :-1].argmax(1)).split(counts)
                rois = [delta2bbox(r, d, self.target_stds[i], max_shape=size)
                        for r, d, size in zip(rois, deltas, image_shapes)]
        prob = F.softmax(sum(scores) / len(scores), dim=1)
        out = []
        for r, d, p, size in zip(rois, reg.split(counts), prob.split(counts), image_shapes):
            boxes = delta2bbox(r, d, self.target_stds[-1], max_shape=size).reshape(len(r), d.shape[1] // 4, 4)
            out.append((boxes.expand(-1, self.num_classes, -1), p))
        return out

    @torch.no_grad()
    def mask_probs(self, features, boxes):
        """Every stage's mask sigmoid on ``boxes`` (per image (K, 4)), averaged over the stages (mmdet
        ``merge_aug_masks``): per image (K, C, M, M)."""
        if not sum(len(b) for b in boxes):
            return [torch.zeros(len(b), self.num_classes, self.mask_size, self.mask_size, device=b.device)
                    for b in boxes]
        merged = sum(torch.sigmoid(self._mask_logits(i, features, boxes)) for i in range(self.num_stages))
        return list((merged / self.num_stages).split([len(b) for b in boxes]))

    @torch.no_grad()
    def simple_test(self, features, proposals, image_shapes):
        """Per image ``boxes`` (K, 4), ``labels`` (K,) 0-based, ``scores`` (K,), ``mask_probs`` (K, M, M) at the
        input (resized-image) scale."""
        results = []
        for b, p in self.cascade_boxes(features, proposals, image_shapes):
            boxes, labels, scores = multiclass_nms(b, p, self.score_thr, self.nms_iou, self.max_per_img, "nms")
            results.append({"boxes": boxes, "labels": labels, "scores": scores})
        for r, m in zip(results, self.mask_probs(features, [r["boxes"] for r in results])):
            r["mask_probs"] = m[torch.arange(len(r["labels"]), device=m.device), r["labels"]]
        return results

    def paste(self, result, scale_xy, ori_shape):
        """One :meth:`simple_test` result rescaled to the original image, its masks pasted (mmdet)."""
        boxes = result["boxes"] * result["boxes"].new_tensor([scale_xy[0], scale_xy[1]] * 2)
        masks = paste_masks(result["mask_probs"], boxes, int(ori_shape[0]), int(ori_shape[1]), self.mask_thr_binary)
        return {"boxes": boxes, "labels": result["labels"], "scores": result["scores"], "masks": masks}


# ---------------------------------------------------------------------------------------------- from_config
_TOP = {
    "type": Fixed("CascadeRCNN"), "backbone": Raw("backbone"), "neck": Raw("neck"),
    "pretrained": Param("pretrained", (str, type(None)), None), "init_cfg": Fixed(None),
    "rpn_head": _RPN_HEAD({"type": Fixed("SmoothL1Loss"), "beta": Param("rpn_loss_bbox_beta", (float,), 1.0 / 9.0),
                           "reduction": Fixed("mean"), "loss_weight": Param("rpn_loss_bbox_weight", (float,), 1.0)}),
    "roi_head": {
        "type": Fixed("CascadeRoIHead"), "num_stages": Param("num_stages", (int,), 3, minimum=1),
        "stage_loss_weights": Param("stage_loss_weights", (list,), (1.0, 0.5, 0.25)),
        "bbox_roi_extractor": _ROI_EXTRACTOR("box", 7), "mask_roi_extractor": _ROI_EXTRACTOR("mask", 14),
        "bbox_head": Raw("bbox_heads"), "mask_head": Raw("mask_heads"), "shared_head": Fixed(None),
        "init_cfg": Fixed(None), "pretrained": Fixed(None)},
    "train_cfg": {
        "rpn": {"assigner": _ASSIGNER("rpn", 0.7, 0.3, 0.3), "sampler": _SAMPLER("rpn", 256, 0.5, False),
                "allowed_border": Param("allowed_border", (int,), 0), "pos_weight": Fixed(-1), "debug": Fixed(False)},
        "rpn_proposal": _PROPOSAL("rpn_train", 2000, 2000), "rcnn": Raw("rcnn_train")},
    "test_cfg": {
        "rpn": _PROPOSAL("rpn_test", 1000, 1000),
        "rcnn": {"score_thr": Param("score_thr", (float,), 0.05),
                 "nms": {"type": Fixed("nms"), "iou_threshold": Param("rcnn_nms_iou", (float,), 0.5)},
                 "max_per_img": Param("max_per_img", (int,), 100),
                 "mask_thr_binary": Param("mask_thr_binary", (float,), 0.5)}},
}
_BBOX = {
    "type": Fixed("ConvFCBBoxHead"), "num_shared_convs": Param("num_shared_convs", (int,), 0, minimum=0),
    "num_shared_fcs": Param("num_shared_fcs", (int,), 0, minimum=0), "num_cls_convs": Fixed(0),
    "num_cls_fcs": Fixed(0), "num_reg_convs": Fixed(0), "num_reg_fcs": Fixed(0),
    "in_channels": Param("in_channels", (int,), 256), "conv_out_channels": Param("conv_out_channels", (int,), 256),
    "fc_out_channels": Param("fc_out_channels", (int,), 1024), "roi_feat_size": Param("roi_feat_size", (int,), 7),
    "num_classes": Param("num_classes", (int,), 80), "with_avg_pool": Fixed(False), "conv_cfg": Fixed(None),
    "norm_cfg": Raw("norm_cfg", None), "init_cfg": Fixed(None),
    "reg_class_agnostic": Param("reg_class_agnostic", (bool,), False),
    "reg_decoded_bbox": Param("reg_decoded_bbox", (bool,), False),
    "bbox_coder": _CODER("box", (0.1, 0.1, 0.2, 0.2)), "loss_cls": _LOSS_CE("loss_cls", False),
    "loss_bbox": {"type": Param("loss_bbox_type", (str,), "SmoothL1Loss", choices=("GIoULoss", "SmoothL1Loss")),
                  "beta": Param("loss_bbox_beta", (float,), 1.0), "eps": Fixed(1e-6), "reduction": Fixed("mean"),
                  "loss_weight": Param("loss_bbox_weight", (float,), 1.0)},
}
_MASK = {
    "type": Fixed("FCNMaskHead"), "num_convs": Param("num_convs", (int,), 4),
    "in_channels": Param("in_channels", (int,), 256), "conv_out_channels": Param("conv_out_channels", (int,), 256),
    "num_classes": Param("num_classes", (int,), 80), "roi_feat_size": Fixed(14), "conv_kernel_size": Fixed(3),
    "class_agnostic": Fixed(False), "upsample_cfg": Fixed({"type": "deconv", "scale_factor": 2}),
    "conv_cfg": Fixed(None), "norm_cfg": Fixed(None), "init_cfg": Fixed(None),
    "loss_mask": {"type": Fixed("CrossEntropyLoss"), "use_mask": Fixed(True), "use_sigmoid": Fixed(False),
                  "reduction": Fixed("mean"), "loss_weight": Param("loss_weight", (float,), 1.0)},
}
_RCNN = {"assigner": _ASSIGNER("stage", 0.5, 0.5, 0.5), "sampler": _SAMPLER("stage", 512, 0.25, True),
         "mask_size": Param("mask_size", (int,), 28), "pos_weight": Fixed(-1), "debug": Fixed(False)}


def _per_stage(value, n, where, replicate):
    """A list of ``n`` dicts, one per stage; a single dict is used for every stage where mmdet does so."""
    if isinstance(value, dict) and replicate:
        return [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"recipe: {where} must be {'a dict or ' if replicate else ''}a list of {n} dicts "
                          "(one per stage)")
    return list(value)


@DETECTORS.register()
class CascadeRCNN(nn.Module):
    """Backbone (4 maps, strides 4-32) -> :class:`~.fpn.FPN` -> :class:`~.mask_rcnn.RPN` -> :class:`CascadeRoIHead`.

    Train: ``model(images, targets)`` (targets as :class:`~.mask_rcnn.MaskRCNN`; a ``semantic_labels`` argument is
    ignored, as mmdet's ``TwoStageDetector`` ignores ``gt_semantic_seg``) -> ``loss_rpn_cls``, ``loss_rpn_bbox``,
    ``s{i}.loss_cls`` / ``loss_bbox`` / ``loss_mask`` / ``acc`` and their total ``loss``. Eval: :meth:`predict` as
    ``MaskRCNN.predict``. ``pretrained``: the backbone's file, recorded for the builder (nothing read here).
    """

    task = "detection"  # the task that trains it (models.registry.task_of)

    def __init__(self, backbone, neck, rpn, roi_head, pretrained: str | None = None):
        super().__init__()
        self.backbone, self.neck, self.rpn, self.roi_head = backbone, neck, rpn, roi_head
        self.num_classes = roi_head.num_classes
        self.pretrained = pretrained

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model") -> "CascadeRCNN":
        """Build from the official mmdet ``model=dict(type='CascadeRCNN', ...)`` (the cascade_mask_rcnn base plus
        a recipe's changes): every key checked, the dotted path named in errors; official keys without a knob
        here are accepted only with their official value."""
        p = parse(cfg, _TOP, where)
        b = p["backbone"]
        backbone, pretrained = build_detection_backbone(b, p["pretrained"], where)
        neck = FPN.from_config(p["neck"], f"{where}.neck")
        c, ns = neck.out_channels, p["num_stages"]
        for key, name in (("rpn_in_channels", "rpn_head.in_channels"), ("rpn_feat_channels", "rpn_head.feat_channels"),
                          ("box_roi_channels", "roi_head.bbox_roi_extractor.out_channels"),
                          ("mask_roi_channels", "roi_head.mask_roi_extractor.out_channels")):
            if p[key] != c:
                raise ConfigError(f"recipe: {where}.{name}={p[key]} must equal the neck's out_channels {c}")
        if p["rpn_train_nms_iou"] != p["rpn_test_nms_iou"]:
            raise ConfigError(f"recipe: {where}.train_cfg.rpn_proposal.nms.iou_threshold and test_cfg.rpn.nms."
                              "iou_threshold must be equal (torchvision's RPN has one NMS threshold)")
        if len(p["anchor_strides"]) != len(neck.names):
            raise ConfigError(f"recipe: {where}.rpn_head.anchor_generator.strides has {len(p['anchor_strides'])} "
                              f"levels, the neck gives {len(neck.names)}")
        if len(p["stage_loss_weights"]) != ns:
            raise ConfigError(f"recipe: {where}.roi_head.stage_loss_weights must have {ns} entries (num_stages)")
        rpn = RPN(c, anchor_generator=FixedStrideAnchorGenerator(p["anchor_strides"], p["anchor_scales"],
                                                                 p["anchor_ratios"]),
                  pos_iou_thr=p["rpn_pos_iou_thr"], neg_iou_thr=p["rpn_neg_iou_thr"],
                  min_pos_iou=p["rpn_min_pos_iou"], match_low_quality=p["rpn_match_low_quality"], num=p["rpn_num"],
                  pos_fraction=p["rpn_pos_fraction"], train_nms_pre=p["rpn_train_nms_pre"],
                  train_max_per_img=p["rpn_train_max_per_img"], train_nms_iou=p["rpn_train_nms_iou"],
                  test_nms_pre=p["rpn_test_nms_pre"], test_max_per_img=p["rpn_test_max_per_img"],
                  test_nms_iou=p["rpn_test_nms_iou"], target_stds=tuple(p["rpn_target_stds"]),
                  loss_cls_weight=p["rpn_loss_cls_weight"], loss_bbox_weight=p["rpn_loss_bbox_weight"],
                  smooth_l1_beta=p["rpn_loss_bbox_beta"], allowed_border=p["allowed_border"])
        bboxes, masks, stages, stds, box_losses, cls_w, mask_w, mask_sizes = [], [], [], [], [], [], [], []
        rw = f"{where}.roi_head"
        for i, (bc, mc, rc) in enumerate(zip(_per_stage(p["bbox_heads"], ns, f"{rw}.bbox_head", True),
                                             _per_stage(p["mask_heads"], ns, f"{rw}.mask_head", True),
                                             _per_stage(p["rcnn_train"], ns, f"{where}.train_cfg.rcnn", False))):
            bw, mw = f"{rw}.bbox_head[{i}]", f"{rw}.mask_head[{i}]"
            bp, mp = parse(bc, _BBOX, bw), parse(mc, _MASK, mw)
            rp = parse(rc, _RCNN, f"{where}.train_cfg.rcnn[{i}]")
            decoded, kind = bp["reg_decoded_bbox"], bp["loss_bbox_type"]
            if decoded != (kind == "GIoULoss"):
                raise ConfigError(f"recipe: {bw}: loss_bbox.type={kind!r} needs reg_decoded_bbox="
                                  f"{kind == 'GIoULoss'} (GIoU compares decoded boxes, SmoothL1 encoded deltas)")
            if kind == "GIoULoss" and "beta" in (bc.get("loss_bbox") or {}):
                raise ConfigError(f"recipe: {bw}.loss_bbox.beta is a SmoothL1Loss key, not a GIoULoss one")
            if bp["num_classes"] != mp["num_classes"]:
                raise ConfigError(f"recipe: {mw}.num_classes={mp['num_classes']} differs from the bbox head's "
                                  f"{bp['num_classes']}")
            if i and bp["num_classes"] != bboxes[0].num_classes:
                raise ConfigError(f"recipe: {bw}.num_classes differs from the first stage's")
            if bp["in_channels"] != c or mp["in_channels"] != c:
                raise ConfigError(f"recipe: {bw}.in_channels / {mw}.in_channels must equal the neck's out_channels {c}")
            if bp["roi_feat_size"] != p["box_roi_size"]:
                raise ConfigError(f"recipe: {bw}.roi_feat_size={bp['roi_feat_size']} must equal "
                                  f"bbox_roi_extractor.roi_layer.output_size={p['box_roi_size']}")
            if rp["mask_size"] != 2 * p["mask_roi_size"]:
                raise ConfigError(f"recipe: {where}.train_cfg.rcnn[{i}].mask_size={rp['mask_size']} must be twice "
                                  f"mask_roi_extractor.roi_layer.output_size={p['mask_roi_size']} (one deconv x2)")
            if bp["num_shared_convs"] + bp["num_shared_fcs"] == 0:
                raise ConfigError(f"recipe: {bw} needs num_shared_convs or num_shared_fcs (only shared branches "
                                  "are implemented)")
            norm = None if bp["norm_cfg"] is None else norm_from_cfg(bp["norm_cfg"], f"{bw}.norm_cfg")
            bboxes.append(ConvFCBBoxHead(bp["in_channels"], bp["conv_out_channels"], bp["fc_out_channels"],
                                         bp["roi_feat_size"], bp["num_classes"], bp["num_shared_convs"],
                                         bp["num_shared_fcs"], bp["reg_class_agnostic"], norm))
            masks.append(HTCMaskHead(False, mp["num_convs"], mp["in_channels"], mp["conv_out_channels"],
                                     mp["num_classes"]))
            stages.append(CascadeStage(rp["stage_pos_iou_thr"], rp["stage_neg_iou_thr"], rp["stage_min_pos_iou"],
                                       rp["stage_num"], rp["stage_pos_fraction"], tuple(bp["box_target_stds"]),
                                       rp["stage_match_low_quality"]))
            stds.append(tuple(bp["box_target_stds"]))
            box_losses.append(("giou", bp["loss_bbox_weight"]) if kind == "GIoULoss" else
                              ("smooth_l1", bp["loss_bbox_weight"], bp["loss_bbox_beta"]))
            cls_w.append(bp["loss_cls_weight"])
            mask_w.append(mp["loss_weight"])
            mask_sizes.append(rp["mask_size"])
        if len(set(mask_sizes)) > 1:
            raise ConfigError(f"recipe: {where}.train_cfg.rcnn[*].mask_size must be the same in every stage")
        names = neck.names
        roi = CascadeRoIHead(
            bbox_roi_extractor=LevelRoIAlign(names[:len(p["box_featmap_strides"])], p["box_roi_size"],
                                             p["box_featmap_strides"], p["box_sampling_ratio"], p["box_aligned"],
                                             p["box_finest_scale"]),
            mask_roi_extractor=LevelRoIAlign(names[:len(p["mask_featmap_strides"])], p["mask_roi_size"],
                                             p["mask_featmap_strides"], p["mask_sampling_ratio"], p["mask_aligned"],
                                             p["mask_finest_scale"]),
            bbox_heads=bboxes, mask_heads=masks, stages=stages, target_stds=stds, loss_bbox=box_losses,
            stage_loss_weights=p["stage_loss_weights"], loss_cls_weights=cls_w, loss_mask_weights=mask_w,
            num_classes=bboxes[0].num_classes, mask_size=mask_sizes[0], score_thr=p["score_thr"],
            nms_iou=p["rcnn_nms_iou"], max_per_img=p["max_per_img"], mask_thr_binary=p["mask_thr_binary"])
        return cls(backbone, neck, rpn, roi, pretrained=pretrained)

    # ----------------------------------------------------------------------------------------------------------
    def extract_feat(self, images):
        return self.neck(self.backbone(images))

    def forward(self, images, targets=None, semantic_labels=None, image_sizes=None):
        """Train mode: the loss dict (class docstring); eval mode: :meth:`predict`."""
        if not self.training:
            return self.predict(images, image_sizes)
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError("training needs one target dict per image")
        from torchvision.models.detection.image_list import ImageList

        sizes = MaskRCNN._image_sizes(images, targets, image_sizes)
        tv = train_targets(images, targets, sizes)  # masks zero-padded to each image's pad_shape (mmdet Pad)
        feats = self.extract_feat(images)
        proposals, rpn_losses = self.rpn(ImageList(images, sizes), feats, tv)
        losses = {"loss_rpn_cls": rpn_losses["loss_objectness"], "loss_rpn_bbox": rpn_losses["loss_rpn_box_reg"]}
        losses.update(self.roi_head.forward_train(feats, proposals, sizes, tv))
        losses["loss"] = sum(v for k, v in losses.items() if k.split(".")[-1].startswith("loss"))
        return losses

    @torch.no_grad()
    def predict(self, images, image_sizes=None, ori_shapes=None):
        """Detections per image: ``boxes`` (K, 4), ``labels`` (K,) 0-based, ``scores`` (K,), ``masks`` (K, h, w)
        bool; ``image_sizes`` / ``ori_shapes`` as ``MaskRCNN.predict``."""
        from torchvision.models.detection.image_list import ImageList

        sizes = MaskRCNN._image_sizes(images, None, image_sizes)
        feats = self.extract_feat(images)
        proposals, _ = self.rpn(ImageList(images, sizes), feats)
        out = []
        for r, (h, w), ori in zip(self.roi_head.simple_test(feats, proposals, sizes), sizes,
                                  ori_shapes if ori_shapes is not None else sizes):
            out.append(self.roi_head.paste(r, (ori[1] / w, ori[0] / h), ori))
        return out


__all__ = ["CascadeRCNN", "CascadeRoIHead", "ConvFCBBoxHead", "delta2bbox", "giou_loss"]
