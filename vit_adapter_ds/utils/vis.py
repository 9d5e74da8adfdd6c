"""Prediction images: input | ground truth | prediction side by side, label maps coloured with a palette."""
from __future__ import annotations

import numpy as np
import torch


def make_palette(num_classes: int, seed: int = 0) -> list:
    """The one palette rule: deterministic, well separated RGB colours, a list of ``num_classes`` [r, g, b] lists
    (the manifests' default ``palette``, the visualisations' colours when the dataset has none)."""
    import colorsys

    out = []
    for i in range(num_classes):
        h = (i * 0.618033988749895 + seed * 0.1) % 1.0
        s = 0.55 + 0.45 * ((i * 7) % 5) / 4
        v = 0.6 + 0.4 * ((i * 3) % 4) / 3
        out.append([int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v)])
    return out


def as_colours(palette, num_classes: int) -> np.ndarray:
    """``palette`` (any [[r, g, b], ...]; None: :func:`make_palette`) as an (N >= num_classes, 3) uint8 array."""
    pal = np.asarray(make_palette(num_classes) if palette is None else palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) < num_classes:
        raise ValueError(f"palette has {len(pal)} colours for {num_classes} classes")
    return pal


def label_array(label) -> np.ndarray:
    """An (H, W) label map (numpy or tensor) as int64 numpy."""
    if torch.is_tensor(label):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    return label.astype(np.int64)


def colorize(label, num_classes: int, palette=None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids outside [0, num_classes) (e.g. 255 = ignore) are black."""
    label = label_array(label)
    pal = np.concatenate([as_colours(palette, num_classes)[:num_classes], np.zeros((1, 3), np.uint8)])
    idx = np.where((label >= 0) & (label < num_classes), label, num_classes)
    return pal[idx]


def denormalize(img: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised float tensor -> (H, W, 3) uint8 (mean/std in 0..255 units)."""
    x = img.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def triptych(image_hwc: np.ndarray, gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Input, ground truth and prediction side by side, (H, 3W, 3) uint8."""
    return np.concatenate([image_hwc, colorize(gt, num_classes), colorize(pred, num_classes)], axis=1)


def write_png(path, hwc_uint8: np.ndarray) -> None:
    from torchvision.io import write_png as _write
    _write(torch.from_numpy(np.ascontiguousarray(hwc_uint8)).permute(2, 0, 1).contiguous(), str(path))
