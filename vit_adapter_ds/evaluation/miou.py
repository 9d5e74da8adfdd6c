"""Semantic-segmentation metrics with mmseg ``IoUMetric`` semantics, exact across ranks.

Per image, :func:`intersect_and_union` counts, per class, the pixels of intersection, union, prediction and label
over the pixels whose label is not ``ignore_index`` (int64 histograms). :class:`IoUAccumulator` sums these counts
over images and, with :meth:`IoUAccumulator.all_reduce`, over ranks (integer sums, so the distributed result equals
the single-process one exactly); :func:`summarize` turns them into metrics:

* ``aAcc`` = sum(intersect) / sum(label): overall pixel accuracy.
* ``IoU[c]`` = intersect / union: NaN when class c is in neither label nor prediction (0/0).
* ``Acc[c]`` = intersect / label: NaN when class c is absent from the labels.
* ``Dice[c]`` = 2 * intersect / (pred + label) (mmseg's ``mDice``): NaN when class c is in neither (0/0).
* ``mIoU`` / ``mAcc`` / ``mDice``: NaN-ignoring means (``numpy.nanmean``) of the per-class values.

All values are fractions in [0, 1] (mmseg 0.x ``evaluate`` reports these fractions; mmseg 1.x prints them x100,
rounded to 2 decimals). Label values outside ``[0, num_classes)`` other than ``ignore_index`` are not counted in
the label histogram (as with mmseg's ``torch.histc``), but their pixels still count towards the prediction areas.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist


def _hist(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    x = x[(x >= 0) & (x < num_classes)]
    return torch.bincount(x, minlength=num_classes).to(torch.int64)


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """Per-class pixel counts of one image (or a batch: any matching shapes).

    ``pred`` and ``label``: integer tensors of the same shape (class ids; ``label == ignore_index`` skipped).
    Returns ``(area_intersect, area_union, area_pred, area_label)``, each int64 of shape (num_classes,) on the
    input device."""
    if pred.shape != label.shape:
        raise ValueError(f"pred and label shapes differ: {tuple(pred.shape)} vs {tuple(label.shape)}")
    if pred.is_floating_point() or label.is_floating_point():
        raise TypeError("pred and label must be integer class maps (take argmax of scores first)")
    pred, label = pred.long().reshape(-1), label.long().reshape(-1)
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    area_intersect = _hist(pred[pred == label], num_classes)
    area_pred = _hist(pred, num_classes)
    area_label = _hist(label, num_classes)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def summarize(area_intersect, area_union, area_pred, area_label, class_names: Sequence[str] | None = None) -> dict:
    """Metrics from total per-class counts (see the module docstring). Returns
    ``{'aAcc', 'mIoU', 'mAcc', 'mDice': float, 'IoU', 'Acc', 'Dice': np.ndarray (float64, NaN = undefined),
    'per_class': [{'class', 'IoU', 'Acc', 'Dice'} ...]}``."""
    inter, union, pred, label = (np.asarray(torch.as_tensor(a).cpu(), dtype=np.float64)
                                 for a in (area_intersect, area_union, area_pred, area_label))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / label
        dice = 2 * inter / (pred + label)
        aacc = inter.sum() / label.sum() if label.sum() > 0 else math.nan
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise ValueError(f"{len(names)} class names for {len(iou)} classes")

    def nanmean(v):
        return float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan

    return {"aAcc": float(aacc), "mIoU": nanmean(iou), "mAcc": nanmean(acc), "mDice": nanmean(dice), "IoU": iou,
            "Acc": acc, "Dice": dice,
            "per_class": [{"class": n, "IoU": float(i), "Acc": float(a), "Dice": float(d)}
                          for n, i, a, d in zip(names, iou, acc, dice)]}


def format_table(metrics: dict, digits: int = 2) -> str:
    """The per-class table and the summary as text (percentages, like mmseg's log)."""
    rows = metrics["per_class"]
    w = max([5] + [len(r["class"]) for r in rows])
    fmt = lambda v: "nan" if math.isnan(v) else f"{100 * v:.{digits}f}"  # noqa: E731
    lines = [f"{'Class':<{w}}  {'IoU':>7}  {'Acc':>7}  {'Dice':>7}"]
    lines += [f"{r['class']:<{w}}  {fmt(r['IoU']):>7}  {fmt(r['Acc']):>7}  {fmt(r['Dice']):>7}" for r in rows]
    lines.append(f"aAcc {fmt(metrics['aAcc'])}  mIoU {fmt(metrics['mIoU'])}  mAcc {fmt(metrics['mAcc'])}  "
                 f"mDice {fmt(metrics['mDice'])}")
    return "\n".join(lines)


class IoUAccumulator:
    """Sums :func:`intersect_and_union` counts over images; ``all_reduce()`` sums them over ranks.

    Usage::

        acc = IoUAccumulator(num_classes)
        for pred, label in ...: acc.update(pred, label)
        acc.all_reduce()          # once, on every rank (no-op without an initialised process group)
        metrics = acc.summarize(class_names)
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.areas = torch.zeros(4, self.num_classes, dtype=torch.int64)
        self.num_images = 0
        self._reduced = False

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image's (or a batch's) counts. ``pred``/``label``: integer maps of equal shape."""
        if self._reduced:
            raise RuntimeError("update() after all_reduce(): the counts would be summed twice; use a new accumulator")
        counts = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.areas += torch.stack(counts).cpu()
        self.num_images += 1 if pred.dim() <= 2 else int(pred.shape[0])

    def all_reduce(self, group=None) -> None:
        """Sum the counts (and image counts) over the ranks of ``group`` (int64, exact). NCCL needs CUDA tensors,
        gloo CPU tensors: the device follows the backend."""
        if not (dist.is_available() and dist.is_initialized()) or self._reduced:
            self._reduced = True
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
            else torch.device("cpu")
        buf = torch.cat([self.areas.reshape(-1), torch.tensor([self.num_images])]).to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        buf = buf.cpu()
        self.areas = buf[:-1].reshape(4, self.num_classes).clone()
        self.num_images = int(buf[-1])
        self._reduced = True

    def summarize(self, class_names: Sequence[str] | None = None) -> dict:
        return summarize(*self.areas, class_names=class_names)
