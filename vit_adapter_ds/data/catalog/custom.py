"""A generic segmentation layout: a folder of images, a folder of same-stem PNG masks and a class file."""
from __future__ import annotations

import os

from ..sources import IMG_EXTS, pair, read_class_file, stems
from .registry import Dataset, register_dataset


@register_dataset("custom")
class Custom(Dataset):
    task = "segmentation"
    aliases = ("CustomDataset",)
    classes = None  # the class file's
    label_map = "identity"  # "reduce_zero_label" with --reduce-zero-label
    evaluator = "miou"
    layout = "IMG_DIR/*.{jpg,png}, MASK_DIR/<same stem>.png, a class file (one name per line)"

    @staticmethod
    def samples(root, split, skip_missing=False, follow_symlinks=False):
        """``root`` = ``(images, masks)``: the two folders (``split`` is the caller's name for them)."""
        images, masks = root
        return pair(stems(images, IMG_EXTS, images, follow_symlinks), stems(masks, (".png",), masks, follow_symlinks),
                    skip_missing)

    @staticmethod
    def write(images, masks, classes_file, out, split, reduce_zero_label=False, dataset="custom", **kw):
        return write_custom(images, masks, classes_file, out, split, reduce_zero_label, dataset, **kw)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--images", required=True)
        parser.add_argument("--masks", required=True)
        parser.add_argument("--classes", required=True, help="text file, one class name per line")
        parser.add_argument("--split", required=True)
        parser.add_argument("--reduce-zero-label", action="store_true")
        parser.add_argument("--skip-missing", action="store_true")

    @classmethod
    def run(cls, args, kw):
        return {args.split: write_custom(args.images, args.masks, args.classes, os.path.join(args.out, args.split),
                                         args.split, args.reduce_zero_label, skip_missing=args.skip_missing, **kw)}


def write_custom(images, masks, classes_file, out, split, reduce_zero_label=False, dataset="custom", **kw):
    """Generic layout: a folder of images, a folder of same-stem single-channel PNG masks (values = class index,
    255 = ignore; or 0 = ignore and 1..K with ``reduce_zero_label``), and a class list file."""
    from ..shard_writer import write_shards

    skip, follow = kw.pop("skip_missing", False), kw.pop("follow_symlinks", False)
    names = read_class_file(classes_file)
    samples = Custom.samples((images, masks), split, skip, follow)
    meta = Custom.meta(split, os.path.abspath(images), classes=names,
                       label_map="reduce_zero_label" if reduce_zero_label else "identity")
    meta["dataset"] = dataset
    return write_shards(samples, out, meta, **kw)
