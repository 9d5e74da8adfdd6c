"""Shard writers for ADE20K, COCO-Stuff-164k, COCO instances, a custom folder layout and the synthetic dataset.

CLI (one output folder per split, ``OUT/{train,val}``, each with its shards and ``manifest.json``)::

    python -m vit_adapter_ds.data.make_shards ade20k    --root data/ade/ADEChallengeData2016 [--out shards/ade20k]
    python -m vit_adapter_ds.data.make_shards cocostuff --root data/coco_stuff164k            [--out shards/cocostuff]
    python -m vit_adapter_ds.data.make_shards coco      --root data/coco                      [--out shards/coco]
        [--stuff-maps data/coco/stuffthingmaps]   # + COCO-Stuff semantic maps per image (HTC++)
    python -m vit_adapter_ds.data.make_shards custom    --images IMG_DIR --masks MASK_DIR --classes classes.txt \\
        --split train [--reduce-zero-label] --out shards/mydata             # -> shards/mydata/train
    python -m vit_adapter_ds.data.make_shards synthetic --out shards/synthetic --num-train 64 --num-val 16
        [--layout {ade20k,cocostuff,coco}] [--size 512 683] [--seed 0] [--raw-dir DIR]
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
import json
import os
import re
import shutil
import stat
import sys
import tempfile

from . import classes as C
from .shard_writer import write_shards

IMG_EXTS = (".jpg", ".jpeg", ".png")


class UnsafeSourceError(ValueError):
    """A dataset file that is not read: outside its dataset root, or not a regular file."""


def _inside(path, root):
    return os.path.commonpath([path, root]) == root


def require_regular_file(path, what="file"):
    """Refuse ``path`` unless it is a regular file once symlinks are resolved: reading a device (``/dev/zero``), a
    FIFO or a socket blocks or never ends. A missing file raises ``FileNotFoundError``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(mode):
        raise UnsafeSourceError(f"{what} {path} is not a regular file (a folder, device, FIFO or socket); refused")
    return path


def source_file(path, root, follow_symlinks=False, what="file"):
    """``path`` if it may be read into a shard: inside the dataset folder ``root`` as written (no ``..`` or absolute
    path leading out), inside ``root`` once symlinks are resolved (unless ``follow_symlinks``) and a regular file
    (:func:`require_regular_file`). Raises :class:`UnsafeSourceError` naming the file and the root."""
    if not _inside(os.path.abspath(path), os.path.abspath(root)):
        raise UnsafeSourceError(f"{what} {path} lies outside the dataset root {root} (an absolute path or '..'); "
                                "refused")
    real = os.path.realpath(path)
    if not follow_symlinks and not _inside(real, os.path.realpath(root)):
        raise UnsafeSourceError(f"{what} {path} resolves to {real}, outside the dataset root {root}; refused "
                                "(pass --follow-symlinks to read symlinks that lead out of the root)")
    return require_regular_file(path, what)


def _stems(folder, exts, root, follow_symlinks=False):
    """``{stem: path}`` of the files in ``folder`` with one of ``exts``, each checked by :func:`source_file`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder}")
    out = {}
    for fn in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fn)
        if ext.lower() in exts:
            if stem in out:
                raise ValueError(f"{folder}: two images with stem {stem!r}")
            out[stem] = source_file(os.path.join(folder, fn), root, follow_symlinks)
    return out


def _img_ext(path):
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def _safe_key(stem):
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem)


def _pair(images, masks, skip_missing):
    """Samples ``(key, {img_ext: path, 'seg.png': path})`` for images with a same-stem mask, sorted by key."""
    samples, missing, keys = [], [], {}
    for stem, ipath in images.items():
        mpath = masks.get(stem)
        if mpath is None:
            missing.append(stem)
            continue
        key = _safe_key(stem)
        if key in keys:
            raise ValueError(f"stems {keys[key]!r} and {stem!r} give the same key {key!r}")
        keys[key] = stem
        samples.append((key, {_img_ext(ipath): ipath, "seg.png": mpath}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no mask, e.g. {missing[:5]}; "
                                "pass --skip-missing to leave them out")
    if not samples:
        raise FileNotFoundError("no image/mask pairs found")
    return sorted(samples)


def _seg_meta(dataset, split, classes, label_map, label_map_name, palette=None, source=""):
    return {"dataset": dataset, "split": split, "task": "segmentation", "classes": list(classes),
            "num_classes": len(classes), "palette": palette or C.make_palette(len(classes)),
            "ignore_index": 255, "label_map": label_map, "label_map_name": label_map_name, "source": source}


def ade20k_samples(root, split, skip_missing=False, follow_symlinks=False):
    """ADE20K (``ADEChallengeData2016``; ``root`` may be that folder or its parent)."""
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
        root = os.path.join(root, "ADEChallengeData2016")
    sub = {"train": "training", "val": "validation"}[split]
    images = _stems(os.path.join(root, "images", sub), (".jpg", ".jpeg"), root, follow_symlinks)
    masks = _stems(os.path.join(root, "annotations", sub), (".png",), root, follow_symlinks)
    return _pair(images, masks, skip_missing)


def write_ade20k(root, out, split, classes=C.ADE20K_CLASSES, dataset="ade20k", palette=None, **kw):
    skip = kw.pop("skip_missing", False)
    samples = ade20k_samples(root, split, skip, kw.pop("follow_symlinks", False))
    meta = _seg_meta(dataset, split, classes, C.reduce_zero_label_map(), "reduce_zero_label", palette,
                     os.path.abspath(root))
    return write_shards(samples, out, meta, **kw)


def cocostuff_samples(root, split, skip_missing=False, follow_symlinks=False):
    """COCO-Stuff-164k: ``images/{train2017,val2017}`` and ``stuffthingmaps_trainval2017/{..}`` (or the mmseg
    ``annotations/{..}``). Raw maps (original ids) are preferred; if only mmseg-converted ``*_labelTrainIds.png``
    exist they are used with an identity label map. Returns ``(samples, converted)``."""
    sub = {"train": "train2017", "val": "val2017"}[split]
    images = _stems(os.path.join(root, "images", sub), (".jpg", ".jpeg"), root, follow_symlinks)
    ann_root = os.path.join(root, "stuffthingmaps_trainval2017")
    if not os.path.isdir(ann_root):
        ann_root = os.path.join(root, "annotations")
    pngs = _stems(os.path.join(ann_root, sub), (".png",), root, follow_symlinks)
    raw = {s: p for s, p in pngs.items() if not s.endswith("_labelTrainIds")}
    if raw:
        return _pair(images, raw, skip_missing), False
    conv = {s[: -len("_labelTrainIds")]: p for s, p in pngs.items()}
    return _pair(images, conv, skip_missing), True


def write_cocostuff(root, out, split, **kw):
    skip = kw.pop("skip_missing", False)
    samples, converted = cocostuff_samples(root, split, skip, kw.pop("follow_symlinks", False))
    lut, name = ((C.identity_label_map(), "identity") if converted
                 else (C.coco_stuff_label_map(), "coco_stuff_164k"))
    meta = _seg_meta("cocostuff", split, C.COCO_STUFF_CLASSES, lut, name, None, os.path.abspath(root))
    return write_shards(samples, out, meta, **kw)


# mmdet's HTC FusedSemanticHead(num_classes=183) over COCO-Stuff stuffthingmaps (ids 0..181 used, 255 ignored)
COCO_STUFF_SEMANTIC_CLASSES = 183


def png_header(path):
    """``(width, height, bit_depth, colour_type)`` from a PNG file's IHDR (the first 33 bytes)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"not a PNG file: {path}")
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, ctype


def stuff_map_dir(stuff_maps, split, year=2017):
    """The folder of ``split``'s maps: ``stuff_maps/{split}{year}`` if it exists, else ``stuff_maps``."""
    sub = os.path.join(stuff_maps, f"{split}{year}")
    d = sub if os.path.isdir(sub) else stuff_maps
    if not os.path.isdir(d):
        raise FileNotFoundError(f"stuff map folder not found: {stuff_maps}")
    return d


def _stuff_map(folder, image, root, follow_symlinks=False):
    """Path of ``image``'s map (``file_name`` with a .png extension) after checking it (:func:`source_file` with
    the map folder ``root``) and that it is an 8-bit (or less) single-channel PNG of the image's size; None if there
    is none."""
    path = os.path.join(folder, os.path.splitext(image["file_name"])[0] + ".png")
    try:
        source_file(path, root, follow_symlinks, what="stuff map")
    except FileNotFoundError:
        return None
    w, h, depth, ctype = png_header(path)
    if ctype not in (0, 3) or depth > 8:
        raise ValueError(f"stuff map {path}: must be an 8-bit gray or palette PNG (colour type {ctype}, "
                         f"{depth}-bit)")
    if (h, w) != (int(image["height"]), int(image["width"])):
        raise ValueError(f"stuff map {path} is {h}x{w}, the image {image['height']}x{image['width']}")
    return path


def coco_samples(root, split, year=2017, stuff_maps=None, skip_missing=False, follow_symlinks=False):
    """COCO instances: ``annotations/instances_{split}{year}.json`` and images in ``{split}{year}/`` or
    ``images/{split}{year}/``. Each sample: the image bytes and ``json`` = {"image": ..., "annotations": [...]},
    plus ``seg.png`` (the COCO-Stuff map, :func:`stuff_map_dir`) with ``stuff_maps``; an image without a map is an
    error, or left out with ``skip_missing``. Every file is checked by :func:`source_file` (images and annotations
    inside ``root``, maps inside ``stuff_maps``). Returns ``(samples, categories)``."""
    sub = f"{split}{year}"
    ann_file = source_file(os.path.join(root, "annotations", f"instances_{sub}.json"), root, follow_symlinks,
                           what="COCO annotation file")
    with open(ann_file) as f:
        coco = json.load(f)
    img_dir = os.path.join(root, sub)
    if not os.path.isdir(img_dir):
        img_dir = os.path.join(root, "images", sub)
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f"COCO image folder not found: {os.path.join(root, sub)} or {img_dir}")
    anns = {}
    for a in coco.get("annotations", []):
        anns.setdefault(a["image_id"], []).append(a)
    map_dir = None if stuff_maps is None else stuff_map_dir(stuff_maps, split, year)
    samples, missing = [], []
    for im in sorted(coco["images"], key=lambda d: d["id"]):
        path = source_file(os.path.join(img_dir, im["file_name"]), root, follow_symlinks,
                           what=f"image listed in {ann_file}")
        rec = {"image": im, "annotations": sorted(anns.get(im["id"], []), key=lambda a: a["id"])}
        files = {_img_ext(path): path, "json": json.dumps(rec, separators=(",", ":")).encode()}
        if map_dir is not None:
            seg = _stuff_map(map_dir, im, stuff_maps, follow_symlinks)
            if seg is None:
                missing.append(im["file_name"])
                continue
            files["seg.png"] = seg
        samples.append((f"{int(im['id']):012d}", files))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no stuff map in {map_dir}, e.g. {missing[:5]}; "
                                "pass --skip-missing to leave them out")
    return samples, coco.get("categories", [])


def write_coco(root, out, split, year=2017, stuff_maps=None, **kw):
    """COCO instance shards (:func:`coco_samples`); with ``stuff_maps`` the manifest records ``semantic_seg`` =
    ``{"num_classes": 183, "ignore_index": 255, "source": <map folder>}``."""
    skip = kw.pop("skip_missing", False)
    samples, cats = coco_samples(root, split, year, stuff_maps, skip, kw.pop("follow_symlinks", False))
    meta = {"dataset": "coco", "split": split, "task": "detection", "categories": cats,
            "classes": [c["name"] for c in cats], "num_classes": len(cats),
            "palette": C.make_palette(len(cats)), "source": os.path.abspath(root)}
    if stuff_maps is not None:
        meta["semantic_seg"] = {"num_classes": COCO_STUFF_SEMANTIC_CLASSES, "ignore_index": 255,
                                "source": os.path.abspath(stuff_map_dir(stuff_maps, split, year))}
    return write_shards(samples, out, meta, **kw)


def read_class_file(path):
    """One class name per line (blank lines and lines starting with '#' ignored)."""
    with open(require_regular_file(path, "class file")) as f:
        names = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"no class names in {path}")
    return names


def write_custom(images, masks, classes_file, out, split, reduce_zero_label=False, dataset="custom", **kw):
    """Generic layout: a folder of images, a folder of same-stem single-channel PNG masks (values = class index,
    255 = ignore; or 0 = ignore and 1..K with ``reduce_zero_label``), and a class list file."""
    skip, follow = kw.pop("skip_missing", False), kw.pop("follow_symlinks", False)
    names = read_class_file(classes_file)
    samples = _pair(_stems(images, IMG_EXTS, images, follow), _stems(masks, (".png",), masks, follow), skip)
    lut, lname = ((C.reduce_zero_label_map(), "reduce_zero_label") if reduce_zero_label
                  else (C.identity_label_map(), "identity"))
    meta = _seg_meta(dataset, split, names, lut, lname, None, os.path.abspath(images))
    return write_shards(samples, out, meta, **kw)


def write_synthetic(out, num_train, num_val, seed=0, size=(512, 683), raw_dir=None, layout="ade20k", **kw):
    """Generate the synthetic dataset (kept in ``raw_dir`` if given, else a temporary folder) and shard it into
    ``out/train`` and ``out/val``. ``layout``: ``'ade20k'`` (8 synthetic classes, the quickstart default),
    ``'cocostuff'`` (COCO-Stuff ids and its 171-class manifest) or ``'coco'`` (detection shards from the COCO
    instances JSON, with the COCO-Stuff maps as semantic maps). Returns ``{split: manifest}``."""
    from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, write_synthetic_ade, write_synthetic_coco

    tmp = None
    if raw_dir is None:
        tmp = raw_dir = tempfile.mkdtemp(prefix="synthetic_raw_")
    try:
        if layout == "ade20k":
            root = write_synthetic_ade(raw_dir, num_train, num_val, seed=seed, size=size)

            def fn(split, dst):
                return write_ade20k(root, dst, split, classes=SYNTHETIC_CLASSES, dataset="synthetic",
                                    palette=SYNTHETIC_PALETTE, **kw)
        elif layout in ("cocostuff", "coco"):
            root = write_synthetic_coco(raw_dir, num_train, num_val, seed=seed, size=size)

            def fn(split, dst):
                if layout == "cocostuff":
                    return write_cocostuff(root, dst, split, **kw)
                return write_coco(root, dst, split, stuff_maps=os.path.join(root, "stuffthingmaps_trainval2017"),
                                  **kw)
        else:
            raise ValueError(f"layout must be ade20k, cocostuff or coco, got {layout!r}")
        return {split: fn(split, os.path.join(out, split))
                for split, n in (("train", num_train), ("val", num_val)) if n > 0}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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

    for name in ("ade20k", "cocostuff", "coco"):
        sp = sub.add_parser(name)
        sp.add_argument("--root", required=True)
        sp.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
        sp.add_argument("--skip-missing", action="store_true", help="leave out images without a mask")
        if name == "coco":
            sp.add_argument("--stuff-maps", default=None, metavar="DIR",
                            help="COCO-Stuff stuffthingmaps folder (with train2017/, val2017/): store each image's "
                                 "semantic map in the shards (HTC++)")
        common(sp, os.path.join("shards", name))
    sp = sub.add_parser("custom")
    sp.add_argument("--images", required=True)
    sp.add_argument("--masks", required=True)
    sp.add_argument("--classes", required=True, help="text file, one class name per line")
    sp.add_argument("--split", required=True)
    sp.add_argument("--reduce-zero-label", action="store_true")
    sp.add_argument("--skip-missing", action="store_true")
    common(sp, os.path.join("shards", "custom"))
    sp = sub.add_parser("synthetic")
    sp.add_argument("--num-train", type=int, default=64)
    sp.add_argument("--num-val", type=int, default=16)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    sp.add_argument("--raw-dir", default=None, help="keep the generated dataset folders here")
    sp.add_argument("--layout", default="ade20k", choices=["ade20k", "cocostuff", "coco"],
                    help="folder layout / shard type to generate (default: ade20k, 8 classes)")
    common(sp, os.path.join("shards", "synthetic"))
    sp = sub.add_parser("verify")
    sp.add_argument("shard_dir")
    a = p.parse_args(argv)

    if a.dataset == "verify":
        return verify_main(a.shard_dir)
    kw = dict(max_samples=a.max_samples, max_bytes=int(a.max_bytes), num_workers=a.workers,
              progress=not a.no_progress, follow_symlinks=a.follow_symlinks)
    if a.dataset == "synthetic":
        res = write_synthetic(a.out, a.num_train, a.num_val, a.seed, tuple(a.size), a.raw_dir, a.layout, **kw)
    elif a.dataset == "custom":
        res = {a.split: write_custom(a.images, a.masks, a.classes, os.path.join(a.out, a.split), a.split,
                                     a.reduce_zero_label, skip_missing=a.skip_missing, **kw)}
    else:
        fn = {"ade20k": write_ade20k, "cocostuff": write_cocostuff, "coco": write_coco}[a.dataset]
        if a.dataset == "coco" and a.stuff_maps is not None:
            kw["stuff_maps"] = a.stuff_maps
        res = {s: fn(a.root, os.path.join(a.out, s), s, skip_missing=a.skip_missing, **kw) for s in a.splits}
    for split, m in res.items():
        print(f"{split}: {m['num_samples']} samples in {len(m['shards'])} shard(s) -> "
              f"{os.path.join(a.out, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
