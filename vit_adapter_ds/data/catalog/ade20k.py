"""ADE20K SceneParsing (150 classes; PNGs hold 0 = other and 1..150: reduce-zero-label)."""
from __future__ import annotations

import os

from .. import classes as C
from ..sources import pair, stems
from .registry import Dataset, register_dataset


def ade20k_samples(root, split, skip_missing=False, follow_symlinks=False):
    """ADE20K (``ADEChallengeData2016``; ``root`` may be that folder or its parent)."""
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
        root = os.path.join(root, "ADEChallengeData2016")
    sub = {"train": "training", "val": "validation"}[split]
    images = stems(os.path.join(root, "images", sub), (".jpg", ".jpeg"), root, follow_symlinks)
    masks = stems(os.path.join(root, "annotations", sub), (".png",), root, follow_symlinks)
    return pair(images, masks, skip_missing)


@register_dataset("ade20k")
class ADE20K(Dataset):
    task = "segmentation"
    aliases = ("ADE20KDataset",)
    classes = C.ADE20K_CLASSES
    label_map = "reduce_zero_label"
    evaluator = "miou"
    layout = "ADEChallengeData2016/{images,annotations}/{training,validation}/*.{jpg,png}"
    samples = staticmethod(ade20k_samples)

    @staticmethod
    def write(root, out, split, **kw):
        return write_ade20k(root, out, split, **kw)


def write_ade20k(root, out, split, classes=C.ADE20K_CLASSES, dataset="ade20k", palette=None, **kw):
    """ADE20K shards (also the synthetic dataset's ADE20K layout: its ``classes``, ``dataset`` name and
    ``palette``)."""
    from ..shard_writer import write_shards

    skip = kw.pop("skip_missing", False)
    samples = ade20k_samples(root, split, skip, kw.pop("follow_symlinks", False))
    meta = ADE20K.meta(split, os.path.abspath(root), classes=classes, palette=palette)
    meta["dataset"] = dataset
    return write_shards(samples, out, meta, **kw)
