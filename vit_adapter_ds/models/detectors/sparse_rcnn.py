"""Sparse R-CNN (mmdet 2.22 ``SparseRCNN`` + ``EmbeddingRPNHead`` + ``SparseRoIHead`` of ``DIIHead`` stages) as the
official ``sparse_rcnn_deit_adapter_small_fpn_3x_coco`` config sets it up. Box detection only.

* :class:`EmbeddingRPNHead`: ``num_proposals`` learned boxes (``init_proposal_bboxes``, normalised cx, cy, w, h,
  initialised to the whole image 0.5, 0.5, 1, 1) and features (``init_proposal_features``, N(0, 1)); per image the
  boxes become x1y1x2y2 times the image's unpadded (w, h, w, h).
* :class:`DIIHead` per stage: self-attention over the proposals of an image (mmcv ``MultiheadAttention``: identity
  + ``nn.MultiheadAttention``), LayerNorm; :class:`DynamicConv` of the proposal feature with its 7 x 7 RoI feature,
  residual, LayerNorm; FFN (mmcv ``FFN``: identity + fc-ReLU-fc), LayerNorm; ``num_cls_fcs`` / ``num_reg_fcs`` of
  (Linear without bias, LayerNorm, ReLU); ``fc_cls`` (``num_classes`` sigmoid logits), ``fc_reg`` (4 deltas,
  class-agnostic). Init as mmdet: Xavier uniform of every parameter with more than one dimension, ``fc_cls`` bias
  ``-log(99)`` (prior 0.01), ``fc_reg`` bias 0, the other vectors PyTorch's defaults.
* refinement: the deltas are decoded on the stage's boxes (mmdet ``DeltaXYWHBBoxCoder``: stds 0.5, 0.5, 1, 1,
  ``clip_border=False``); the next stage gets these boxes detached and the stage's object features (not detached).

Training, per stage ``i`` (``SparseRoIHead.forward_train``): the detached boxes (normalised by the image's
(w, h, w, h), as cx, cy, w, h) and detached class logits are matched one-to-one to the ground truth by
:class:`HungarianAssigner` (cost = ``FocalLossCost`` + ``BBoxL1Cost`` + ``IoUCost``, scipy
``linear_sum_assignment``); unmatched proposals are background (``PseudoSampler``). Losses, each divided by
``avg_factor`` = the number of matched proposals of the batch averaged over the ranks (mmdet ``reduce_mean``):
sigmoid focal loss over all proposals x classes (``loss_cls``), L1 of the decoded matched boxes and their ground
truth, both divided by the image's (w, h, w, h) (``loss_bbox``), GIoU loss of the decoded boxes (``loss_iou``);
``pos_acc`` = top-1 accuracy (%) of the matched proposals. Every entry, ``pos_acc`` included, is multiplied by
``stage_loss_weights[i]`` and named ``stage{i}_<name>`` as mmdet; ``loss`` is the sum of the ``*loss*`` entries.
Where mmdet divides by ``avg_factor = 0`` (no ground truth on any rank), 1 is used instead.

Test (``SparseRoIHead.simple_test``): the last stage's sigmoid scores (P, C) of each image, flattened, top
``max_per_img`` over classes x proposals; label = index mod C, box = the last stage's decoded box of proposal
index div C (no NMS, no clipping), rescaled to the original image.

State-dict keys are the official ones except the neck (torchvision FPN names, :mod:`.keymap`):
``rpn_head.init_proposal_{bboxes,features}.weight``, ``roi_head.bbox_head.{i}.attention.attn.*``,
``attention_norm``, ``instance_interactive_conv.{dynamic_layer,norm_in,norm_out,fc_layer,fc_norm}``,
``instance_interactive_conv_norm``, ``ffn.layers.0.0`` / ``ffn.layers.1``, ``ffn_norm``, ``cls_fcs.{3j,3j+1}``,
``fc_cls``, ``reg_fcs.{3j,3j+1}``, ``fc_reg``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, Raw, parse
from ..registry import DETECTORS, NECKS, build_detection_backbone
from .bbox_ops import delta2bbox, giou_loss
from .dense_heads import reduce_mean, sigmoid_focal_loss
from .mask_rcnn import _ROI_EXTRACTOR, MaskRCNN
from .roi_extractor import LevelRoIAlign


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def pairwise_giou(a: torch.Tensor, b: torch.Tensor, mode: str = "giou", eps: float = 1e-6) -> torch.Tensor:
    """mmdet ``bbox_overlaps(a, b, mode, is_aligned=False, eps)``: (N, M) IoU or GIoU of x1y1x2y2 boxes."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    floor = a.new_tensor([eps])
    union = torch.max(area_a[:, None] + area_b[None] - overlap, floor)
    iou = overlap / union
    if mode == "iou":
        return iou
    ewh = (torch.max(a[:, None, 2:], b[None, :, 2:]) - torch.min(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    enclose = torch.max(ewh[..., 0] * ewh[..., 1], floor)
    return iou - (enclose - union) / enclose


class HungarianAssigner:
    """mmdet ``HungarianAssigner`` with ``FocalLossCost(weight, alpha, gamma, eps)``, ``BBoxL1Cost(weight,
    box_format)`` and ``IoUCost(iou_mode, weight)``. ``assign(bbox_pred (P, 4) normalised cx cy w h, cls_pred
    (P, C) logits, gt_boxes (G, 4) x1y1x2y2 pixels, gt_labels (G,), img_shape (h, w))`` -> (P,) int64: the matched
    ground-truth index, -1 for background."""

    def __init__(self, cls_weight=2.0, alpha=0.25, gamma=2.0, eps=1e-12, reg_weight=5.0, box_format="xyxy",
                 iou_weight=2.0, iou_mode="giou"):
        self.cls_weight, self.alpha, self.gamma, self.eps = float(cls_weight), float(alpha), float(gamma), float(eps)
        self.reg_weight, self.box_format = float(reg_weight), box_format
        self.iou_weight, self.iou_mode = float(iou_weight), iou_mode

    def cost(self, bbox_pred, cls_pred, gt_boxes, gt_labels, img_shape) -> torch.Tensor:
        """(P, G) weighted cost matrix (mmdet's sum of the three costs)."""
        h, w = float(img_shape[0]), float(img_shape[1])
        factor = gt_boxes.new_tensor([w, h, w, h])[None]
        p = cls_pred.sigmoid()
        neg = -(1 - p + self.eps).log() * (1 - self.alpha) * p.pow(self.gamma)
        pos = -(p + self.eps).log() * self.alpha * (1 - p).pow(self.gamma)
        cls_cost = (pos[:, gt_labels] - neg[:, gt_labels]) * self.cls_weight
        gt_norm = gt_boxes / factor
        if self.box_format == "xyxy":
            reg_cost = torch.cdist(cxcywh_to_xyxy(bbox_pred), gt_norm, p=1)
        else:
            reg_cost = torch.cdist(bbox_pred, xyxy_to_cxcywh(gt_norm), p=1)
        iou_cost = -pairwise_giou(cxcywh_to_xyxy(bbox_pred) * factor, gt_boxes, self.iou_mode)
        return cls_cost + reg_cost * self.reg_weight + iou_cost * self.iou_weight

    @torch.no_grad()
    def assign(self, bbox_pred, cls_pred, gt_boxes, gt_labels, img_shape) -> torch.Tensor:
        from scipy.optimize import linear_sum_assignment

        out = torch.full((bbox_pred.shape[0],), -1, dtype=torch.int64, device=bbox_pred.device)
        if gt_boxes.shape[0] == 0 or bbox_pred.shape[0] == 0:
            return out
        cost = self.cost(bbox_pred, cls_pred, gt_boxes, gt_labels, img_shape).detach().cpu()
        rows, cols = linear_sum_assignment(cost.numpy())
        out[torch.as_tensor(rows, device=out.device)] = torch.as_tensor(cols, dtype=torch.int64, device=out.device)
        return out


def matched_rows(match: torch.Tensor) -> torch.Tensor:
    """The proposals that :meth:`HungarianAssigner.assign` matched to a box (``match >= 0``), ascending."""
    return torch.nonzero(match >= 0).flatten()


class EmbeddingRPNHead(nn.Module):
    """mmdet ``EmbeddingRPNHead``: ``forward(image_sizes)`` -> (boxes (B, P, 4) x1y1x2y2 pixels, float32; features
    (B, P, C))."""

    def __init__(self, num_proposals: int = 100, proposal_feature_channel: int = 256):
        super().__init__()
        self.num_proposals, self.proposal_feature_channel = int(num_proposals), int(proposal_feature_channel)
        self.init_proposal_bboxes = nn.Embedding(self.num_proposals, 4)
        self.init_proposal_features = nn.Embedding(self.num_proposals, self.proposal_feature_channel)
        nn.init.constant_(self.init_proposal_bboxes.weight[:, :2], 0.5)
        nn.init.constant_(self.init_proposal_bboxes.weight[:, 2:], 1.0)

    def forward(self, image_sizes):
        w = self.init_proposal_bboxes.weight.float()  # box coordinates in float32 also for a bf16 / fp16 model
        whwh = w.new_tensor([[float(s[1]), float(s[0]), float(s[1]), float(s[0])] for s in image_sizes])
        boxes = cxcywh_to_xyxy(w)[None] * whwh[:, None]
        feats = self.init_proposal_features.weight[None].expand(len(image_sizes), -1, -1)
        return boxes, feats


class DynamicConv(nn.Module):
    """mmdet ``DynamicConv`` (LayerNorm, ReLU): ``forward(param_feature (N, C_in), input_feature (N, C_in, S, S))``
    -> (N, C_out). A linear layer turns each proposal feature into a (C_in x F) and an (F x C_out) matrix applied to
    its S*S RoI feature vectors (each followed by LayerNorm + ReLU); with ``with_proj`` the S*S*C_out result is
    projected to C_out (Linear, LayerNorm, ReLU)."""

    def __init__(self, in_channels=256, feat_channels=64, out_channels=None, input_feat_shape=7, with_proj=True):
        super().__init__()
        self.in_channels, self.feat_channels = int(in_channels), int(feat_channels)
        self.out_channels = int(out_channels) if out_channels else self.in_channels
        self.input_feat_shape, self.with_proj = int(input_feat_shape), bool(with_proj)
        self.num_params_in = self.in_channels * self.feat_channels
        self.num_params_out = self.out_channels * self.feat_channels
        self.dynamic_layer = nn.Linear(self.in_channels, self.num_params_in + self.num_params_out)
        self.norm_in = nn.LayerNorm(self.feat_channels)
        self.norm_out = nn.LayerNorm(self.out_channels)
        if self.with_proj:
            self.fc_layer = nn.Linear(self.out_channels * self.input_feat_shape ** 2, self.out_channels)
            self.fc_norm = nn.LayerNorm(self.out_channels)

    def forward(self, param_feature, input_feature):
        x = input_feature.flatten(2).transpose(1, 2)  # (N, S*S, C_in)
        params = self.dynamic_layer(param_feature)
        p_in = params[:, :self.num_params_in].view(-1, self.in_channels, self.feat_channels)
        p_out = params[:, -self.num_params_out:].view(-1, self.feat_channels, self.out_channels)
        x = F.relu(self.norm_in(torch.bmm(x, p_in)))
        x = F.relu(self.norm_out(torch.bmm(x, p_out)))
        if self.with_proj:
            x = F.relu(self.fc_norm(self.fc_layer(x.flatten(1))))
        return x


class _Attention(nn.Module):
    """mmcv ``MultiheadAttention`` as DIIHead builds it (``attn_drop=dropout``, no projection / shortcut dropout):
    ``x + nn.MultiheadAttention(x, x, x)`` on (P, B, C)."""

    def __init__(self, embed_dims, num_heads, dropout=0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout)

    def forward(self, x):
        return x + self.attn(x, x, x)[0]


class _FFN(nn.Module):
    """mmcv ``FFN`` (``ffn_drop=dropout``, identity shortcut): ``x + [fc-ReLU-drop] x (n - 1), fc, drop``; keys
    ``layers.{j}.0`` for the hidden fcs and ``layers.{n-1}`` for the last one."""

    def __init__(self, embed_dims, feedforward_channels, num_fcs=2, dropout=0.0):
        super().__init__()
        if num_fcs < 2:
            raise ValueError(f"num_ffn_fcs must be >= 2, got {num_fcs}")
        layers, c = [], embed_dims
        for _ in range(num_fcs - 1):
            layers.append(nn.Sequential(nn.Linear(c, feedforward_channels), nn.ReLU(), nn.Dropout(dropout)))
            c = feedforward_channels
        layers += [nn.Linear(c, embed_dims), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.layers(x)


def _fcs(n, c):
    mods = []
    for _ in range(n):
        mods += [nn.Linear(c, c, bias=False), nn.LayerNorm(c), nn.ReLU()]
    return nn.ModuleList(mods)


class DIIHead(nn.Module):
    """mmdet ``DIIHead`` (sigmoid classification, class-agnostic decoded regression), see the module docstring.
    ``forward(roi_feat (B*P, C, S, S), proposal_feat (B, P, C))`` -> (cls_score (B, P, num_classes), deltas
    (B, P, 4), obj_feat (B, P, C), attn_feat (B, P, C))."""

    def __init__(self, num_classes=80, num_ffn_fcs=2, num_heads=8, num_cls_fcs=1, num_reg_fcs=3,
                 feedforward_channels=2048, in_channels=256, dropout=0.0, feat_channels=64, input_feat_shape=7,
                 with_proj=True):
        super().__init__()
        c = self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.attention = _Attention(c, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(c)
        self.instance_interactive_conv = DynamicConv(c, feat_channels, c, input_feat_shape, with_proj)
        self.instance_interactive_conv_dropout = nn.Dropout(dropout)
        self.instance_interactive_conv_norm = nn.LayerNorm(c)
        self.ffn = _FFN(c, feedforward_channels, num_ffn_fcs, dropout)
        self.ffn_norm = nn.LayerNorm(c)
        self.cls_fcs = _fcs(num_cls_fcs, c)
        self.fc_cls = nn.Linear(c, self.num_classes)
        self.reg_fcs = _fcs(num_reg_fcs, c)
        self.fc_reg = nn.Linear(c, 4)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feat, proposal_feat):
        n, p = proposal_feat.shape[:2]
        attn = self.attention_norm(self.attention(proposal_feat.transpose(0, 1))).transpose(0, 1)
        x = attn.reshape(-1, self.in_channels)
        x = self.instance_interactive_conv_norm(
            x + self.instance_interactive_conv_dropout(self.instance_interactive_conv(x, roi_feat)))
        obj = self.ffn_norm(self.ffn(x))
        cls_feat, reg_feat = obj, obj
        for layer in self.cls_fcs:
            cls_feat = layer(cls_feat)
        for layer in self.reg_fcs:
            reg_feat = layer(reg_feat)
        return (self.fc_cls(cls_feat).view(n, p, self.num_classes), self.fc_reg(reg_feat).view(n, p, 4),
                obj.view(n, p, self.in_channels), attn)


class SparseRoIHead(nn.Module):
    """mmdet ``SparseRoIHead`` (see the module docstring). ``assigners``: one :class:`HungarianAssigner` per stage;
    ``loss_weights``: per stage ``(cls, alpha, gamma, l1, iou)``."""

    def __init__(self, *, bbox_roi_extractor, bbox_heads, assigners, loss_weights, stage_loss_weights,
                 target_stds=(0.5, 0.5, 1.0, 1.0), max_per_img=100):
        super().__init__()
        n = len(bbox_heads)
        if not len(assigners) == len(loss_weights) == len(stage_loss_weights) == n:
            raise ValueError("one box head, assigner, loss setting and stage loss weight per stage")
        self.bbox_roi_extractor = bbox_roi_extractor
        self.bbox_head = nn.ModuleList(bbox_heads)
        self.assigners, self.loss_weights = list(assigners), [tuple(float(v) for v in w) for w in loss_weights]
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.target_stds = [tuple(float(s) for s in t) for t in target_stds] if isinstance(target_stds[0], (
            list, tuple)) else [tuple(float(s) for s in target_stds)] * n
        self.num_classes = self.bbox_head[-1].num_classes
        self.max_per_img = int(max_per_img)

    @property
    def num_stages(self):
        return len(self.bbox_head)

    def stage_forward(self, i, features, boxes, obj_feats):
        """Stage ``i`` on ``boxes`` (B, P, 4) with ``obj_feats`` (B, P, C) -> (cls (B, P, C') float, decoded boxes
        (B, P, 4) float, object features (B, P, C))."""
        b, p = boxes.shape[:2]
        rois = boxes.detach().float()
        roi_feats = self.bbox_roi_extractor(features, list(rois))
        if torch.is_grad_enabled():  # every level in the graph, used by a RoI or not (mmdet SingleRoIExtractor
            # adds feats[l].sum() * 0 for the unused levels): ranks then reduce the same gradients (ZeRO buckets)
            roi_feats = roi_feats + sum(features[n].sum() for n in self.bbox_roi_extractor.featmap_names) * 0.0
        cls, deltas, obj, _ = self.bbox_head[i](roi_feats, obj_feats)
        dec = delta2bbox(boxes.reshape(-1, 4).float(), deltas.reshape(-1, 4).float(), self.target_stds[i])
        return cls.float(), dec.view(b, p, 4), obj

    def stage_losses(self, i, cls, boxes, targets, image_sizes):
        """Stage ``i``'s ``loss_cls``, ``loss_bbox``, ``loss_iou``, ``pos_acc`` (before the stage weight) of the class
        logits ``cls`` (B, P, C) and decoded ``boxes`` (B, P, 4) (mmdet ``DIIHead.loss`` after the assignment)."""
        w_cls, alpha, gamma, w_l1, w_iou = self.loss_weights[i]
        labels, pos_pred, pos_gt, pos_whwh, pos_cls, pos_lab = [], [], [], [], [], []
        for k, (t, size) in enumerate(zip(targets, image_sizes)):
            h, w = float(size[0]), float(size[1])
            whwh = boxes.new_tensor([w, h, w, h])
            gt_boxes, gt_labels = t["boxes"].to(boxes), t["labels"].to(boxes.device).long()
            match = self.assigners[i].assign(xyxy_to_cxcywh(boxes[k].detach() / whwh), cls[k].detach(), gt_boxes,
                                             gt_labels, size)
            lab = torch.full_like(match, self.num_classes)
            pos = matched_rows(match)
            lab[pos] = gt_labels[match[pos]]
            labels.append(lab)
            pos_pred.append(boxes[k][pos])
            pos_gt.append(gt_boxes[match[pos]])
            pos_whwh.append(whwh.expand(pos.numel(), 4))
            pos_cls.append(cls[k][pos])
            pos_lab.append(lab[pos])
        labels = torch.cat(labels)
        num_pos = (labels < self.num_classes).sum().float()
        avg = reduce_mean(num_pos)
        avg = torch.where(avg > 0, avg, torch.ones_like(avg))  # mmdet divides by 0 here
        c = cls.reshape(-1, cls.shape[-1])
        out = {"loss_cls": w_cls * sigmoid_focal_loss(c, labels, gamma, alpha).sum() / avg}
        pos_cls, pos_lab = torch.cat(pos_cls), torch.cat(pos_lab)
        out["pos_acc"] = ((pos_cls.detach().argmax(1) == pos_lab).float().mean() * 100 if pos_lab.numel()
                          else c.new_zeros(()))
        pred, gt, whwh = torch.cat(pos_pred), torch.cat(pos_gt), torch.cat(pos_whwh)
        if pred.shape[0]:
            out["loss_bbox"] = w_l1 * (pred / whwh - gt / whwh).abs().sum() / avg
            out["loss_iou"] = w_iou * giou_loss(pred, gt).sum() / avg
        else:
            out["loss_bbox"] = boxes.sum() * 0
            out["loss_iou"] = boxes.sum() * 0
        return out

    def forward_train(self, features, proposals, proposal_feats, image_sizes, targets):
        losses = {}
        boxes, obj = proposals, proposal_feats
        for i in range(self.num_stages):
            cls, dec, obj = self.stage_forward(i, features, boxes, obj)
            for k, v in self.stage_losses(i, cls, dec, targets, image_sizes).items():
                losses[f"stage{i}_{k}"] = v * self.stage_loss_weights[i]
            boxes = dec.detach()
        return losses

    @torch.no_grad()
    def simple_test(self, features, proposals, proposal_feats):
        """Per image ``boxes`` (K, 4) at the input scale, ``labels`` (K,) 0-based, ``scores`` (K,): the top
        ``max_per_img`` of the last stage's sigmoid scores over proposals x classes (mmdet ``simple_test``)."""
        boxes, obj = proposals, proposal_feats
        for i in range(self.num_stages):
            cls, boxes, obj = self.stage_forward(i, features, boxes, obj)
        scores = cls.sigmoid()
        out = []
        for s, b in zip(scores, boxes):
            top, idx = s.flatten().topk(min(self.max_per_img, s.numel()))
            out.append({"boxes": b[torch.div(idx, self.num_classes, rounding_mode="floor")],
                        "labels": idx % self.num_classes, "scores": top})
        return out


# ---------------------------------------------------------------------------------------------- from_config
_TOP = {
    "type": Fixed("SparseRCNN"), "backbone": Raw("backbone"), "neck": Raw("neck"),
    "pretrained": Param("pretrained", (str, type(None)), None), "init_cfg": Fixed(None),
    "rpn_head": {"type": Fixed("EmbeddingRPNHead"), "num_proposals": Param("num_proposals", (int,), 100, minimum=1),
                 "proposal_feature_channel": Param("rpn_feature_channel", (int,), 256), "init_cfg": Fixed(None)},
    "roi_head": {
        "type": Fixed("SparseRoIHead"), "num_stages": Param("num_stages", (int,), 6, minimum=1),
        "stage_loss_weights": Param("stage_loss_weights", (list, tuple), (1, 1, 1, 1, 1, 1)),
        "proposal_feature_channel": Param("roi_feature_channel", (int,), 256),
        "bbox_roi_extractor": dict(_ROI_EXTRACTOR("box", 7), roi_layer={
            "type": Fixed("RoIAlign"), "output_size": Param("box_roi_size", (int,), 7),
            "sampling_ratio": Param("box_sampling_ratio", (int,), 2), "aligned": Param("box_aligned", (bool,), True),
            "pool_mode": Fixed("avg"), "use_torchvision": Fixed(False)}),
        "bbox_head": Raw("bbox_heads"), "mask_roi_extractor": Fixed(None), "mask_head": Fixed(None),
        "init_cfg": Fixed(None), "pretrained": Fixed(None)},
    "train_cfg": {"rpn": Fixed(None), "rcnn": Raw("rcnn_train", None)},
    "test_cfg": {"rpn": Fixed(None), "rcnn": {"max_per_img": Param("max_per_img", (int,), 100, minimum=1)}},
}
_RELU = Fixed({"type": "ReLU", "inplace": True}, {"type": "ReLU"})
_DII = {
    "type": Fixed("DIIHead"), "num_classes": Param("num_classes", (int,), 80),
    "num_ffn_fcs": Param("num_ffn_fcs", (int,), 2, minimum=2), "num_heads": Param("num_heads", (int,), 8, minimum=1),
    "num_cls_fcs": Param("num_cls_fcs", (int,), 1, minimum=0), "num_reg_fcs": Param("num_reg_fcs", (int,), 3, minimum=0),
    "feedforward_channels": Param("feedforward_channels", (int,), 2048),
    "in_channels": Param("in_channels", (int,), 256), "dropout": Param("dropout", (float,), 0.0, minimum=0.0),
    "ffn_act_cfg": _RELU, "init_cfg": Fixed(None), "reg_class_agnostic": Fixed(True), "reg_decoded_bbox": Fixed(True),
    "dynamic_conv_cfg": {
        "type": Fixed("DynamicConv"), "in_channels": Param("dc_in_channels", (int,), 256),
        "feat_channels": Param("dc_feat_channels", (int,), 64),
        "out_channels": Param("dc_out_channels", (int, type(None)), None),
        "input_feat_shape": Param("dc_input_feat_shape", (int,), 7), "with_proj": Param("with_proj", (bool,), True),
        "act_cfg": _RELU, "norm_cfg": Fixed({"type": "LN"}), "init_cfg": Fixed(None)},
    "loss_bbox": {"type": Fixed("L1Loss"), "reduction": Fixed("mean"),
                  "loss_weight": Param("loss_bbox_weight", (float,), 1.0)},
    "loss_iou": {"type": Fixed("GIoULoss"), "eps": Fixed(1e-6), "reduction": Fixed("mean"),
                 "loss_weight": Param("loss_iou_weight", (float,), 1.0)},
    "loss_cls": {"type": Fixed("FocalLoss"), "use_sigmoid": Fixed(True), "gamma": Param("gamma", (float,), 2.0),
                 "alpha": Param("alpha", (float,), 0.25), "reduction": Fixed("mean"),
                 "loss_weight": Param("loss_cls_weight", (float,), 1.0)},
    "bbox_coder": {"type": Fixed("DeltaXYWHBBoxCoder"), "clip_border": Param("clip_border", (bool,), True),
                   "target_means": Fixed([0.0, 0.0, 0.0, 0.0]),
                   "target_stds": Param("target_stds", (list, tuple), (0.1, 0.1, 0.2, 0.2))},
}
_RCNN = {
    "assigner": {
        "type": Fixed("HungarianAssigner"),
        "cls_cost": {"type": Fixed("FocalLossCost"), "weight": Param("cls_cost_weight", (float,), 1.0),
                     "alpha": Param("cost_alpha", (float,), 0.25), "gamma": Param("cost_gamma", (float,), 2.0),
                     "eps": Param("cost_eps", (float,), 1e-12), "binary_input": Fixed(False)},
        "reg_cost": {"type": Fixed("BBoxL1Cost"), "weight": Param("reg_cost_weight", (float,), 1.0),
                     "box_format": Param("box_format", (str,), "xyxy", choices=("xyxy", "xywh"))},
        "iou_cost": {"type": Fixed("IoUCost"), "iou_mode": Param("iou_mode", (str,), "giou", choices=("giou", "iou")),
                     "weight": Param("iou_cost_weight", (float,), 1.0)}},
    "sampler": {"type": Fixed("PseudoSampler")}, "pos_weight": Fixed(1, -1), "debug": Fixed(False),
}


@DETECTORS.register()
class SparseRCNN(nn.Module):
    """Backbone (4 maps, strides 4-32) -> FPN -> :class:`EmbeddingRPNHead` -> :class:`SparseRoIHead`.

    Train: ``model(images, targets)`` (targets: ``boxes`` (N, 4), ``labels`` (N,) 0-based, optionally
    ``img_shape``; masks are not read; ``semantic_labels`` is ignored) -> the ``stage{i}_*`` entries and their total
    ``loss``. Eval: :meth:`predict` -> per image ``boxes``, ``labels``, ``scores`` (no masks).
    ``pretrained``: the backbone's file, recorded for the builder (nothing read here).
    """

    task = "detection"  # the task that trains it (models.registry.task_of)
    with_mask = False  # boxes only: evaluation.metric 'bbox', no gt_masks needed (tasks/detection.py)

    def __init__(self, backbone, neck, rpn_head, roi_head, pretrained: str | None = None):
        super().__init__()
        self.backbone, self.neck, self.rpn_head, self.roi_head = backbone, neck, rpn_head, roi_head
        self.num_classes = roi_head.num_classes
        self.pretrained = pretrained

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model") -> "SparseRCNN":
        """Build from the official mmdet ``model=dict(type='SparseRCNN', ...)``: every key checked, the dotted path
        named in errors; official keys without a knob here are accepted only with their official value."""
        p = parse(cfg, _TOP, where)
        b = p["backbone"]
        backbone, pretrained = build_detection_backbone(b, p["pretrained"], where)
        neck_cfg = p["neck"]
        neck_cls = NECKS.lookup(neck_cfg, f"{where}.neck", default="FPN")
        if not hasattr(neck_cls, "names"):
            raise ConfigError(f"recipe: {where}.neck.type={neck_cfg.get('type')!r} gives no feature pyramid")
        neck = neck_cls.from_config(neck_cfg, f"{where}.neck")
        c, ns, rw = neck.out_channels, p["num_stages"], f"{where}.roi_head"
        for key, name in (("rpn_feature_channel", "rpn_head.proposal_feature_channel"),
                          ("roi_feature_channel", "roi_head.proposal_feature_channel"),
                          ("box_roi_channels", "roi_head.bbox_roi_extractor.out_channels")):
            if p[key] != c:
                raise ConfigError(f"recipe: {where}.{name}={p[key]} must equal the neck's out_channels {c}")
        if len(p["stage_loss_weights"]) != ns:
            raise ConfigError(f"recipe: {rw}.stage_loss_weights must have {ns} entries (num_stages)")
        if len(p["box_featmap_strides"]) > len(neck.names):
            raise ConfigError(f"recipe: {rw}.bbox_roi_extractor.featmap_strides has more levels than the neck")
        heads_cfg = p["bbox_heads"]
        heads_cfg = [heads_cfg] * ns if isinstance(heads_cfg, dict) else heads_cfg
        if not isinstance(heads_cfg, (list, tuple)) or len(heads_cfg) != ns:
            raise ConfigError(f"recipe: {rw}.bbox_head must be a dict or a list of {ns} dicts (one per stage)")
        rcnn = p["rcnn_train"]
        rcnn = [{}] * ns if rcnn is None else ([rcnn] * ns if isinstance(rcnn, dict) else rcnn)
        if not isinstance(rcnn, (list, tuple)) or len(rcnn) != ns:
            raise ConfigError(f"recipe: {where}.train_cfg.rcnn must be a list of {ns} dicts (one per stage)")
        heads, assigners, losses, stds = [], [], [], []
        for i, (hc, rc) in enumerate(zip(heads_cfg, rcnn)):
            hw = f"{rw}.bbox_head[{i}]"
            hp = parse(hc, _DII, hw)
            rp = parse(rc, _RCNN, f"{where}.train_cfg.rcnn[{i}]")
            # mmdet's defaults where this head has no knob: BBoxHead's loss_cls (softmax CE), loss_bbox (SmoothL1)
            # and bbox_coder (clip_border=True); HungarianAssigner's cls_cost (ClassificationCost)
            for key in ("loss_cls", "loss_bbox", "bbox_coder"):
                if key not in hc:
                    raise ConfigError(f"recipe: {hw}.{key} must be given (only the official FocalLoss / L1Loss / "
                                      "DeltaXYWHBBoxCoder(clip_border=False) are implemented)")
            if hp["clip_border"]:
                raise ConfigError(f"recipe: {hw}.bbox_coder.clip_border=True is not supported (the official "
                                  "Sparse R-CNN decodes without clipping: False)")
            if rc and "cls_cost" not in (rc.get("assigner") or {}):
                raise ConfigError(f"recipe: {where}.train_cfg.rcnn[{i}].assigner.cls_cost must be given (only "
                                  "FocalLossCost is implemented)")
            if "loss_iou" not in hc:
                hp["loss_iou_weight"] = 2.0  # DIIHead's default loss_iou=dict(type='GIoULoss', loss_weight=2.0)
            if hp["in_channels"] != c:
                raise ConfigError(f"recipe: {hw}.in_channels={hp['in_channels']} must equal the neck's out_channels "
                                  f"{c}")
            if hp["dc_in_channels"] != c or hp["dc_out_channels"] not in (None, c):
                raise ConfigError(f"recipe: {hw}.dynamic_conv_cfg.in_channels / out_channels must equal "
                                  f"in_channels {c}")
            if hp["dc_input_feat_shape"] != p["box_roi_size"]:
                raise ConfigError(f"recipe: {hw}.dynamic_conv_cfg.input_feat_shape={hp['dc_input_feat_shape']} must "
                                  f"equal bbox_roi_extractor.roi_layer.output_size={p['box_roi_size']}")
            if c % hp["num_heads"]:
                raise ConfigError(f"recipe: {hw}.num_heads={hp['num_heads']} must divide in_channels {c}")
            if i and hp["num_classes"] != heads[0].num_classes:
                raise ConfigError(f"recipe: {hw}.num_classes differs from the first stage's")
            if len(hp["target_stds"]) != 4:
                raise ConfigError(f"recipe: {hw}.bbox_coder.target_stds must have 4 values")
            heads.append(DIIHead(hp["num_classes"], hp["num_ffn_fcs"], hp["num_heads"], hp["num_cls_fcs"],
                                 hp["num_reg_fcs"], hp["feedforward_channels"], c, hp["dropout"],
                                 hp["dc_feat_channels"], hp["dc_input_feat_shape"], hp["with_proj"]))
            assigners.append(HungarianAssigner(rp["cls_cost_weight"], rp["cost_alpha"], rp["cost_gamma"],
                                               rp["cost_eps"], rp["reg_cost_weight"], rp["box_format"],
                                               rp["iou_cost_weight"], rp["iou_mode"]))
            losses.append((hp["loss_cls_weight"], hp["alpha"], hp["gamma"], hp["loss_bbox_weight"],
                           hp["loss_iou_weight"]))
            stds.append(tuple(hp["target_stds"]))
        names = neck.names
        roi = SparseRoIHead(
            bbox_roi_extractor=LevelRoIAlign(names[:len(p["box_featmap_strides"])], p["box_roi_size"],
                                             p["box_featmap_strides"], p["box_sampling_ratio"], p["box_aligned"],
                                             p["box_finest_scale"]),
            bbox_heads=heads, assigners=assigners, loss_weights=losses, stage_loss_weights=p["stage_loss_weights"],
            target_stds=stds, max_per_img=p["max_per_img"])
        rpn = EmbeddingRPNHead(p["num_proposals"], p["rpn_feature_channel"])
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
        sizes = MaskRCNN._image_sizes(images, targets, image_sizes)
        tv = [{"boxes": t["boxes"].to(images.device, torch.float32).reshape(-1, 4),
               "labels": t["labels"].to(images.device, torch.int64).reshape(-1)} for t in targets]
        feats = self.extract_feat(images)
        boxes, obj = self.rpn_head(sizes)
        losses = self.roi_head.forward_train(feats, boxes, obj.to(images.dtype), sizes, tv)
        losses["loss"] = sum(v for k, v in losses.items() if "loss" in k)
        return losses

    @torch.no_grad()
    def predict(self, images, image_sizes=None, ori_shapes=None):
        """Detections per image: ``boxes`` (K, 4), ``labels`` (K,) 0-based, ``scores`` (K,); ``image_sizes`` (the
        unpadded resized sizes, default the padded size) / ``ori_shapes`` (the original sizes the boxes are scaled
        to, default ``image_sizes``) as ``MaskRCNN.predict``."""
        sizes = MaskRCNN._image_sizes(images, None, image_sizes)
        feats = self.extract_feat(images)
        boxes, obj = self.rpn_head(sizes)
        out = []
        for r, (h, w), ori in zip(self.roi_head.simple_test(feats, boxes, obj.to(images.dtype)), sizes,
                                  ori_shapes if ori_shapes is not None else sizes):
            scale = r["boxes"].new_tensor([ori[1] / w, ori[0] / h, ori[1] / w, ori[0] / h])
            out.append({"boxes": (r["boxes"] * scale).float(), "labels": r["labels"], "scores": r["scores"].float()})
        return out


__all__ = ["SparseRCNN", "SparseRoIHead", "DIIHead", "DynamicConv", "EmbeddingRPNHead", "HungarianAssigner",
           "pairwise_giou"]
