"""COCO instances (detection / instance segmentation shards), optionally with each image's COCO-Stuff map (HTC++)."""
from __future__ import annotations

import json
import os

from ..shard_writer import write_shards
from ..sources import img_ext, png_header, source_file
from .registry import Dataset, register_dataset

# mmdet's HTC FusedSemanticHead(num_classes=183) over COCO-Stuff stuffthingmaps (ids 0..181 used, 255 ignored)
COCO_STUFF_SEMANTIC_CLASSES = 183


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
        files = {img_ext(path): path, "json": json.dumps(rec, separators=(",", ":")).encode()}
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
    meta = COCO.meta(split, os.path.abspath(root), cats)
    if stuff_maps is not None:
        meta["semantic_seg"] = {"num_classes": COCO_STUFF_SEMANTIC_CLASSES, "ignore_index": 255,
                                "source": os.path.abspath(stuff_map_dir(stuff_maps, split, year))}
    return write_shards(samples, out, meta, **kw)




@register_dataset("coco")
class COCO(Dataset):
    task = "detection"
    aliases = ("CocoDataset",)
    classes = None  # the annotation file's categories
    evaluator = "coco"
    layout = "annotations/instances_{train,val}2017.json, {train,val}2017/ (or images/{train,val}2017/)"

    @staticmethod
    def samples(root, split, skip_missing=False, follow_symlinks=False):
        return coco_samples(root, split, skip_missing=skip_missing, follow_symlinks=follow_symlinks)[0]

    @classmethod
    def meta(cls, split, source="", categories=(), **_):
        """Detection manifest fields: the COCO ``categories`` (class index i -> categories[i]) and their names."""
        from ...utils.vis import make_palette

        cats = list(categories)
        return {"dataset": cls.name, "split": split, "task": "detection", "categories": cats,
                "classes": [c["name"] for c in cats], "num_classes": len(cats),
                "palette": cls.palette or make_palette(len(cats)), "source": source}

    @staticmethod
    def write(root, out, split, **kw):
        return write_coco(root, out, split, **kw)

    @classmethod
    def add_arguments(cls, parser):
        super().add_arguments(parser)
        parser.add_argument("--stuff-maps", default=None, metavar="DIR",
                            help="COCO-Stuff stuffthingmaps folder (with train2017/, val2017/): store each image's "
                                 "semantic map in the shards (HTC++)")

    @classmethod
    def run(cls, args, kw):
        if args.stuff_maps is not None:
            kw = {**kw, "stuff_maps": args.stuff_maps}
        return super().run(args, kw)
