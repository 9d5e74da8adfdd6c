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

from ..config.errors import ConfigError

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
    """mmdet ``Resize(img_scale=scales, multiscale_mode='value', keep_ratio=True)``: one scale uniformly (no draw
    for a single scale, as mmdet)."""
    if len(scales) == 1:
        return resize_keep_ratio(sample, scales[0])
    return resize_keep_ratio(sample, scales[int(rng.integers(0, len(scales)))])


def random_resize_range(sample: dict, rng, scales) -> dict:
    """mmdet ``Resize(img_scale=[s1, s2], multiscale_mode='range', keep_ratio=True)``: long edge
    ``randint(min long, max long + 1)``, then short edge ``randint(min short, max short + 1)`` (HTC++:
    ``[(1600, 400), (1600, 1400)]``)."""
    longs, shorts = [max(s) for s in scales], [min(s) for s in scales]
    long_edge = int(rng.integers(min(longs), max(longs) + 1))
    short_edge = int(rng.integers(min(shorts), max(shorts) + 1))
    return resize_keep_ratio(sample, (long_edge, short_edge))


def train_transform(sample: dict, rng, flip_ratio=0.5, scales=MULTI_SCALES, crop_scales=CROP_SCALES,
                    crop_range=(384, 600), final_crop=(1024, 1024)) -> dict:
    """The official training pipeline up to (not including) Normalize / Pad; see the module docstring."""
    return apply_ops(sample, rng, official_train_ops(flip_ratio, scales, crop_scales, crop_range, final_crop))


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


# ------------------------------------------------------------------------------------------------ official pipelines
def apply_ops(sample: dict, rng, ops) -> dict:
    """Run pipeline ops made by :func:`train_ops_from_pipeline`: ``("flip", p)``, ``("resize", scales)``,
    ``("resize_range", scales)``,
    ``("crop", (lo, hi))``, ``("autoaugment", (ops_1, ops_2, ...))`` (one policy chosen uniformly)."""
    for op, arg in ops:
        if op == "flip":
            if rng.random() < arg:
                sample = hflip(sample)
        elif op == "resize":
            sample = random_resize(sample, rng, arg)
        elif op == "resize_range":
            sample = random_resize_range(sample, rng, arg)
        elif op == "crop":
            sample = random_crop_absolute_range(sample, rng, arg)
        elif op == "autoaugment":
            sample = apply_ops(sample, rng, arg[int(rng.integers(0, len(arg)))])
        else:
            raise ValueError(f"unknown pipeline op {op!r}")
    return sample


def official_train_ops(flip_ratio=0.5, scales=MULTI_SCALES, crop_scales=CROP_SCALES, crop_range=(384, 600),
                       final_crop=(1024, 1024)):
    """The ops of :func:`train_transform` (the official Mask R-CNN 3x pipeline by default)."""
    ops = [("flip", flip_ratio),
           ("autoaugment", ([("resize", tuple(scales))],
                            [("resize", tuple(crop_scales)), ("crop", tuple(crop_range)), ("resize", tuple(scales))]))]
    if final_crop is not None:
        ops.append(("crop", tuple(final_crop)))
    return ops


def _keys(step, allowed, where):
    unknown = sorted(k for k in step if k not in allowed and k != "type")
    if unknown:
        raise ConfigError(f"recipe: {where}.{unknown[0]}: unknown or unsupported key (valid: {sorted(allowed)})")


def _fixed(step, key, value, where, default=None):
    v = step.get(key, default)
    if v != value and not (isinstance(v, (list, tuple)) and isinstance(value, (list, tuple)) and
                           list(v) == list(value)):
        raise ConfigError(f"recipe: {where}.{key}={v!r} is not supported; only {value!r}")


def _scales(v, where):
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return ((int(v[0]), int(v[1])),)
    if isinstance(v, list) and v and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
        return tuple((int(x[0]), int(x[1])) for x in v)
    raise ConfigError(f"recipe: {where} must be a (long, short) tuple or a list of them, got {v!r}")


def _resize_op(step, where, resized):
    _keys(step, {"img_scale", "multiscale_mode", "keep_ratio", "override", "bbox_clip_border"}, where)
    _fixed(step, "keep_ratio", True, where, True)
    _fixed(step, "bbox_clip_border", True, where, True)
    scales = _scales(step.get("img_scale"), where + ".img_scale")
    if resized and not step.get("override", False):
        raise ConfigError(f"recipe: {where}: a second Resize needs override=True (mmdet refuses it otherwise)")
    mode = step.get("multiscale_mode", "range")
    if len(scales) > 1 and mode == "range":
        if len(scales) != 2:
            raise ConfigError(f"recipe: {where}.img_scale: multiscale_mode='range' takes exactly 2 scales")
        return ("resize_range", scales)
    if len(scales) > 1 and mode != "value":
        raise ConfigError(f"recipe: {where}.multiscale_mode={mode!r} is not supported; only 'value' or 'range'")
    return ("resize", scales)


def _crop_op(step, where):
    _keys(step, {"crop_type", "crop_size", "allow_negative_crop", "bbox_clip_border", "recompute_bbox"}, where)
    _fixed(step, "crop_type", "absolute_range", where, "absolute")
    _fixed(step, "allow_negative_crop", True, where, False)
    _fixed(step, "bbox_clip_border", True, where, True)
    _fixed(step, "recompute_bbox", False, where, False)
    size = step.get("crop_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(x, int) for x in size)
            and 0 < size[0] <= size[1]):
        raise ConfigError(f"recipe: {where}.crop_size must be (min, max) integers, got {size!r}")
    return ("crop", (int(size[0]), int(size[1])))


def _norm_cfg(step, where):
    _keys(step, {"mean", "std", "to_rgb"}, where)
    _fixed(step, "to_rgb", True, where, True)
    mean, std = step.get("mean"), step.get("std")
    if not (isinstance(mean, (list, tuple)) and len(mean) == 3 and isinstance(std, (list, tuple)) and len(std) == 3):
        raise ConfigError(f"recipe: {where}: mean and std must be 3 numbers each")
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def _pad(step, where):
    _keys(step, {"size_divisor", "pad_val"}, where)
    _fixed(step, "size_divisor", 32, where)
    _fixed(step, "pad_val", 0, where, 0)


def train_ops_from_pipeline(pipeline, where: str = "train_pipeline") -> dict:
    """Translate an official mmdet train pipeline (list of step dicts) into ``{'ops', 'mean', 'std'}`` for the
    detection loader; every step, key or value this package does not implement raises ConfigError naming it."""
    if not isinstance(pipeline, (list, tuple)) or not pipeline:
        raise ConfigError(f"recipe: {where} must be a non-empty list of pipeline steps")
    ops, norm, resized, seen = [], None, False, []
    for i, step in enumerate(pipeline):
        w = f"{where}[{i}]"
        if not isinstance(step, dict) or "type" not in step:
            raise ConfigError(f"recipe: {w} must be a dict with a 'type'")
        t = step["type"]
        seen.append(t)
        if t == "LoadImageFromFile":
            _keys(step, set(), w)
        elif t == "LoadAnnotations":
            _keys(step, {"with_bbox", "with_mask", "with_label", "poly2mask"}, w)
            for k in ("with_bbox", "with_mask", "with_label", "poly2mask"):
                _fixed(step, k, True, w, True)
        elif t == "RandomFlip":
            _keys(step, {"flip_ratio", "direction"}, w)
            _fixed(step, "direction", "horizontal", w, "horizontal")
            ops.append(("flip", float(step.get("flip_ratio", 0.5))))
        elif t == "Resize":
            ops.append(_resize_op(step, w, resized))
            resized = True
        elif t == "RandomCrop":
            ops.append(_crop_op(step, w))
        elif t == "AutoAugment":
            _keys(step, {"policies"}, w)
            policies = step.get("policies")
            if not isinstance(policies, (list, tuple)) or not policies:
                raise ConfigError(f"recipe: {w}.policies must be a non-empty list of step lists")
            branches = []
            for j, pol in enumerate(policies):
                branch, r = [], resized
                for k, sub in enumerate(pol):
                    sw = f"{w}.policies[{j}][{k}]"
                    if not isinstance(sub, dict):
                        raise ConfigError(f"recipe: {sw} must be a dict")
                    if sub.get("type") == "Resize":
                        branch.append(_resize_op(sub, sw, r))
                        r = True
                    elif sub.get("type") == "RandomCrop":
                        branch.append(_crop_op(sub, sw))
                    else:
                        raise ConfigError(f"recipe: {sw}.type={sub.get('type')!r} is not supported in AutoAugment "
                                          "here (Resize, RandomCrop)")
                if not r:
                    raise ConfigError(f"recipe: {w}.policies[{j}] must resize the image")
                branches.append(branch)
            ops.append(("autoaugment", tuple(branches)))
            resized = True
        elif t == "Normalize":
            norm = _norm_cfg(step, w)
        elif t == "Pad":
            _pad(step, w)
        elif t == "DefaultFormatBundle":
            _keys(step, set(), w)
        elif t == "Collect":
            _keys(step, {"keys", "meta_keys"}, w)
            keys = set(step.get("keys", ()))
            if not {"img", "gt_bboxes", "gt_labels", "gt_masks"} <= keys <= \
                    {"img", "gt_bboxes", "gt_labels", "gt_masks", "gt_bboxes_ignore"}:
                raise ConfigError(f"recipe: {w}.keys={sorted(keys)}: Mask R-CNN training collects img, gt_bboxes, "
                                  "gt_labels, gt_masks")
        else:
            raise ConfigError(f"recipe: {w}.type={t!r} is not supported by the detection loader")
    if norm is None or "Pad" not in seen:
        raise ConfigError(f"recipe: {where} needs Normalize and Pad(size_divisor=32)")
    if not resized:
        raise ConfigError(f"recipe: {where} never resizes the image")
    return {"ops": ops, "mean": norm[0], "std": norm[1]}


def test_cfg_from_pipeline(pipeline, where: str = "test_pipeline") -> dict:
    """Translate the official test pipeline (``LoadImageFromFile``, ``MultiScaleFlipAug(img_scale, flip=False,
    transforms=[Resize(keep_ratio), RandomFlip, Normalize, Pad(32), ImageToTensor, Collect])``) into
    ``{'scale', 'mean', 'std'}``."""
    if not isinstance(pipeline, (list, tuple)) or len(pipeline) != 2:
        raise ConfigError(f"recipe: {where} must be [LoadImageFromFile, MultiScaleFlipAug(...)]")
    if not isinstance(pipeline[0], dict) or pipeline[0].get("type") != "LoadImageFromFile":
        raise ConfigError(f"recipe: {where}[0] must be LoadImageFromFile")
    aug, w = pipeline[1], f"{where}[1]"
    if not isinstance(aug, dict) or aug.get("type") != "MultiScaleFlipAug":
        raise ConfigError(f"recipe: {w} must be MultiScaleFlipAug")
    _keys(aug, {"img_scale", "flip", "transforms", "scale_factor", "flip_direction"}, w)
    _fixed(aug, "flip", False, w, False)
    scales = _scales(aug.get("img_scale"), w + ".img_scale")
    if len(scales) != 1:
        raise ConfigError(f"recipe: {w}.img_scale: only single-scale testing is supported here")
    norm, kinds = None, []
    for i, step in enumerate(aug.get("transforms") or []):
        sw = f"{w}.transforms[{i}]"
        t = step.get("type") if isinstance(step, dict) else None
        kinds.append(t)
        if t == "Resize":
            _keys(step, {"keep_ratio"}, sw)
            _fixed(step, "keep_ratio", True, sw, True)
        elif t == "RandomFlip":
            _keys(step, set(), sw)
        elif t == "Normalize":
            norm = _norm_cfg(step, sw)
        elif t == "Pad":
            _pad(step, sw)
        elif t in ("ImageToTensor", "Collect", "DefaultFormatBundle"):
            _keys(step, {"keys", "meta_keys"}, sw)
        else:
            raise ConfigError(f"recipe: {sw}.type={t!r} is not supported in the test pipeline")
    if norm is None or "Resize" not in kinds or "Pad" not in kinds:
        raise ConfigError(f"recipe: {w}.transforms need Resize(keep_ratio=True), Normalize and Pad(size_divisor=32)")
    return {"scale": scales[0], "mean": norm[0], "std": norm[1]}
