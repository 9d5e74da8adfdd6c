"""PQ / SQ / RQ against panopticapi's ``pq_compute`` transcribed below (loop-based, reading the raw PNG + JSON files
as panopticapi does) on crowded synthetic scenes with crowd regions, void pixels, matched, unmatched and ignored
segments; the model's predictions go to panopticapi through mmdet 2.22's ``_pan2json`` (also transcribed)."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from vit_adapter_ds.data.panoptic import decode_panoptic_png
from vit_adapter_ds.evaluation.panoptic import PanopticEvaluator
from vit_adapter_ds.evaluation.registry import dataset_evaluator, recipe_evaluator

CATS = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
        {"id": 18, "name": "dog", "isthing": 1}, {"id": 40, "name": "unseen", "isthing": 1},
        {"id": 149, "name": "road", "isthing": 0}, {"id": 187, "name": "sky", "isthing": 0},
        {"id": 193, "name": "grass", "isthing": 0}]
NUM_CLASSES = len(CATS)  # the VOID label of the predictions


# ---------------------------------------------------------------- panopticapi, transcribed (test code)
def ref_rgb2id(color):
    color = color.astype(np.int32)
    return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


def ref_id2rgb(id_map):
    rgb = np.zeros((*id_map.shape, 3), dtype=np.uint8)
    for i in range(3):
        rgb[..., i] = id_map % 256
        id_map = id_map // 256
    return rgb


def ref_pq_compute(gt_json, pred_json, gt_folder, pred_folder, counters):
    OFFSET, VOID = 256 * 256 * 256, 0
    categories = {el["id"]: el for el in gt_json["categories"]}
    stat = defaultdict(lambda: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})
    preds = {el["image_id"]: el for el in pred_json["annotations"]}
    for gt_ann in gt_json["annotations"]:
        pred_ann = preds[gt_ann["image_id"]]
        pan_gt = ref_rgb2id(np.array(Image.open(os.path.join(gt_folder, gt_ann["file_name"])), dtype=np.uint32))
        pan_pred = ref_rgb2id(np.array(Image.open(os.path.join(pred_folder, pred_ann["file_name"])),
                                       dtype=np.uint32))
        gt_segms = {el["id"]: el for el in gt_ann["segments_info"]}
        pred_segms = {el["id"]: el for el in pred_ann["segments_info"]}
        pred_labels_set = set(el["id"] for el in pred_ann["segments_info"])
        labels, labels_cnt = np.unique(pan_pred, return_counts=True)
        for label, label_cnt in zip(labels, labels_cnt):
            if label not in pred_segms:
                assert label == VOID
                continue
            pred_segms[label]["area"] = label_cnt
            pred_labels_set.remove(label)
            assert pred_segms[label]["category_id"] in categories
        assert not pred_labels_set
        pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
        gt_pred_map = {}
        labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
        for label, intersection in zip(labels, labels_cnt):
            gt_pred_map[(label // OFFSET, label % OFFSET)] = intersection
        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in gt_pred_map.items():
            if gt_label not in gt_segms or pred_label not in pred_segms:
                continue
            if gt_segms[gt_label]["iscrowd"] == 1:
                continue
            if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
                continue
            union = pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection - \
                gt_pred_map.get((VOID, pred_label), 0)
            iou = intersection / union
            if iou > 0.5:
                stat[gt_segms[gt_label]["category_id"]]["tp"] += 1
                stat[gt_segms[gt_label]["category_id"]]["iou"] += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)
            else:
                counters["iou_below"] += 1
        crowd_labels_dict = {}
        for gt_label, gt_info in gt_segms.items():
            if gt_label in gt_matched:
                continue
            if gt_info["iscrowd"] == 1:
                crowd_labels_dict[gt_info["category_id"]] = gt_label
                continue
            stat[gt_info["category_id"]]["fn"] += 1
        for pred_label, pred_info in pred_segms.items():
            if pred_label in pred_matched:
                continue
            intersection = gt_pred_map.get((VOID, pred_label), 0)
            if pred_info["category_id"] in crowd_labels_dict:
                crowd = gt_pred_map.get((crowd_labels_dict[pred_info["category_id"]], pred_label), 0)
                intersection += crowd
                counters["crowd_overlap"] += crowd > 0
            if intersection / pred_info["area"] > 0.5:
                counters["ignored_fp"] += 1
                continue
            stat[pred_info["category_id"]]["fp"] += 1
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0
        n = 0
        per_class = {}
        for label, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            s = stat[label]
            iou, tp, fp, fn = s["iou"], s["tp"], s["fp"], s["fn"]
            if tp + fp + fn == 0:
                per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_class = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_class = iou / tp if tp != 0 else 0
            rq_class = tp / (tp + 0.5 * fp + 0.5 * fn)
            per_class[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
            pq, sq, rq = pq + pq_class, sq + sq_class, rq + rq_class
        results[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}
        if name == "All":
            results["per_class"] = per_class
    return results


def ref_pan2json(pan, image_id, file_name, pred_folder):
    """mmdet 2.22 CocoPanopticDataset._pan2json for one image (INSTANCE_OFFSET 1000, VOID = len(CLASSES))."""
    label2cat = {i: c["id"] for i, c in enumerate(CATS)}
    pan = pan.copy()
    segm_info = []
    for pan_label in np.unique(pan):
        sem_label = pan_label % 1000
        if sem_label == NUM_CLASSES:
            continue
        segm_info.append({"id": int(pan_label), "category_id": label2cat[sem_label],
                          "area": int((pan == pan_label).sum())})
    pan[pan % 1000 == NUM_CLASSES] = 0
    Image.fromarray(ref_id2rgb(pan)).save(os.path.join(pred_folder, file_name))
    return {"image_id": image_id, "segments_info": segm_info, "file_name": file_name}


# ---------------------------------------------------------------- crowded synthetic scenes
def _scene(rng, h=40, w=56):
    """(gt id map, gt segments_info, mmdet pan prediction)."""
    ids = np.zeros((h, w), np.int64)
    segs, nid = [], 1
    top = int(rng.integers(8, 20))
    for cat, sl in ((187, np.s_[:top, :]), (149, np.s_[top + 1:, : w // 2]), (193, np.s_[top + 1:, w // 2:])):
        ids[sl] = nid
        segs.append([nid, cat, 0])
        nid += 1
    for _ in range(int(rng.integers(4, 9))):
        cat = int(rng.choice([1, 1, 3, 18]))
        bh, bw = int(rng.integers(4, 14)), int(rng.integers(4, 14))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        ids[y:y + bh, x:x + bw] = nid
        segs.append([nid, cat, int(rng.random() < 0.25)])
        nid += 1
    ids[rng.random((h, w)) < 0.05] = 0  # scattered void
    ids[:, int(rng.integers(0, w)):][:2] = 0  # a void strip
    segments = []
    for sid, cat, crowd in segs:
        m = ids == sid
        if m.any():
            ys, xs = np.nonzero(m)
            segments.append({"id": sid * 7919 + 5, "category_id": cat, "iscrowd": crowd, "area": int(m.sum()),
                             "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]})
            ids[m] = sid * 7919 + 5
    # the prediction: each gt segment perturbed (shifted, eroded, relabelled or dropped) + spurious segments
    label = {c["id"]: i for i, c in enumerate(CATS)}
    pan = np.full((h, w), NUM_CLASSES, np.int64)
    inst = 1
    for s in segments:
        m = ids == s["id"]
        r = rng.random()
        if r < 0.12:
            continue  # missed
        dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
        m = np.roll(m, (dy, dx), (0, 1))
        cat = s["category_id"]
        if rng.random() < 0.1:
            cat = int(rng.choice([1, 3, 18, 40])) if cat in (1, 3, 18) else int(rng.choice([149, 187, 193]))
        thing = CATS[label[cat]]["isthing"]
        pan[m] = label[cat] + (inst * 1000 if thing else 0)
        inst += thing
    for _ in range(int(rng.integers(1, 4))):  # spurious things, some over void / crowds
        y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
        pan[y:y + int(rng.integers(2, 7)), x:x + int(rng.integers(2, 7))] = int(rng.choice([0, 1, 2, 3])) + \
            inst * 1000
        inst += 1
    crowd = [s for s in segments if s["iscrowd"]]
    if crowd:  # a prediction on a crowd region of its category
        m = ids == crowd[0]["id"]
        pan[m & (rng.random((h, w)) < 0.8)] = label[crowd[0]["category_id"]] + inst * 1000
        inst += 1
    pan[:2, :3] = NUM_CLASSES  # predicted void
    return ids, segments, pan


def test_pq_equals_panopticapi(tmp_path):
    rng = np.random.default_rng(2024)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_json = {"categories": CATS, "annotations": []}
    pred_json = {"annotations": []}
    ev = PanopticEvaluator(CATS)
    for image_id in range(24):
        ids, segments, pan = _scene(rng)
        name = f"{image_id:012d}.png"
        Image.fromarray(ref_id2rgb(ids)).save(gt_dir / name)
        gt_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": segments})
        pred_json["annotations"].append(ref_pan2json(pan, image_id, name, str(pred_dir)))
        # ours: the ground truth as the shards hold it (the PNG bytes + segments_info), the model's pan map
        ev.add_pan_result(decode_panoptic_png((gt_dir / name).read_bytes()), segments, pan)
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    counters = defaultdict(int)
    ref = ref_pq_compute(json.loads((tmp_path / "gt.json").read_text()), json.loads(json.dumps(pred_json)),
                         str(gt_dir), str(pred_dir), counters)
    # the scenes exercise every rule
    assert counters["ignored_fp"] > 0 and counters["crowd_overlap"] > 0 and counters["iou_below"] > 0
    per = ev.per_class()
    assert all(per[c["id"]]["tp"] and per[c["id"]]["fp"] and per[c["id"]]["fn"] for c in CATS if c["id"] != 40)
    assert per[40]["fp"] > 0 and per[40]["tp"] == 0  # a class with only false positives
    for c in CATS:
        assert {k: per[c["id"]][k] for k in ("pq", "sq", "rq")} == ref["per_class"][c["id"]], c["name"]
    assert ev.averages() == {k: ref[k] for k in ("All", "Things", "Stuff")}
    res = ev.evaluate()
    names = {"All": "", "Things": "_th", "Stuff": "_st"}
    for group, suffix in names.items():
        for m in ("pq", "sq", "rq"):
            assert res[f"{m.upper()}{suffix}"] == 100 * ref[group][m]
    assert res["PQ_dog"] == 100 * ref["per_class"][18]["pq"]
    assert 20 < res["PQ"] < 90 and ev.averages()["All"]["n"] == 7


def test_mmdet_keys_small_case_and_bad_input():
    ev = PanopticEvaluator(CATS)
    gt = np.zeros((4, 6), np.int64)
    gt[:, :3], gt[:, 3:] = 10, 20
    segs = [{"id": 10, "category_id": 1, "iscrowd": 0, "area": 12}, {"id": 20, "category_id": 149, "iscrowd": 0,
                                                                     "area": 12}]
    pan = np.full((4, 6), 4, np.int64)  # road everywhere but person (instance 1) on 3 columns minus one pixel
    pan[:, :3] = 1000
    pan[0, 0] = 4
    ev.add_pan_result(gt, segs, pan)
    res = ev.evaluate(classwise=False)
    assert list(res) == ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
    person, road = 11 / 12, 12 / 13  # IoUs worked out by hand
    assert res["PQ_th"] == pytest.approx(100 * person) and res["PQ_st"] == pytest.approx(100 * road)
    assert res["PQ"] == pytest.approx(50 * (person + road)) and res["RQ"] == 100
    with pytest.raises(ValueError, match="exceed num_classes=7"):
        ev.add_pan_result(gt, segs, np.full((4, 6), 8))
    with pytest.raises(ValueError, match="would be read as void"):
        ev.add_pan_result(gt, segs, np.zeros((4, 6), np.int64))
    with pytest.raises(KeyError, match="unknown category_id 2"):
        ev.add(gt, [{**segs[0], "category_id": 2}, segs[1]], gt, segs)
    with pytest.raises(ValueError, match="one size"):
        ev.add(gt, segs, gt[:2], segs)
    assert PanopticEvaluator(CATS).evaluate(classwise=False)["PQ"] == 0.0  # nothing seen: 0, not a crash


def test_registered_for_the_panoptic_task():
    from vit_adapter_ds.evaluation.panoptic import evaluate_panoptic

    assert dataset_evaluator("CocoPanopticDataset") is evaluate_panoptic
    assert recipe_evaluator({"val": {"type": "coco_panoptic"}}, "panoptic") is evaluate_panoptic
    assert recipe_evaluator({}, "panoptic") is evaluate_panoptic


def test_evaluate_panoptic_runs_the_model_over_the_loader():
    """The registered function's calling convention (model.predict -> pan_results; loader items with the ground
    truth id map and segments_info) gives the evaluator's numbers."""
    import torch

    from vit_adapter_ds.evaluation.panoptic import evaluate_panoptic

    rng = np.random.default_rng(7)
    scenes = [_scene(rng) for _ in range(3)]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def predict(self, img, image_sizes, ori_shapes):
            assert not self.training and ori_shapes == [(40, 56)]
            self.calls += 1
            return [{"pan_results": torch.as_tensor(scenes[int(img[0, 0, 0, 0])][2])}]

    loader = [{"img": torch.full((1, 3, 40, 56), float(i)), "img_shape": (40, 56), "ori_shape": (40, 56),
               "gt_pan_ids": ids, "segments_info": segs} for i, (ids, segs, _) in enumerate(scenes)]
    model = Model()
    res = evaluate_panoptic(model, loader, CATS, device="cpu")
    ev = PanopticEvaluator(CATS)
    for ids, segs, pan in scenes:
        ev.add_pan_result(ids, segs, pan)
    assert res == ev.evaluate() and model.calls == 3 and model.training
