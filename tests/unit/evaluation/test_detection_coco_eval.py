"""COCO AP of CocoEvaluator equals pycocotools run directly on the same json files (independent reference), also
when the images are spread over 2 ranks; an image evaluated twice is refused."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vit_adapter_ds.evaluation.coco import CocoEvaluator

CATS = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]


def _poly_box(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def dataset():
    images = [{"id": 10, "height": 40, "width": 50}, {"id": 11, "height": 30, "width": 30},
              {"id": 12, "height": 40, "width": 40}]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 5, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": _poly_box(5, 5, 20, 10)},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [30, 20, 15, 15], "area": 225, "iscrowd": 0,
         "segmentation": _poly_box(30, 20, 15, 15)},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 10, 12], "area": 120, "iscrowd": 0,
         "segmentation": _poly_box(0, 0, 10, 12)},
        {"id": 4, "image_id": 11, "category_id": 7, "bbox": [15, 15, 10, 10], "area": 100, "iscrowd": 1,
         "segmentation": _poly_box(15, 15, 10, 10)},
        {"id": 5, "image_id": 12, "category_id": 7, "bbox": [2, 2, 30, 30], "area": 900, "iscrowd": 0,
         "segmentation": _poly_box(2, 2, 30, 30)},
    ]
    # (image, class index, score, x, y, w, h) -- typed by hand, some right, some off, one false positive
    dets = [(10, 0, 0.9, 5, 5, 20, 10), (10, 1, 0.6, 32, 22, 13, 13), (10, 0, 0.3, 30, 20, 15, 15),
            (11, 0, 0.8, 1, 0, 10, 11), (11, 1, 0.7, 15, 15, 10, 10), (12, 1, 0.95, 4, 4, 20, 20),
            (12, 1, 0.5, 2, 2, 30, 30)]
    return images, anns, dets


def _mask(h, w, x, y, bw, bh):
    m = np.zeros((h, w), dtype=bool)
    m[y:y + bh, x:x + bw] = True
    return m


def predictions(images, dets):
    size = {im["id"]: (im["height"], im["width"]) for im in images}
    out = {}
    for img, c, s, x, y, w, h in dets:
        d = out.setdefault(img, {"boxes": [], "labels": [], "scores": [], "masks": []})
        d["boxes"].append([x, y, x + w, y + h])
        d["labels"].append(c)
        d["scores"].append(s)
        d["masks"].append(_mask(*size[img], x, y, w, h))
    return {k: {"boxes": torch.tensor(v["boxes"], dtype=torch.float32), "labels": torch.tensor(v["labels"]),
                "scores": torch.tensor(v["scores"]), "masks": torch.from_numpy(np.stack(v["masks"]))}
            for k, v in out.items()}


def reference(tmp_path, images, anns, dets):
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    gt = COCO(str(gt_file))
    size = {im["id"]: (im["height"], im["width"]) for im in images}
    stats = {}
    for t in ("bbox", "segm"):
        res = []
        for img, c, s, x, y, w, h in dets:
            r = {"image_id": img, "category_id": CATS[c]["id"], "score": s}
            if t == "bbox":
                r["bbox"] = [x, y, w, h]
            else:
                rle = mask_utils.encode(np.asfortranarray(_mask(*size[img], x, y, w, h).astype(np.uint8)))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            res.append(r)
        res_file = tmp_path / f"{t}.json"
        res_file.write_text(json.dumps(res))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), t)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats[t] = ev.stats[:6]
    return stats


def _fill(ev, images, anns, preds, keep=lambda i: True):
    for i, im in enumerate(images):
        if keep(i):
            ev.add_ground_truth(im, [a for a in anns if a["image_id"] == im["id"]])
            ev.add_prediction(im["id"], preds[im["id"]])


def test_ap_equals_pycocotools_on_the_same_json(tmp_path):
    images, anns, dets = dataset()
    ref = reference(tmp_path, images, anns, dets)
    ev = CocoEvaluator(CATS)
    _fill(ev, images, anns, predictions(images, dets))
    m = ev.evaluate()
    assert m["num_images"] == 3
    names = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
    for t in ("bbox", "segm"):
        got = [m[f"{t}_{n}"] for n in names]
        np.testing.assert_allclose(got, ref[t], atol=1e-12)
    assert 0.3 < m["bbox_mAP"] < 0.95  # a non-trivial case


def test_empty_polygons_in_ground_truth_do_not_crash():
    images, anns, dets = dataset()
    anns = [dict(a) for a in anns] + [{"id": 9, "image_id": 12, "category_id": 3, "bbox": [20, 20, 5, 5],
                                       "area": 25, "iscrowd": 0, "segmentation": [[1, 2, 3, 4], []]}]
    ev = CocoEvaluator(CATS)
    _fill(ev, images, anns, predictions(images, dets))
    m = ev.evaluate()
    assert np.isfinite(m["segm_mAP"])


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images, anns, dets = dataset()
        preds = predictions(images, dets)
        ev = CocoEvaluator(CATS)
        _fill(ev, images, anns, preds, lambda i: i % world == rank)
        out = {"split": ev.evaluate()}
        dup = CocoEvaluator(CATS)
        _fill(dup, images, anns, preds)  # every rank adds every image
        try:
            dup.evaluate()
            out["duplicate"] = "no error"
        except RuntimeError as e:
            out["duplicate"] = str(e)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_equal_one_process_and_duplicates_are_refused(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1
    assert "evaluated twice" in r0["duplicate"]
    images, anns, dets = dataset()
    ev = CocoEvaluator(CATS)
    _fill(ev, images, anns, predictions(images, dets))
    single = ev.evaluate()
    assert r0["split"] == pytest.approx(single, abs=1e-12)


class _Oracle(torch.nn.Module):
    """Predicts the ground truth of the image being evaluated (perfect detections -> AP 1)."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.w = answers, torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def predict(self, img, image_sizes, ori_shapes):
        self.calls.append((tuple(img.shape), image_sizes[0], ori_shapes[0]))
        return [self.answers.pop(0)]


def test_evaluate_detector_over_the_val_loader(tmp_path):
    from vit_adapter_ds.data.detection import DetectionValLoader, segmentation_to_mask
    from vit_adapter_ds.data.make_shards import write_coco
    from vit_adapter_ds.data.synthetic import write_synthetic_coco
    from vit_adapter_ds.evaluation.coco import evaluate_detector

    write_synthetic_coco(str(tmp_path), 1, 3, seed=0, size=(64, 96))
    write_coco(str(tmp_path), str(tmp_path / "val"), "val", num_workers=1, progress=False)
    loader = DetectionValLoader(tmp_path / "val", scale=(192, 128))
    answers = []
    for item in loader:
        anns = item["annotations"]
        answers.append({"boxes": torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32),
                        "labels": torch.tensor([a["category_id"] - 1 for a in anns]),
                        "scores": torch.ones(len(anns)),
                        "masks": torch.from_numpy(np.stack([segmentation_to_mask(a["segmentation"], 64, 96)
                                                            for a in anns]).astype(bool))})
    model = _Oracle(answers)
    m = evaluate_detector(model, loader, loader.categories)
    assert m["num_images"] == 3 and m["bbox_mAP"] == pytest.approx(1.0) and m["segm_mAP"] == pytest.approx(1.0)
    assert model.calls[0] == ((1, 3, 128, 192), (128, 192), (64, 96))
    assert model.training
