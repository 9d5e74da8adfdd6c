"""Prediction images: input | ground truth | prediction side by side, label maps coloured with a palette."""
from __future__ import annotations

import numpy as np
import torch


def palette(num_classes: int, seed: int = 3) -> np.ndarray:
    """(num_classes + 1, 3) uint8 colours; the last row (index 255 is mapped to it) is black for 'ignore'."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)
    return np.concatenate([colours, np.zeros((1, 3), np.uint8)])


def colorize(label: np.ndarray, num_classes: int, pal: np.ndarray | None = None) -> np.ndarray:
    """(H, W) int labels (255 = ignore) -> (H, W, 3) uint8."""
    pal = palette(num_classes) if pal is None else pal
    idx = np.where((label >= 0) & (label < num_classes), label, num_classes).astype(np.int64)
    return pal[idx]


def denormalize(img: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised float tensor -> (H, W, 3) uint8 (mean/std in 0..255 units)."""
    x = img.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def triptych(image_hwc: np.ndarray, gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Input, ground truth and prediction side by side, (H, 3W, 3) uint8."""
    pal = palette(num_classes)
    return np.concatenate([image_hwc, colorize(gt, num_classes, pal), colorize(pred, num_classes, pal)], axis=1)


def write_png(path, hwc_uint8: np.ndarray) -> None:
    from torchvision.io import write_png as _write
    _write(torch.from_numpy(np.ascontiguousarray(hwc_uint8)).permute(2, 0, 1).contiguous(), str(path))
