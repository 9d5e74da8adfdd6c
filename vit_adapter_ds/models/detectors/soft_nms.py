"""Soft-NMS with mmcv ``soft_nms`` semantics (HTC++ test: ``nms=dict(type='soft_nms', iou_threshold=0.5)``),
on the CPU with numpy (torchvision has no soft-NMS; mmcv's kernel is CPU-only too).

Repeatedly the highest-scoring remaining box is kept; every other remaining box's score is multiplied by

* ``'linear'`` (mmcv default): ``1 - iou`` if ``iou >= iou_threshold`` else 1,
* ``'gaussian'``: ``exp(-iou ** 2 / sigma)``,
* ``'naive'``: 0 if ``iou >= iou_threshold`` else 1 (hard NMS; unlike mmcv ``nms``, which removes at
  ``iou > iou_threshold``, a box at exactly the threshold is removed)

-- ``>=`` as in mmcv 1.4.2's ``softnms_cpu`` kernel (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``), the IoU and the threshold
in float32 -- and then every remaining box whose score is below ``min_score`` is dropped (as in mmcv, after each
step, undecayed boxes included; a box is never dropped before a higher one has been kept, so the first kept box
stays whatever its score). IoU uses ``x2 - x1`` widths (mmcv ``offset=0``).
Returns the kept boxes' indices in selection order and their decayed scores. (mmcv's CPU kernel breaks score ties
by its in-place swap order; here ties go to the lower index.)
"""
from __future__ import annotations

import numpy as np
import torch

METHODS = ("linear", "gaussian", "naive")


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             min_score: float = 1e-3, method: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) x1y1x2y2 boxes, (N,) scores -> (kept indices (K,) int64, their decayed scores (K,)).

    Runs in float32 on the CPU (as mmcv's ``softnms`` kernel, which only exists for the CPU), with numpy: the loop
    is sequential, one kept box per step."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    device = boxes.device
    b = boxes.detach().float().cpu().numpy()
    s = scores.detach().float().cpu().numpy().copy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1) * (y2 - y1)
    alive = np.arange(b.shape[0])
    keep, kept_scores = [], []
    thr, sig, low = np.float32(iou_threshold), np.float32(sigma), np.float32(min_score)
    while alive.size:
        j = int(np.argmax(s[alive]))  # first maximum: ties go to the lower index
        i = alive[j]
        keep.append(i)
        kept_scores.append(s[i])
        rest = np.delete(alive, j)
        if rest.size == 0:
            break
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, np.float32(1e-12))
        if method == "linear":
            weight = np.where(iou >= thr, 1 - iou, np.float32(1))
        elif method == "gaussian":
            weight = np.exp(-(iou * iou) / sig)
        else:
            weight = (iou < thr).astype(np.float32)
        s[rest] = s[rest] * weight
        alive = rest[s[rest] >= low]
    if not keep:
        return torch.zeros(0, dtype=torch.int64, device=device), scores.new_zeros(0)
    return (torch.as_tensor(np.asarray(keep, dtype=np.int64), device=device),
            torch.as_tensor(np.asarray(kept_scores, dtype=np.float32), device=device).to(scores.dtype))


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, **kw):
    """Soft-NMS within each class ``idxs`` (boxes of different classes never decay each other, as mmcv
    ``batched_nms``' coordinate offset makes them; run class by class); returns (indices, decayed scores) sorted by
    decayed score, descending (ties: the lower index first)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    keeps, kept = [], []
    for c in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == c).squeeze(1)
        k, s = soft_nms(boxes[members], scores[members], **kw)
        keeps.append(members[k])
        kept.append(s)
    keep, s = torch.cat(keeps), torch.cat(kept)
    order = torch.argsort(s, descending=True, stable=True)
    return keep[order], s[order]
