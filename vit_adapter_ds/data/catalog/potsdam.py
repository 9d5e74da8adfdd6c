"""ISPRS Potsdam (6 classes), in the layout of mmseg's ``tools/dataset_converters/potsdam.py``, which the official
README says to run on ``2_Ortho_RGB.zip`` and ``5_Labels_all_noBoundary.zip``: 512 x 512 tiles
``img_dir/{train,val}/*.png`` with same-name labels ``ann_dir/{train,val}/*.png``. The converter turns the RGB-coded
labels into 1..6 (impervious surface, building, low vegetation, tree, car, clutter: the official ``potsdam.py``
classes and palette) and every other colour into 0, which the official ``reduce_zero_label=True`` ignores. Labels
are checked when written: an RGB-coded label (not converted) or a value above 6 is refused with the file named."""
from __future__ import annotations

import os

from .. import classes as C
from ..sources import stems
from .label_checks import check_label_png
from .registry import Dataset, register_dataset

_HINT = (" (run mmseg's tools/dataset_converters/potsdam.py, as the official README says: it writes 1..6 for the "
         "six classes, 0 for other colours)")


def potsdam_samples(root, split, skip_missing=False, follow_symlinks=False):
    """``[(key, {'png': tile, 'seg.png': its label})]`` of ``split``, sorted by key; labels checked."""
    from ..sources import pair

    images = stems(os.path.join(root, "img_dir", split), (".png",), root, follow_symlinks)
    masks = stems(os.path.join(root, "ann_dir", split), (".png",), root, follow_symlinks)
    missing = [os.path.join(root, "ann_dir", split, s + ".png") for s in images if s not in masks]
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no label, e.g. {missing[:3]}; pass --skip-missing to "
                                "leave them out")
    samples = pair(images, masks, skip_missing=True)
    for _, files in samples:
        check_label_png(files["seg.png"], POTSDAM_VALUES, files["png"], _HINT)
    return samples


POTSDAM_VALUES = list(range(7)) + [255]


@register_dataset("potsdam")
class Potsdam(Dataset):
    task = "segmentation"
    aliases = ("PotsdamDataset",)
    classes = C.POTSDAM_CLASSES
    palette = C.POTSDAM_PALETTE
    label_map = "reduce_zero_label"
    evaluator = "miou"
    layout = "img_dir/{train,val}/*.png, ann_dir/{train,val}/*.png (0..6): mmseg's converted layout"
    samples = staticmethod(potsdam_samples)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        return write_synthetic_potsdam(raw_dir, num_train, num_val, seed, size)


def write_synthetic_potsdam(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic images in the converted Potsdam layout in ``raw_dir`` (PNG tiles named as the converter's
    ``{i}_{j}_{x0}_{y0}_{x1}_{y1}``; synthetic classes 0..6 -> 1, 2, 2, 3, 4, 5, 6, class 7 and unlabelled -> 0);
    returns ``raw_dir``."""
    import numpy as np
    from PIL import Image

    from ..synthetic import _png, _rng, _write, generate_sample

    base = os.fspath(raw_dir)
    lut = np.zeros(256, np.uint8)
    lut[:8] = (1, 2, 2, 3, 4, 5, 6, 0)
    h, w = int(size[0]), int(size[1])
    for split, n, tile in (("train", num_train, "2_10"), ("val", num_val, "2_13")):
        idir, adir = os.path.join(base, "img_dir", split), os.path.join(base, "ann_dir", split)
        os.makedirs(idir, exist_ok=True)
        os.makedirs(adir, exist_ok=True)
        for i in range(n):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            name = f"{tile}_{i * w}_0_{(i + 1) * w}_{h}"
            Image.fromarray(img).save(os.path.join(idir, name + ".png"))
            _write(os.path.join(adir, name + ".png"), _png(lut[label]))
    return base
