"""Image-tensor operations shared by the data pipelines and the models' test-time augmentation (mmcv / mmdet
semantics): the keep-ratio size rule, the keep-ratio test resize, Normalize and Pad + collate. No layer of the
package is imported here, so models (test-time augmentation) and data (pipelines) both use these."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


def rescale_size(h: int, w: int, scale) -> tuple[int, int]:
    """mmcv ``rescale_size`` for a (long, short) scale with keep_ratio: the largest size that fits both the long
    edge into ``max(scale)`` and the short edge into ``min(scale)``; returns (new_h, new_w)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def resize_keep_ratio(img: torch.Tensor, scale) -> torch.Tensor:
    """mmdet test ``Resize(img_scale=scale, keep_ratio=True)`` of a uint8 (3, H, W) image (bilinear, as mmcv's
    ``imrescale``); Normalize / Pad follow."""
    h, w = img.shape[-2:]
    nh, nw = rescale_size(h, w, scale)
    return F.resize(img, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=False)


def normalize(img: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float32 ``(x - mean) / std``."""
    x = img.as_subclass(torch.Tensor).float()
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def pad_batch(images, size_divisor: int = 32) -> torch.Tensor:
    """Stack (3, h_i, w_i) images into (B, 3, H, W), zero-padded at the bottom/right to the largest size rounded up to
    ``size_divisor`` (mmdet ``Pad`` + collate)."""
    hs, ws = [im.shape[-2] for im in images], [im.shape[-1] for im in images]
    H = int(math.ceil(max(hs) / size_divisor)) * size_divisor
    W = int(math.ceil(max(ws) / size_divisor)) * size_divisor
    return torch.stack([TF.pad(im, (0, W - im.shape[-1], 0, H - im.shape[-2])) for im in images])
