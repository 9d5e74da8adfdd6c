"""Soft-NMS with mmcv ``soft_nms`` semantics (HTC++ test: ``nms=dict(type='soft_nms', iou_threshold=0.5)``),
in PyTorch (torchvision has no soft-NMS).

Repeatedly the highest-scoring remaining box is kept; every other remaining box's score is multiplied by

* ``'linear'`` (mmcv default): ``1 - iou`` if ``iou >= iou_threshold`` else 1,
* ``'gaussian'``: ``exp(-iou ** 2 / sigma)``,
* ``'naive'``: 0 if ``iou >= iou_threshold`` else 1 (hard NMS),

and boxes whose decayed score falls below ``min_score`` are dropped (as in mmcv, a box is only tested after a
decay, so an input score below ``min_score`` is not dropped by itself). IoU uses ``x2 - x1`` widths (mmcv ``offset=0``).
Returns the kept boxes' indices in selection order and their decayed scores. (mmcv's CPU kernel breaks score ties
by its in-place swap order; here ties go to the lower index.)
"""
from __future__ import annotations

import torch

METHODS = ("linear", "gaussian", "naive")


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             min_score: float = 1e-3, method: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) x1y1x2y2 boxes, (N,) scores -> (kept indices (K,) int64, their decayed scores (K,))."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    boxes = boxes.float()
    s = scores.float().clone()
    alive = torch.arange(boxes.shape[0], device=boxes.device)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep, kept_scores = [], []
    while alive.numel():
        j = int(torch.argmax(s[alive]))
        i = alive[j]
        keep.append(i)
        kept_scores.append(s[i].clone())
        rest = torch.cat([alive[:j], alive[j + 1:]])
        if rest.numel() == 0:
            break
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / (area[i] + area[rest] - inter).clamp(min=1e-12)
        if method == "linear":
            w = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
        elif method == "gaussian":
            w = torch.exp(-(iou * iou) / sigma)
        else:
            w = (iou < iou_threshold).to(iou.dtype)
        s[rest] = s[rest] * w
        alive = rest[s[rest] >= min_score]
    if not keep:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    return torch.stack(keep), torch.stack(kept_scores).to(scores.dtype)


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, **kw):
    """Soft-NMS within each class ``idxs`` (mmcv ``batched_nms`` coordinate offset: boxes of different classes
    never overlap); returns (indices, decayed scores) sorted by decayed score, descending."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    offset = idxs.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    keep, s = soft_nms(boxes + offset, scores, **kw)
    order = torch.argsort(s, descending=True, stable=True)
    return keep[order], s[order]
