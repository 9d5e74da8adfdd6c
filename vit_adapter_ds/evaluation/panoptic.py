"""Panoptic quality (PQ / SQ / RQ; all, things, stuff, per class): the COCO panoptic metric of panopticapi's
``pq_compute`` (and mmdet 2.22's copy of it), computed in memory from segment id maps.

Per image (ground truth: the id map of its panoptic PNG, 0 = void, and its ``segments_info`` with ``id``,
``category_id``, ``iscrowd``, ``area``; prediction: an id map, 0 = void, and its segments ``{"id", "category_id"}``):

* a predicted segment's area is its pixel count; the ground truth's is its ``segments_info`` ``area``;
* a ground-truth and a predicted segment of the same category (the ground truth not ``iscrowd``) match when
  ``IoU = I / (A_pred + A_gt - I - I_pred,void) > 0.5`` (the predicted pixels on void do not count); a match adds
  one TP and its IoU to the category;
* an unmatched non-crowd ground-truth segment is a FN; an unmatched predicted segment is a FP unless more than half
  of its area lies on void or on the crowd region of its category (the last crowd segment of that category in
  ``segments_info``, as panopticapi keeps one per category);
* per category ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP`` (0 without TP), ``RQ = TP / (TP + FP/2
  + FN/2)``; the averages (all / things / stuff) are over the categories with ``TP + FP + FN > 0`` only (a class
  seen nowhere counts in no average and reports 0). The IoUs are summed in panopticapi's single-process order
  (images in the order given, pairs by ground-truth id then predicted id), so the numbers equal its own exactly.

Predictions as the model gives them (mmdet's ``MaskFormerFusionHead`` / ``panoptic_postprocess``,
:meth:`PanopticEvaluator.add_pan_result`): one (H, W) integer map at the original image size whose pixels hold
``label + instance_id * INSTANCE_OFFSET`` (``INSTANCE_OFFSET = 1000``; ``label`` in ``0..num_classes-1`` indexes the
dataset's ``categories``, things first; stuff segments use instance 0, things 1, 2, ...), and ``num_classes``
(the VOID label) on pixels left unassigned. As mmdet's ``CocoPanopticDataset._pan2json``: each distinct value other
than void is one segment whose id is the value itself (the value 0, i.e. label 0 with instance 0, would be read as
void by panopticapi and is refused).

The metric keys are mmdet 2.22's (``CocoPanopticDataset.evaluate`` / ``parse_pq_results``): ``PQ``, ``SQ``, ``RQ``,
``PQ_th``, ``SQ_th``, ``RQ_th``, ``PQ_st``, ``SQ_st``, ``RQ_st``, in percent.

Instance AP (``'bbox'`` / ``'segm'``, the official panoptic recipe's ``metric=['PQ', 'bbox', 'segm']``, which its
README evaluates with mmdet 2.25): as mmdet 2.25's ``CocoPanopticDataset.evaluate``, the model's ``ins_results``
(things only) are scored by pycocotools against COCO's *instances* file (``ins_ann_file``, e.g.
``annotations/instances_val2017.json``; the panoptic PNGs are not used), over the evaluated images, with the thing
label ``i`` -> the instances file's category named like the ``i``-th thing (mmdet: ``get_cat_ids(cat_names=
THING_CLASSES)``, which keeps the file's order: the same for COCO's files, where both orders agree), ``maxDets =
[100, 300, 1000]`` and the keys ``bbox_mAP`` ... ``segm_mAP_l`` (fractions, not percent), through
:class:`~vit_adapter_ds.evaluation.coco.CocoEvaluator`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

INSTANCE_OFFSET = 1000  # mmdet.core.INSTANCE_OFFSET
VOID = 0                # panopticapi's void segment id
OFFSET = 1 << 24        # segment ids are 24-bit (RGB PNGs); gt * OFFSET + pred codes a pair


def pan_to_segments(pan, cat_ids):
    """An mmdet panoptic result map (``label + instance * INSTANCE_OFFSET``, void = ``num_classes`` =
    ``len(cat_ids)``) -> ``(id map with void = 0, [{"id", "category_id"}])`` (mmdet's ``_pan2json``: each distinct
    value other than void is one segment whose id is the value; ``cat_ids[label]`` its category)."""
    pan = np.asarray(pan)
    if pan.ndim != 2 or not np.issubdtype(pan.dtype, np.integer):
        raise ValueError(f"a panoptic result is an (H, W) integer map, got {pan.dtype} {pan.shape}")
    pan = pan.astype(np.int64)
    num_classes = len(cat_ids)
    if pan.size and (pan.min() < 0 or pan.max() >= OFFSET):
        raise ValueError(f"panoptic result values must lie in [0, 2^24), got {pan.min()}..{pan.max()}")
    labels = pan % INSTANCE_OFFSET
    bad = np.unique(labels[labels > num_classes])
    if bad.size:
        raise ValueError(f"panoptic result labels {bad[:10].tolist()} exceed num_classes={num_classes} "
                         f"(the VOID label)")
    void = labels == num_classes
    if (pan[~void] == VOID).any():
        raise ValueError("panoptic result: value 0 (label 0, instance 0) would be read as void; things take "
                         "instance ids from 1")
    ids = np.where(void, VOID, pan)
    segments = [{"id": int(v), "category_id": cat_ids[int(v) % INSTANCE_OFFSET]}
                for v in np.unique(ids) if v != VOID]
    return ids, segments


def panoptic_segments(pan, categories):
    """:func:`pan_to_segments` with ``categories`` (label order: ``id``, ``name``, ``isthing``), each segment also
    with its ``name``, ``isthing``, ``area`` (pixels) and ``bbox`` ``[x, y, w, h]``: COCO's panoptic prediction
    ``segments_info``."""
    ids, segments = pan_to_segments(pan, [c["id"] for c in categories])
    by_id = {c["id"]: c for c in categories}
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        c = by_id[s["category_id"]]
        s.update(name=str(c["name"]), isthing=int(bool(c["isthing"])), area=int(len(ys)),
                 bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)])
    return ids, segments


class PanopticEvaluator:
    """Accumulates panopticapi's per-category ``iou, tp, fp, fn`` over images; :meth:`evaluate` gives the metrics.

    ``categories``: the dataset's categories in label order (``{"id", "name", "isthing"}``, e.g. a panoptic shard
    manifest's ``categories``)."""

    def __init__(self, categories):
        self.categories = [dict(c) for c in categories]
        if not self.categories:
            raise ValueError("PanopticEvaluator needs the dataset's categories")
        self.cat_ids = [c["id"] for c in self.categories]
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise ValueError("PanopticEvaluator: duplicate category ids")
        self.index = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.iou = [0.0] * len(self.cat_ids)
        self.tp, self.fp, self.fn = ([0] * len(self.cat_ids) for _ in range(3))
        self.num_images = 0

    # ------------------------------------------------------------------ input
    def pan_to_segments(self, pan):
        """An mmdet panoptic result map (``label + instance * INSTANCE_OFFSET``, void = ``num_classes``) ->
        ``(id map with void = 0, [{"id", "category_id"}])``."""
        return pan_to_segments(pan, self.cat_ids)

    def add_pan_result(self, gt_ids, gt_segments, pan):
        """One image: the ground truth (id map, ``segments_info``) and the model's panoptic map (module doc)."""
        pred_ids, pred_segments = self.pan_to_segments(pan)
        self.add(gt_ids, gt_segments, pred_ids, pred_segments)

    def add(self, gt_ids, gt_segments, pred_ids, pred_segments):
        """One image in panopticapi's terms: id maps (0 = void) and segment lists (see the module doc)."""
        gt_ids, pred_ids = np.asarray(gt_ids, np.int64), np.asarray(pred_ids, np.int64)
        if gt_ids.shape != pred_ids.shape or gt_ids.ndim != 2:
            raise ValueError(f"ground truth {gt_ids.shape} and prediction {pred_ids.shape} must be (H, W) maps of "
                             "one size")
        for m in (gt_ids, pred_ids):
            if m.size and (m.min() < 0 or m.max() >= OFFSET):
                raise ValueError("segment ids must lie in [0, 2^24)")
        gt = {s["id"]: s for s in gt_segments}
        pred = {s["id"]: dict(s) for s in pred_segments}
        for s in list(gt.values()) + list(pred.values()):
            if s["category_id"] not in self.index:
                raise KeyError(f"segment {s['id']} has unknown category_id {s['category_id']}")
        ids, counts = np.unique(pred_ids, return_counts=True)
        listed = set(pred)
        for i, n in zip(ids.tolist(), counts.tolist()):
            if i == VOID:
                continue
            if i not in pred:
                raise KeyError(f"predicted segment {i} is in the id map but not in the segments")
            pred[i]["area"] = n
            listed.discard(i)
        if listed:
            raise KeyError(f"predicted segments {sorted(listed)[:10]} are in the segments but not in the id map")

        pairs, inter = np.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
        pairs_gt, pairs_pred = (pairs // OFFSET).tolist(), (pairs % OFFSET).tolist()
        inter = inter.tolist()
        on_void = {p: n for g, p, n in zip(pairs_gt, pairs_pred, inter) if g == VOID}
        overlap = dict(zip(zip(pairs_gt, pairs_pred), inter))
        gt_matched, pred_matched = set(), set()
        for g, p, n in zip(pairs_gt, pairs_pred, inter):
            if g not in gt or p not in pred or gt[g]["iscrowd"] == 1:
                continue
            cat = gt[g]["category_id"]
            if cat != pred[p]["category_id"]:
                continue
            iou = n / (pred[p]["area"] + gt[g]["area"] - n - on_void.get(p, 0))
            if iou > 0.5:
                k = self.index[cat]
                self.tp[k] += 1
                self.iou[k] += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd = {}
        for g, s in gt.items():
            if g in gt_matched:
                continue
            if s["iscrowd"] == 1:
                crowd[s["category_id"]] = g
                continue
            self.fn[self.index[s["category_id"]]] += 1
        for p, s in pred.items():
            if p in pred_matched:
                continue
            ignored = on_void.get(p, 0)
            if s["category_id"] in crowd:
                ignored += overlap.get((crowd[s["category_id"]], p), 0)
            if ignored / s["area"] > 0.5:
                continue
            self.fp[self.index[s["category_id"]]] += 1
        self.num_images += 1

    # ------------------------------------------------------------------ output
    def all_reduce(self):
        """Sum the statistics over the ranks of the default process group (collective; a no-op without one)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        t = torch.tensor([self.iou, self.tp, self.fp, self.fn, [self.num_images] * len(self.iou)],
                         dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        t = t.cpu()
        self.iou = t[0].tolist()
        self.tp, self.fp, self.fn = ([int(v) for v in t[i].tolist()] for i in (1, 2, 3))
        self.num_images = int(t[4, 0])

    def per_class(self):
        """``{category_id: {"pq", "sq", "rq", "tp", "fp", "fn"}}`` (pq = sq = rq = 0 for a class seen nowhere)."""
        out = {}
        for k, cid in enumerate(self.cat_ids):
            iou, tp, fp, fn = self.iou[k], self.tp[k], self.fp[k], self.fn[k]
            if tp + fp + fn == 0:
                out[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
                continue
            denom = tp + 0.5 * fp + 0.5 * fn
            out[cid] = {"pq": iou / denom, "sq": iou / tp if tp != 0 else 0, "rq": tp / denom,
                        "tp": tp, "fp": fp, "fn": fn}
        return out

    def averages(self):
        """``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}}``: means over the classes with TP + FP + FN > 0
        (0 when there is none)."""
        per = self.per_class()
        out = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            pq = sq = rq = 0.0
            n = 0
            for k, c in enumerate(self.categories):
                if isthing is not None and (c["isthing"] == 1) != isthing:
                    continue
                if self.tp[k] + self.fp[k] + self.fn[k] == 0:
                    continue
                r = per[c["id"]]
                n += 1
                pq, sq, rq = pq + r["pq"], sq + r["sq"], rq + r["rq"]
            out[name] = {"pq": pq / n if n else 0.0, "sq": sq / n if n else 0.0, "rq": rq / n if n else 0.0, "n": n}
        return out

    def evaluate(self, classwise=True):
        """mmdet's metric dict (percent): ``PQ``, ``SQ``, ``RQ``, ``PQ_th``, ``SQ_th``, ``RQ_th``, ``PQ_st``,
        ``SQ_st``, ``RQ_st``; with ``classwise`` also ``PQ_<name>``, ``SQ_<name>``, ``RQ_<name>`` per class."""
        avg = self.averages()
        res = {}
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for m in ("pq", "sq", "rq"):
                res[f"{m.upper()}{suffix}"] = 100 * avg[name][m]
        if classwise:
            per = self.per_class()
            for c in self.categories:
                for m in ("pq", "sq", "rq"):
                    res[f"{m.upper()}_{c['name']}"] = 100 * per[c["id"]][m]
        return res


class InstanceGroundTruth:
    """COCO's instances file (``ins_ann_file``) for the instance AP of a panoptic model (module doc): ``categories``
    -- the things of the panoptic ``categories`` in label order, each with the instances file's ``id`` of the same
    name -- and per image id its ``images`` entry and its ``annotations``. The file is read as JSON (never
    unpickled); ValueError naming the file for what does not fit (not a COCO instances file, a thing missing)."""

    def __init__(self, ins_ann_file, categories):
        import json
        import os

        path = os.fspath(ins_ann_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ins_ann_file {path}: no such file (COCO's instances JSON, e.g. "
                                    "annotations/instances_val2017.json, for the 'bbox' / 'segm' metrics)")
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"ins_ann_file {path}: not a readable JSON file ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                                  for k in ("images", "annotations", "categories")):
            raise ValueError(f"ins_ann_file {path}: not a COCO instances file (lists 'images', 'annotations' and "
                             "'categories' expected)")
        by_name = {}
        for c in data["categories"]:
            if isinstance(c, dict) and "name" in c and "id" in c:
                by_name.setdefault(str(c["name"]), int(c["id"]))
        things = [c for c in categories if c.get("isthing")]
        missing = [c["name"] for c in things if c["name"] not in by_name]
        if missing:
            raise ValueError(f"ins_ann_file {path}: no category named {missing[:5]} (the panoptic thing classes "
                             f"must be among its {len(by_name)} categories)")
        self.path = path
        self.categories = [{"id": by_name[c["name"]], "name": c["name"]} for c in things]
        self.images = {int(im["id"]): im for im in data["images"]}
        self.annotations = {}
        for a in data["annotations"]:
            self.annotations.setdefault(int(a["image_id"]), []).append(a)

    def image(self, image_id):
        """``(images entry, annotations)`` of ``image_id``; KeyError naming the file when it has no such image."""
        image_id = int(image_id)
        if image_id not in self.images:
            raise KeyError(f"image {image_id} of the panoptic shards is not in ins_ann_file {self.path}")
        return self.images[image_id], self.annotations.get(image_id, [])


def evaluate_panoptic(model, loader, categories, *, device=None, dtype=None, progress: bool = False,
                      iou_types=(), ins_ann_file=None) -> dict:
    """PQ of a panoptic model over a validation loader (each image once across ranks); collective: every rank must
    call it. Each loader item: ``img`` (1, 3, H, W), ``img_shape``, ``ori_shape``, ``image`` (its COCO entry),
    ``gt_pan_ids`` (the ground-truth id map at the original size) and ``segments_info``, as
    :func:`vit_adapter_ds.data.panoptic.decode_panoptic_sample` gives them;
    ``model.predict(img, image_sizes, ori_shapes)`` returns one dict per image with ``pan_results`` (the map of
    the module doc at the original size) and, for ``iou_types`` (``'bbox'`` / ``'segm'``), ``ins_results``
    (``boxes``, ``labels``, ``scores``, ``masks``), scored against ``ins_ann_file`` (module doc) and added to the
    returned dict. ``dtype``: autocast dtype or None."""
    from .coco import CocoEvaluator

    iou_types = tuple(iou_types)
    ins = None
    if iou_types:
        if ins_ann_file is None:
            raise ValueError(f"the {list(iou_types)} metrics of a panoptic model need ins_ann_file (COCO's "
                             "instances JSON)")
        gt = InstanceGroundTruth(ins_ann_file, categories)
        ins = CocoEvaluator(gt.categories, iou_types)
    missing = []
    was_training = model.training
    model.eval()
    ev = PanopticEvaluator(categories)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    try:
        with torch.no_grad():
            for item in loader:
                img = item["img"].to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    pred = model.predict(img, [tuple(item["img_shape"])], [tuple(item["ori_shape"])])[0]
                pan = pred["pan_results"]
                pan = pan.cpu().numpy() if torch.is_tensor(pan) else np.asarray(pan)
                ev.add_pan_result(np.asarray(item["gt_pan_ids"]), item["segments_info"], pan)
                if ins is not None:
                    if "ins_results" not in pred:
                        raise ValueError("the 'bbox' / 'segm' metrics need the model's ins_results "
                                         "(model.test_cfg.instance_on=True)")
                    try:
                        image, anns = gt.image(item["image"]["id"])
                    except KeyError as e:  # raised on every rank below (no rank left waiting in a collective)
                        missing.append(e.args[0])
                        continue
                    ins.add_ground_truth(image, anns)
                    ins.add_prediction(image["id"], pred["ins_results"])  # cast / moved to the host there
                if progress:
                    print(f"\revaluated {ev.num_images} / {len(loader)} images", end="", flush=True)
    finally:
        model.train(was_training)
    if progress:
        print()
    ev.all_reduce()
    out = ev.evaluate()
    if ins is not None:
        from ..data.loader import sum_over_ranks

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if sum_over_ranks([len(missing)], world)[0]:
            raise KeyError(missing[0] if missing else "an image of the panoptic shards is not in ins_ann_file "
                           f"{gt.path} (reported by another rank)")
        out.update({k: v for k, v in ins.evaluate().items() if k != "num_images"})
    return out

