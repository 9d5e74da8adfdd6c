"""Pascal Context, the 59-class setting (mmseg's ``PascalContextDataset59``): the PNGs of mmseg's converter hold
0 = background and 1..59, mapped with reduce-zero-label (0 -> 255, v -> v - 1)."""
from __future__ import annotations

import os

from .. import classes as C
from ..sources import safe_key, source_file
from .label_checks import check_label_png, existing, read_split_list
from .registry import Dataset, register_dataset

_CONVERTER = " (the layout of mmseg's tools/dataset_converters/pascal_context.py)"


def voc2010_root(root):
    """``root`` may be ``VOCdevkit/VOC2010``, ``VOCdevkit`` or the folder holding ``VOCdevkit``."""
    for cand in (root, os.path.join(root, "VOC2010"), os.path.join(root, "VOCdevkit", "VOC2010")):
        if os.path.isdir(os.path.join(cand, "JPEGImages")):
            return cand
    raise FileNotFoundError(f"no VOCdevkit/VOC2010/JPEGImages under {root}{_CONVERTER}")


def pascal_context_samples(root, split, skip_missing=False, follow_symlinks=False):
    """The images of ``ImageSets/SegmentationContext/{split}.txt`` with their ``SegmentationClassContext`` PNG
    (checked: single-channel, values 0..59 or 255, the image's size), sorted by key."""
    base = voc2010_root(root)
    ids = read_split_list(os.path.join(base, "ImageSets", "SegmentationContext", f"{split}.txt"), root,
                          follow_symlinks)
    samples, missing, keys = [], [], {}
    for i in ids:
        img = source_file(os.path.join(base, "JPEGImages", i + ".jpg"), root, follow_symlinks, "image")
        lab = existing(os.path.join(base, "SegmentationClassContext", i + ".png"), root, follow_symlinks, "label")
        if lab is None:
            missing.append(os.path.join(base, "SegmentationClassContext", i + ".png"))
            continue
        check_label_png(lab, PASCAL_CONTEXT_59_VALUES, img, _CONVERTER)
        key = safe_key(i)
        if key in keys:
            raise ValueError(f"ids {keys[key]!r} and {i!r} give the same key {key!r}")
        keys[key] = i
        samples.append((key, {"jpg": img, "seg.png": lab}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of the {split} list have no label, e.g. {missing[:3]}; "
                                "pass --skip-missing to leave them out")
    if not samples:
        raise FileNotFoundError(f"no image/label pairs in the {split} list of {base}")
    return sorted(samples)


PASCAL_CONTEXT_59_VALUES = list(range(60)) + [255]


@register_dataset("pascal_context_59")
class PascalContext59(Dataset):
    task = "segmentation"
    aliases = ("PascalContextDataset59",)
    classes = C.PASCAL_CONTEXT_59_CLASSES
    palette = C.PASCAL_CONTEXT_59_PALETTE
    label_map = "reduce_zero_label"
    evaluator = "miou"
    layout = ("VOCdevkit/VOC2010/{JPEGImages/*.jpg, SegmentationClassContext/*.png (0 = background, 1..59), "
              "ImageSets/SegmentationContext/{train,val}.txt}: mmseg's converted layout")
    samples = staticmethod(pascal_context_samples)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        return write_synthetic_pascal_context(raw_dir, num_train, num_val, seed, size)


def write_synthetic_pascal_context(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic images in the converted Pascal Context layout under ``raw_dir/VOCdevkit/VOC2010`` (class ``k``
    -> PNG value ``k + 1``, unlabelled -> 0 = background; one extra image in no list, as VOC2010 has); returns
    that folder."""
    import numpy as np

    from ..synthetic import _jpeg, _png, _rng, _write, generate_sample

    base = os.path.join(os.fspath(raw_dir), "VOCdevkit", "VOC2010")
    for d in ("JPEGImages", "SegmentationClassContext", os.path.join("ImageSets", "SegmentationContext")):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    for split, n, year in (("train", num_train, 2008), ("val", num_val, 2009)):
        ids = []
        for i in range(n + (split == "val")):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            name = f"{year}_{i + 1:06d}"
            _write(os.path.join(base, "JPEGImages", name + ".jpg"), _jpeg(img))
            if i < n:
                ids.append(name)
                lab = np.where(label == 255, 0, label.astype(np.int32) + 1).astype(np.uint8)
                _write(os.path.join(base, "SegmentationClassContext", name + ".png"), _png(lab))
        with open(os.path.join(base, "ImageSets", "SegmentationContext", f"{split}.txt"), "w") as f:
            f.writelines(i + "\n" for i in ids)
    return base
