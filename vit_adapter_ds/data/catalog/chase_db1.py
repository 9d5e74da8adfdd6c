"""CHASE_DB1 retinal vessels (2 classes), in the layout of mmseg's ``tools/dataset_converters/chase_db1.py``, which
the official README says to run: ``images/{training,validation}/Image_XXY.png`` with the first observer's
``annotations/{..}/Image_XXY_1stHO.png`` (0 = background, 1 = vessel; the ``_2ndHO`` files beside them are not
read, as mmseg's ``ChaseDB1Dataset`` reads ``seg_map_suffix='_1stHO.png'``). Labels are checked when written: a
0/255 map (the original annotation, before the converter divides by 128) is refused rather than read as ignore."""
from __future__ import annotations

import os

from .. import classes as C
from ..sources import pair, stems
from .label_checks import check_label_png
from .registry import Dataset, register_dataset

_HINT = " (run mmseg's tools/dataset_converters/chase_db1.py on CHASEDB1.zip: it writes 0 = background, 1 = vessel)"


def chase_db1_samples(root, split, skip_missing=False, follow_symlinks=False):
    """``[(key, {'png': image, 'seg.png': its _1stHO label})]`` of ``split``, sorted by key; labels checked."""
    if os.path.isdir(os.path.join(root, "CHASE_DB1")):
        root = os.path.join(root, "CHASE_DB1")
    sub = {"train": "training", "val": "validation"}[split]
    images = stems(os.path.join(root, "images", sub), (".png",), root, follow_symlinks)
    pngs = stems(os.path.join(root, "annotations", sub), (".png",), root, follow_symlinks)
    masks = {s[: -len("_1stHO")]: p for s, p in pngs.items() if s.endswith("_1stHO")}
    missing = [os.path.join(root, "annotations", sub, s + "_1stHO.png") for s in images if s not in masks]
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no label, e.g. {missing[:3]}; pass --skip-missing to "
                                "leave them out")
    samples = pair(images, masks, skip_missing=True)
    for _, files in samples:
        check_label_png(files["seg.png"], [0, 1], files["png"], _HINT)
    return samples


@register_dataset("chase_db1")
class ChaseDB1(Dataset):
    task = "segmentation"
    aliases = ("ChaseDB1Dataset",)
    classes = C.CHASE_DB1_CLASSES
    palette = C.CHASE_DB1_PALETTE
    label_map = "identity"
    evaluator = "miou"
    layout = ("CHASE_DB1/images/{training,validation}/*.png, annotations/{..}/*_1stHO.png (0/1): mmseg's "
              "converted layout")
    samples = staticmethod(chase_db1_samples)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        return write_synthetic_chase_db1(raw_dir, num_train, num_val, seed, size)


def write_synthetic_chase_db1(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic images in the converted CHASE_DB1 layout under ``raw_dir/CHASE_DB1`` (PNG images; classes 4, 5
    and 7 -> vessel 1, the rest and unlabelled -> 0; a different ``_2ndHO`` map beside each, which must not be
    read); returns that folder."""
    import numpy as np
    from PIL import Image

    from ..synthetic import _png, _rng, _write, generate_sample

    base = os.path.join(os.fspath(raw_dir), "CHASE_DB1")
    k = 0
    for split, n, sub in (("train", num_train, "training"), ("val", num_val, "validation")):
        idir, adir = os.path.join(base, "images", sub), os.path.join(base, "annotations", sub)
        os.makedirs(idir, exist_ok=True)
        os.makedirs(adir, exist_ok=True)
        for i in range(n):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            k += 1
            name = f"Image_{(k + 1) // 2:02d}{'L' if k % 2 else 'R'}"
            vessel = np.isin(label, (4, 5, 7)).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(idir, name + ".png"))
            _write(os.path.join(adir, name + "_1stHO.png"), _png(vessel))
            _write(os.path.join(adir, name + "_2ndHO.png"), _png(1 - vessel))
    return base
