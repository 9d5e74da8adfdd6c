"""Stand-ins for the parts of a training step that need real values, used only while the planner measures a step
on fake tensors (:mod:`.activations`). Each one keeps the sizes of what it replaces, so the memory and FLOPs of
everything around it are the real ones; each says what it replaces (``StandIns.notes``).

* Multi-scale deformable attention: the fused CUDA / Triton kernel (what a GPU run uses) reads its inputs and
  saves exactly them for backward (``ops/msda.py`` ``_MSDeformAttnFunction``); the stand-in allocates the output
  and saves the same tensors, and counts the kernel's FLOPs by its formula (:func:`msda_flops`).
* Softmax attention of the ViT / BEiT / Uni-Perceiver blocks (``models/backbones/layers.py`` ``attention``): on a
  GPU it is ``F.scaled_dot_product_attention``'s fused (memory-efficient / flash) kernel, which never materialises
  the (heads, N, N) weights (the CPU float32 path does, as the official code does): the stand-in allocates the
  output and saves what the fused kernel saves -- q, k, v, the output and the (B, heads, N) float32 log-sum-exp --,
  its backward gives q / k / v (and a learnt bias) gradients, and it counts the FLOPs by formula
  (:func:`attention_flops`).
* Hungarian matching (Mask2Former): the costs are computed as usual; the assignment (scipy on the host) becomes
  query ``i`` <-> target ``i`` for ``min(Q, G)`` pairs, the number the real matching makes.
* Classes present in a label map (Mask2Former targets): ``torch.unique`` has a data-dependent size; the stand-in
  gives every image ``segments_per_image`` classes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch


def msda_flops(value_shape, loc_shape) -> tuple[int, int]:
    """(forward, backward) FLOPs of the fused deformable-attention kernel: per sampled point and channel, the
    bilinear interpolation of 4 corners (4 multiply-adds) and the attention weighting (1 multiply-add) in the
    forward; the backward computes the value, location and weight gradients (about twice the forward)."""
    n, lq, m, levels, points, _ = loc_shape
    d = value_shape[-1]
    fwd = 2 * 5 * n * lq * m * levels * points * d
    return fwd, 2 * fwd


def attention_flops(q_shape, k_shape, v_shape) -> tuple[int, int]:
    """(forward, backward) FLOPs of softmax attention: ``q @ k^T`` and ``weights @ v`` (2 FLOPs per multiply-add)
    forward; the backward's four products (and the fused kernel's recomputation of the weights) about twice that."""
    *batch, n, d = q_shape
    m, dv = k_shape[-2], v_shape[-1]
    b = 1
    for x in batch:
        b *= int(x)
    fwd = 2 * b * n * m * (d + dv)
    return fwd, 2 * fwd


@dataclass
class StandIns:
    """The stand-ins in use and what they counted."""
    segments_per_image: int = 10
    notes: list = field(default_factory=list)
    extra_flops: int = 0

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


class _FusedMSDA(torch.autograd.Function):
    """The fused kernel's autograd footprint: output (N, Lq, M * D) in value's dtype, the prepared inputs saved."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, loc, attn, counter):
        from vit_adapter_ds.ops.msda import _prepare

        args = _prepare(value, spatial_shapes, level_start_index, loc, attn)
        ctx.save_for_backward(*args)
        ctx.dtypes = (loc.dtype, attn.dtype)
        fwd, bwd = msda_flops(value.shape, loc.shape)
        counter.extra_flops += fwd + bwd
        n, s, m, d = value.shape
        return value.new_empty((n, loc.shape[1], m * d))

    @staticmethod
    def backward(ctx, grad_output):
        value, _, _, loc, attn = ctx.saved_tensors
        return (torch.empty_like(value), None, None, loc.new_empty(loc.shape, dtype=ctx.dtypes[0]),
                attn.new_empty(attn.shape, dtype=ctx.dtypes[1]), None)



class _FusedAttention(torch.autograd.Function):
    """``F.scaled_dot_product_attention``'s fused GPU kernel's autograd footprint: output (..., N, Dv) in q's dtype;
    saved q, k, v, the output and the float32 log-sum-exp (..., N); a bias (BEiT's relative positions) is an
    input, its gradient (when it needs one) of its shape."""

    @staticmethod
    def forward(ctx, q, k, v, bias, counter):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.bias_shape = None if bias is None else (tuple(bias.shape), bias.dtype)
        fwd, bwd = attention_flops(q.shape, k.shape, v.shape)
        counter.extra_flops += fwd + bwd
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, _, _ = ctx.saved_tensors
        gb = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
            gb = q.new_empty(ctx.bias_shape[0], dtype=ctx.bias_shape[1])
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), gb, None


# ------------------------------------------------------------------------------------------ two-stage detectors
def max_iou_match(matcher, iou):
    """:class:`~vit_adapter_ds.models.detectors.mask_rcnn.MaxIoUMatcher` on (G, A) IoUs with element-wise ops only
    (no boolean indexing): the same matches (-1 below ``neg_iou_thr``, -2 between, low-quality matches to the last
    box at its best IoU)."""
    vals, matches = iou.max(dim=0)
    out = torch.where(vals < matcher.low_threshold, torch.full_like(matches, matcher.BELOW_LOW_THRESHOLD),
                      torch.where(vals < matcher.high_threshold, torch.full_like(matches, matcher.BETWEEN_THRESHOLDS),
                                  matches))
    if matcher.allow_low_quality_matches:
        best = iou.max(dim=1).values
        hit = (iou == best[:, None]) & (best >= matcher.min_pos_iou)[:, None]
        gt = torch.arange(iou.shape[0], device=iou.device)[:, None].expand_as(iou)
        last = torch.where(hit, gt, torch.full_like(gt, -1)).amax(dim=0)
        out = torch.where(last >= 0, last, out)
    return out


def rpn_filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
    """RPN proposals without NMS: the top ``nms_pre`` per level (the real code), clipped, the first
    ``max_per_img`` of them per image (the most NMS keeps)."""
    from torchvision.ops import boxes as box_ops

    n = proposals.shape[0]
    objectness = objectness.detach().reshape(n, -1)
    top = self._get_top_n_idx(objectness, num_anchors_per_level)
    rows = torch.arange(n, device=proposals.device)[:, None]
    objectness, proposals = objectness[rows, top], proposals[rows, top]
    k = min(int(self.post_nms_top_n()), proposals.shape[1])
    boxes = [box_ops.clip_boxes_to_image(b[:k], s) for b, s in zip(proposals, image_shapes)]
    return boxes, [torch.sigmoid(o[:k]) for o in objectness]


def rpn_assign_targets(self, anchors, targets):
    """RPN anchor targets over every anchor (the inside / valid flags keep all of them when the image fills its
    padded size, ``allowed_border=-1``): labels 1 / 0 / -1 and matched boxes, as the real assignment."""
    labels, matched = [], []
    for a, t in zip(anchors, targets):
        gt = t["boxes"]
        if gt.shape[0] == 0:
            labels.append(torch.zeros(a.shape[0], dtype=torch.float32, device=a.device))
            matched.append(a.clone())
            continue
        m = max_iou_match(self.proposal_matcher, self.box_similarity(gt, a))
        lab = torch.where(m >= 0, 1.0, torch.where(m == self.proposal_matcher.BELOW_LOW_THRESHOLD, 0.0, -1.0))
        labels.append(lab.to(torch.float32))
        matched.append(gt[m.clamp(min=0)].to(a.dtype))
    return labels, matched


def rpn_sample_counts(fg_bg_sampler, available):
    """(positives, negatives) the RPN / R-CNN sampler draws per image: ``int(num * pos_fraction)`` and the rest of
    ``num``, at most ``available``."""
    num = min(int(fg_bg_sampler.batch_size_per_image), int(available))
    pos = min(int(num * fg_bg_sampler.positive_fraction), num)
    return pos, num - pos


def rpn_sampled_anchors(self, labels):
    """``RPN.sampled_anchors``: ``num`` anchors per image, the first ``int(num * pos_fraction)`` positive."""
    pos, neg, start = [], [], 0
    for lab in labels:
        p, q = rpn_sample_counts(self.fg_bg_sampler, lab.shape[0])
        pos.append(torch.arange(start, start + p, device=lab.device))
        neg.append(torch.arange(start + p, start + p + q, device=lab.device))
        start += lab.shape[0]
    return torch.cat(pos), torch.cat(neg)


def roi_sampler_patches(rec) -> list:
    """Mask R-CNN's R-CNN sampler at its configured size: ``MaskRCNNRoIHeads.subsample`` (torchvision's, the
    sampler's random draw) takes the first ``num`` RoIs of each image (proposals + ground truth, assigned by the real
    IoU rule), and ``mask_rcnn.foreground_rows`` the first ``int(num * pos_fraction)`` of each as the foreground
    (box regression and the mask head on them); the losses are the model's own."""
    shape = {}

    def subsample(self, labels):
        rec.note("Mask R-CNN R-CNN sampler: num RoIs per image, int(num * pos_fraction) foreground (mask head on "
                 "them)")
        out = []
        for lab in labels:
            pos, neg = rpn_sample_counts(self.fg_bg_sampler, lab.shape[0])
            shape.update(pos=pos, per=pos + neg)
            out.append(torch.arange(pos + neg, device=lab.device))
        return out

    def foreground_rows(labels):
        per, pos = shape["per"], shape["pos"]
        return torch.cat([torch.arange(i * per, i * per + pos, device=labels.device)
                          for i in range(max(1, labels.shape[0] // max(1, per)))])

    from vit_adapter_ds.models.detectors import mask_rcnn

    return [(mask_rcnn.MaskRCNNRoIHeads, "subsample", subsample), (mask_rcnn, "foreground_rows", foreground_rows)]


def cascade_sample_rois(stage, proposals, target, num_classes: int) -> dict:
    """:func:`~vit_adapter_ds.models.detectors.htc.sample_rois` with the sampler's sizes: ``num`` RoIs of the
    ground truth + proposals (real IoU assignment), ``int(num * pos_fraction)`` positives taken from the proposals
    (so none is a ground-truth RoI and every sampled RoI goes on to the next stage)."""
    from torchvision.ops import box_iou

    gt, gt_labels = target["boxes"], target["labels"]
    boxes = torch.cat([gt, proposals.detach()])
    g = len(gt)
    if g:
        matched = max_iou_match(stage.matcher, box_iou(gt, boxes)).clamp(min=0)
    else:
        matched = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    total = min(stage.num, len(boxes))
    n_pos = min(int(stage.num * stage.pos_fraction), total) if g else 0
    first = g if len(boxes) - g >= total else 0  # the positives among the proposals where there are enough
    idx = (torch.arange(total, device=boxes.device) + first) % len(boxes)
    pos = idx[:n_pos]
    labels = torch.full((total,), num_classes, dtype=torch.int64, device=boxes.device)
    targets = boxes.new_zeros(total, 4)
    if n_pos:
        labels[:n_pos] = gt_labels[matched[pos]]
        targets[:n_pos] = stage.coder.encode_single(gt[matched[pos]], boxes[pos])
    is_gt = idx[:n_pos] < g
    return {"boxes": boxes[idx], "labels": labels, "targets": targets, "num_pos": n_pos, "pos_gt": matched[pos],
            "pos_is_gt": is_gt, "_gt_free": first > 0 or g == 0}


def finest_level_rows(levels, i):
    """``roi_extractor.level_rows``: every RoI pooled from the finest level (the level of a RoI under
    ``finest_scale * 2`` pixels, most of the sampled ones); the level split is data-dependent."""
    n = levels.shape[0] if i == 0 else 0
    return torch.arange(n, dtype=torch.int64, device=levels.device)


def panoptic_stuff(rec):
    """``present_stuff`` (panoptic Mask2Former targets): ``segments_per_image`` stuff classes in each semantic map
    (``torch.unique`` has a data-dependent size)."""
    def stuff(semantic, num_things, num_classes):
        rec.note(f"panoptic targets: {rec.segments_per_image} stuff classes per image (segments_per_image)")
        g = max(0, min(rec.segments_per_image, int(num_classes) - int(num_things)))
        return torch.arange(num_things, num_things + g, dtype=torch.long, device=semantic.device)
    return stuff


def cascade_drop_gt_rois(boxes, sample):
    """The ground-truth RoIs among the positives dropped: none with :func:`cascade_sample_rois` (its positives are
    proposals); else all positives are kept (the most RoIs the next stage can get)."""
    return boxes

@contextlib.contextmanager
def stand_ins(segments_per_image: int = 10):
    """Install every stand-in for the duration of the block; yields the :class:`StandIns` record."""
    from vit_adapter_ds.models.backbones import beit, msdeform_attn, uniperceiver, vit
    from vit_adapter_ds.models.heads.mask2former import criterion, head, matcher

    rec = StandIns(segments_per_image=int(segments_per_image))

    def attention(q, k, v, scale, bias=None, dropout_p=0.0, scale_q_first=False):
        rec.note("softmax attention: the fused GPU kernel's saved q, k, v, output and log-sum-exp (no N x N "
                 "weights); FLOPs by formula")
        return _FusedAttention.apply(q, k, v, bias, rec)

    def msda(value, spatial_shapes, level_start_index, loc, attn, backend=None):
        rec.note("deformable attention: the fused kernel's saved inputs and output; FLOPs by formula")
        return _FusedMSDA.apply(value, spatial_shapes, level_start_index, loc, attn, rec)

    def match(self, cls_logits, mask_point_logits, labels, target_points):
        rec.note("Hungarian matching: costs computed, assignment query i <-> target i (min(Q, G) pairs)")
        with torch.no_grad():
            self.cost_matrix(cls_logits, mask_point_logits, labels, target_points)
        k = min(cls_logits.shape[0], labels.shape[0])
        idx = torch.arange(k, dtype=torch.long, device=cls_logits.device)
        return idx, idx.clone()

    def to_masks(label, num_classes, ignore_index=255):
        g = min(rec.segments_per_image, int(num_classes))
        rec.note(f"classes in a label map: {g} per image (segments_per_image)")
        classes = torch.arange(g, dtype=torch.long, device=label.device)
        return classes, label[None] == classes[:, None, None]

    def matched(label, num_queries, ignore_index=255):
        return min(int(num_queries), rec.segments_per_image)

    patches = [(msdeform_attn, "ms_deform_attn", msda), (matcher.HungarianMatcher, "__call__", match),
               *[(mod, "attention", attention) for mod in (beit, vit, uniperceiver)],
               *[(mod, "semantic_to_masks", to_masks) for mod in (criterion, head)],
               *[(mod, "num_matched_masks", matched) for mod in (criterion, head)]]
    patches += detection_patches(rec)
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield rec
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


class _HostScalar:
    """A loss normaliser read on the host (``reduce_mean(x).item()``): 1.0 under the planner (scales a loss only)."""

    def __init__(self, value: float = 1.0):
        self.value = float(value)

    def item(self) -> float:
        return self.value

    def clamp(self, min=None, max=None):
        return self


def dense_patches(rec) -> list:
    """The one-stage heads (ATSS, GFL: models/detectors/dense_heads.py): ``boxes x topk`` positive anchors per image
    (the ATSS candidates of one level per box; the real count depends on the IoU statistics), every anchor valid,
    the host-side loss normalisers 1."""
    from vit_adapter_ds.models.detectors import dense_heads

    shape = {}

    def anchor_targets(anchors, valid, num_level_anchors, gt_boxes, gt_labels, num_classes, topk):
        rec.note("ATSS assignment: boxes x topk positive anchors per image, every anchor valid")
        n, g = anchors.shape[0], gt_boxes.shape[0]
        k = min(n, g * int(topk))
        labels = torch.full((n,), num_classes, dtype=torch.long, device=anchors.device)
        boxes = anchors.new_zeros(n, 4)
        if k:
            j = torch.arange(k, device=anchors.device) % g
            labels[:k] = gt_labels[j]
            boxes[:k] = gt_boxes[j].to(anchors.dtype)
        shape.update(n=n, k=k)
        return labels, anchors.new_ones(n), boxes, k

    def positive_anchors(labels, num_classes):
        n, k = shape["n"], shape["k"]
        return torch.cat([b * n + torch.arange(k, device=labels.device) for b in range(labels.numel() // n)])

    def reduce_mean(value):
        rec.note("one-stage loss normalisers (reduce_mean(...).item()) taken as 1")
        return _HostScalar()

    def weighted_giou(pred, target, weight, loss_weight):  # the branch with positive weights (the real test)
        return loss_weight * (dense_heads.giou_loss(pred, target) * weight).sum()

    return [(dense_heads, "anchor_targets", anchor_targets), (dense_heads, "positive_anchors", positive_anchors),
            (dense_heads, "reduce_mean", reduce_mean), (dense_heads, "weighted_giou", weighted_giou)]


def sparse_patches(rec) -> list:
    """Sparse R-CNN: the Hungarian assignment (costs computed) matches proposal i <-> box i for min(P, G) pairs."""
    from vit_adapter_ds.models.detectors import sparse_rcnn

    def assign(self, bbox_pred, cls_pred, gt_boxes, gt_labels, img_shape):
        rec.note("Sparse R-CNN assignment: costs computed, proposal i <-> box i (min(P, G) pairs)")
        k = min(bbox_pred.shape[0], gt_boxes.shape[0])
        if k:
            with torch.no_grad():
                self.cost(bbox_pred, cls_pred, gt_boxes, gt_labels, img_shape)
        out = torch.full((bbox_pred.shape[0],), -1, dtype=torch.int64, device=bbox_pred.device)
        out[:k] = torch.arange(k, device=out.device)
        shape["k"] = k
        return out

    shape = {}
    return [(sparse_rcnn.HungarianAssigner, "assign", assign),
            (sparse_rcnn, "matched_rows", lambda match: torch.arange(shape["k"], device=match.device))]


def detection_patches(rec) -> list:
    """The detectors' stand-ins (:func:`stand_ins`), each noting what it replaces."""
    from vit_adapter_ds.models.detectors import cascade_mask_rcnn, htc, mask2former_panoptic, mask_rcnn, roi_extractor

    def noted(text, fn):
        def wrapper(*a, **k):
            rec.note(text)
            return fn(*a, **k)
        return wrapper

    sample = noted("R-CNN sampler (cascade / HTC): num RoIs per image, int(num * pos_fraction) positives from the "
                   "proposals (real IoU assignment)", cascade_sample_rois)
    return [
        *dense_patches(rec), *sparse_patches(rec),
        (mask_rcnn.MaxIoUMatcher, "__call__", noted("max-IoU assigner: element-wise form (same matches)",
                                                    max_iou_match)),
        (mask_rcnn.RPN, "filter_proposals", noted("RPN proposals: max_per_img per image (top nms_pre per level, "
                                                  "no NMS)", rpn_filter_proposals)),
        (mask_rcnn.RPN, "assign_targets_to_anchors", noted("RPN anchor assignment over every anchor",
                                                           rpn_assign_targets)),
        (mask_rcnn.RPN, "sampled_anchors", noted("RPN sampler: num anchors per image, int(num * pos_fraction) "
                                                 "positives", rpn_sampled_anchors)),
        *roi_sampler_patches(rec),
        (htc, "sample_rois", sample), (cascade_mask_rcnn, "sample_rois", sample),
        (htc, "drop_gt_rois", cascade_drop_gt_rois),
        (mask2former_panoptic, "present_stuff", panoptic_stuff(rec)),
        (mask2former_panoptic, "check_thing_labels", lambda labels, num_things: None),
        (roi_extractor, "level_rows", noted("RoI level mapping: every RoI pooled from the finest level",
                                            finest_level_rows)),
    ]
