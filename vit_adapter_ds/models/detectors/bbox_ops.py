"""Box coding and box losses shared by the cascade detectors (Cascade Mask R-CNN, HTC++ with GIoU heads) and the
one-stage / query-based heads: mmdet's ``DeltaXYWHBBoxCoder.decode`` (:func:`delta2bbox`) and ``giou_loss``."""
from __future__ import annotations

import math

import torch

WH_RATIO_CLIP = 16 / 1000  # mmdet DeltaXYWHBBoxCoder.decode's default


def delta2bbox(rois: torch.Tensor, deltas: torch.Tensor, stds, max_shape=None) -> torch.Tensor:
    """mmdet ``delta2bbox`` (means 0, ``wh_ratio_clip`` 16/1000, ``clip_border``): boxes (N, 4) and deltas (N, 4 k)
    -> (N, 4 k) boxes; ``dw, dh`` (times the stds) clamped to ``[-log(1000/16), log(1000/16)]``; with ``max_shape``
    (h, w) the coordinates are clamped to ``[0, w] x [0, h]``. Differentiable (the GIoU loss decodes)."""
    n = deltas.shape[0]
    if n == 0:
        return deltas
    d = deltas.reshape(n, -1, 4) * deltas.new_tensor(tuple(float(s) for s in stds))
    rois = rois.to(d.dtype)
    pxy = ((rois[:, :2] + rois[:, 2:]) * 0.5)[:, None]
    pwh = (rois[:, 2:] - rois[:, :2])[:, None]
    clip = abs(math.log(WH_RATIO_CLIP))
    gxy = pxy + pwh * d[..., :2]
    gwh = pwh * d[..., 2:].clamp(min=-clip, max=clip).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        h, w = float(max_shape[0]), float(max_shape[1])
        boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                             boxes[..., 3].clamp(0, h)], dim=-1)
    return boxes.reshape(n, -1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mmdet ``giou_loss`` (``bbox_overlaps(mode='giou', is_aligned=True)``): (N,) ``1 - GIoU`` of aligned boxes
    (N, 4); union and enclosing area floored at ``eps``."""
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    wh = (torch.min(pred[:, 2:], target[:, 2:]) - torch.max(pred[:, :2], target[:, :2])).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    floor = pred.new_tensor([eps])
    union = torch.max(area1 + area2 - overlap, floor)
    ewh = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    enclose = torch.max(ewh[:, 0] * ewh[:, 1], floor)
    return 1 - (overlap / union - (enclose - union) / enclose)
