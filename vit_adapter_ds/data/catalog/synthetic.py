"""The synthetic dataset (generated, then written in the ADE20K, COCO-Stuff or COCO instance layout)."""
from __future__ import annotations

import os
import shutil
import tempfile

from ..synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, write_synthetic_ade, write_synthetic_coco
from .registry import Dataset, register_dataset


@register_dataset("synthetic")
class Synthetic(Dataset):
    task = "segmentation"  # the ADE20K layout; --layout cocostuff / coco write the cocostuff / coco entries' shards
    classes = SYNTHETIC_CLASSES  # 8 (--layout ade20k)
    palette = SYNTHETIC_PALETTE
    label_map = "reduce_zero_label"
    evaluator = "miou"
    layout = ("generated: --layout ade20k (8 classes), cocostuff (171), coco (detection, 7 classes + stuff maps) or "
              "the name of an entry with a synthetic twin of its raw layout")

    @staticmethod
    def write(out, num_train, num_val, seed=0, size=(512, 683), raw_dir=None, layout="ade20k", **kw):
        return write_synthetic(out, num_train, num_val, seed, size, raw_dir, layout, **kw)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--num-train", type=int, default=64)
        parser.add_argument("--num-val", type=int, default=16)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
        parser.add_argument("--raw-dir", default=None, help="keep the generated dataset folders here")
        parser.add_argument("--layout", default="ade20k", choices=["ade20k", "cocostuff", "coco", *raw_layouts()],
                            help="folder layout / shard type to generate (default: ade20k, 8 classes; another "
                                 "dataset's name: its raw layout, written by its entry's writer)")

    @classmethod
    def run(cls, args, kw):
        return write_synthetic(args.out, args.num_train, args.num_val, args.seed, tuple(args.size), args.raw_dir,
                               args.layout, **kw)


def raw_layouts() -> dict:
    """``{name: entry}`` of the catalog entries with a synthetic twin of their raw layout: a static method
    ``synthetic_raw(raw_dir, num_train, num_val, seed, size) -> root`` that writes the synthetic images there in the
    dataset's layout, which the entry's own writer then shards (``make_shards synthetic --layout NAME``)."""
    from .registry import datasets

    return {n: e for n, e in sorted(datasets().items()) if callable(getattr(e, "synthetic_raw", None))}


def write_synthetic(out, num_train, num_val, seed=0, size=(512, 683), raw_dir=None, layout="ade20k", **kw):
    """Generate the synthetic dataset (kept in ``raw_dir`` if given, else a temporary folder) and shard it into
    ``out/train`` and ``out/val``. ``layout``: ``'ade20k'`` (8 synthetic classes, the quickstart default),
    ``'cocostuff'`` (COCO-Stuff ids and its 171-class manifest) or ``'coco'`` (detection shards from the COCO
    instances JSON, with the COCO-Stuff maps as semantic maps). Returns ``{split: manifest}``."""
    from .ade20k import write_ade20k
    from .coco import write_coco
    from .cocostuff import write_cocostuff

    tmp = None
    if raw_dir is None:
        tmp = raw_dir = tempfile.mkdtemp(prefix="synthetic_raw_")
    try:
        if layout == "ade20k":
            root = write_synthetic_ade(raw_dir, num_train, num_val, seed=seed, size=size)

            def fn(split, dst):
                return write_ade20k(root, dst, split, classes=Synthetic.classes, dataset=Synthetic.name,
                                    palette=Synthetic.palette, **kw)
        elif layout in ("cocostuff", "coco"):
            root = write_synthetic_coco(raw_dir, num_train, num_val, seed=seed, size=size)

            def fn(split, dst):
                if layout == "cocostuff":
                    return write_cocostuff(root, dst, split, **kw)
                return write_coco(root, dst, split, stuff_maps=os.path.join(root, "stuffthingmaps_trainval2017"),
                                  **kw)
        elif layout in raw_layouts():  # an entry with a synthetic twin of its raw layout (``synthetic_raw``)
            entry = raw_layouts()[layout]
            root = entry.synthetic_raw(raw_dir, num_train, num_val, seed=seed, size=size)

            def fn(split, dst):
                return entry.write(root, dst, split, **kw)
        else:
            raise ValueError(f"layout must be ade20k, cocostuff, coco or one of {sorted(raw_layouts())}, got "
                             f"{layout!r}")
        return {split: fn(split, os.path.join(out, split))
                for split, n in (("train", num_train), ("val", num_val)) if n > 0}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
