"""Training batches of the detection tasks for the planner (:mod:`.step`), in the layout of the train loaders
(``data/detection.py`` ``_collate``; ``tasks/panoptic.py``): ``img`` (B, 3, H, W); ``targets`` one dict per image,
``boxes`` (N, 4) float32, ``labels`` (N,) int64, ``masks`` (N, H, W) uint8, ``ignore_boxes`` (0, 4), ``img_shape``;
``semantic_seg`` int64 (B, H / 8, W / 8) for an HTC with a semantic head (``SegRescale(1/8)``), (B, H, W) for the
panoptic Mask2Former (every segment's label). ``N = boxes_per_image`` boxes of a grid over the image, so every box
is a valid one (the real boxes' values only steer data-dependent choices, which the stand-ins fix by size:
:mod:`.standins`)."""
from __future__ import annotations

import math

import torch


def grid_boxes(n: int, h: int, w: int) -> torch.Tensor:
    """(n, 4) float32 x1y1x2y2 boxes of the cells of a near-square grid over an h x w image, each a bit inside its
    cell."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        x1, x2 = c * w / cols, (c + 1) * w / cols
        y1, y2 = r * h / rows, (r + 1) * h / rows
        dx, dy = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
        out.append([x1 + dx, y1 + dy, x2 - dx, y2 - dy])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, h, w) uint8 bitmaps filling each box."""
    ys = torch.arange(h, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, None, :] + 0.5
    b = boxes[:, :, None, None]
    return ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).to(torch.uint8)


def has_semantic_input(task) -> bool:
    """Whether the task's model takes ``semantic_seg`` (an HTC with a semantic head, the panoptic Mask2Former)."""
    if task.name == "panoptic_segmentation":
        return True
    model = task._model_cfg()
    roi = model.get("roi_head") or {}
    return model.get("type") != "MaskRCNN" and bool(roi.get("semantic_head"))


def detection_batch(task, batch_size, image_size, *, boxes_per_image: int = 10):
    """``make_batch(dtype)`` of the detection / panoptic task's training batch (module docstring)."""
    h, w = (int(v) for v in image_size)
    n = int(boxes_per_image)
    num_classes = max(1, int(getattr(task, "num_classes", 1) or 1))
    panoptic = task.name == "panoptic_segmentation"
    things = int(getattr(task._model_cfg().get("panoptic_head") or {}, "get", lambda *_: None)("num_things_classes")
                 or num_classes) if panoptic else num_classes
    semantic = has_semantic_input(task)

    def make(dtype):
        boxes = grid_boxes(n, h, w)
        labels = torch.arange(n, dtype=torch.int64) % max(1, things)
        masks = box_masks(boxes, h, w)
        targets = []
        for _ in range(batch_size):
            t = {"boxes": boxes.clone(), "labels": labels.clone(), "masks": masks.clone(),
                 "ignore_boxes": torch.zeros(0, 4), "img_shape": (h, w)}
            if panoptic:
                t = {"labels": labels.clone(), "masks": masks.clone()}
            targets.append(t)
        out = {"img": torch.randn(batch_size, 3, h, w), "targets": targets}
        if semantic:
            if panoptic:
                out["semantic_seg"] = torch.randint(0, num_classes, (batch_size, h, w))
            else:
                out["semantic_seg"] = torch.randint(0, 183, (batch_size, int(h / 8 + 0.5), int(w / 8 + 0.5)))
        return out
    return make
