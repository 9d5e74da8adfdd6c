"""COCO-Stuff-164k (171 classes; the original stuffthingmaps ids mapped to train ids, or mmseg-converted maps)."""
from __future__ import annotations

import os

from .. import classes as C
from ..sources import pair, stems
from .registry import Dataset, register_dataset


def cocostuff_samples(root, split, skip_missing=False, follow_symlinks=False):
    """COCO-Stuff-164k: ``images/{train2017,val2017}`` and ``stuffthingmaps_trainval2017/{..}`` (or the mmseg
    ``annotations/{..}``). Raw maps (original ids) are preferred; if only mmseg-converted ``*_labelTrainIds.png``
    exist they are used with an identity label map. Returns ``(samples, converted)``."""
    sub = {"train": "train2017", "val": "val2017"}[split]
    images = stems(os.path.join(root, "images", sub), (".jpg", ".jpeg"), root, follow_symlinks)
    ann_root = os.path.join(root, "stuffthingmaps_trainval2017")
    if not os.path.isdir(ann_root):
        ann_root = os.path.join(root, "annotations")
    pngs = stems(os.path.join(ann_root, sub), (".png",), root, follow_symlinks)
    raw = {s: p for s, p in pngs.items() if not s.endswith("_labelTrainIds")}
    if raw:
        return pair(images, raw, skip_missing), False
    conv = {s[: -len("_labelTrainIds")]: p for s, p in pngs.items()}
    return pair(images, conv, skip_missing), True


@register_dataset("cocostuff")
class COCOStuff(Dataset):
    task = "segmentation"
    aliases = ("COCOStuffDataset",)
    classes = C.COCO_STUFF_CLASSES
    label_map = "coco_stuff_164k"  # "identity" when only mmseg-converted *_labelTrainIds.png maps exist
    evaluator = "miou"
    layout = "images/{train2017,val2017}, stuffthingmaps_trainval2017/{train2017,val2017} (or annotations/)"

    @staticmethod
    def samples(root, split, skip_missing=False, follow_symlinks=False):
        return cocostuff_samples(root, split, skip_missing, follow_symlinks)[0]

    @staticmethod
    def write(root, out, split, **kw):
        return write_cocostuff(root, out, split, **kw)


def write_cocostuff(root, out, split, **kw):
    from ..shard_writer import write_shards

    skip = kw.pop("skip_missing", False)
    samples, converted = cocostuff_samples(root, split, skip, kw.pop("follow_symlinks", False))
    meta = COCOStuff.meta(split, os.path.abspath(root), label_map="identity" if converted else None)
    return write_shards(samples, out, meta, **kw)
