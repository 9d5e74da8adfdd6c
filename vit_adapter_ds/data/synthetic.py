"""A built-in synthetic segmentation/detection dataset, written in the real datasets' folder layouts.

Each image (default 512x683, H x W, JPEG quality 90) shows a textured background and 3-8 shapes drawn one after
another (later shapes occlude earlier ones). Every class has its own shape type, colour and stripe texture, and
some classes share a hue and differ only in texture or shape, so a model has to learn more than a colour lookup.
Per-image brightness jitter and Gaussian noise are added; a 2-pixel ring around each shape is left unlabelled
(ignore), as object boundaries are in ADE20K. Everything is a pure function of ``seed`` (numpy ``default_rng``
seeded with ``[seed, split, index]``), so two calls give byte-identical files.

Classes (``SYNTHETIC_CLASSES``, train ids 0..7): 0 is the background, 1..7 are objects.

Layouts written:

* :func:`write_synthetic_ade`: ``ADEChallengeData2016/{images,annotations}/{training,validation}/`` with
  ``ADE_{train,val}_%08d.{jpg,png}``; PNG value 0 = unlabelled, ``k + 1`` = class ``k`` (reduce-zero-label, as
  ADE20K).
* :func:`write_synthetic_coco`: ``images/{train2017,val2017}/%012d.jpg``, COCO-Stuff maps
  ``stuffthingmaps_trainval2017/{train2017,val2017}/%012d.png`` holding original COCO-Stuff ids (class ``k`` ->
  ``SYNTHETIC_TO_COCO_STUFF_ID[k]``, 255 = unlabelled), and COCO instance annotations
  ``annotations/instances_{train2017,val2017}.json`` (one instance per visible object shape, RLE masks,
  category ids 1..7 = synthetic classes 1..7). ``make_shards synthetic --layout coco`` stores the COCO-Stuff maps
  in the detection shards as semantic maps (HTC++'s ``gt_semantic_seg``): inside each instance the map holds its
  class's COCO-Stuff id, 255 on the boundary ring, the background's id elsewhere.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from torchvision.io import encode_jpeg, encode_png

SYNTHETIC_CLASSES = (
    "background", "red disc", "red striped disc", "green box", "blue triangle", "blue ellipse",
    "yellow diamond", "grey ring",
)
SYNTHETIC_PALETTE = [
    [110, 120, 100], [200, 40, 40], [200, 40, 40], [40, 170, 60], [40, 60, 200], [40, 60, 200],
    [220, 200, 40], [150, 150, 150],
]
# per class: (shape, stripe period in px (0 = none), stripe angle in degrees, stripe amplitude)
_STYLE = [
    ("bg", 23.0, 30.0, 12.0),
    ("disc", 0.0, 0.0, 0.0),
    ("disc", 6.0, 45.0, 45.0),
    ("box", 9.0, 0.0, 25.0),
    ("triangle", 0.0, 0.0, 0.0),
    ("ellipse", 5.0, 90.0, 40.0),
    ("diamond", 12.0, 135.0, 30.0),
    ("ring", 0.0, 0.0, 0.0),
]
# a few ids that exercise the COCO-Stuff id -> train id mapping (12 -> 11, 26 -> 24, 181 -> 170, ...)
SYNTHETIC_TO_COCO_STUFF_ID = (0, 12, 26, 45, 91, 118, 150, 181)


def _texture(yy, xx, period, angle_deg, amp):
    if period <= 0:
        return 0.0
    a = np.deg2rad(angle_deg)
    return amp * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)


def _shape_mask(kind, yy, xx, cy, cx, r, rng):
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy * dy + dx * dx <= r * r
    if kind == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "box":
        ar = rng.uniform(0.5, 1.5)
        return (np.abs(dy) <= r * ar) & (np.abs(dx) <= r / ar)
    if kind == "ellipse":
        ar = rng.uniform(1.6, 2.6)
        return (dy / r) ** 2 + (dx / (r * ar)) ** 2 <= 1.0
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if kind == "triangle":  # apex up, base at cy + r/2
        return (dy <= r / 2) & (dy >= -r) & (np.abs(dx) <= (dy + r) / np.sqrt(3))
    raise ValueError(kind)


def generate_sample(rng, size=(512, 683)):
    """One synthetic sample.

    Returns ``(img, label, instances)``: ``img`` uint8 (H, W, 3) RGB; ``label`` uint8 (H, W) with train ids
    0..7 and 255 = unlabelled; ``instances`` a list of ``(class_id, bool mask (H, W))`` of the visible part of each
    object shape (class_id in 1..7), in drawing order.
    """
    h, w = int(size[0]), int(size[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    base = np.array(SYNTHETIC_PALETTE[0], np.float32) + rng.uniform(-15, 15, 3)
    grad = (yy / h - 0.5) * rng.uniform(-40, 40) + (xx / w - 0.5) * rng.uniform(-40, 40)
    img[:] = base + (grad + _texture(yy, xx, *_STYLE[0][1:]))[..., None]
    label = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1, np.int32)
    n_shapes = int(rng.integers(3, 9))
    shapes = []
    for i in range(n_shapes):
        c = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        kind, period, angle, amp = _STYLE[c]
        r = rng.uniform(0.08, 0.25) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        m = _shape_mask(kind, yy, xx, cy, cx, r, rng)
        if not m.any():
            continue
        colour = np.array(SYNTHETIC_PALETTE[c], np.float32) + rng.uniform(-20, 20, 3)
        shade = colour + _texture(yy[m], xx[m], period, angle + rng.uniform(-10, 10), amp)[..., None] \
            if period > 0 else colour
        img[m] = shade
        label[m] = c
        owner[m] = len(shapes)
        shapes.append((c, m))
    # 2-pixel unlabelled ring at every shape boundary (where the owning shape changes)
    edge = np.zeros((h, w), bool)
    edge[:-1] |= owner[:-1] != owner[1:]
    edge[1:] |= owner[:-1] != owner[1:]
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    edge[:, 1:] |= owner[:, :-1] != owner[:, 1:]
    label[edge] = 255
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0.0, 6.0, img.shape)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    instances = []
    for i, (c, _) in enumerate(shapes):
        vis = owner == i
        if vis.sum() >= 16:
            instances.append((c, vis))
    return img, label, instances


def _jpeg(img):
    return encode_jpeg(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), quality=90).numpy().tobytes()


def _png(label):
    return encode_png(torch.from_numpy(np.ascontiguousarray(label))[None]).numpy().tobytes()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _rng(seed, split, index):
    return np.random.default_rng([int(seed), {"train": 0, "val": 1}[split], int(index)])


def write_synthetic_ade(root, num_train, num_val, seed=0, size=(512, 683)):
    """Write the synthetic dataset in the ADE20K layout under ``root/ADEChallengeData2016``; return that path.

    Annotation PNGs hold 0 = unlabelled and ``k + 1`` for class ``k`` (decode with reduce-zero-label).
    """
    base = os.path.join(os.fspath(root), "ADEChallengeData2016")
    for split, n, sub, prefix in (("train", num_train, "training", "ADE_train"),
                                  ("val", num_val, "validation", "ADE_val")):
        idir = os.path.join(base, "images", sub)
        adir = os.path.join(base, "annotations", sub)
        os.makedirs(idir, exist_ok=True)
        os.makedirs(adir, exist_ok=True)
        for i in range(n):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            ade = np.where(label == 255, 0, label.astype(np.int32) + 1).astype(np.uint8)
            name = f"{prefix}_{i + 1:08d}"
            _write(os.path.join(idir, name + ".jpg"), _jpeg(img))
            _write(os.path.join(adir, name + ".png"), _png(ade))
    return base


def _rle(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def write_synthetic_coco(root, num_train, num_val, seed=0, size=(512, 683)):
    """Write the synthetic dataset in the COCO / COCO-Stuff-164k layouts under ``root``; return ``root``.

    Writes ``images/{train2017,val2017}/*.jpg``, ``stuffthingmaps_trainval2017/{train2017,val2017}/*.png``
    (original COCO-Stuff ids, see ``SYNTHETIC_TO_COCO_STUFF_ID``) and
    ``annotations/instances_{train2017,val2017}.json``.
    """
    root = os.fspath(root)
    lut = np.full(256, 255, np.uint8)
    lut[: len(SYNTHETIC_TO_COCO_STUFF_ID)] = SYNTHETIC_TO_COCO_STUFF_ID
    categories = [{"id": c, "name": SYNTHETIC_CLASSES[c], "supercategory": "shape"}
                  for c in range(1, len(SYNTHETIC_CLASSES))]
    for split, n, sub in (("train", num_train, "train2017"), ("val", num_val, "val2017")):
        idir = os.path.join(root, "images", sub)
        sdir = os.path.join(root, "stuffthingmaps_trainval2017", sub)
        adir = os.path.join(root, "annotations")
        for d in (idir, sdir, adir):
            os.makedirs(d, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, label, inst = generate_sample(_rng(seed, split, i), size)
            image_id = (1 if split == "train" else 500000) + i
            name = f"{image_id:012d}"
            _write(os.path.join(idir, name + ".jpg"), _jpeg(img))
            _write(os.path.join(sdir, name + ".png"), _png(lut[label]))
            images.append({"id": image_id, "file_name": name + ".jpg", "height": img.shape[0],
                           "width": img.shape[1]})
            for c, m in inst:
                ys, xs = np.nonzero(m)
                x0, y0 = int(xs.min()), int(ys.min())
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c,
                             "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                             "area": int(m.sum()), "iscrowd": 0, "segmentation": _rle(m)})
        with open(os.path.join(adir, f"instances_{sub}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return root
