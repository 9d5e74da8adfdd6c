"""Detection transforms of the official Mask R-CNN configs (mmdet 2.x semantics) on torchvision.transforms.v2
functionals and tv_tensors.

A sample is a dict ``img`` (``tv_tensors.Image`` uint8 (3, H, W), RGB), ``boxes`` (``tv_tensors.BoundingBoxes``
XYXY float32 (N, 4)), ``labels`` int64 (N,), ``masks`` (``tv_tensors.Mask`` uint8 (N, H, W)) and
``ignore_boxes`` (``BoundingBoxes`` (M, 4), crowd regions: transformed like the boxes, never supervised, as
mmdet's ``gt_bboxes_ignore`` with ``ignore_iof_thr=-1``).

Training pipeline (:func:`train_transform`; the "DETR / Sparse R-CNN" augmentation of the ViT-Adapter configs)::

    RandomFlip(0.5)
    AutoAugment(policies=[[Resize(img_scale=[(s, 1333) for s in 480..800 step 32], 'value', keep_ratio)],
                          [Resize([(400|500|600, 1333)]), RandomCrop('absolute_range', (384, 600),
                           allow_negative_crop=True), Resize(<the 11 scales>, override=True)]])
    RandomCrop('absolute_range', (1024, 1024), allow_negative_crop=True)
    Normalize, Pad(size_divisor=32)                  # in the loader's collate

* ``Resize`` keep-ratio (mmcv ``rescale_size``): factor ``min(long / max(h, w), short / min(h, w))``, new size
  ``int(x * f + 0.5)``; boxes scaled by ``new / old`` per axis and clipped to the new image; image bilinear,
  masks nearest.
* ``RandomCrop('absolute_range', (lo, hi))``: crop ``h = randint(min(H, lo), min(H, hi) + 1)`` (same for w), offset
  ``randint(0, H - h + 1)``; boxes shifted and clipped; boxes (and their labels and masks) with no area left are
  dropped; a crop without any box is kept (``allow_negative_crop``).
* Random numbers come only from ``rng.random()`` and ``rng.integers(lo, hi)`` of the numpy Generator passed in, in
  mmdet's order (flip, policy, scale, crop size h, w, offset h, w, ...).

Test pipeline (:func:`test_transform`): ``Resize((1333, 800), keep_ratio)``, Normalize, Pad 32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

MULTI_SCALES = tuple((s, 1333) for s in range(480, 801, 32))
CROP_SCALES = ((400, 1333), (500, 1333), (600, 1333))


def rescale_size(h: int, w: int, scale) -> tuple[int, int]:
    """mmcv ``rescale_size`` (keep ratio): the (new_h, new_w) that fits the long edge into ``max(scale)`` and the
    short edge into ``min(scale)``."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def make_sample(img, boxes, labels, masks, ignore_boxes=None) -> dict:
    """Wrap tensors as a transform sample (see module docstring)."""
    h, w = img.shape[-2:]
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ign = torch.zeros(0, 4) if ignore_boxes is None else torch.as_tensor(ignore_boxes, dtype=torch.float32)
    return {"img": tv_tensors.Image(img),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "masks": tv_tensors.Mask(torch.as_tensor(masks, dtype=torch.uint8).reshape(-1, h, w)),
            "ignore_boxes": tv_tensors.BoundingBoxes(ign.reshape(-1, 4), format="XYXY", canvas_size=(h, w))}


def _boxes(t, data, size):
    return tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=tuple(size))


def resize(sample: dict, size) -> dict:
    """Resize to ``size`` = (new_h, new_w): image bilinear (no antialias, as OpenCV), masks nearest, boxes scaled by
    ``new / old`` per axis and clipped to the new image (mmdet ``Resize`` with ``bbox_clip_border``)."""
    h, w = sample["img"].shape[-2:]
    nh, nw = int(size[0]), int(size[1])
    out = dict(sample)
    out["img"] = F.resize(sample["img"], [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=False)
    if sample["masks"].shape[0]:
        out["masks"] = F.resize(sample["masks"], [nh, nw], interpolation=InterpolationMode.NEAREST)
    else:
        out["masks"] = tv_tensors.Mask(torch.zeros(0, nh, nw, dtype=torch.uint8))
    f = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
    lim = torch.tensor([nw, nh, nw, nh], dtype=torch.float32)
    for key in ("boxes", "ignore_boxes"):
        b = sample[key].as_subclass(torch.Tensor) * f
        out[key] = _boxes(key, torch.minimum(b.clamp(min=0), lim), (nh, nw))
    return out


def resize_keep_ratio(sample: dict, scale) -> dict:
    """mmdet ``Resize(img_scale=scale, keep_ratio=True)``."""
    h, w = sample["img"].shape[-2:]
    return resize(sample, rescale_size(h, w, scale))


def hflip(sample: dict) -> dict:
    """Horizontal flip: ``x1' = W - x2``, ``x2' = W - x1`` (mmdet ``RandomFlip``)."""
    out = dict(sample)
    for key in ("img", "masks", "boxes", "ignore_boxes"):
        out[key] = F.horizontal_flip(sample[key])
    return out


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Crop ``[top, top + height) x [left, left + width)``; boxes shifted, clipped, and dropped (with their labels and
    masks) when no area is left (mmdet ``RandomCrop._crop_data``, ``bbox_clip_border=True``)."""
    out = dict(sample)
    h, w = sample["img"].shape[-2:]
    height, width = min(height, h - top), min(width, w - left)
    out["img"] = F.crop(sample["img"], top, left, height, width)
    off = torch.tensor([left, top, left, top], dtype=torch.float32)
    lim = torch.tensor([width, height, width, height], dtype=torch.float32)
    for key in ("boxes", "ignore_boxes"):
        b = torch.minimum((sample[key].as_subclass(torch.Tensor) - off).clamp(min=0), lim)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        out[key] = _boxes(key, b[keep], (height, width))
        if key == "boxes":
            out["labels"] = sample["labels"][keep]
            out["masks"] = tv_tensors.Mask(F.crop(sample["masks"], top, left, height, width)[keep])
    return out


def random_crop_absolute_range(sample: dict, rng, crop_range) -> dict:
    """mmdet ``RandomCrop(crop_type='absolute_range', crop_size=crop_range, allow_negative_crop=True)``."""
    h, w = sample["img"].shape[-2:]
    lo, hi = crop_range
    ch = int(rng.integers(min(h, lo), min(h, hi) + 1))
    cw = int(rng.integers(min(w, lo), min(w, hi) + 1))
    top = int(rng.integers(0, max(h - ch, 0) + 1))
    left = int(rng.integers(0, max(w - cw, 0) + 1))
    return crop(sample, top, left, ch, cw)


def random_resize(sample: dict, rng, scales) -> dict:
    """mmdet ``Resize(img_scale=scales, multiscale_mode='value', keep_ratio=True)``: one scale uniformly."""
    return resize_keep_ratio(sample, scales[int(rng.integers(0, len(scales)))])


def detr_auto_augment(sample: dict, rng, scales=MULTI_SCALES, crop_scales=CROP_SCALES, crop_range=(384, 600)):
    """The two-policy ``AutoAugment`` of the official configs (policy chosen uniformly)."""
    if int(rng.integers(0, 2)) == 0:
        return random_resize(sample, rng, scales)
    sample = random_resize(sample, rng, crop_scales)
    sample = random_crop_absolute_range(sample, rng, crop_range)
    return random_resize(sample, rng, scales)


def train_transform(sample: dict, rng, flip_ratio=0.5, scales=MULTI_SCALES, crop_scales=CROP_SCALES,
                    crop_range=(384, 600), final_crop=(1024, 1024)) -> dict:
    """The official training pipeline up to (not including) Normalize / Pad; see the module docstring."""
    if rng.random() < flip_ratio:
        sample = hflip(sample)
    sample = detr_auto_augment(sample, rng, scales, crop_scales, crop_range)
    if final_crop is not None:
        sample = random_crop_absolute_range(sample, rng, final_crop)
    return sample


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


def test_transform(img: torch.Tensor, scale=(1333, 800)) -> torch.Tensor:
    """mmdet test ``Resize(img_scale=scale, keep_ratio=True)`` of a uint8 image (Normalize / Pad follow)."""
    h, w = img.shape[-2:]
    nh, nw = rescale_size(h, w, scale)
    return F.resize(img, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=False)
