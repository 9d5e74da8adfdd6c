"""Colourised prediction masks: palettes, label -> RGB, and indexed PNG files.

:func:`save_mask_png` writes a palette ("P" mode) PNG: its pixel values are the class ids (exactly, so the file is
also a machine-readable prediction) and image viewers show the palette colours; ``ignore_index`` (255) is black.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def default_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, well separated (the dataset's own palette is preferred when known)."""
    from ..data.classes import make_palette
    return np.asarray(make_palette(num_classes), dtype=np.uint8).reshape(num_classes, 3)


def _palette(palette, num_classes: int) -> np.ndarray:
    pal = default_palette(num_classes) if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) < num_classes:
        raise ValueError(f"palette has {len(pal)} colours for {num_classes} classes")
    return pal


def _to_numpy(label) -> np.ndarray:
    if torch.is_tensor(label):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    return label.astype(np.int64)


def colorize(label, num_classes: int, palette=None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids outside [0, num_classes) (e.g. 255 = ignore) are black."""
    label = _to_numpy(label)
    pal = np.concatenate([_palette(palette, num_classes)[:num_classes], np.zeros((1, 3), np.uint8)])
    idx = np.where((label >= 0) & (label < num_classes), label, num_classes)
    return pal[idx]


def overlay(image_rgb: np.ndarray, label, num_classes: int, palette=None, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised mask over an (H, W, 3) uint8 image (mmseg ``show_result`` opacity ``alpha``)."""
    col = colorize(label, num_classes, palette).astype(np.float32)
    return (image_rgb.astype(np.float32) * (1 - alpha) + col * alpha).round().clip(0, 255).astype(np.uint8)


def save_mask_png(path, label, num_classes: int, palette=None) -> Path:
    """Write an indexed PNG (values = class ids, colours = palette; 255 black). More than 255 classes: RGB."""
    from PIL import Image

    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    label = _to_numpy(label)
    if num_classes > 255:
        Image.fromarray(colorize(label, num_classes, palette)).save(path)
        return path
    pal = np.zeros((256, 3), np.uint8)
    pal[:num_classes] = _palette(palette, num_classes)[:num_classes]
    idx = np.ascontiguousarray(np.where((label >= 0) & (label < 256), label, 255).astype(np.uint8))
    img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
    img.putpalette(pal.reshape(-1).tolist())
    img.save(path)
    return path


def save_rgb_png(path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path
