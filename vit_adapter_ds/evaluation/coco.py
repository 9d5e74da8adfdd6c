"""COCO box and mask AP through pycocotools, with each image evaluated exactly once across ranks.

    ev = CocoEvaluator(categories)                 # the manifest's COCO categories; class index i -> categories[i]
    for batch in val_loader:                       # each rank sees its own images
        ev.add_ground_truth(image_entry, annotations)  # the shard's per-image COCO json
        ev.add_prediction(image_id, model.predict(...)[0])
    metrics = ev.evaluate()                        # on every rank: the same dict

``evaluate`` gathers the per-rank ground truth and results to rank 0 (``torch.distributed.gather_object`` when a
process group is initialised), refuses an image seen twice, runs ``COCOeval`` for ``'bbox'`` and ``'segm'`` there
and broadcasts the metrics. ``evaluate(results_prefix=P)`` also writes the gathered detections in the COCO result
format (mmdet's ``format_results`` files ``P.bbox.json`` and ``P.segm.json``: ``image_id``, ``category_id`` = the
manifest's COCO id, ``bbox`` or ``segmentation`` (RLE), ``score``), as submitted to the COCO test-dev server;
``format_only=True`` writes them without computing AP (test-dev has no annotations).

Metric names and settings are mmdet 2.x ``CocoDataset.evaluate``'s: ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75``,
``bbox_mAP_s/m/l`` (and ``segm_*``), ``maxDets = [100, 300, 1000]``, boxes as
``[x1, y1, x2 - x1, y2 - y1]``, masks as RLE without a ``bbox`` entry (the mask area decides the size bucket).
The ground truth is the annotations of the evaluated images, as written in the shards; polygons with fewer than 3
points (which pycocotools cannot rasterise) are dropped from the ground truth, and an annotation left without any
polygon gets an empty mask.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torch.distributed as dist

METRIC_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def _dist():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def clean_segmentation(seg, height, width):
    """A COCO ``segmentation`` pycocotools can rasterise: polygons with < 6 coordinates dropped (an empty list
    becomes an empty RLE); RLEs returned as they are."""
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0]
        if polys:
            return polys
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.zeros((int(height), int(width), 1), dtype=np.uint8, order="F"))[0]
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    return seg


def encode_mask(mask) -> dict:
    """(h, w) bool/uint8 mask -> COCO RLE with a ``str`` counts field."""
    from pycocotools import mask as mask_utils

    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8)[:, :, None])
    rle = mask_utils.encode(m)[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


class CocoEvaluator:
    """Accumulates ground truth and detections per rank; :meth:`evaluate` computes COCO AP once on rank 0.

    ``categories``: COCO category dicts (``id``, ``name``) in class-index order (the model's label ``i`` is
    ``categories[i]['id']``). ``iou_types``: a subset of ``('bbox', 'segm')``.
    """

    def __init__(self, categories, iou_types=("bbox", "segm"), max_dets=(100, 300, 1000)):
        bad = sorted(set(iou_types) - {"bbox", "segm"})
        if bad:
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {bad}")
        self.categories = [dict(c) for c in categories]
        self.cat_ids = [int(c["id"]) for c in self.categories]
        self.iou_types, self.max_dets = tuple(iou_types), list(max_dets)
        self.images, self.annotations, self.results = [], [], {t: [] for t in self.iou_types}

    def add_ground_truth(self, image: dict, annotations) -> None:
        """One image's COCO entry (``id``, ``height``, ``width``, ...) and its annotations."""
        self.images.append({k: image[k] for k in ("id", "height", "width") if k in image})
        for a in annotations:
            a = dict(a)
            a.setdefault("iscrowd", 0)
            if "area" not in a and "bbox" in a:
                a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
            if "segmentation" in a:
                a["segmentation"] = clean_segmentation(a["segmentation"], image["height"], image["width"])
            self.annotations.append(a)

    def add_prediction(self, image_id: int, pred: dict) -> None:
        """``pred``: ``boxes`` (K, 4) x1y1x2y2 in original pixels, ``labels`` (K,) class indices, ``scores``
        (K,), and ``masks`` (K, h, w) bool when ``'segm'`` is evaluated."""
        boxes = torch.as_tensor(pred["boxes"]).detach().float().cpu().numpy().reshape(-1, 4)
        labels = torch.as_tensor(pred["labels"]).detach().cpu().numpy().reshape(-1)
        scores = torch.as_tensor(pred["scores"]).detach().float().cpu().numpy().reshape(-1)
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError("boxes, labels and scores must have the same length")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.cat_ids)):
            raise ValueError(f"labels must be class indices in [0, {len(self.cat_ids)})")
        masks = None
        if "segm" in self.iou_types:
            masks = torch.as_tensor(pred["masks"]).detach().cpu().numpy()
            if len(masks) != len(labels):
                raise ValueError(f"{len(labels)} detections but {len(masks)} masks")
        for k in range(len(labels)):
            cat, score = self.cat_ids[int(labels[k])], float(scores[k])
            if "bbox" in self.iou_types:
                x1, y1, x2, y2 = (float(v) for v in boxes[k])
                self.results["bbox"].append({"image_id": int(image_id), "category_id": cat,
                                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
            if masks is not None:
                self.results["segm"].append({"image_id": int(image_id), "category_id": cat,
                                             "segmentation": encode_mask(masks[k]), "score": score})

    def _gathered(self):
        rank, world = _dist()
        local = (self.images, self.annotations, self.results)
        if world == 1:
            return [local]
        parts = [None] * world if rank == 0 else None
        dist.gather_object(local, parts, dst=0)
        return parts

    def evaluate(self, verbose: bool = False, results_prefix=None, format_only: bool = False) -> dict:
        """COCO AP on all accumulated images (every rank returns the same dict, computed on rank 0).

        ``results_prefix``: also write the gathered detections as COCO result files ``<prefix>.<iou type>.json``
        (rank 0; their paths are returned under ``'results_files'``). ``format_only``: write them and skip the AP
        (the dict then holds ``num_images`` and ``results_files`` only)."""
        if format_only and results_prefix is None:
            raise ValueError("format_only needs results_prefix")
        rank, world = _dist()
        parts = self._gathered()
        metrics = self._compute(parts, verbose, results_prefix, format_only) if rank == 0 else None
        if world > 1:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        if isinstance(metrics, Exception):
            raise metrics
        return metrics

    def _compute(self, parts, verbose, results_prefix=None, format_only=False):
        try:
            images, anns, results = self._merge(parts)
            files = write_results(results, results_prefix) if results_prefix is not None else None
            metrics = {"num_images": len(images)} if format_only else self._coco_eval(images, anns, results, verbose)
            if files is not None:
                metrics["results_files"] = files
            return metrics
        except Exception as e:  # broadcast the failure so that no rank waits forever
            return RuntimeError(f"COCO evaluation failed: {e}")

    def _merge(self, parts):
        """The ranks' parts as one set: ``({image id: image}, annotations, {iou type: results})``; an image seen
        twice is an error."""
        images, anns, results = {}, [], {t: [] for t in self.iou_types}
        for imgs, a, res in parts:
            for im in imgs:
                if im["id"] in images:
                    raise ValueError(f"image {im['id']} was evaluated twice (on two ranks or twice on one)")
                images[im["id"]] = im
            anns.extend(a)
            for t in self.iou_types:
                results[t].extend(res[t])
        return images, anns, results

    def _coco_eval(self, images, anns, results, verbose):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        anns = [dict(a, id=i + 1) for i, a in enumerate(anns)]
        gt = COCO()
        gt.dataset = {"images": list(images.values()), "annotations": anns, "categories": self.categories}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        metrics = {"num_images": len(images)}
        for t in self.iou_types:
            if not results[t]:
                metrics.update({f"{t}_{n}": 0.0 for n in METRIC_NAMES})
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                dt = gt.loadRes(results[t])
                ev = COCOeval(gt, dt, t)
                ev.params.catIds = self.cat_ids
                ev.params.imgIds = sorted(images)
                ev.params.maxDets = list(self.max_dets)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            if verbose:
                print(out.getvalue())
            metrics.update({f"{t}_{n}": float(ev.stats[i]) for i, n in enumerate(METRIC_NAMES)})
        return metrics


def results_path(prefix, iou_type: str) -> str:
    """``<prefix>.<iou_type>.json`` (mmdet's ``format_results`` names); a ``.json`` suffix of ``prefix`` is dropped."""
    prefix = str(prefix)
    if prefix.endswith(".json"):
        prefix = prefix[: -len(".json")]
    return f"{prefix}.{iou_type}.json"


def write_results(results: dict, prefix) -> dict:
    """Write ``{iou type: [COCO result dicts]}`` as ``<prefix>.<iou type>.json``; returns ``{iou type: path}``."""
    import json
    import os

    files = {}
    for t, res in results.items():
        path = results_path(prefix, t)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f)
        files[t] = path
    return files


@torch.no_grad()
def evaluate_detector(model, loader, categories, *, device=None, dtype=None, iou_types=("bbox", "segm"),
                      progress: bool = False, results_prefix=None, format_only: bool = False) -> dict:
    """COCO AP of a detector (``model.predict(img, image_sizes, ori_shapes)``, e.g.
    :class:`~vit_adapter_ds.models.detectors.MaskRCNN`) over a
    :class:`~vit_adapter_ds.data.detection.DetectionValLoader` (each image once across ranks); collective:
    every rank must call it. ``dtype``: autocast dtype (e.g. ``torch.bfloat16``) or None. ``results_prefix`` /
    ``format_only``: see :meth:`CocoEvaluator.evaluate`."""
    was_training = model.training
    model.eval()
    ev = CocoEvaluator(categories, iou_types)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    try:
        for item in loader:
            img = item["img"].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                pred = model.predict(img, [tuple(item["img_shape"])], [tuple(item["ori_shape"])])[0]
            pred = {k: v.float() if v.is_floating_point() else v for k, v in pred.items()}
            ev.add_ground_truth(item["image"], item["annotations"])
            ev.add_prediction(item["image"]["id"], pred)
            if progress:
                print(f"\revaluated {len(ev.images)} / {len(loader)} images", end="", flush=True)
    finally:
        model.train(was_training)
    if progress:
        print()
    return ev.evaluate(results_prefix=results_prefix, format_only=format_only)
