"""Mapillary Vistas as the official ViT-Adapter Mapillary -> Cityscapes recipe reads it.

What the official files do (czczup/ViT-Adapter, ``segmentation/mmseg_custom/datasets/mapillary.py``,
``configs/_base_/datasets/mapillary_896x896.py``, ``configs/cityscapes/mask2former_beit_adapter_large_896_80k_
mapillary_ss.py``):

* ``MapillaryDataset`` lists the 66 ids of the v1.2 labels (65 classes + 'Unlabeled' = 65, with their palette:
  :data:`~vit_adapter_ds.data.classes.MAPILLARY_CLASSES` / ``MAPILLARY_PALETTE``) and reads
  ``<split>/images/*.jpg`` with the same-stem ``<split>/labels/*.png`` (palette PNGs: the index is the id), without
  reduce-zero-label. The manifest holds exactly these: 66 classes, their palette, the identity label map.
* The train set is ``img_dir=['training/images', 'validation/images']``, ``ann_dir=['training/labels',
  'validation/labels']``: both folders. ``make_shards mapillary`` therefore writes the split ``train`` from
  ``training/`` + ``validation/`` (the default) and, on request (``--splits train val``), ``val`` from
  ``validation/`` alone. The official recipe validates on Cityscapes val (``CityscapesDataset``), not on Mapillary.
* The labels are not mapped by the dataset: the train pipeline's ``MapillaryHack`` step (after
  ``LoadAnnotations``) maps the 66 ids to the 19 Cityscapes train ids (``MAPILLARY_TO_CITYSCAPES``, every other id
  -> 255), so the model predicts the Cityscapes classes. Recipes keep that step; :mod:`~vit_adapter_ds.data.pipeline`
  translates it into the train loader's label remap (``classes.mapillary_hack_label_map``), applied after the
  manifest's map.

The v2.0 download keeps the v1.2 labels in ``<split>/v1.2/labels``; that folder is read when ``<split>/labels`` is
absent (the v2.0 labels, 124 classes, are not what the official recipe uses). Each label is checked before anything
is written and refused with its file named: not a single-channel (gray or palette) PNG of at most 8 bits, another
size than its image, or a value outside 0..65.
"""
from __future__ import annotations

import os

from .. import classes as C
from ..sources import safe_key, source_file, stems
from .label_checks import write_checked
from .registry import Dataset, register_dataset

# the official train set reads both folders (mapillary_896x896.py: img_dir / ann_dir lists)
SPLIT_FOLDERS = {"train": ("training", "validation"), "val": ("validation",)}
MAPILLARY_VALID = tuple(range(len(C.MAPILLARY_CLASSES)))
MAPILLARY_WORDS = "0..65 (the Mapillary Vistas v1.2 ids)"


def _label_dir(root, folder):
    d = os.path.join(root, folder, "labels")
    v12 = os.path.join(root, folder, "v1.2", "labels")
    return v12 if not os.path.isdir(d) and os.path.isdir(v12) else d


def mapillary_samples(root, split, skip_missing=False, follow_symlinks=False):
    """``(key, {'jpg': image, 'seg.png': label})`` of ``<folder>/images/*.jpg`` and the same-stem
    ``<folder>/labels/*.png`` over the split's folders (``train``: ``training`` + ``validation``, as the official
    config; ``val``: ``validation``), sorted by key. An image without its label is an error naming both files (or is
    left out with ``skip_missing``)."""
    samples, missing, keys = [], [], {}
    for folder in SPLIT_FOLDERS[split]:
        images = stems(os.path.join(root, folder, "images"), (".jpg", ".jpeg"), root, follow_symlinks)
        ldir = _label_dir(root, folder)
        if not os.path.isdir(ldir):
            raise FileNotFoundError(f"Mapillary label folder not found: {ldir}")
        for stem, ipath in images.items():
            lpath = os.path.join(ldir, stem + ".png")
            try:
                source_file(lpath, root, follow_symlinks, what="label")
            except FileNotFoundError:
                missing.append((ipath, lpath))
                continue
            key = safe_key(stem)
            if key in keys:
                raise ValueError(f"images {keys[key]} and {ipath} give the same key {key!r}")
            keys[key] = ipath
            samples.append((key, {"jpg": ipath, "seg.png": lpath}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no label, e.g. {missing[0][0]}: {missing[0][1]} not "
                                "found; pass --skip-missing to leave them out")
    if not samples:
        raise FileNotFoundError(f"no image/label pairs in {root}/{{{','.join(SPLIT_FOLDERS[split])}}}")
    return sorted(samples)


@register_dataset("mapillary")
class Mapillary(Dataset):
    """Mapillary Vistas v1.2 as the official ``MapillaryDataset`` (66 ids, identity map); see the module
    docstring for the official ``MapillaryHack`` step that maps them to the 19 Cityscapes classes."""
    task = "segmentation"
    aliases = ("MapillaryDataset",)
    classes = C.MAPILLARY_CLASSES
    palette = C.MAPILLARY_PALETTE
    label_map = "identity"
    evaluator = "miou"
    layout = ("{training,validation}/{images/*.jpg,labels/*.png} (v1.2 labels, 66 ids; v2.0: <folder>/v1.2/labels); "
              "split train = training + validation (the official config), val = validation")
    samples = staticmethod(mapillary_samples)

    @staticmethod
    def write(root, out, split, **kw):
        return write_mapillary(root, out, split, **kw)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        """``make_shards synthetic --layout mapillary``: the synthetic twin in this layout (its ``train`` shards
        hold the training and validation images, as the official config reads them)."""
        return write_synthetic_mapillary(raw_dir, num_train, num_val, seed, size)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--root", required=True, help=f"dataset folder ({cls.layout})")
        parser.add_argument("--splits", nargs="+", default=["train"], choices=list(cls.splits),
                            help="train (default: training + validation, as the official config) and/or val")
        parser.add_argument("--skip-missing", action="store_true", help="leave out images without a label")


def write_mapillary(root, out, split, **kw):
    """Mapillary shards of ``split`` (labels checked first, see the module docstring); returns the manifest."""
    samples = mapillary_samples(root, split, kw.pop("skip_missing", False), kw.pop("follow_symlinks", False))
    return write_checked(Mapillary, samples, out, split, root, MAPILLARY_VALID, MAPILLARY_WORDS, **kw)


# ---------------------------------------------------------------------- the synthetic twin
# synthetic class -> Mapillary id, chosen so that MapillaryHack gives the Cityscapes twin's train ids
# (Road 13 -> road, Car 55 -> car, Person 19 -> person, Building 17, Vegetation 30, Sky 27, Traffic Light 48,
# Bicycle 52); the boundary ring is Unlabeled (65 -> 255)
SYNTHETIC_TO_MAPILLARY = (13, 55, 19, 17, 30, 27, 48, 52)


def write_synthetic_mapillary(root, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic dataset (:mod:`vit_adapter_ds.data.synthetic`) in the Mapillary v1.2 layout under ``root``:
    ``training/images/%06d.jpg`` (``num_train``) and ``validation/images/v%06d.jpg`` (``num_val``) with palette
    PNG labels ``<folder>/labels/<stem>.png`` (the Mapillary palette; synthetic class k -> id
    ``SYNTHETIC_TO_MAPILLARY[k]``, the unlabelled ring -> 65). Returns ``root``."""
    import io

    import numpy as np
    from PIL import Image

    from ..synthetic import _jpeg, _rng, _write, generate_sample

    lut = np.full(256, 65, np.uint8)
    lut[: len(SYNTHETIC_TO_MAPILLARY)] = SYNTHETIC_TO_MAPILLARY
    pal = [v for rgb in C.MAPILLARY_PALETTE for v in rgb]
    for split, n, folder, prefix in (("train", num_train, "training", ""), ("val", num_val, "validation", "v")):
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(os.fspath(root), folder, sub), exist_ok=True)
        for i in range(n):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            lab = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(lut[label]).tobytes())
            lab.putpalette(pal)
            buf = io.BytesIO()
            lab.save(buf, format="PNG")
            _write(os.path.join(os.fspath(root), folder, "images", f"{prefix}{i:06d}.jpg"), _jpeg(img))
            _write(os.path.join(os.fspath(root), folder, "labels", f"{prefix}{i:06d}.png"), buf.getvalue())
    return os.fspath(root)
