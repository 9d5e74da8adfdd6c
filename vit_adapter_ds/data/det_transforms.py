"""Detection transforms of the official Mask R-CNN configs (mmdet 2.x semantics) on torchvision.transforms.v2
functionals and tv_tensors.

A sample is a dict ``img`` (``tv_tensors.Image`` uint8 (3, H, W), RGB), ``boxes`` (``tv_tensors.BoundingBoxes``
XYXY float32 (N, 4)), ``labels`` int64 (N,), ``masks`` (``tv_tensors.Mask`` uint8 (N, H, W)) and
``ignore_boxes`` (``BoundingBoxes`` (M, 4), crowd regions: transformed like the boxes, never supervised, as
mmdet's ``gt_bboxes_ignore`` with ``ignore_iof_thr=-1``) and, when the pipeline loads semantic maps
(``LoadAnnotations(with_seg=True)``), ``seg`` (``tv_tensors.Mask`` uint8 (H, W), 255 = ignore).

Training pipeline (:func:`train_transform`; the "DETR / Sparse R-CNN" augmentation of the ViT-Adapter configs)::

    RandomFlip(0.5)
    AutoAugment(policies=[[Resize(img_scale=[(s, 1333) for s in 480..800 step 32], 'value', keep_ratio)],
                          [Resize([(400|500|600, 1333)]), RandomCrop('absolute_range', (384, 600),
                           allow_negative_crop=True), Resize(<the 11 scales>, override=True)]])
    RandomCrop('absolute_range', (1024, 1024), allow_negative_crop=True)
    Normalize, Pad(size_divisor=32)                  # in the loader's collate

* ``Resize`` keep-ratio (mmcv ``rescale_size``): factor ``min(long / max(h, w), short / min(h, w))``, new size
  ``int(x * f + 0.5)``; boxes scaled by ``new / old`` per axis and clipped to the new image; image bilinear,
  masks nearest (``cv2.INTER_NEAREST``).
* ``RandomCrop('absolute_range', (lo, hi))``: crop ``h = randint(min(H, lo), min(H, hi) + 1)`` (same for w), offset
  ``randint(0, H - h + 1)``; boxes shifted and clipped; boxes (and their labels and masks) with no area left are
  dropped; a crop without any box is kept (``allow_negative_crop``).
* Random numbers come only from ``rng.random()`` and ``rng.integers(lo, hi)`` of the numpy Generator passed in, in
  mmdet's order (flip, policy, scale, crop size h, w, offset h, w, ...).

HTC++ pipeline (``htc++_beitv2_adapter_large_fpn_3x_coco.py``; ops ``instaboost``, ``load_seg``, ``resize_range``,
``flip``, ``pad_seg``, ``seg_rescale``)::

    InstaBoost(...)                                  # data/instaboost.py, before the masks are rasterised
    LoadAnnotations(with_bbox, with_mask, with_seg=True)
    Resize(img_scale=[(1600, 400), (1600, 1400)], multiscale_mode='range', keep_ratio=True)
    RandomFlip(0.5), Normalize, Pad(size_divisor=32), SegRescale(scale_factor=1 / 8)

* ``Resize`` 'range' (mmdet ``random_sample``): long edge ``randint(min longs, max longs + 1)``, short edge
  ``randint(min shorts, max shorts + 1)``, then keep-ratio as above.
* The semantic map is resized, flipped and cropped with the image, nearest-neighbour as ``cv2.INTER_NEAREST``
  (:func:`resize_nearest`, which the instance masks use too); ``Pad`` pads it at the bottom / right to a
  multiple of 32 with 255 (mmdet 2.x ``Pad(pad_val=dict(img=0, masks=0, seg=255))``); ``SegRescale`` is
  ``mmcv.imrescale(seg, scale_factor, interpolation='nearest')``: size ``int(x * f + 0.5)`` per side, then
  nearest. The loader's collate pads the maps of a batch to the largest one with 255 (mmdet's
  ``DefaultFormatBundle`` padding value for ``gt_semantic_seg``).

Large-scale jitter (the upgraded Mask R-CNN recipes ``mask_rcnn_mae_adapter_base_lsj_fpn_*ep_coco.py``; ops
``resize_ratio``, ``crop_recompute``, ``filter_annotations``, ``flip``, ``pad_to``)::

    Resize(img_scale=(1024, 1024), ratio_range=(0.1, 2.0), multiscale_mode='range', keep_ratio=True)
    RandomCrop('absolute_range', (1024, 1024), recompute_bbox=True, allow_negative_crop=True)
    FilterAnnotations(min_gt_bbox_wh=(1e-2, 1e-2)), RandomFlip(0.5), Normalize, Pad(size=(1024, 1024))

* ``Resize`` with ``ratio_range`` (mmdet ``random_sample_ratio``; ``multiscale_mode`` is then not used):
  ``ratio = lo + rng.random() * (hi - lo)``, scale ``(int(s0 * ratio), int(s1 * ratio))``, then keep-ratio as above.
* ``RandomCrop(recompute_bbox=True)``: after the crop, each kept box is replaced by the box of its cropped mask
  (mmdet ``BitmapMasks.get_bboxes``: ``[x_min, y_min, x_max + 1, y_max + 1]`` of the mask's pixels, all zeros for
  an empty mask); ignored boxes are not recomputed (they have no mask).
* ``FilterAnnotations(min_gt_bbox_wh=(w, h))`` (``keep_empty=True``): boxes (with labels and masks) of width
  ``<= w`` or height ``<= h`` are dropped; a sample with boxes none of which is left raises :class:`DroppedSample`
  (mmdet returns None and its dataset retries with another image of the group; the train loader takes the next
  sample of the epoch order, of its orientation group); a sample without boxes passes unchanged.
* ``Pad(size=(h, w))``: the sample's ``pad_shape`` is set to ``(h, w)`` (an image larger than that is an error, as
  in mmcv's ``impad``); the loader's collate pads the normalised image to it and passes ``pad_shape`` in the
  target, where the detectors pad the masks and take the anchors' valid flags from it (mmdet's ``pad_shape``).

Test pipeline (:func:`test_transform`): ``Resize((1333, 800), keep_ratio)``, Normalize, Pad 32.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..config.errors import ConfigError
from ..utils.image_ops import normalize, pad_batch, rescale_size  # noqa: F401  (the pipelines' Normalize / Pad)
from ..utils.image_ops import resize_keep_ratio as test_transform  # noqa: F401  (the test Resize)
# the official pipeline's translation: data/pipeline.py (one translator for the recipes of both tasks)
from .pipeline import SEG_IGNORE, test_cfg_from_pipeline, train_ops_from_pipeline  # noqa: F401

MULTI_SCALES = tuple((s, 1333) for s in range(480, 801, 32))
CROP_SCALES = ((400, 1333), (500, 1333), (600, 1333))


def make_sample(img, boxes, labels, masks, ignore_boxes=None, seg=None) -> dict:
    """Wrap tensors as a transform sample (see module docstring); ``seg`` (H, W) only when given."""
    h, w = img.shape[-2:]
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ign = torch.zeros(0, 4) if ignore_boxes is None else torch.as_tensor(ignore_boxes, dtype=torch.float32)
    out = {"img": tv_tensors.Image(img),
           "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
           "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
           "masks": tv_tensors.Mask(torch.as_tensor(masks, dtype=torch.uint8).reshape(-1, h, w)),
           "ignore_boxes": tv_tensors.BoundingBoxes(ign.reshape(-1, 4), format="XYXY", canvas_size=(h, w))}
    if seg is not None:
        seg = torch.as_tensor(seg, dtype=torch.uint8)
        if tuple(seg.shape) != (h, w):
            raise ValueError(f"semantic map of shape {tuple(seg.shape)} for an image of size {(h, w)}")
        out["seg"] = tv_tensors.Mask(seg)
    return out


def nearest_indices(src: int, dst: int) -> torch.Tensor:
    """Source index of each of ``dst`` output positions, as ``cv2.INTER_NEAREST``:
    ``min(floor(i * (1 / (dst / src))), src - 1)`` in double precision."""
    i = np.minimum(np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(np.int64), src - 1)
    return torch.from_numpy(i)


def resize_nearest(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of the last two dims to ``size`` = (h, w), exactly as ``cv2.resize(...,
    interpolation=cv2.INTER_NEAREST)`` (mmcv ``imresize(interpolation='nearest')``); keeps the tensor type."""
    h, w = x.shape[-2:]
    nh, nw = int(size[0]), int(size[1])
    out = x.as_subclass(torch.Tensor)[..., nearest_indices(h, nh), :][..., nearest_indices(w, nw)]
    return tv_tensors.wrap(out, like=x) if isinstance(x, tv_tensors.TVTensor) else out


def imrescale_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """mmcv ``imrescale`` size for a number ``factor``: ``int(x * factor + 0.5)`` per side."""
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def pad_seg(sample: dict, size_divisor: int = 32) -> dict:
    """mmdet ``Pad`` for the semantic map: pad at the bottom / right to a multiple of ``size_divisor`` with 255."""
    if "seg" not in sample:
        return sample
    seg = sample["seg"].as_subclass(torch.Tensor)
    h, w = seg.shape[-2:]
    ph, pw = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    return dict(sample, seg=tv_tensors.Mask(TF.pad(seg, (0, pw - w, 0, ph - h), value=SEG_IGNORE)))


def seg_rescale(sample: dict, factor: float) -> dict:
    """mmdet ``SegRescale(scale_factor=factor)``: ``mmcv.imrescale(seg, factor, interpolation='nearest')``."""
    if "seg" not in sample or factor == 1:
        return sample
    h, w = sample["seg"].shape[-2:]
    return dict(sample, seg=resize_nearest(sample["seg"], imrescale_size(h, w, factor)))


def _boxes(t, data, size):
    return tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=tuple(size))


def resize(sample: dict, size) -> dict:
    """Resize to ``size`` = (new_h, new_w): image bilinear (no antialias, as OpenCV), masks and the semantic map
    nearest (:func:`resize_nearest`, as ``cv2.INTER_NEAREST``), boxes scaled by ``new / old`` per axis and clipped
    to the new image (mmdet ``Resize`` with ``bbox_clip_border``)."""
    h, w = sample["img"].shape[-2:]
    nh, nw = int(size[0]), int(size[1])
    out = dict(sample)
    out["img"] = F.resize(sample["img"], [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=False)
    if sample["masks"].shape[0]:
        out["masks"] = resize_nearest(sample["masks"], (nh, nw))
    else:
        out["masks"] = tv_tensors.Mask(torch.zeros(0, nh, nw, dtype=torch.uint8))
    if "seg" in sample:
        out["seg"] = resize_nearest(sample["seg"], (nh, nw))
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
    """Horizontal flip: ``x1' = W - x2``, ``x2' = W - x1`` (mmdet ``RandomFlip``); masks and the semantic map
    mirrored."""
    out = dict(sample)
    for key in ("img", "masks", "boxes", "ignore_boxes", "seg"):
        if key in sample:
            out[key] = F.horizontal_flip(sample[key])
    return out


class DroppedSample(Exception):
    """The pipeline dropped the sample (mmdet ``FilterAnnotations`` returned None); the train loader replaces it."""


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """mmdet ``BitmapMasks.get_bboxes``: (N, 4) float32 ``[x_min, y_min, x_max + 1, y_max + 1]`` of each (H, W)
    bitmap's non-zero pixels; zeros for an empty bitmap."""
    m = masks.as_subclass(torch.Tensor) != 0
    n, h, w = m.shape
    out = torch.zeros(n, 4, dtype=torch.float32)
    if n == 0:
        return out
    xs, ys = m.any(dim=1), m.any(dim=2)  # (N, W), (N, H)
    some = xs.any(dim=1)
    x0, y0 = xs.int().argmax(dim=1), ys.int().argmax(dim=1)
    x1, y1 = w - xs.flip(1).int().argmax(dim=1), h - ys.flip(1).int().argmax(dim=1)
    out[some] = torch.stack([x0, y0, x1, y1], dim=1)[some].float()
    return out


def crop(sample: dict, top: int, left: int, height: int, width: int, recompute_bbox: bool = False) -> dict:
    """Crop ``[top, top + height) x [left, left + width)``; boxes shifted, clipped, and dropped (with their labels and
    masks) when no area is left (mmdet ``RandomCrop._crop_data``, ``bbox_clip_border=True``); with
    ``recompute_bbox`` the kept boxes are then the boxes of their cropped masks (:func:`mask_boxes`)."""
    out = dict(sample)
    h, w = sample["img"].shape[-2:]
    height, width = min(height, h - top), min(width, w - left)
    out["img"] = F.crop(sample["img"], top, left, height, width)
    if "seg" in sample:
        out["seg"] = tv_tensors.Mask(sample["seg"].as_subclass(torch.Tensor)[top:top + height, left:left + width])
    off = torch.tensor([left, top, left, top], dtype=torch.float32)
    lim = torch.tensor([width, height, width, height], dtype=torch.float32)
    for key in ("boxes", "ignore_boxes"):
        b = torch.minimum((sample[key].as_subclass(torch.Tensor) - off).clamp(min=0), lim)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        out[key] = _boxes(key, b[keep], (height, width))
        if key == "boxes":
            out["labels"] = sample["labels"][keep]
            out["masks"] = tv_tensors.Mask(F.crop(sample["masks"], top, left, height, width)[keep])
            if recompute_bbox:
                out[key] = _boxes(key, mask_boxes(out["masks"]), (height, width))
    return out


def random_crop_absolute_range(sample: dict, rng, crop_range, recompute_bbox: bool = False) -> dict:
    """mmdet ``RandomCrop(crop_type='absolute_range', crop_size=crop_range, allow_negative_crop=True[,
    recompute_bbox=True])``."""
    h, w = sample["img"].shape[-2:]
    lo, hi = crop_range
    ch = int(rng.integers(min(h, lo), min(h, hi) + 1))
    cw = int(rng.integers(min(w, lo), min(w, hi) + 1))
    top = int(rng.integers(0, max(h - ch, 0) + 1))
    left = int(rng.integers(0, max(w - cw, 0) + 1))
    return crop(sample, top, left, ch, cw, recompute_bbox)


def resize_ratio(sample: dict, rng, scale, ratio_range) -> dict:
    """mmdet ``Resize(img_scale=scale, ratio_range=(lo, hi), keep_ratio=True)`` (``random_sample_ratio``): ratio
    ``lo + rng.random() * (hi - lo)``, scale ``(int(scale[0] * ratio), int(scale[1] * ratio))``, keep-ratio resize."""
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    return resize_keep_ratio(sample, (int(scale[0] * ratio), int(scale[1] * ratio)))


def filter_annotations(sample: dict, min_wh) -> dict:
    """mmdet ``FilterAnnotations(min_gt_bbox_wh=min_wh)`` (``keep_empty=True``): keep the boxes (labels, masks) with
    width ``> min_wh[0]`` and height ``> min_wh[1]``; none left of some: :class:`DroppedSample`."""
    b = sample["boxes"].as_subclass(torch.Tensor)
    if b.shape[0] == 0:
        return sample
    keep = ((b[:, 2] - b[:, 0]) > min_wh[0]) & ((b[:, 3] - b[:, 1]) > min_wh[1])
    if not keep.any():
        raise DroppedSample(f"FilterAnnotations(min_gt_bbox_wh={tuple(min_wh)}) left none of {b.shape[0]} boxes")
    out = dict(sample, labels=sample["labels"][keep], masks=tv_tensors.Mask(sample["masks"][keep]))
    out["boxes"] = _boxes("boxes", b[keep], sample["img"].shape[-2:])
    return out


def pad_to(sample: dict, size) -> dict:
    """mmdet ``Pad(size=(h, w))``: records ``pad_shape`` = (h, w) (the collate pads the normalised image to it)."""
    h, w = sample["img"].shape[-2:]
    ph, pw = int(size[0]), int(size[1])
    if h > ph or w > pw:
        raise ValueError(f"Pad(size={(ph, pw)}) of a {h} x {w} image: the image is larger (mmcv impad refuses it)")
    return dict(sample, pad_shape=(ph, pw))


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


# ------------------------------------------------------------------------------------------------ official pipelines
def apply_ops(sample: dict, rng, ops) -> dict:
    """Run pipeline ops made by :func:`train_ops_from_pipeline`: ``("flip", p)``, ``("resize", scales)``,
    ``("resize_range", scales)``, ``("crop", (lo, hi))``, the large-scale-jitter ops ``("resize_ratio", (scale,
    (lo, hi)))``, ``("crop_recompute", (lo, hi))``, ``("filter_annotations", (w, h))``, ``("pad_to", (h, w))``, ``("autoaugment", (ops_1, ops_2, ...))`` (one policy
    chosen uniformly), ``("pad_seg", size_divisor)``, ``("seg_rescale", factor)``; ``("load_seg", None)`` is a
    marker for the loader (it reads the semantic map). ``("instaboost", params)`` acts on the annotations before
    the masks are rasterised: the loader runs it (:func:`split_annotation_ops`), here it is an error."""
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
        elif op == "crop_recompute":
            sample = random_crop_absolute_range(sample, rng, arg, recompute_bbox=True)
        elif op == "resize_ratio":
            sample = resize_ratio(sample, rng, *arg)
        elif op == "filter_annotations":
            sample = filter_annotations(sample, arg)
        elif op == "pad_to":
            sample = pad_to(sample, arg)
        elif op == "autoaugment":
            sample = apply_ops(sample, rng, arg[int(rng.integers(0, len(arg)))])
        elif op == "pad_seg":
            sample = pad_seg(sample, arg)
        elif op == "seg_rescale":
            sample = seg_rescale(sample, arg)
        elif op == "load_seg":
            pass
        elif op == "instaboost":
            raise ValueError("the 'instaboost' op acts on the COCO annotations before the masks are rasterised; "
                             "it must come first in the ops (see split_annotation_ops)")
        else:
            raise ValueError(f"unknown pipeline op {op!r}")
    return sample


def split_annotation_ops(ops):
    """``(annotation_ops, sample_ops)``: the leading ``instaboost`` ops (run on the image and the parsed COCO
    annotations, :func:`vit_adapter_ds.data.instaboost.apply`) and the rest (:func:`apply_ops`)."""
    ops = list(ops)
    n = 0
    while n < len(ops) and ops[n][0] == "instaboost":
        n += 1
    return ops[:n], ops[n:]


def loads_semantic_seg(ops) -> bool:
    """Whether the ops read semantic maps (``LoadAnnotations(with_seg=True)``)."""
    return any(op == "load_seg" for op, _ in ops)


def official_train_ops(flip_ratio=0.5, scales=MULTI_SCALES, crop_scales=CROP_SCALES, crop_range=(384, 600),
                       final_crop=(1024, 1024)):
    """The ops of :func:`train_transform` (the official Mask R-CNN 3x pipeline by default)."""
    ops = [("flip", flip_ratio),
           ("autoaugment", ([("resize", tuple(scales))],
                            [("resize", tuple(crop_scales)), ("crop", tuple(crop_range)), ("resize", tuple(scales))]))]
    if final_crop is not None:
        ops.append(("crop", tuple(final_crop)))
    return ops
