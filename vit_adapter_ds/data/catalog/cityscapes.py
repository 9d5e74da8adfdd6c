"""Cityscapes (19 train ids, mmseg's converted layout).

Layout (what mmseg's ``CityscapesDataset`` reads after ``tools/convert_datasets/cityscapes.py``, which the
official README asks for): ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` beside
``gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png`` (8-bit single-channel, 0..18 = the 19 classes of
:data:`~vit_adapter_ds.data.classes.CITYSCAPES_CLASSES`, 255 = ignore). Every image must have its label (or is left
out with ``--skip-missing``); labels are stored as they are (identity label map). Before anything is written each
label is checked, and refused with its file named: a label that is not a single-channel (gray or palette) PNG of at
most 8 bits, one of another size than its image, or one holding a value outside 0..18 and 255.
"""
from __future__ import annotations

import os

import numpy as np

from .. import classes as C
from ..sources import safe_key, source_file
from .label_checks import write_checked
from .registry import Dataset, register_dataset

IMG_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"


# ---------------------------------------------------------------------- Cityscapes
CITYSCAPES_VALID = tuple(range(19)) + (255,)
CITYSCAPES_WORDS = "0..18 and 255 (Cityscapes train ids, 255 = ignore)"


def cityscapes_samples(root, split, skip_missing=False, follow_symlinks=False):
    """``(key, {'png': image, 'seg.png': label})`` of ``leftImg8bit/<split>/**/*_leftImg8bit.png`` and the
    same-named ``gtFine/<split>/**/*_gtFine_labelTrainIds.png`` (mmseg's suffix pairing), sorted by key (the name
    without the suffix, e.g. ``aachen_000000_000019``). An image without its label is an error naming both files
    (or is left out with ``skip_missing``)."""
    img_root = os.path.join(root, "leftImg8bit", split)
    ann_root = os.path.join(root, "gtFine", split)
    if not os.path.isdir(img_root):
        raise FileNotFoundError(f"Cityscapes image folder not found: {img_root}")
    samples, missing, keys = [], [], {}
    for dirpath, dirnames, filenames in os.walk(img_root):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.endswith(IMG_SUFFIX):
                continue
            ipath = source_file(os.path.join(dirpath, fn), root, follow_symlinks, what="image")
            rel = os.path.relpath(os.path.join(dirpath, fn[: -len(IMG_SUFFIX)]), img_root)
            lpath = os.path.join(ann_root, rel + LABEL_SUFFIX)
            try:
                source_file(lpath, root, follow_symlinks, what="label")
            except FileNotFoundError:
                missing.append((ipath, lpath))
                continue
            key = safe_key(os.path.basename(rel))
            if key in keys:
                raise ValueError(f"images {keys[key]} and {ipath} give the same key {key!r}")
            keys[key] = ipath
            samples.append((key, {"png": ipath, "seg.png": lpath}))
    if missing and not skip_missing:
        img, lab = missing[0]
        hint = ""
        if os.path.exists(lab.replace(LABEL_SUFFIX, "_gtFine_labelIds.png")):
            hint = (" (the *_gtFine_labelIds.png exist: convert them to train ids with mmseg's "
                    "tools/convert_datasets/cityscapes.py, as the official README says)")
        raise FileNotFoundError(f"{len(missing)} image(s) have no label, e.g. {img}: {lab} not found{hint}; pass "
                                "--skip-missing to leave them out")
    if not samples:
        raise FileNotFoundError(f"no *{IMG_SUFFIX} images with labels under {img_root}")
    return sorted(samples)


@register_dataset("cityscapes")
class Cityscapes(Dataset):
    """Cityscapes, 19 classes as mmseg's ``CityscapesDataset`` (classes, palette, ``*_gtFine_labelTrainIds.png``,
    255 = ignore)."""
    task = "segmentation"
    aliases = ("CityscapesDataset",)
    classes = C.CITYSCAPES_CLASSES
    palette = C.CITYSCAPES_PALETTE
    label_map = "identity"
    evaluator = "miou"
    layout = ("leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, gtFine/{train,val}/<city>/"
              "*_gtFine_labelTrainIds.png (mmseg's tools/convert_datasets/cityscapes.py)")
    samples = staticmethod(cityscapes_samples)

    @staticmethod
    def write(root, out, split, **kw):
        return write_cityscapes(root, out, split, **kw)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        """``make_shards synthetic --layout cityscapes``: the synthetic twin in this layout."""
        return write_synthetic_cityscapes(raw_dir, num_train, num_val, seed, size)


def write_cityscapes(root, out, split, **kw):
    """Cityscapes shards of ``split`` (labels checked first, see the module docstring); returns the manifest."""
    samples = cityscapes_samples(root, split, kw.pop("skip_missing", False), kw.pop("follow_symlinks", False))
    return write_checked(Cityscapes, samples, out, split, root, CITYSCAPES_VALID, CITYSCAPES_WORDS, **kw)


# ---------------------------------------------------------------------- the synthetic twin
# synthetic class -> Cityscapes train id (background = road; 255, the boundary ring, stays ignore)
SYNTHETIC_TO_CITYSCAPES = (0, 13, 11, 2, 8, 10, 6, 18)
SYNTHETIC_CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt",)}


def write_synthetic_cityscapes(root, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic dataset (:mod:`vit_adapter_ds.data.synthetic`) in the converted Cityscapes layout under
    ``root``: ``leftImg8bit/<split>/<city>/<city>_000000_%06d_leftImg8bit.png`` (RGB PNG) and the
    ``gtFine/..._gtFine_labelTrainIds.png`` (8-bit gray: synthetic class k -> train id
    ``SYNTHETIC_TO_CITYSCAPES[k]``, 255 kept); images alternate over the split's cities. Returns ``root``."""
    import torch
    from torchvision.io import encode_png

    from ..synthetic import _png, _rng, _write, generate_sample

    lut = np.full(256, 255, np.uint8)
    lut[: len(SYNTHETIC_TO_CITYSCAPES)] = SYNTHETIC_TO_CITYSCAPES
    for split, n in (("train", num_train), ("val", num_val)):
        cities = SYNTHETIC_CITIES[split]
        for i in range(n):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            city = cities[i % len(cities)]
            name = f"{city}_000000_{i:06d}"
            for sub, suffix, data in (
                    ("leftImg8bit", IMG_SUFFIX,
                     encode_png(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)).numpy().tobytes()),
                    ("gtFine", LABEL_SUFFIX, _png(lut[label]))):
                d = os.path.join(os.fspath(root), sub, split, city)
                os.makedirs(d, exist_ok=True)
                _write(os.path.join(d, name + suffix), data)
    return os.fspath(root)
