"""One-stage dense heads of mmdet 2.22 as the official ATSS / GFL configs set them up: :class:`ATSSHead` and
:class:`GFLHead`, with the pieces they share (anchors, the ``ATSSAssigner``, per-image anchor targets, focal-type
losses, GIoU, the test-time filter + decode + NMS).

Shared rules (mmdet 2.22, re-derived in ``tests/unit/models/test_detection_dense_heads.py``):

* anchors: :class:`~.mask_rcnn.FixedStrideAnchorGenerator` (``AnchorGenerator(ratios=[1.0], octave_base_scale=8,
  scales_per_octave=1, strides=[8, 16, 32, 64, 128])``: one ``8 s x 8 s`` anchor per location, centred on
  ``(x s, y s)``); the anchors taking part in the assignment are the valid ones of the image's ``pad_shape``
  (``allowed_border=-1``: no border rule);
* :func:`atss_assign` (``ATSSAssigner(topk)``): per level the ``topk`` anchors whose centres are closest to a box
  centre, IoU threshold ``mean + std`` (unbiased) of those candidates, candidate centre more than 0.01 inside the
  box, an anchor claimed by several boxes goes to the one of highest IoU (the first such box on a tie);
* targets (``PseudoSampler``): positives get their box's label and box, every other valid anchor is a negative
  (label ``num_classes``, weight 1), invalid anchors weight 0; ``num_total_samples`` = mean over ranks of
  ``sum over images max(#positives, 1)``, at least 1;
* losses in float32 (``force_fp32``), sums divided by mmdet's ``avg_factor``.

ATSS (``ATSSHead``): ``loss_cls`` sigmoid focal loss (:func:`sigmoid_focal_loss`, gamma 2, alpha 0.25) / N;
``loss_bbox`` GIoU of the decoded positives (``DeltaXYWHBBoxCoder``, stds 0.1/0.1/0.2/0.2, no clipping) weighted by
the centerness target (:func:`centerness_target`), times ``loss_weight``, divided by the mean over ranks of the
summed centerness targets (at least 1); ``loss_centerness`` BCE of the centerness logit vs. the target / N.
Test: sigmoid scores, per level the ``nms_pre`` best (anchor, class) pairs above ``score_thr`` (by class score),
decoded boxes clipped to the image, scores times the sigmoid centerness, class-wise NMS, ``max_per_img``.

GFL (``GFLHead``): see :class:`GFLHead` (quality focal loss, distribution focal loss, GIoU weighted by the best
class score; the same anchors, assignment, targets and test-time filter + NMS, without centerness).

Module and parameter names are the official ones (``cls_convs.i.conv`` / ``.gn``, ``reg_convs``, ``atss_cls``,
``atss_reg``, ``atss_centerness``, ``scales.i.scale``; ``gfl_cls``, ``gfl_reg``, ``integral.project`` is a
non-persistent constant), so the ``bbox_head.*`` keys of official checkpoints load unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from .bbox_ops import delta2bbox, giou_loss

INF = 100000000  # mmdet ATSSAssigner's


# ----------------------------------------------------------------------------------------------------- boxes
def bbox_overlaps(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6, aligned: bool = False) -> torch.Tensor:
    """mmdet ``bbox_overlaps`` (IoU, union floored at ``eps``): (N, M) for boxes (N, 4) x (M, 4), or (N,) aligned."""
    if aligned:
        lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    else:
        lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
        area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
        area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = torch.max(area_a + area_b - inter, inter.new_tensor([eps]))
    return inter / union


def centers(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 2) box centres ``((x1 + x2) / 2, (y1 + y2) / 2)``."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


# ------------------------------------------------------------------------------------------------ assigner
def atss_assign(anchors: torch.Tensor, num_level_anchors, gt_boxes: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """mmdet ``ATSSAssigner.assign`` (no ignored boxes): (N,) long, 0 = negative, ``i + 1`` = box ``i``, for the
    anchors (N, 4) (levels concatenated, ``num_level_anchors`` per level) and boxes (M, 4)."""
    n, m = anchors.shape[0], gt_boxes.shape[0]
    assigned = anchors.new_zeros(n, dtype=torch.long)
    if n == 0 or m == 0:
        return assigned
    overlaps = bbox_overlaps(anchors, gt_boxes)                                   # (N, M)
    dist = (centers(anchors)[:, None, :] - centers(gt_boxes)[None, :, :]).pow(2).sum(-1).sqrt()
    cand, start = [], 0
    for k in num_level_anchors:
        k = int(k)
        if k:
            cand.append(dist[start:start + k].topk(min(topk, k), dim=0, largest=False)[1] + start)
        start += k
    cand = torch.cat(cand, dim=0)                                                 # (C, M) anchor indices
    cols = torch.arange(m, device=anchors.device)
    cand_iou = overlaps[cand, cols]
    thr = cand_iou.mean(0) + cand_iou.std(0)
    ctr = centers(anchors)[cand]                                                  # (C, M, 2)
    inside = torch.stack([ctr[..., 0] - gt_boxes[:, 0], ctr[..., 1] - gt_boxes[:, 1],
                          gt_boxes[:, 2] - ctr[..., 0], gt_boxes[:, 3] - ctr[..., 1]], dim=-1).min(-1)[0] > 0.01
    pos = (cand_iou >= thr[None, :]) & inside
    masked = torch.full_like(overlaps, -INF)
    rows = cand[pos]
    masked[rows, cols.expand_as(cand)[pos]] = overlaps[rows, cols.expand_as(cand)[pos]]
    best, arg = masked.max(dim=1)
    hit = best != -INF
    assigned[hit] = arg[hit] + 1
    return assigned


def level_counts(flags: torch.Tensor, num_level_anchors) -> list[int]:
    """How many of each level's anchors ``flags`` (N,) bool keeps (mmdet ``get_num_level_anchors_inside``)."""
    return [int(f.sum()) for f in torch.split(flags, [int(k) for k in num_level_anchors])]


def anchor_targets(anchors, valid, num_level_anchors, gt_boxes, gt_labels, num_classes: int, topk: int):
    """One image's ATSS targets (mmdet ``ATSSHead._get_target_single`` with ``PseudoSampler``,
    ``reg_decoded_bbox``, ``allowed_border=-1``, ``pos_weight=-1``) over all anchors (N, 4): ``labels`` (N,)
    (``num_classes`` = background), ``label_weights`` (N,) (1 for the valid anchors), ``box_targets`` (N, 4) (the
    matched boxes, zeros elsewhere) and the number of positives."""
    n = anchors.shape[0]
    labels = torch.full((n,), num_classes, dtype=torch.long, device=anchors.device)
    weights = anchors.new_zeros(n)
    boxes = anchors.new_zeros(n, 4)
    idx = torch.nonzero(valid).flatten()
    if idx.numel() == 0:
        raise ValueError("no valid anchor in the image (mmdet returns no targets)")
    assigned = atss_assign(anchors[idx], level_counts(valid, num_level_anchors), gt_boxes.to(anchors.dtype), topk)
    pos = assigned > 0
    weights[idx] = 1.0
    labels[idx[pos]] = gt_labels[assigned[pos] - 1]
    boxes[idx[pos]] = gt_boxes[assigned[pos] - 1].to(anchors.dtype)
    return labels, weights, boxes, int(pos.sum())


def positive_anchors(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows of ``labels`` (``num_classes`` = background) that are positives, ascending."""
    return torch.nonzero(labels < num_classes).flatten()


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """mmdet ``reduce_mean``: the mean over the ranks of the default process group (the value itself without one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return value


# -------------------------------------------------------------------------------------------------- losses
def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25):
    """Element-wise (N, C) sigmoid focal loss of mmdet ``FocalLoss(use_sigmoid=True)`` (mmcv's CUDA kernel and the
    python version are the same formula): with ``t`` the one-hot of ``labels`` (N,) (``C`` = background, no class),
    ``p = sigmoid(x)``: ``BCE(x, t) * (alpha t + (1 - alpha)(1 - t)) * |t - p| ** gamma``."""
    c = logits.shape[1]
    target = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def weighted_giou(pred, target, weight, loss_weight: float) -> torch.Tensor:
    """mmdet ``GIoULoss(loss_weight)(pred, target, weight, avg_factor=1.0)``: ``loss_weight * sum(w (1 - GIoU))``;
    all weights <= 0: ``sum(pred * w)`` (zero, keeps the graph)."""
    if not bool((weight > 0).any()):
        return (pred * weight[:, None]).sum()
    return loss_weight * (giou_loss(pred, target) * weight).sum()


def centerness_target(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """mmdet ``ATSSHead.centerness_target``: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of the anchor
    centre's distances to the sides of its box."""
    c = centers(anchors)
    lr = torch.stack([c[:, 0] - gt_boxes[:, 0], gt_boxes[:, 2] - c[:, 0]], dim=1)
    tb = torch.stack([c[:, 1] - gt_boxes[:, 1], gt_boxes[:, 3] - c[:, 1]], dim=1)
    return torch.sqrt((lr.min(-1)[0] / lr.max(-1)[0]) * (tb.min(-1)[0] / tb.max(-1)[0]))


# ------------------------------------------------------------------------------------------------ test time
def filter_topk(scores: torch.Tensor, score_thr: float, nms_pre: int):
    """mmdet ``filter_scores_and_topk``: the (anchor, class) pairs of ``scores`` (N, C) above ``score_thr``, the
    ``nms_pre`` best by score -> (scores, labels, anchor indices)."""
    valid = scores > score_thr
    s = scores[valid]
    pairs = torch.nonzero(valid)
    s, order = s.sort(descending=True)
    k = min(int(nms_pre), pairs.shape[0])
    pairs = pairs[order[:k]]
    return s[:k], pairs[:, 1], pairs[:, 0]


def nms_post_process(boxes, scores, labels, nms_iou: float, max_per_img: int):
    """mmdet ``_bbox_post_process`` with NMS: class-wise NMS (mmcv ``batched_nms``: boxes offset per class), the
    first ``max_per_img`` by score -> (boxes, scores, labels)."""
    if boxes.numel() == 0:
        return boxes, scores, labels
    keep = batched_nms(boxes.float(), scores.float(), labels, float(nms_iou))[:int(max_per_img)]
    return boxes[keep], scores[keep], labels[keep]


# ---------------------------------------------------------------------------------------------------- heads
class ConvGN(nn.Module):
    """mmcv ``ConvModule(norm_cfg=GN)``: 3x3 conv without bias -> GroupNorm (``gn``) -> ReLU."""

    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, cout)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


class Scale(nn.Module):
    """mmcv ``Scale``: ``x * scale`` with a learnable scalar, held as shape (1,) (DeepSpeed cannot broadcast 0-dim
    parameters; the key map gives official checkpoints their 0-dim ``scale``)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale], dtype=torch.float))

    def forward(self, x):
        return x * self.scale


class DenseHead(nn.Module):
    """The towers shared by ATSS and GFL: ``stacked_convs`` :class:`ConvGN` for classification (``cls_convs``) and
    regression (``reg_convs``), one :class:`Scale` per level; mmdet init (every conv normal(0, 0.01), bias 0; the
    classifier's bias ``-log(99)``, prior probability 0.01)."""

    def __init__(self, num_classes, in_channels, feat_channels, stacked_convs, num_levels, gn_groups=32):
        super().__init__()
        self.num_classes = int(num_classes)
        self.cls_convs = nn.ModuleList(ConvGN(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
                                       for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvGN(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
                                       for i in range(stacked_convs))
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

    def _init(self, cls_name: str):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(getattr(self, cls_name).bias, -math.log((1 - 0.01) / 0.01))

    def towers(self, x):
        c, r = x, x
        for conv in self.cls_convs:
            c = conv(c)
        for conv in self.reg_convs:
            r = conv(r)
        return c, r


def _flat(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k, H, W) -> (B, H W, k), mmdet's (h, w) order of the anchors."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, k)


class ATSSHead(DenseHead):
    """mmdet 2.22 ``ATSSHead`` (one anchor per location, sigmoid classes; see the module docstring)."""

    def __init__(self, num_classes=80, in_channels=256, feat_channels=256, stacked_convs=4, num_levels=5, *,
                 topk=9, target_stds=(0.1, 0.1, 0.2, 0.2), gamma=2.0, alpha=0.25, loss_cls_weight=1.0,
                 loss_bbox_weight=2.0, loss_centerness_weight=1.0, score_thr=0.05, nms_pre=1000, nms_iou=0.6,
                 max_per_img=100, gn_groups=32):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, num_levels, gn_groups)
        self.atss_cls = nn.Conv2d(feat_channels, self.num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self._init("atss_cls")
        self.topk, self.target_stds = int(topk), tuple(float(s) for s in target_stds)
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.loss_cls_weight, self.loss_bbox_weight = float(loss_cls_weight), float(loss_bbox_weight)
        self.loss_centerness_weight = float(loss_centerness_weight)
        self.score_thr, self.nms_pre, self.nms_iou = float(score_thr), int(nms_pre), float(nms_iou)
        self.max_per_img = int(max_per_img)

    def forward(self, feats):
        """Per level (cls (B, C, H, W), box deltas (B, 4, H, W) float32, centerness (B, 1, H, W))."""
        out = []
        for x, scale in zip(feats, self.scales):
            c, r = self.towers(x)
            out.append((self.atss_cls(c), scale(self.atss_reg(r)).float(), self.atss_centerness(r)))
        return out

    def loss(self, outs, anchors, valid, num_level_anchors, targets):
        """``outs`` of :meth:`forward`; ``anchors`` (N, 4) of all levels, ``valid`` (B, N) bool per image (its
        ``pad_shape``), ``targets`` per image ``boxes`` / ``labels`` -> ``loss_cls``, ``loss_bbox``,
        ``loss_centerness``."""
        cls = torch.cat([_flat(o[0], self.num_classes) for o in outs], 1).float()
        reg = torch.cat([_flat(o[1], 4) for o in outs], 1).float()
        ctr = torch.cat([_flat(o[2], 1) for o in outs], 1).float()[..., 0]
        labels, weights, boxes, npos = [], [], [], 0
        for b, t in enumerate(targets):
            lab, w, box, n = anchor_targets(anchors, valid[b], num_level_anchors, t["boxes"], t["labels"],
                                            self.num_classes, self.topk)
            labels.append(lab), weights.append(w), boxes.append(box)
            npos += max(n, 1)
        labels, weights, boxes = torch.stack(labels).flatten(), torch.stack(weights).flatten(), torch.cat(boxes)
        num_total = max(reduce_mean(cls.new_tensor(float(npos))).item(), 1.0)
        cls, reg, ctr = cls.reshape(-1, self.num_classes), reg.reshape(-1, 4), ctr.reshape(-1)
        all_anchors = anchors.float().repeat(len(targets), 1)
        loss_cls = self.loss_cls_weight * (sigmoid_focal_loss(cls, labels, self.gamma, self.alpha)
                                           * weights[:, None]).sum() / num_total
        pos = positive_anchors(labels, self.num_classes)
        if pos.numel():
            pa, pt = all_anchors[pos], boxes[pos]
            ctr_t = centerness_target(pa, pt)
            pred = delta2bbox(pa, reg[pos], self.target_stds)
            loss_bbox = weighted_giou(pred, pt, ctr_t, self.loss_bbox_weight)
            loss_ctr = self.loss_centerness_weight * F.binary_cross_entropy_with_logits(
                ctr[pos], ctr_t, reduction="sum") / num_total
            ctr_sum = ctr_t.sum().detach()
        else:
            loss_bbox, loss_ctr, ctr_sum = reg.sum() * 0, ctr.sum() * 0, reg.new_zeros(())
        avg = reduce_mean(ctr_sum).clamp(min=1).item()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox / avg, "loss_centerness": loss_ctr}

    @torch.no_grad()
    def predict(self, outs, level_anchors, image_sizes, scales):
        """Per image ``(boxes, scores, labels)`` (mmdet ``get_bboxes(rescale=True)`` with the test_cfg):
        ``level_anchors`` per level (n_l, 4); the boxes of image ``i`` are divided by ``scales[i]`` = (sx, sy), mmdet's
        ``scale_factor`` (resized / original size)."""
        results = []
        for i, (h, w) in enumerate(image_sizes):
            bl, sl, ll, fl = [], [], [], []
            for (c, r, z), a in zip(outs, level_anchors):
                scores = _flat(c[i:i + 1].float(), self.num_classes)[0].sigmoid()
                s, lab, k = filter_topk(scores, self.score_thr, self.nms_pre)
                bl.append(delta2bbox(a[k].float(), _flat(r[i:i + 1], 4)[0][k].float(), self.target_stds, (h, w)))
                sl.append(s), ll.append(lab), fl.append(_flat(z[i:i + 1].float(), 1)[0, :, 0].sigmoid()[k])
            boxes = torch.cat(bl)
            boxes = boxes / boxes.new_tensor([scales[i][0], scales[i][1]] * 2)
            results.append(nms_post_process(boxes, torch.cat(sl) * torch.cat(fl), torch.cat(ll), self.nms_iou,
                                            self.max_per_img))
        return results


# ------------------------------------------------------------------------------------------------------ GFL
def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, score: torch.Tensor, beta: float = 2.0):
    """mmdet 2.22 ``quality_focal_loss`` per anchor (N,): ``sum_c BCE(x_c, 0) sigmoid(x_c) ** beta`` with, at the
    positive's class, ``BCE(x, score) |score - sigmoid(x)| ** beta`` instead (``labels`` (N,), ``C`` = background;
    ``score`` (N,) the IoU target of the positives)."""
    p = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * p.pow(beta)
    pos = positive_anchors(labels, logits.shape[1])
    if pos.numel():
        lab = labels[pos]
        x, q = logits[pos, lab], score[pos].to(logits.dtype)
        loss = loss.index_put((pos, lab), F.binary_cross_entropy_with_logits(x, q, reduction="none")
                              * (q - p[pos, lab]).abs().pow(beta))
    return loss.sum(dim=1)


def distribution_focal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mmdet ``distribution_focal_loss`` (M,): the bins ``pred`` (M, n + 1) against the continuous ``target`` (M,):
    cross entropies at its two neighbouring bins weighted by the distance to the other."""
    left = target.long()
    right = left + 1
    return (F.cross_entropy(pred, left, reduction="none") * (right.to(target.dtype) - target)
            + F.cross_entropy(pred, right, reduction="none") * (target - left.to(target.dtype)))


def distance2bbox(points: torch.Tensor, distance: torch.Tensor, max_shape=None) -> torch.Tensor:
    """mmdet ``DistancePointBBoxCoder.decode``: points (N, 2) and (left, top, right, bottom) (N, 4) -> boxes,
    clamped to ``[0, w] x [0, h]`` with ``max_shape`` (h, w)."""
    b = torch.cat([points - distance[:, :2], points + distance[:, 2:]], dim=1)
    if max_shape is not None:
        h, w = float(max_shape[0]), float(max_shape[1])
        b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
    return b


def bbox2distance(points: torch.Tensor, boxes: torch.Tensor, max_dis: float, eps: float = 0.1) -> torch.Tensor:
    """mmdet ``DistancePointBBoxCoder.encode`` (``bbox2distance``): (left, top, right, bottom) from the points to the
    box sides, clamped to ``[0, max_dis - eps]``."""
    d = torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1)
    return d.clamp(min=0, max=max_dis - eps)


class Integral(nn.Module):
    """mmdet ``Integral``: the expectation ``sum_i softmax(x)_i i`` of each side's ``reg_max + 1`` bins (N, 4 (n +
    1)) -> (N, 4). ``project`` is a (persistent) buffer as in mmdet, so official checkpoints carry it."""

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = int(reg_max)
        self.register_buffer("project", torch.linspace(0, self.reg_max, self.reg_max + 1))

    def forward(self, x):
        x = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
        return F.linear(x, self.project.type_as(x)).reshape(-1, 4)


class GFLHead(DenseHead):
    """mmdet 2.22 ``GFLHead``: ATSS towers and assignment; ``gfl_cls`` joint class-quality logits trained with the
    quality focal loss against the IoU of the decoded prediction (positives) / 0 (``/ N``); ``gfl_reg`` a
    distribution of ``reg_max + 1`` bins per side (in strides) whose expectation gives the distances from the anchor
    centre; GIoU x ``loss_bbox_weight`` and the distribution focal loss x ``loss_dfl_weight`` (``/ 4``) of the
    positives, both weighted by their best class score and divided by the rank mean of its sum (at least 1).
    Test: sigmoid scores, per level ``nms_pre`` pairs above ``score_thr``, distances x stride decoded from the
    anchor centres and clipped, class-wise NMS, ``max_per_img`` (no centerness)."""

    def __init__(self, num_classes=80, in_channels=256, feat_channels=256, stacked_convs=4,
                 strides=(8, 16, 32, 64, 128), *, topk=9, reg_max=16, beta=2.0, loss_cls_weight=1.0, loss_bbox_weight=2.0, loss_dfl_weight=0.25,
                 score_thr=0.05, nms_pre=1000, nms_iou=0.6, max_per_img=100, gn_groups=32):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, len(strides), gn_groups)
        self.strides = tuple(int(s) for s in strides)
        self.reg_max = int(reg_max)
        self.gfl_cls = nn.Conv2d(feat_channels, self.num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (self.reg_max + 1), 3, padding=1)
        self._init("gfl_cls")
        self.integral = Integral(self.reg_max)
        self.topk, self.beta = int(topk), float(beta)
        self.loss_cls_weight, self.loss_bbox_weight = float(loss_cls_weight), float(loss_bbox_weight)
        self.loss_dfl_weight = float(loss_dfl_weight)
        self.score_thr, self.nms_pre, self.nms_iou = float(score_thr), int(nms_pre), float(nms_iou)
        self.max_per_img = int(max_per_img)

    def forward(self, feats):
        """Per level (cls (B, C, H, W), side distributions (B, 4 (reg_max + 1), H, W) float32)."""
        out = []
        for x, scale in zip(feats, self.scales):
            c, r = self.towers(x)
            out.append((self.gfl_cls(c), scale(self.gfl_reg(r)).float()))
        return out

    def loss(self, outs, anchors, valid, num_level_anchors, targets):
        """As :meth:`ATSSHead.loss` -> ``loss_cls`` (QFL), ``loss_bbox`` (GIoU), ``loss_dfl``."""
        nb = 4 * (self.reg_max + 1)
        cls = torch.cat([_flat(o[0], self.num_classes) for o in outs], 1).float().reshape(-1, self.num_classes)
        reg = torch.cat([_flat(o[1], nb) for o in outs], 1).float().reshape(-1, nb)
        labels, weights, boxes, npos = [], [], [], 0
        for b, t in enumerate(targets):
            lab, w, box, n = anchor_targets(anchors, valid[b], num_level_anchors, t["boxes"], t["labels"],
                                            self.num_classes, self.topk)
            labels.append(lab), weights.append(w), boxes.append(box)
            npos += max(n, 1)
        labels, weights, boxes = torch.stack(labels).flatten(), torch.stack(weights).flatten(), torch.cat(boxes)
        num_total = max(reduce_mean(cls.new_tensor(float(npos))).item(), 1.0)
        strides = torch.cat([anchors.new_full((int(k),), float(s)) for k, s in zip(num_level_anchors, self.strides)])
        strides = strides.repeat(len(targets))
        all_anchors = anchors.float().repeat(len(targets), 1)
        pos = positive_anchors(labels, self.num_classes)
        score = cls.new_zeros(labels.shape)
        if pos.numel():
            s = strides[pos][:, None]
            ctr = centers(all_anchors[pos]) / s
            weight = cls.detach().sigmoid().max(dim=1)[0][pos]
            pred = distance2bbox(ctr, self.integral(reg[pos]))
            tgt = boxes[pos] / s
            score[pos] = bbox_overlaps(pred.detach(), tgt, aligned=True)
            target_corners = bbox2distance(ctr, tgt, self.reg_max).reshape(-1)
            loss_bbox = weighted_giou(pred, tgt, weight, self.loss_bbox_weight)
            loss_dfl = self.loss_dfl_weight * (distribution_focal_loss(reg[pos].reshape(-1, self.reg_max + 1),
                                                                       target_corners)
                                               * weight[:, None].expand(-1, 4).reshape(-1)).sum() / 4.0
            wsum = weight.sum()
        else:
            loss_bbox, loss_dfl, wsum = reg.sum() * 0, reg.sum() * 0, reg.new_zeros(())
        qfl = quality_focal_loss(cls, labels, score, self.beta)
        loss_cls = self.loss_cls_weight * (qfl * weights).sum() / num_total
        avg = reduce_mean(wsum).clamp(min=1).item()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox / avg, "loss_dfl": loss_dfl / avg}

    @torch.no_grad()
    def predict(self, outs, level_anchors, image_sizes, scales):
        """As :meth:`ATSSHead.predict` (mmdet ``GFLHead._get_bboxes_single``)."""
        nb = 4 * (self.reg_max + 1)
        results = []
        for i, (h, w) in enumerate(image_sizes):
            bl, sl, ll = [], [], []
            for (c, r), a, stride in zip(outs, level_anchors, self.strides):
                scores = _flat(c[i:i + 1].float(), self.num_classes)[0].sigmoid()
                s, lab, k = filter_topk(scores, self.score_thr, self.nms_pre)
                dist = self.integral(_flat(r[i:i + 1].float(), nb)[0][k]) * stride
                bl.append(distance2bbox(centers(a[k].float()), dist, (h, w)))
                sl.append(s), ll.append(lab)
            boxes = torch.cat(bl)
            boxes = boxes / boxes.new_tensor([scales[i][0], scales[i][1]] * 2)
            results.append(nms_post_process(boxes, torch.cat(sl), torch.cat(ll), self.nms_iou, self.max_per_img))
        return results


__all__ = ["ATSSHead", "GFLHead", "atss_assign", "bbox2distance", "distance2bbox", "distribution_focal_loss",
           "quality_focal_loss", "anchor_targets", "bbox_overlaps", "centerness_target", "filter_topk",
           "nms_post_process", "sigmoid_focal_loss", "weighted_giou"]
