"""COCO panoptic: the catalog entry's writer on the synthetic twin of the official layout (PNG + JSON), its
refusals (each naming the file), and the training targets against mmdet 2.22's rule re-derived pixel by pixel."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from vit_adapter_ds.data.catalog import get_dataset
from vit_adapter_ds.data.catalog.coco_panoptic import (COCO_PANOPTIC_CLASSES, SYNTHETIC_PANOPTIC_CATEGORIES,
                                                       write_synthetic_coco_panoptic)
from vit_adapter_ds.data.manifest import read_manifest
from vit_adapter_ds.data.decode import BadSample
from vit_adapter_ds.data.panoptic import decode_panoptic_png, decode_panoptic_sample, panoptic_targets


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_synthetic_coco_panoptic(str(tmp_path_factory.mktemp("pan")), 3, 2, size=(48, 64))


def _copy(raw, tmp_path):
    dst = tmp_path / "coco_panoptic"
    shutil.copytree(raw, dst)
    return str(dst)


def _png_ids(path):  # the official decoding, written out: R + 256 G + 256^2 B
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 256 * 256 * a[..., 2]


def test_entry_and_the_mmdet_class_order():
    e = get_dataset("CocoPanopticDataset")
    assert (e.name, e.task, e.evaluator) == ("coco_panoptic", "panoptic", "coco_panoptic")
    assert len(COCO_PANOPTIC_CLASSES) == 133 == len(set(COCO_PANOPTIC_CLASSES))
    # mmdet 2.22 CocoPanopticDataset: THING_CLASSES (80) then STUFF_CLASSES (53)
    assert COCO_PANOPTIC_CLASSES[:3] == ("person", "bicycle", "car") and COCO_PANOPTIC_CLASSES[7] == "truck"
    assert COCO_PANOPTIC_CLASSES[79:81] == ("toothbrush", "banner")
    assert COCO_PANOPTIC_CLASSES[-3:] == ("rock-merged", "wall-other-merged", "rug-merged")


def test_shards_hold_the_source_files(raw, tmp_path):
    m = get_dataset("coco_panoptic").write(raw, str(tmp_path / "val"), "val", num_workers=1, progress=False)
    assert m == read_manifest(str(tmp_path / "val"))
    assert (m["task"], m["num_classes"], m["num_things"], m["num_stuff"]) == ("panoptic", 6, 3, 3)
    assert m["classes"] == [c["name"] for c in SYNTHETIC_PANOPTIC_CATEGORIES]
    with open(os.path.join(raw, "annotations", "panoptic_val2017.json")) as f:
        ann = json.load(f)
    by_id = {a["image_id"]: a for a in ann["annotations"]}
    with tarfile.open(tmp_path / "val" / m["shards"][0]["name"]) as tar:
        names = sorted(tar.getnames())
        assert names == sorted(f"{i:012d}.{x}" for i in (500000, 500001) for x in ("jpg", "json", "pan.png"))
        for image_id in (500000, 500001):
            key = f"{image_id:012d}"
            rec = json.loads(tar.extractfile(key + ".json").read())
            assert rec["segments_info"] == by_id[image_id]["segments_info"] and rec["image"]["id"] == image_id
            png = os.path.join(raw, "annotations", "panoptic_val2017", rec["file_name"])
            data = tar.extractfile(key + ".pan.png").read()
            assert data == open(png, "rb").read()
            assert tar.extractfile(key + ".jpg").read() == open(os.path.join(raw, "val2017", key + ".jpg"),
                                                                "rb").read()
            ids = decode_panoptic_png(data)
            assert np.array_equal(ids, _png_ids(png))
            # the twin covers things, stuff, crowds and void
            assert set(np.unique(ids).tolist()) == {0} | {s["id"] for s in rec["segments_info"]}
            # the loader's decoding of the sample: the id map and mmdet's targets
            sample = {x: tar.extractfile(f"{key}.{x}").read() for x in ("jpg", "json", "pan.png")}
            d = decode_panoptic_sample(sample, m["categories"])
            cat2label = {c["id"]: i for i, c in enumerate(m["categories"])}
            things = {c["id"] for c in m["categories"] if c["isthing"]}
            boxes, labels, masks, seg = _rule(_png_ids(png), rec["segments_info"], cat2label, things)
            assert np.array_equal(d["gt_pan_ids"], _png_ids(png)) and d["gt_semantic_seg"].tolist() == seg
            assert d["gt_bboxes"].tolist() == boxes and d["gt_labels"].tolist() == labels
            assert d["gt_masks"].tolist() == masks and tuple(d["img"].shape) == (3, 48, 64)
            with pytest.raises(BadSample, match="without"):
                decode_panoptic_sample({k: v for k, v in sample.items() if k != "json"}, m["categories"])
            small = Image.new("RGB", (8, 8))
            buf = io.BytesIO()
            small.save(buf, format="PNG")
            with pytest.raises(BadSample, match="!= panoptic PNG size"):
                decode_panoptic_sample({**sample, "pan.png": buf.getvalue()}, m["categories"])
            with pytest.raises(BadSample, match="unknown category_id"):
                decode_panoptic_sample(sample, [c for c in m["categories"]
                                                if c["id"] != rec["segments_info"][0]["category_id"]])
    segs = [s for a in ann["annotations"] for s in a["segments_info"]]
    cats = {s["category_id"] for s in segs}
    assert {149, 187, 193} <= cats and cats & {1, 3, 18}


def _edit(root, fn):
    path = os.path.join(root, "annotations", "panoptic_train2017.json")
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_refusals_name_the_file(raw, tmp_path):
    entry = get_dataset("coco_panoptic")
    root = _copy(raw, tmp_path)
    path = _edit(root, lambda d: d["annotations"][0]["segments_info"][0].update(category_id=999))
    with pytest.raises(ValueError, match=r"panoptic_train2017\.json.*unknown category_id 999"):
        entry.samples(root, "train")

    root = _copy(raw, tmp_path / "b")
    _edit(root, lambda d: d["annotations"][1]["segments_info"].pop())
    with pytest.raises(ValueError, match=r"panoptic_train2017/000000000002\.png: segment ids \[\d+\] are not in"):
        entry.samples(root, "train")

    root = _copy(raw, tmp_path / "c")
    png = os.path.join(root, "annotations", "panoptic_train2017", "000000000003.png")
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(png)
    with pytest.raises(ValueError, match=r"000000000003\.png is 40x64, the image 48x64"):
        entry.samples(root, "train")

    root = _copy(raw, tmp_path / "d")
    path = _edit(root, lambda d: d["categories"].reverse())
    with pytest.raises(ValueError, match="thing categories must come before"):
        entry.samples(root, "train")
    assert path.endswith("panoptic_train2017.json")

    root = _copy(raw, tmp_path / "e")
    _edit(root, lambda d: d["annotations"].pop())
    with pytest.raises(FileNotFoundError, match="1 image.*no panoptic annotation"):
        entry.samples(root, "train")
    assert [k for k, _ in entry.samples(root, "train", skip_missing=True)] == ["000000000001", "000000000002"]


def _rule(id_map, segments, cat2label, thing_ids):
    """mmdet 2.22, re-derived: CocoPanopticDataset._parse_ann_info keeps segments with area > 0 and a bbox of
    sides >= 1; non-crowd things give (xyxy box, label, mask); LoadPanopticAnnotations paints every kept segment's
    label into gt_semantic_seg (255 elsewhere)."""
    h, w = id_map.shape
    kept = {}
    boxes, labels, masks = [], [], []
    for s in segments:
        x, y, bw, bh = s["bbox"]
        if s["area"] <= 0 or bw < 1 or bh < 1:
            continue
        kept[s["id"]] = cat2label[s["category_id"]]
        if s["category_id"] in thing_ids and not s["iscrowd"]:
            boxes.append([x, y, x + bw, y + bh])
            labels.append(cat2label[s["category_id"]])
            masks.append([[1 if id_map[i, j] == s["id"] else 0 for j in range(w)] for i in range(h)])
    seg = [[kept.get(int(id_map[i, j]), 255) for j in range(w)] for i in range(h)]
    return boxes, labels, masks, seg


def test_targets_follow_mmdet():
    rng = np.random.default_rng(3)
    cats = list(SYNTHETIC_PANOPTIC_CATEGORIES)
    cat2label = {c["id"]: i for i, c in enumerate(cats)}
    thing_ids = {c["id"] for c in cats if c["isthing"]}
    id_map = rng.choice([0, 11, 22, 33, 44, 55, 66, 77], size=(12, 16))
    segs = [{"id": 11, "category_id": 1, "iscrowd": 0, "area": 20, "bbox": [1, 2, 5, 6]},
            {"id": 22, "category_id": 3, "iscrowd": 1, "area": 20, "bbox": [0, 0, 4, 4]},   # crowd thing
            {"id": 33, "category_id": 18, "iscrowd": 0, "area": 9, "bbox": [3, 3, 7, 2]},
            {"id": 44, "category_id": 149, "iscrowd": 0, "area": 30, "bbox": [0, 0, 16, 12]},
            {"id": 55, "category_id": 187, "iscrowd": 0, "area": 0, "bbox": [0, 0, 16, 12]},  # area 0: dropped
            {"id": 66, "category_id": 1, "iscrowd": 0, "area": 5, "bbox": [2, 2, 0.5, 3]},   # thin box: dropped
            {"id": 77, "category_id": 193, "iscrowd": 0, "area": 8, "bbox": [1, 1, 3, 3]}]
    t = panoptic_targets(id_map, segs, cat2label, thing_ids)
    boxes, labels, masks, seg = _rule(id_map, segs, cat2label, thing_ids)
    assert t["gt_bboxes"].tolist() == boxes and t["gt_labels"].tolist() == labels == [0, 2]
    assert t["gt_masks"].tolist() == masks and t["gt_semantic_seg"].tolist() == seg
    assert t["gt_semantic_seg"].dtype == np.uint8 and t["gt_masks"].shape == (2, 12, 16)
    assert set(np.unique(t["gt_semantic_seg"]).tolist()) == {0, 1, 2, 3, 5, 255}
    empty = panoptic_targets(np.zeros((4, 5), np.int64), [], cat2label, thing_ids)
    assert empty["gt_bboxes"].shape == (0, 4) and empty["gt_masks"].shape == (0, 4, 5)
    assert (empty["gt_semantic_seg"] == 255).all()
