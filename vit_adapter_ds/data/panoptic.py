"""COCO panoptic ground truth: the segment id map of a panoptic PNG and the training targets of mmdet 2.22's
``LoadPanopticAnnotations`` (+ ``CocoPanopticDataset._parse_ann_info``) that Mask2Former's head consumes.

A COCO panoptic PNG is RGB; the segment id of a pixel is ``R + 256 G + 256^2 B`` (0 = void / unlabelled); each id
other than 0 is one entry of the image's ``segments_info`` (``{"id", "category_id", "iscrowd", "bbox", "area"}``).
"""
from __future__ import annotations

import numpy as np

IGNORE = 255  # gt_semantic_seg's void / unlabelled value


def rgb2id(rgb) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 segment ids ``R + 256 G + 256^2 B``."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a panoptic PNG must decode to (H, W, 3) RGB, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids) -> np.ndarray:
    """(H, W) segment ids (< 2^24) -> (H, W, 3) uint8 RGB (the inverse of :func:`rgb2id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("panoptic segment ids must lie in [0, 2^24)")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def decode_panoptic_png(data) -> np.ndarray:
    """Encoded panoptic PNG bytes -> (H, W) int64 segment ids (checked and decoded by the loader's PNG path)."""
    from .decode import decode_image

    return rgb2id(decode_image(data, "pan.png").permute(1, 2, 0).numpy())


def panoptic_targets(id_map, segments_info, cat2label, thing_ids):
    """mmdet 2.22's panoptic training targets of one image.

    ``id_map``: (H, W) segment ids; ``cat2label``: ``{category_id: label}`` (the order of the annotation file's
    categories, things first); ``thing_ids``: the category ids with ``isthing``. As ``CocoPanopticDataset.
    _parse_ann_info``: a segment with ``area <= 0`` or a bbox side ``< 1`` is dropped altogether; a thing that is not
    ``iscrowd`` gives a box (xyxy from its ``bbox``), a label and a mask; a crowd thing gives none. As
    ``LoadPanopticAnnotations``: ``gt_semantic_seg`` holds, for every kept segment (things and crowd things
    included), its label on its pixels, 255 elsewhere (void, dropped segments). Mask2Former's
    ``preprocess_panoptic_gt`` then takes its stuff targets from the labels ``>= num_things`` of this map only.

    Returns ``{"gt_bboxes": (n, 4) float32, "gt_labels": (n,) int64, "gt_masks": (n, H, W) uint8,
    "gt_semantic_seg": (H, W) uint8}``."""
    id_map = np.asarray(id_map)
    h, w = id_map.shape
    boxes, labels, masks = [], [], []
    seg = np.full((h, w), IGNORE, np.uint8)
    for s in segments_info:
        x, y, bw, bh = s["bbox"]
        if s["area"] <= 0 or bw < 1 or bh < 1:
            continue
        if s["category_id"] not in cat2label:
            raise KeyError(f"segment {s['id']}: unknown category_id {s['category_id']}")
        label = cat2label[s["category_id"]]
        mask = id_map == s["id"]
        seg[mask] = label
        if s["category_id"] in thing_ids and not s.get("iscrowd", 0):
            boxes.append([x, y, x + bw, y + bh])
            labels.append(label)
            masks.append(mask)
    return {"gt_bboxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "gt_labels": np.asarray(labels, np.int64),
            "gt_masks": np.asarray(masks, np.uint8).reshape(-1, h, w),
            "gt_semantic_seg": seg}


def decode_panoptic_sample(sample, categories):
    """A panoptic shard sample ``{ext: bytes}`` (``jpg``/``png``, ``pan.png``, ``json``) and the manifest's
    ``categories`` -> ``{"img": uint8 (3, H, W), "image": <COCO image entry>, "segments_info": [...],
    "gt_pan_ids": (H, W) int64, **panoptic_targets(...)}``. Raises :class:`~vit_adapter_ds.data.decode.BadSample`
    for a missing or corrupt member, a size mismatch, a PNG segment id not in ``segments_info`` or an unknown
    category id."""
    import json

    from .decode import BadSample, decode_image, image_member

    ext = image_member(sample)
    missing = [m for m in ("pan.png", "json") if m not in sample] + ([] if ext else ["image"])
    if missing:
        raise BadSample(f"panoptic sample without {missing} (has {sorted(sample)})")
    try:
        rec = json.loads(bytes(sample["json"]))
        segments = list(rec["segments_info"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadSample(f"corrupt json member: {e}") from None
    img = decode_image(sample[ext], ext)
    try:
        ids = decode_panoptic_png(sample["pan.png"])
    except ValueError as e:
        raise BadSample(f"panoptic PNG: {e}") from None
    if tuple(img.shape[1:]) != ids.shape:
        raise BadSample(f"image size {tuple(img.shape[1:])} != panoptic PNG size {ids.shape}")
    cat2label = {c["id"]: i for i, c in enumerate(categories)}
    try:
        listed = {s["id"] for s in segments}
        extra = sorted(set(np.unique(ids).tolist()) - listed - {0})
        if extra:
            raise BadSample(f"panoptic PNG segment ids {extra[:8]} not in segments_info")
        targets = panoptic_targets(ids, segments, cat2label, {c["id"] for c in categories if c["isthing"]})
    except (KeyError, TypeError, ValueError) as e:
        raise BadSample(f"bad segments_info: {e}") from None
    return {"img": img, "image": rec.get("image"), "segments_info": segments, "gt_pan_ids": ids, **targets}
