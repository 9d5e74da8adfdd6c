"""COCO panoptic (mmdet 2.22's ``CocoPanopticDataset``, the official Mask2Former panoptic recipes): images, the panoptic
PNGs and their ``segments_info``, checked when written, as ``task='panoptic'`` shards.

Source layout (as distributed): ``annotations/panoptic_{train,val}2017.json`` (``images``, ``annotations`` = one
``{"image_id", "file_name", "segments_info"}`` per image, ``categories`` with ``isthing``), the PNG folder
``annotations/panoptic_{train,val}2017/`` (RGB, segment id = R + 256 G + 256^2 B, 0 = void) and the images in
``{train,val}2017/`` (or ``images/{train,val}2017/``).

Labels: category id -> the index of the category in the file's ``categories`` (mmdet's ``cat2label``, the order of
``COCOPanoptic.get_cat_ids``); the things must come first (Mask2Former's labels ``[0, num_things)`` are things). A
file with the 133 COCO categories must list mmdet's ``THING_CLASSES + STUFF_CLASSES`` in that order (mmdet 2.22's
``CLASSES`` spells the 8th ``' truck'`` with a space, a typo; we use ``'truck'``).
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..panoptic import rgb2id
from ..shard_writer import write_shards
from ..sources import img_ext, png_header, source_file
from .registry import Dataset, register_dataset

COCO_PANOPTIC_THING_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant',
    'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
    'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli',
    'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet',
    'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
)
COCO_PANOPTIC_STUFF_CLASSES = (
    'banner', 'blanket', 'bridge', 'cardboard', 'counter', 'curtain', 'door-stuff', 'floor-wood', 'flower', 'fruit',
    'gravel', 'house', 'light', 'mirror-stuff', 'net', 'pillow', 'platform', 'playingfield', 'railroad', 'river',
    'road', 'roof', 'sand', 'sea', 'shelf', 'snow', 'stairs', 'tent', 'towel', 'wall-brick', 'wall-stone',
    'wall-tile', 'wall-wood', 'water-other', 'window-blind', 'window-other', 'tree-merged', 'fence-merged',
    'ceiling-merged', 'sky-other-merged', 'cabinet-merged', 'table-merged', 'floor-other-merged', 'pavement-merged',
    'mountain-merged', 'grass-merged', 'dirt-merged', 'paper-merged', 'food-other-merged', 'building-other-merged',
    'rock-merged', 'wall-other-merged', 'rug-merged',
)
COCO_PANOPTIC_CLASSES = COCO_PANOPTIC_THING_CLASSES + COCO_PANOPTIC_STUFF_CLASSES  # 133: labels 0..79 things

# the synthetic twin's categories: real COCO panoptic ids and names, 3 things and 3 stuff
SYNTHETIC_PANOPTIC_CATEGORIES = (
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
    {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "isthing": 1, "supercategory": "animal"},
    {"id": 149, "name": "road", "isthing": 0, "supercategory": "ground"},
    {"id": 187, "name": "sky-other-merged", "isthing": 0, "supercategory": "sky"},
    {"id": 193, "name": "grass-merged", "isthing": 0, "supercategory": "plant"},
)


def check_categories(cats, where):
    """The categories of a panoptic annotation file: unique integer ids, names, ``isthing``, things before stuff,
    and mmdet's 133 names in order when there are 133. Returns them as a list."""
    cats = list(cats)
    if not cats:
        raise ValueError(f"{where}: no categories")
    ids = []
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str) \
                or c.get("isthing") not in (0, 1, True, False):
            raise ValueError(f"{where}: category {c!r} needs an integer 'id', a 'name' and 'isthing' 0/1")
        ids.append(c["id"])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate category ids")
    things = [bool(c["isthing"]) for c in cats]
    if things != sorted(things, reverse=True):
        raise ValueError(f"{where}: the thing categories must come before the stuff categories (Mask2Former's "
                         "labels 0..num_things-1 are things)")
    if len(cats) == len(COCO_PANOPTIC_CLASSES) and tuple(c["name"] for c in cats) != COCO_PANOPTIC_CLASSES:
        raise ValueError(f"{where}: 133 categories that are not mmdet's COCO panoptic classes in its order")
    return cats


def check_segments(segments, id_map, cat_ids, png, where):
    """``segments`` (an image's ``segments_info``) against its decoded PNG ``id_map``: unique ids, known category
    ids, every non-zero id of the PNG listed. Raises ValueError naming ``png`` / ``where``."""
    seg_ids = [s.get("id") for s in segments]
    if len(set(seg_ids)) != len(seg_ids):
        raise ValueError(f"{where}: duplicate segment ids in segments_info of {png}")
    for s in segments:
        if s.get("category_id") not in cat_ids:
            raise ValueError(f"{where}: segment {s.get('id')} of {png} has unknown category_id "
                             f"{s.get('category_id')!r}")
    present = set(np.unique(id_map).tolist()) - {0}
    extra = sorted(present - set(seg_ids))
    if extra:
        raise ValueError(f"panoptic PNG {png}: segment ids {extra[:10]} are not in its segments_info ({where})")


def read_id_map(path):
    """The (H, W) segment ids of the panoptic PNG at ``path`` (8-bit RGB required)."""
    from PIL import Image

    w, h, depth, ctype = png_header(path)
    if ctype != 2 or depth != 8:
        raise ValueError(f"panoptic PNG {path}: must be 8-bit RGB (colour type {ctype}, {depth}-bit)")
    with Image.open(path) as im:
        return rgb2id(np.asarray(im.convert("RGB")))


def coco_panoptic_samples(root, split, year=2017, skip_missing=False, follow_symlinks=False):
    """The samples of ``split``: ``{img: image, "pan.png": the panoptic PNG, "json": {"image": <image entry>,
    "file_name": <PNG name>, "segments_info": [...]}}`` keyed by the 12-digit image id, after checking every PNG
    (8-bit RGB, the image's size, every segment id listed, known category ids). An image without a panoptic
    annotation is an error, or left out with ``skip_missing``. Returns ``(samples, categories)``."""
    sub = f"{split}{year}"
    ann_file = source_file(os.path.join(root, "annotations", f"panoptic_{sub}.json"), root, follow_symlinks,
                           what="COCO panoptic annotation file")
    with open(ann_file) as f:
        data = json.load(f)
    cats = check_categories(data.get("categories", []), ann_file)
    cat_ids = {c["id"] for c in cats}
    png_dir = os.path.join(root, "annotations", f"panoptic_{sub}")
    img_dir = os.path.join(root, sub)
    if not os.path.isdir(img_dir):
        img_dir = os.path.join(root, "images", sub)
    for d, what in ((img_dir, "COCO image folder"), (png_dir, "COCO panoptic PNG folder")):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{what} not found: {d}")
    anns = {}
    for a in data.get("annotations", []):
        if a.get("image_id") in anns:
            raise ValueError(f"{ann_file}: two annotations of image {a.get('image_id')}")
        anns[a.get("image_id")] = a
    images = {im["id"]: im for im in data.get("images", [])}
    unknown = sorted(set(anns) - set(images), key=str)
    if unknown:
        raise ValueError(f"{ann_file}: annotations of images not in 'images': {unknown[:5]}")
    samples, missing = [], []
    for image_id in sorted(images):
        im = images[image_id]
        if image_id not in anns:
            missing.append(im["file_name"])
            continue
        ann = anns[image_id]
        where = f"{ann_file} (image {image_id})"
        img = source_file(os.path.join(img_dir, im["file_name"]), root, follow_symlinks,
                          what=f"image listed in {ann_file}")
        png = source_file(os.path.join(png_dir, ann["file_name"]), root, follow_symlinks,
                          what=f"panoptic PNG listed in {ann_file}")
        id_map = read_id_map(png)
        if id_map.shape != (int(im["height"]), int(im["width"])):
            raise ValueError(f"panoptic PNG {png} is {id_map.shape[0]}x{id_map.shape[1]}, the image "
                             f"{im['height']}x{im['width']}")
        segments = ann.get("segments_info", [])
        check_segments(segments, id_map, cat_ids, png, where)
        rec = {"image": im, "file_name": ann["file_name"], "segments_info": segments}
        samples.append((f"{int(image_id):012d}", {img_ext(img): img, "pan.png": png,
                                                   "json": json.dumps(rec, separators=(",", ":")).encode()}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {ann_file} have no panoptic annotation, e.g. "
                                f"{missing[:5]}; pass --skip-missing to leave them out")
    return samples, cats


@register_dataset("coco_panoptic")
class CocoPanoptic(Dataset):
    task = "panoptic"
    aliases = ("CocoPanopticDataset",)
    classes = None  # the annotation file's categories (COCO_PANOPTIC_CLASSES for the real file)
    evaluator = "coco_panoptic"
    layout = ("annotations/panoptic_{train,val}2017.json, annotations/panoptic_{train,val}2017/*.png, "
              "{train,val}2017/ (or images/{train,val}2017/)")

    @staticmethod
    def samples(root, split, skip_missing=False, follow_symlinks=False):
        return coco_panoptic_samples(root, split, skip_missing=skip_missing, follow_symlinks=follow_symlinks)[0]

    @classmethod
    def meta(cls, split, source="", categories=(), **_):
        """Panoptic manifest fields: the file's ``categories`` (label i -> categories[i]), their names,
        ``num_things`` / ``num_stuff``."""
        from ...utils.vis import make_palette

        cats = list(categories)
        things = sum(bool(c["isthing"]) for c in cats)
        return {"dataset": cls.name, "split": split, "task": "panoptic", "categories": cats,
                "classes": [c["name"] for c in cats], "num_classes": len(cats), "num_things": things,
                "num_stuff": len(cats) - things, "palette": cls.palette or make_palette(len(cats)),
                "source": source}

    @classmethod
    def write(cls, root, out, split, **kw):
        skip, follow = kw.pop("skip_missing", False), kw.pop("follow_symlinks", False)
        samples, cats = coco_panoptic_samples(root, split, skip_missing=skip, follow_symlinks=follow)
        return write_shards(samples, out, cls.meta(split, os.path.abspath(root), cats), **kw)

    @staticmethod
    def synthetic_raw(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
        return write_synthetic_coco_panoptic(raw_dir, num_train, num_val, seed, size)


def _synthetic_image(rng, h, w):
    """One synthetic scene: (RGB image, segment id map, segments_info). Sky over grass / road (stuff, with a void
    band between), 2..5 thing boxes (person / car / dog), sometimes a crowd of persons."""
    ids = np.zeros((h, w), np.int64)
    img = rng.integers(0, 40, (h, w, 3)).astype(np.int64)
    segs, colours = [], {1: (200, 60, 60), 3: (60, 60, 200), 18: (150, 110, 40), 149: (90, 90, 90),
                         187: (120, 180, 240), 193: (40, 160, 40)}
    horizon = int(h * rng.uniform(0.3, 0.5))
    split_x = int(w * rng.uniform(0.3, 0.7))
    regions = [(187, (slice(0, horizon), slice(0, w))),
               (193, (slice(horizon + 2, h), slice(0, split_x))),
               (149, (slice(horizon + 2, h), slice(split_x, w)))]
    next_id = 1
    for cat, sl in regions:
        ids[sl] = next_id
        segs.append({"id": next_id, "category_id": cat, "iscrowd": 0})
        next_id += 1
    for k in range(int(rng.integers(2, 6))):
        cat = int(rng.choice([1, 3, 18]))
        bh, bw = int(rng.integers(h // 10, h // 3)), int(rng.integers(w // 10, w // 3))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        crowd = int(cat == 1 and rng.random() < 0.3)
        ids[y:y + bh, x:x + bw] = next_id
        segs.append({"id": next_id, "category_id": cat, "iscrowd": crowd})
        next_id += 1
    out = []
    for s in segs:
        m = ids == s["id"]
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        s.update(area=int(m.sum()), bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                          int(ys.max() - ys.min() + 1)])
        img[m] += colours[s["category_id"]]
        out.append(s)
    # random segment ids (the PNG's ids are arbitrary 24-bit numbers, as in the real files)
    new = rng.choice(np.arange(1, 1 << 24), size=len(out), replace=False)
    remap = np.zeros(next_id, np.int64)
    for s, n in zip(out, new):
        remap[s["id"]], s["id"] = int(n), int(n)
    return np.clip(img, 0, 255).astype(np.uint8), remap[ids], out


def uncompressed_rle(mask) -> dict:
    """COCO's uncompressed RLE of an (H, W) bool mask (``counts``: run lengths in column-major order, starting with
    a run of zeros; the form of COCO's crowd annotations), without pycocotools."""
    mask = np.asarray(mask, bool)
    flat = mask.T.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).astype(int).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def instances_from_panoptic(image_id, ids, segments, thing_ids, first_id):
    """The thing segments of one panoptic image as COCO instance annotations (``id`` from ``first_id``, the
    segment's ``category_id`` / ``iscrowd`` / ``area`` / ``bbox``, its mask as uncompressed RLE): COCO's instances
    file describes the same objects as its panoptic file."""
    out = []
    for s in segments:
        if s["category_id"] not in thing_ids:
            continue
        out.append({"id": first_id + len(out), "image_id": image_id, "category_id": s["category_id"],
                    "iscrowd": int(s.get("iscrowd", 0)), "area": int(s["area"]), "bbox": list(s["bbox"]),
                    "segmentation": uncompressed_rle(ids == s["id"])})
    return out


def write_synthetic_coco_panoptic(raw_dir, num_train, num_val, seed=0, size=(512, 683)):
    """The tiny twin of the COCO panoptic layout under ``raw_dir/coco_panoptic`` (returned): JPEG images in
    ``{train,val}2017/``, RGB panoptic PNGs in ``annotations/panoptic_{train,val}2017/`` and the JSONs, with the six
    :data:`SYNTHETIC_PANOPTIC_CATEGORIES` (3 things, 3 stuff), crowd persons and void pixels; beside them COCO's
    instances files ``annotations/instances_{train,val}2017.json`` (the thing segments as instances, the
    ``ins_ann_file`` of the 'bbox' / 'segm' metrics)."""
    from PIL import Image

    from ..panoptic import id2rgb

    root = os.path.join(raw_dir, "coco_panoptic")
    h, w = size
    for split, n in (("train", num_train), ("val", num_val)):
        sub = f"{split}2017"
        idir, pdir = os.path.join(root, sub), os.path.join(root, "annotations", f"panoptic_{sub}")
        os.makedirs(idir, exist_ok=True)
        os.makedirs(pdir, exist_ok=True)
        images, anns, instances = [], [], []
        thing_ids = {c["id"] for c in SYNTHETIC_PANOPTIC_CATEGORIES if c["isthing"]}
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            img, ids, segs = _synthetic_image(rng, h, w)
            image_id = (1 if split == "train" else 500000) + i
            name = f"{image_id:012d}"
            Image.fromarray(img).save(os.path.join(idir, name + ".jpg"), quality=90)
            Image.fromarray(id2rgb(ids)).save(os.path.join(pdir, name + ".png"))
            images.append({"id": image_id, "file_name": name + ".jpg", "height": h, "width": w})
            anns.append({"image_id": image_id, "file_name": name + ".png", "segments_info": segs})
            instances += instances_from_panoptic(image_id, ids, segs, thing_ids, len(instances) + 1)
        with open(os.path.join(root, "annotations", f"panoptic_{sub}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": list(SYNTHETIC_PANOPTIC_CATEGORIES)}, f)
        thing_cats = [{k: c[k] for k in ("id", "name", "supercategory")} for c in SYNTHETIC_PANOPTIC_CATEGORIES
                      if c["isthing"]]
        with open(os.path.join(root, "annotations", f"instances_{sub}.json"), "w") as f:
            json.dump({"images": images, "annotations": instances, "categories": thing_cats}, f)
    return root
