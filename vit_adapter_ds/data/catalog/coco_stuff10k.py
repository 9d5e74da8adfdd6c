"""COCO-Stuff-10k (the 10k split: 9,000 train / 1,000 test images; 171 classes after mmseg's conversion).

Read as distributed (``cocostuff-10k-v1.1.zip``): ``images/*.jpg``, ``annotations/*.mat`` (key ``'S'``: 0 =
unlabelled, COCO category ids 1..182) and ``imageLists/{train,test}.txt``. Each ``.mat`` is converted when written
as mmseg's ``tools/dataset_converters/coco_stuff10k.py`` does (``clsID_to_trID``: id -> 0..171, 0 staying 0) and
stored as an 8-bit PNG; the manifest's label map is then reduce-zero-label, as the official configs'
``reduce_zero_label=True``: train id = converted id - 1, unlabelled -> 255. The 11 ids that mmseg's table lacks (12,
26, 29, 30, 45, 66, 68, 69, 71, 83, 91: COCO ids without annotations, which its converter would leave unchanged and
so merge into other classes) and values above 182 are refused with the file named. mmseg's converted layout
(``images/{train2014,test2014}/*.jpg``, ``annotations/{train2014,test2014}/*_labelTrainIds.png``) is read too.

Split names: ``train`` and ``val``; ``val`` is the 1,000-image test list, which the official configs use for both
``val`` and ``test``.

Recipe type: the official configs name mmseg's ``COCOStuffDataset``, one class for the 164k and the 10k sets; here
that name is the ``cocostuff`` (164k) entry's alias, whose classes, palette, ignore index and evaluator are this
entry's, so an official 10k recipe reading these shards needs no other name (the shards carry their own label map).
This entry is ``coco_stuff10k`` (``make_shards coco_stuff10k``; a recipe may name it too).
"""
from __future__ import annotations

import os

import numpy as np

from .. import classes as C
from ..sources import safe_key, source_file, stems
from .label_checks import check_label_png, check_same_size, label_values, png_bytes, read_split_list
from .registry import Dataset, register_dataset

_HINT = " (COCO-Stuff-10k v1.1 annotations/*.mat: 0 = unlabelled, COCO-Stuff ids 1..182)"


def mat_to_converted_lut():
    """256-entry table of mmseg's COCO-Stuff-10k converter: ``.mat`` id -> converted id (0 -> 0, the 171 ids in
    use -> 1..171); every other value -> -1 (refused)."""
    lut = np.full(256, -1, np.int64)
    lut[0] = 0
    for train_id, orig in enumerate(C.COCO_STUFF_IDS):  # the 164k maps' 0-based ids are the .mat ids - 1
        lut[orig + 1] = train_id + 1
    return lut


_LUT = mat_to_converted_lut()
_MAT_VALUES = np.flatnonzero(_LUT >= 0).tolist()


def read_mat_label(path):
    """The ``'S'`` array of a COCO-Stuff-10k ``.mat`` file converted to mmseg's ids (uint8 0..171); a file without
    ``'S'``, not 2-D, not integral or with an id outside mmseg's table is refused with the file named."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # noqa: BLE001  (scipy raises ValueError / TypeError / MatReadError on bad files)
        raise ValueError(f"label {path} cannot be read as a .mat file: {type(e).__name__}: {e}") from e
    if "S" not in mat:
        raise ValueError(f"label {path} has no key 'S' (keys: {sorted(k for k in mat if not k.startswith('__'))})"
                         f"{_HINT}")
    s = np.asarray(mat["S"])
    if s.ndim != 2:
        raise ValueError(f"label {path}: 'S' has shape {s.shape}, expected a 2-D label map{_HINT}")
    if s.dtype.kind == "f" and s.size and np.array_equal(s, np.round(s)):
        s = s.astype(np.int64)
    label_values(s, path, _MAT_VALUES, _HINT)
    return _LUT[s.astype(np.int64)].astype(np.uint8)


def coco_stuff10k_samples(root, split, skip_missing=False, follow_symlinks=False):
    """``[(key, {'jpg': path, 'seg.png': path or PNG bytes})]`` of ``split``, sorted by key (see the module
    docstring for the two layouts)."""
    if not os.path.isdir(os.path.join(root, "imageLists")) and \
            os.path.isdir(os.path.join(root, "annotations", "train2014")):
        return _converted_samples(root, split, skip_missing, follow_symlinks)
    ids = read_split_list(os.path.join(root, "imageLists", {"train": "train", "val": "test"}[split] + ".txt"), root,
                          follow_symlinks)
    samples, missing, keys = [], [], {}
    for i in ids:
        img = source_file(os.path.join(root, "images", i + ".jpg"), root, follow_symlinks, "image")
        mat = os.path.join(root, "annotations", i + ".mat")
        if not os.path.lexists(mat):
            missing.append(mat)
            continue
        label = read_mat_label(source_file(mat, root, follow_symlinks, "label"))
        check_same_size(img, (label.shape[1], label.shape[0]), mat)
        key = safe_key(i)
        if key in keys:
            raise ValueError(f"ids {keys[key]!r} and {i!r} give the same key {key!r}")
        keys[key] = i
        samples.append((key, {"jpg": img, "seg.png": png_bytes(label)}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of the {split} list have no label, e.g. {missing[:3]}; "
                                "pass --skip-missing to leave them out")
    if not samples:
        raise FileNotFoundError(f"no image/label pairs in the {split} list of {root}")
    return sorted(samples)


def _converted_samples(root, split, skip_missing, follow_symlinks):
    """mmseg's converted layout: ``images/{train2014,test2014}/*.jpg`` with ``annotations/.../*_labelTrainIds.png``
    (converted ids 0..171, checked)."""
    from ..sources import pair

    sub = {"train": "train2014", "val": "test2014"}[split]
    images = stems(os.path.join(root, "images", sub), (".jpg", ".jpeg"), root, follow_symlinks)
    pngs = stems(os.path.join(root, "annotations", sub), (".png",), root, follow_symlinks)
    masks = {s[: -len("_labelTrainIds")]: p for s, p in pngs.items() if s.endswith("_labelTrainIds")}
    samples = pair(images, masks, skip_missing)
    for _, files in samples:
        img = next(p for e, p in files.items() if e != "seg.png")
        check_label_png(files["seg.png"], list(range(172)) + [255], img,
                        " (mmseg's tools/dataset_converters/coco_stuff10k.py writes 0..171)")
    return samples


@register_dataset("coco_stuff10k")
class COCOStuff10k(Dataset):
    task = "segmentation"
    aliases = ()  # the official 'COCOStuffDataset' is the cocostuff entry's alias: same classes, see the docstring
    classes = C.COCO_STUFF_CLASSES
    palette = None  # the cocostuff (164k) entry's: the same 171 classes
    label_map = "reduce_zero_label"
    evaluator = "miou"
    layout = ("images/*.jpg, annotations/*.mat ('S'), imageLists/{train,test}.txt (as distributed; val = test), or "
              "mmseg's converted images/{train2014,test2014}, annotations/{..}/*_labelTrainIds.png")
    samples = staticmethod(coco_stuff10k_samples)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        return write_synthetic_coco_stuff10k(raw_dir, num_train, num_val, seed, size)


def write_synthetic_coco_stuff10k(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic images in the distributed COCO-Stuff-10k layout in ``raw_dir`` (class ``k`` ->
    ``.mat`` id ``SYNTHETIC_TO_COCO_STUFF_ID[k] + 1`` as uint16, unlabelled -> 0); returns that folder."""
    from scipy.io import savemat

    from ..synthetic import SYNTHETIC_TO_COCO_STUFF_ID, _jpeg, _rng, _write, generate_sample

    base = os.fspath(raw_dir)
    for d in ("images", "annotations", "imageLists"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    lut = np.zeros(256, np.uint16)
    lut[: len(SYNTHETIC_TO_COCO_STUFF_ID)] = np.asarray(SYNTHETIC_TO_COCO_STUFF_ID) + 1
    for split, n, listed in (("train", num_train, "train"), ("val", num_val, "test")):
        ids = []
        for i in range(n):
            img, label, _ = generate_sample(_rng(seed, split, i), size)
            name = f"COCO_train2014_{(1 if split == 'train' else 500000) + i:012d}"
            ids.append(name)
            _write(os.path.join(base, "images", name + ".jpg"), _jpeg(img))
            savemat(os.path.join(base, "annotations", name + ".mat"), {"S": lut[label]}, do_compression=True)
        with open(os.path.join(base, "imageLists", f"{listed}.txt"), "w") as f:
            f.writelines(i + "\n" for i in ids)
    return base
