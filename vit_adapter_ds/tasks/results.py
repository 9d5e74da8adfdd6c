"""What the inference API returns for one image, per task: plain NumPy arrays at the image's own size, and their
machine-readable forms (what ``launch/predict.py`` and ``launch/demo.py`` write).

* :class:`SegmentationResult`: ``label_map`` (H, W) int64 class ids; ``probabilities`` (C, H, W) float32 (the mean of
  the test views' softmax) when asked for.
* :class:`DetectionResult`: ``boxes`` (N, 4) float32 ``x1, y1, x2, y2`` pixels, ``labels`` (N,) int64 class indices,
  ``scores`` (N,) float32, sorted by score; ``masks`` (N, H, W) bool for detectors with a mask head, else None. Every
  detection the model keeps (its ``test_cfg``: score_thr, max_per_img); drawing and JSON apply a score threshold.
* :class:`PanopticResult`: ``segment_ids`` (H, W) int32 (0 = no segment) and ``segments`` (COCO ``segments_info``:
  ``id``, ``category_id``, ``name``, ``isthing``, ``area``, ``bbox``); ``instances``: the panoptic head's thing
  detections as a :class:`DetectionResult` when the model predicts them (``instance_on``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentationResult:
    label_map: np.ndarray
    probabilities: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.label_map.shape)

    def summary(self, classes=None) -> str:
        ids, counts = np.unique(self.label_map, return_counts=True)
        top = [int(i) for i in ids[np.argsort(-counts)][:3]]
        names = [classes[i] if classes is not None and 0 <= i < len(classes) else str(i) for i in top]
        return f"{len(ids)} classes, most pixels: {', '.join(names)}"


@dataclass
class DetectionResult:
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(len(self.scores))

    def above(self, score_thr: float) -> "DetectionResult":
        """The detections scoring at least ``score_thr``."""
        keep = self.scores >= score_thr
        return DetectionResult(self.boxes[keep], self.labels[keep], self.scores[keep],
                               None if self.masks is None else self.masks[keep], self.size)

    def as_tensors(self) -> dict:
        """The model's prediction dict (``boxes``, ``labels``, ``scores``, ``masks``) as CPU tensors (drawing)."""
        import torch

        out = {"boxes": torch.from_numpy(self.boxes), "labels": torch.from_numpy(self.labels),
               "scores": torch.from_numpy(self.scores)}
        if self.masks is not None:
            out["masks"] = torch.from_numpy(self.masks)
        return out

    @classmethod
    def from_prediction(cls, pred: dict, size) -> "DetectionResult":
        """From a detector's ``predict`` output (tensors; masks as (N, H, W) probabilities or bools)."""
        boxes = pred["boxes"].detach().float().cpu().numpy().astype(np.float32).reshape(-1, 4)
        masks = pred.get("masks")
        if masks is not None:
            masks = masks.detach().cpu()
            masks = (masks >= 0.5 if masks.is_floating_point() else masks.bool()).numpy()
            masks = masks.reshape(len(boxes), *masks.shape[-2:])
        return cls(boxes, pred["labels"].detach().cpu().numpy().astype(np.int64),
                   pred["scores"].detach().float().cpu().numpy().astype(np.float32), masks,
                   tuple(int(v) for v in size))

    def summary(self, score_thr: float) -> str:
        return f"{int((self.scores >= score_thr).sum())} detections >= {score_thr}"


@dataclass
class PanopticResult:
    segment_ids: np.ndarray
    segments: list = field(default_factory=list)
    instances: DetectionResult | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.segment_ids.shape)

    def summary(self) -> str:
        things = sum(int(s.get("isthing", 0)) for s in self.segments)
        return f"{len(self.segments)} segments ({things} things)"
