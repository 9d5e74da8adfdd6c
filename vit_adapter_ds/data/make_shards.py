"""The shard writer CLI: one sub-command per dataset of the catalog (``data/catalog/``: ADE20K, COCO-Stuff-164k,
COCO-Stuff-10k, Pascal Context 59, Cityscapes, Mapillary Vistas, CHASE_DB1, ISPRS Potsdam, COCO instances, a custom
folder layout, the synthetic dataset, and any dataset registered there), plus ``verify``.

CLI (one output folder per split, ``OUT/{train,val}``, each with its shards and ``manifest.json``)::

    python -m vit_adapter_ds.data.make_shards ade20k    --root data/ade/ADEChallengeData2016 [--out shards/ade20k]
    python -m vit_adapter_ds.data.make_shards cocostuff --root data/coco_stuff164k            [--out shards/cocostuff]
    python -m vit_adapter_ds.data.make_shards coco      --root data/coco                      [--out shards/coco]
        [--stuff-maps data/coco/stuffthingmaps]   # + COCO-Stuff semantic maps per image (HTC++)
    python -m vit_adapter_ds.data.make_shards pascal_context_59 --root data/VOCdevkit/VOC2010 [--out ...]
    python -m vit_adapter_ds.data.make_shards coco_stuff10k --root data/coco_stuff10k [--out ...]  # .mat labels
    python -m vit_adapter_ds.data.make_shards chase_db1 --root data/CHASE_DB1 [--out ...]
    python -m vit_adapter_ds.data.make_shards potsdam   --root data/potsdam [--out ...]  # mmseg's converted tiles
    python -m vit_adapter_ds.data.make_shards cityscapes --root data/cityscapes [--out ...]  # *_labelTrainIds.png
    python -m vit_adapter_ds.data.make_shards mapillary --root data/Mapillary [--splits train val]  # train: both
    python -m vit_adapter_ds.data.make_shards custom    --images IMG_DIR --masks MASK_DIR --classes classes.txt \\
        --split train [--reduce-zero-label] --out shards/mydata             # -> shards/mydata/train
    python -m vit_adapter_ds.data.make_shards synthetic --out shards/synthetic --num-train 64 --num-val 16
        [--layout {ade20k,cocostuff,coco,<entry with a synthetic twin>}] [--size 512 683] [--seed 0] [--raw-dir DIR]
    python -m vit_adapter_ds.data.make_shards verify shards/synthetic     # every split: schema, counts, sha256

Common options: ``--max-samples`` / ``--max-bytes`` per shard, ``--workers`` (processes), ``--splits``.
``coco --stuff-maps DIR`` adds each image's COCO-Stuff ``stuffthingmaps`` PNG (``DIR/{split}2017/<image stem>.png``,
or ``DIR/<image stem>.png`` without that sub-folder; values 0..181, 255 unlabelled, as mmdet's ``seg_prefix``
reads them) as the member ``{key}.seg.png`` and records ``semantic_seg`` in the manifest; ``synthetic --layout
coco`` always does (its COCO-Stuff maps). Label PNGs are stored as they are; the manifest's ``label_map`` (256-entry lookup table) is applied when a sample
is decoded (reduce-zero-label for ADE20K, the COCO-Stuff id -> train id table for COCO-Stuff).

Source files are data and are checked before they are read (:func:`source_file`): a file outside its dataset root
(``--root``; ``--images`` / ``--masks`` of ``custom``; ``--stuff-maps`` for the maps) is refused, whether a COCO
``file_name`` leads out (``../..``, an absolute path) or a symlink resolves outside; ``--follow-symlinks`` allows
symlinks that resolve outside the root (never ``..`` or absolute names). Devices, FIFOs and sockets are always
refused. The error names the file and the root.
"""
from __future__ import annotations

import argparse
import os
import sys

from .catalog import datasets
from .catalog.ade20k import ade20k_samples, write_ade20k  # noqa: F401  (the writers, as before the catalog)
from .catalog.coco import COCO_STUFF_SEMANTIC_CLASSES, coco_samples, stuff_map_dir, write_coco  # noqa: F401
from .catalog.cocostuff import cocostuff_samples, write_cocostuff  # noqa: F401
from .catalog.custom import write_custom  # noqa: F401
from .catalog.synthetic import write_synthetic  # noqa: F401
from .sources import (IMG_EXTS, UnsafeSourceError, png_header, read_class_file, require_regular_file,  # noqa: F401
                      source_file)


def verify_main(shard_dir):
    """``verify``: check every split folder at ``shard_dir`` (itself if it holds a manifest, else each
    sub-folder with one: ``train/``, ``val/``, ...) -- manifest schema, counts, sizes and sha256 of every shard.
    Prints one line per split; returns 0 if all are OK, else 1 (the error is printed)."""
    from .manifest import ShardSetError, read_manifest, split_dirs, verify_shards

    try:
        dirs = split_dirs(shard_dir)
    except ShardSetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = 0
    for d in dirs:
        try:
            m = read_manifest(d)
            verify_shards(d, m, mode="sha256")
        except ShardSetError as e:
            print(f"{d}: FAILED: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{d}: {len(m['shards'])} shard(s), {m['num_samples']} samples, checksums OK")
    if failed:
        print(f"{failed} of {len(dirs)} split(s) failed", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vit_adapter_ds.data.make_shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True)

    def common(sp, default_out):
        sp.add_argument("--out", default=default_out, help="output folder (one subfolder per split)")
        sp.add_argument("--max-samples", type=int, default=1000, help="max samples per shard")
        sp.add_argument("--max-bytes", type=float, default=256e6, help="max bytes per shard (approximate)")
        sp.add_argument("--workers", type=int, default=None, help="writer processes (default: #CPUs)")
        sp.add_argument("--no-progress", action="store_true")
        sp.add_argument("--follow-symlinks", action="store_true",
                        help="also read dataset files that are symlinks resolving outside the dataset root (default: "
                             "refused; '..' or absolute names, devices and FIFOs are always refused)")

    catalog = datasets()
    for name, entry in catalog.items():
        sp = sub.add_parser(name, help=entry.layout or None)
        entry.add_arguments(sp)
        common(sp, os.path.join("shards", name))
    sp = sub.add_parser("verify")
    sp.add_argument("shard_dir")
    a = p.parse_args(argv)

    if a.dataset == "verify":
        return verify_main(a.shard_dir)
    kw = dict(max_samples=a.max_samples, max_bytes=int(a.max_bytes), num_workers=a.workers,
              progress=not a.no_progress, follow_symlinks=a.follow_symlinks)
    res = catalog[a.dataset].run(a, kw)
    for split, m in res.items():
        print(f"{split}: {m['num_samples']} samples in {len(m['shards'])} shard(s) -> "
              f"{os.path.join(a.out, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
