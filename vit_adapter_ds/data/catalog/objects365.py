"""Objects365 v2 (365 classes, boxes only), the pre-training data of the HTC++ Objects365 -> COCO recipes, in the
layout of the official ``detection/configs/_base_/datasets/obj365_detection.py`` (``data_root =
'data/Objects365/Obj365_v2/'``): ``annotations/zhiyuan_objv2_{train,val}.json`` (COCO-style ``images`` /
``annotations`` / ``categories``) and the images in patches, ``{train,val}/patch<N>/<name>.jpg``.

The classes are the annotation file's own 365 ``categories`` (ids 1..365, class index ``i`` = the ``i``-th id, as the
COCO entry): mmdet 2.22 has no Objects365 dataset class and the official config names only its type,
``Objects365V2Dataset`` (this entry's alias). The JSON's ``file_name`` is ``images/v<k>/patch<N>/<name>.jpg``; the
image read is ``<split>/patch<N>/<name>.jpg`` (mmdet 3.x's ``Objects365V2Dataset`` rule). Three images that the v2
annotations list but the download lacks (mmdet 3.x's ``objv2_ignore_list``) are left out when absent; any other
missing image is an error naming it (``--skip-missing`` leaves them out). A file that does not fit -- not a JSON
object with the three lists, not 365 categories with ids 1..365, an annotation of another category or without a
4-number box, a ``file_name`` without its patch folder -- is refused with the file named. Shards are the detection
shards of the COCO entry (per-image JSON, no masks: train box-only detectors on them)."""
from __future__ import annotations

import json
import os

from ..shard_writer import write_shards
from ..sources import img_ext, source_file
from .registry import Dataset, register_dataset

NUM_CLASSES = 365
# in the v2 annotations, absent from the v2 download (mmdet 3.x objects365.py: objv2_ignore_list)
V2_ABSENT = ("patch16/objects365_v2_00908726.jpg", "patch6/objects365_v1_00320532.jpg",
             "patch6/objects365_v1_00320534.jpg")


def annotation_file(root, split):
    return os.path.join(root, "annotations", f"zhiyuan_objv2_{split}.json")


def check_categories(cats, where):
    """The 365 categories with ids 1..365 and a name each (``ValueError`` naming ``where``)."""
    if not isinstance(cats, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) and
                                             isinstance(c.get("id"), int) for c in cats):
        raise ValueError(f"{where}: 'categories' must be a list of {{'id': int, 'name': str}}")
    ids = sorted(c["id"] for c in cats)
    if ids != list(range(1, NUM_CLASSES + 1)):
        raise ValueError(f"{where}: Objects365 has {NUM_CLASSES} categories with ids 1..{NUM_CLASSES}; this file has "
                         f"{len(cats)} (ids {ids[:3]}...{ids[-3:]})")
    return sorted(cats, key=lambda c: c["id"])


def patch_name(file_name, where):
    """``images/v1/patch8/objects365_v1_00420917.jpg`` -> ``patch8/objects365_v1_00420917.jpg``."""
    folder, name = os.path.split(str(file_name).replace("\\", "/"))
    patch = os.path.basename(folder)
    if not patch.startswith("patch") or not name:
        raise ValueError(f"{where}: file_name {file_name!r} has no patch<N>/ folder (Objects365 v2 layout)")
    return f"{patch}/{name}"


def objects365_samples(root, split, skip_missing=False, follow_symlinks=False):
    """``([(key, {image ext: path, 'json': {"image", "annotations"}})], categories)`` of ``split``, by image id."""
    ann_file = source_file(annotation_file(root, split), root, follow_symlinks, what="Objects365 annotation file")
    with open(ann_file) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise ValueError(f"{ann_file}: not a COCO-style annotation file (a JSON object with 'images', 'annotations' "
                         "and 'categories' lists)")
    cats = check_categories(data["categories"], ann_file)
    anns = {}
    for a in data["annotations"]:
        box = a.get("bbox") if isinstance(a, dict) else None
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box) or \
                not 1 <= a.get("category_id", 0) <= NUM_CLASSES or "image_id" not in a:
            raise ValueError(f"{ann_file}: annotation {a.get('id') if isinstance(a, dict) else a!r} needs an "
                             f"image_id, a category_id in 1..{NUM_CLASSES} and a 4-number bbox")
        anns.setdefault(a["image_id"], []).append(a)
    samples, missing = [], []
    for im in sorted(data["images"], key=lambda d: d["id"]):
        rel = patch_name(im.get("file_name"), f"{ann_file} image {im.get('id')}")
        try:
            path = source_file(os.path.join(root, split, rel), root, follow_symlinks,
                               what=f"image listed in {ann_file}")
        except FileNotFoundError:
            if rel not in V2_ABSENT:
                missing.append(os.path.join(root, split, rel))
            continue
        rec = {"image": dict(im, file_name=rel),
               "annotations": sorted(anns.get(im["id"], []), key=lambda a: a.get("id", 0))}
        samples.append((f"{int(im['id']):012d}", {img_ext(path): path,
                                                  "json": json.dumps(rec, separators=(",", ":")).encode()}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {ann_file} are missing, e.g. {missing[:3]}; pass "
                                "--skip-missing to leave them out")
    return samples, cats


@register_dataset("objects365")
class Objects365(Dataset):
    task = "detection"
    aliases = ("Objects365V2Dataset",)
    classes = None  # the annotation file's 365 categories
    evaluator = "coco"
    layout = ("annotations/zhiyuan_objv2_{train,val}.json, {train,val}/patch<N>/*.jpg (the official "
              "obj365_detection.py's data/Objects365/Obj365_v2/)")

    @staticmethod
    def samples(root, split, skip_missing=False, follow_symlinks=False):
        return objects365_samples(root, split, skip_missing, follow_symlinks)[0]

    @classmethod
    def meta(cls, split, source="", categories=(), **kw):
        from .coco import COCO  # the detection manifest fields: categories, class names, palette

        return dict(COCO.meta(split, source, categories), dataset=cls.name)

    @classmethod
    def write(cls, root, out, split, **kw):
        skip, follow = kw.pop("skip_missing", False), kw.pop("follow_symlinks", False)
        samples, cats = objects365_samples(root, split, skip, follow)
        return write_shards(samples, out, cls.meta(split, os.path.abspath(root), cats), **kw)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        return write_synthetic_objects365(raw_dir, num_train, num_val, seed, size)


def write_synthetic_objects365(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
    """The synthetic COCO images in the Objects365 v2 layout under ``raw_dir`` (a tiny twin for tests and
    ``make_shards synthetic --layout objects365``): 365 categories ``object<id>`` (the synthetic shapes are ids 1..7),
    boxes only, images spread over ``patch0`` / ``patch1`` with v2 ``file_name``s; returns ``raw_dir``."""
    import shutil

    from ..synthetic import write_synthetic_coco

    base = os.fspath(raw_dir)
    coco = write_synthetic_coco(os.path.join(base, "_coco"), num_train, num_val, seed=seed, size=size)
    cats = [{"id": i, "name": f"object{i}", "supercategory": "object"} for i in range(1, NUM_CLASSES + 1)]
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    for split in ("train", "val"):
        with open(os.path.join(coco, "annotations", f"instances_{split}2017.json")) as f:
            data = json.load(f)
        for k, im in enumerate(data["images"]):
            rel = f"patch{k % 2}/objects365_v2_{im['id']:08d}.jpg"
            dst = os.path.join(base, split, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(os.path.join(coco, "images", f"{split}2017", im["file_name"]), dst)
            im["file_name"] = f"images/v2/{rel}"
        anns = [{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]]
        with open(annotation_file(base, split), "w") as f:
            json.dump({"images": data["images"], "annotations": anns, "categories": cats}, f)
    shutil.rmtree(coco)
    return base
