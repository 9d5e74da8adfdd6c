"""The panoptic model's instance AP ('bbox' / 'segm', the official panoptic recipe's metrics, evaluated by mmdet 2.25's
``CocoPanopticDataset.evaluate``): ``evaluate_panoptic(..., iou_types, ins_ann_file)`` against a reference that
transcribes mmdet 2.25 and calls pycocotools on the instances file directly (``COCO(ins_ann_file)``, the category
ids by thing name, ``_segm2json`` of the predictions, the ``bbox`` entry popped from the mask results,
``params.imgIds`` = every image, ``maxDets = [100, 300, 1000]``), on the synthetic COCO panoptic layout's crowded
scenes (crowds, occluded boxes) with perturbed, missed and spurious predictions. Also: the synthetic layout's
instances file is the panoptic things (uncompressed RLE decoded by pycocotools), and what does not fit fails
clearly."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.data.catalog.coco_panoptic import (SYNTHETIC_PANOPTIC_CATEGORIES, uncompressed_rle,
                                                       write_synthetic_coco_panoptic)
from vit_adapter_ds.data.panoptic import rgb2id
from vit_adapter_ds.evaluation.panoptic import InstanceGroundTruth, evaluate_panoptic

H, W = 48, 64
CATS = [dict(c) for c in SYNTHETIC_PANOPTIC_CATEGORIES]  # label order: 3 things, 3 stuff
THINGS = [c for c in CATS if c["isthing"]]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = write_synthetic_coco_panoptic(tmp_path_factory.mktemp("raw"), 2, 8, seed=0, size=(H, W))
    pan = json.load(open(f"{root}/annotations/panoptic_val2017.json"))
    items = []
    for im, ann in zip(pan["images"], pan["annotations"]):
        ids = rgb2id(np.asarray(Image.open(f"{root}/annotations/panoptic_val2017/{ann['file_name']}")))
        items.append({"img": torch.zeros(1, 3, H, W), "img_shape": (H, W), "ori_shape": (H, W), "image": im,
                      "gt_pan_ids": ids, "segments_info": ann["segments_info"]})
    return root, f"{root}/annotations/instances_val2017.json", items


def _masks(ins_file, image_id):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ins_file)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    return coco, anns, [coco.annToMask(a).astype(bool) for a in anns]


def _predictions(ins_file, items, seed=0):
    """Per image ``ins_results`` (boxes x1y1x2y2 from the masks, labels, scores, masks): each ground-truth instance
    shifted / eroded / dropped / relabelled, plus spurious ones, scores all different."""
    rng = np.random.default_rng(seed)
    label_of = {c["id"]: k for k, c in enumerate(CATS)}
    out = []
    for it in items:
        _, anns, masks = _masks(ins_file, it["image"]["id"])
        labels, preds = [], []
        for a, m in zip(anns, masks):
            r = rng.random()
            if r < 0.15:
                continue  # missed
            m = np.roll(m, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2))) if r < 0.6 else m
            lab = label_of[a["category_id"]] if rng.random() > 0.1 else int(rng.integers(0, len(THINGS)))
            preds.append(m)
            labels.append(lab)
        for _ in range(int(rng.integers(0, 3))):  # spurious
            m = np.zeros((H, W), bool)
            y, x = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 8))
            m[y:y + int(rng.integers(2, 8)), x:x + int(rng.integers(2, 8))] = True
            preds.append(m)
            labels.append(int(rng.integers(0, len(THINGS))))
        masks = torch.from_numpy(np.stack(preds)) if preds else torch.zeros(0, H, W, dtype=torch.bool)
        boxes = torch.zeros(len(preds), 4)
        for k, m in enumerate(preds):
            ys, xs = np.nonzero(m)
            boxes[k] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        out.append({"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64),
                    "scores": torch.from_numpy(rng.permutation(len(preds)) / (len(preds) + 1) + 0.01).float(),
                    "masks": masks})
    return out


def _mmdet225_reference(ins_file, items, results):
    """mmdet 2.25 ``CocoPanopticDataset.evaluate`` for 'bbox' / 'segm', transcribed: ``COCO(ins_ann_file)``,
    ``cat_ids = get_cat_ids(cat_names=THING_CLASSES)``, ``_segm2json`` (label -> cat_ids[label], box
    ``[x1, y1, x2 - x1, y2 - y1]``, the mask RLE, the box score), ``bbox`` popped from the mask results,
    ``COCOeval`` with ``imgIds`` = the dataset's images and ``maxDets = [100, 300, 1000]``; ``stats[:6]``."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ins_file)
    cat_ids = gt.getCatIds(catNms=[c["name"] for c in THINGS])
    bbox_json, segm_json = [], []
    for it, r in zip(items, results):
        for k in range(len(r["labels"])):
            x1, y1, x2, y2 = (float(v) for v in r["boxes"][k])
            d = {"image_id": it["image"]["id"], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(r["scores"][k]),
                 "category_id": cat_ids[int(r["labels"][k])]}
            bbox_json.append(d)
            rle = mask_utils.encode(np.asfortranarray(r["masks"][k].numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            segm_json.append(dict(d, segmentation=rle))
    out = {}
    for iou_type, preds in (("bbox", bbox_json), ("segm", segm_json)):
        if iou_type == "segm":
            for x in preds:
                x.pop("bbox")
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(preds)
            ev = COCOeval(gt, dt, iou_type)
            ev.params.catIds = cat_ids
            ev.params.imgIds = [it["image"]["id"] for it in items]
            ev.params.maxDets = [100, 300, 1000]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for i, n in enumerate(("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")):
            out[f"{iou_type}_{n}"] = float(ev.stats[i])
    return out


class _Model(torch.nn.Module):
    def __init__(self, items, results, with_ins=True):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.queue = list(zip(items, results))
        self.with_ins = with_ins

    def predict(self, img, image_sizes, ori_shapes):
        it, r = self.queue.pop(0)
        pan = np.full((H, W), len(CATS), np.int64)  # all void: PQ is not what is checked here
        return [{"pan_results": torch.from_numpy(pan), **({"ins_results": r} if self.with_ins else {})}]


def test_synthetic_instances_file_is_the_panoptic_things(layout):
    root, ins_file, items = layout
    data = json.load(open(ins_file))
    assert [c["name"] for c in data["categories"]] == [c["name"] for c in THINGS]
    assert [im["id"] for im in data["images"]] == [it["image"]["id"] for it in items]
    crowds = 0
    for it in items:
        _, anns, masks = _masks(ins_file, it["image"]["id"])
        things = [s for s in it["segments_info"] if s["category_id"] in {c["id"] for c in THINGS}]
        assert len(anns) == len(things) > 0
        for a, m, s in zip(anns, masks, things):
            assert np.array_equal(m, it["gt_pan_ids"] == s["id"]) and a["area"] == m.sum() == s["area"]
            assert a["iscrowd"] == s["iscrowd"] and a["category_id"] == s["category_id"]
            crowds += a["iscrowd"]
    assert crowds > 0  # crowded scenes, crowd regions included


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (8, 3)])
def test_uncompressed_rle_decodes_with_pycocotools(shape):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(shape[0])
    for first in (False, True):
        m = rng.random(shape) < 0.5
        m[0, 0] = first
        rle = mask_utils.frPyObjects(uncompressed_rle(m), *shape)
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)


def test_instance_ap_equals_mmdet_225_on_the_instances_file(layout):
    _, ins_file, items = layout
    for seed in range(3):
        results = _predictions(ins_file, items, seed)
        want = _mmdet225_reference(ins_file, items, results)
        got = evaluate_panoptic(_Model(items, results), items, CATS, device="cpu", iou_types=("bbox", "segm"),
                                ins_ann_file=ins_file)
        assert {k: got[k] for k in want} == want, seed
        assert "PQ" in got and 0 < want["bbox_mAP"] < 1 and 0 < want["segm_mAP"] < 1
    # only what is asked for
    got = evaluate_panoptic(_Model(items, results), items, CATS, device="cpu", iou_types=("segm",),
                            ins_ann_file=ins_file)
    assert "segm_mAP" in got and not any(k.startswith("bbox_") for k in got)
    got = evaluate_panoptic(_Model(items, results), items, CATS, device="cpu")
    assert not any(k.startswith(("bbox_", "segm_")) for k in got)


def test_instance_categories_are_matched_by_name(tmp_path, layout):
    """A file listing the things in another order (and other categories) still maps label i to the i-th thing."""
    _, ins_file, items = layout
    data = json.load(open(ins_file))
    data["categories"] = [{"id": 90, "name": "toothbrush"}] + data["categories"][::-1]
    shuffled = tmp_path / "instances.json"
    shuffled.write_text(json.dumps(data))
    gt = InstanceGroundTruth(shuffled, CATS)
    assert gt.categories == [{"id": c["id"], "name": c["name"]} for c in THINGS]
    results = _predictions(ins_file, items, 1)
    a = evaluate_panoptic(_Model(items, results), items, CATS, device="cpu", iou_types=("bbox",),
                          ins_ann_file=ins_file)
    b = evaluate_panoptic(_Model(items, results), items, CATS, device="cpu", iou_types=("bbox",),
                          ins_ann_file=shuffled)
    assert a["bbox_mAP"] == b["bbox_mAP"] > 0


def test_what_does_not_fit_fails_clearly(tmp_path, layout):
    _, ins_file, items = layout
    results = _predictions(ins_file, items)
    with pytest.raises(FileNotFoundError, match="ins_ann_file .*nope.json: no such file"):
        evaluate_panoptic(_Model(items, results), items, CATS, iou_types=("bbox",), ins_ann_file=tmp_path / "nope.json")
    with pytest.raises(ValueError, match="need ins_ann_file"):
        evaluate_panoptic(_Model(items, results), items, CATS, iou_types=("bbox",))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="bad.json: not a readable JSON"):
        InstanceGroundTruth(bad, CATS)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        InstanceGroundTruth(bad, CATS)
    data = json.load(open(ins_file))
    data["categories"] = [c for c in data["categories"] if c["name"] != "dog"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"no category named \['dog'\]"):
        InstanceGroundTruth(bad, CATS)
    data = json.load(open(ins_file))
    data["images"] = data["images"][1:]
    bad.write_text(json.dumps(data))
    with pytest.raises(KeyError, match=f"image {items[0]['image']['id']} of the panoptic shards is not in"):
        evaluate_panoptic(_Model(items, results), items, CATS, iou_types=("bbox",), ins_ann_file=bad)
    with pytest.raises(ValueError, match="instance_on=True"):
        evaluate_panoptic(_Model(items, results, with_ins=False), items, CATS, iou_types=("segm",),
                          ins_ann_file=ins_file)
