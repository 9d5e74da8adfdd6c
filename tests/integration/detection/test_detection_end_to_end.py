"""The detection parts fit together: the synthetic Mask R-CNN recipe's model trains on batches of the detection
train loader (built from the recipe's pipeline) and evaluate_detector scores it on the val loader."""
from __future__ import annotations

import math

import pytest
import torch
from mmengine import Config

from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.data.detection import DetectionTrainLoader, DetectionValLoader
from vit_adapter_ds.data.make_shards import write_coco
from vit_adapter_ds.data.synthetic import write_synthetic_coco
from vit_adapter_ds.evaluation.coco import CocoEvaluator, evaluate_detector
from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from support import pycocotools_stats  # noqa: E402


def test_recipe_loader_model_evaluator(tmp_path):
    write_synthetic_coco(str(tmp_path), 4, 2, seed=1, size=(120, 160))
    for split in ("train", "val"):
        write_coco(str(tmp_path), str(tmp_path / split), split, num_workers=1, progress=False)
    cfg = Config.fromfile(str(DETECTION_RECIPES["synthetic_mask_rcnn"]))
    tr = T.train_ops_from_pipeline(cfg.data.train.pipeline)
    te = T.test_cfg_from_pipeline(cfg.data.val.pipeline)
    train = DetectionTrainLoader(tmp_path / "train", batch_size=2, ops=tr["ops"], mean=tr["mean"], std=tr["std"],
                                 num_classes=cfg.num_classes)
    torch.manual_seed(0)
    model = MaskRCNN.from_config(cfg.model.to_dict())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):
        batch = next(train)
        losses = model(batch["img"], batch["targets"])
        assert all(math.isfinite(float(v.detach())) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    val = DetectionValLoader(tmp_path / "val", scale=te["scale"], mean=te["mean"], std=te["std"])
    preds = []  # (image id, the model's detections) as evaluate_detector hands them to the evaluator
    add_prediction = CocoEvaluator.add_prediction
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CocoEvaluator, "add_prediction", lambda ev, i, p: (preds.append((i, p)), add_prediction(ev, i, p)))
        metrics = evaluate_detector(model, val, val.categories)
    assert metrics["num_images"] == 2
    assert sorted(i for i, _ in preds) == [500000, 500001]
    assert sum(len(p["scores"]) for _, p in preds) > 0, "no detections: the AP comparison would be vacuous"
    ref = _pycocotools_stats(tmp_path / "annotations" / "instances_val2017.json", preds)
    for k, v in ref.items():  # an untrained model: about 0 (and -1: no large objects), so also the oracle below
        assert metrics[k] == pytest.approx(v, abs=1e-12), (k, metrics[k], v)
    assert model.training
    # the same loader and evaluator on a predictor returning the annotation file's objects: AP 1 (ids, classes,
    # original-pixel coordinates and masks all line up)
    oracle = _Oracle(tmp_path / "annotations" / "instances_val2017.json", [i for i, _ in preds])
    perfect = evaluate_detector(oracle, val, val.categories)
    assert oracle.order == [] and perfect["num_images"] == 2
    for t in ("bbox", "segm"):
        assert perfect[f"{t}_mAP"] == perfect[f"{t}_mAP_50"] == 1.0, perfect


class _Oracle(torch.nn.Module):
    """``predict`` returns the ground truth of the next image (in the order the loader gave them before): boxes,
    labels (category id order), score 1, masks drawn by pycocotools."""

    def __init__(self, gt_file, order):
        from pycocotools.coco import COCO
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.gt, self.order = COCO(str(gt_file)), list(order)
        self.cat_ids = sorted(self.gt.getCatIds())

    def predict(self, img, image_sizes, ori_shapes):
        info = self.gt.imgs[self.order.pop(0)]
        assert tuple(ori_shapes[0]) == (info["height"], info["width"])
        anns = self.gt.imgToAnns[info["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        return [{"boxes": boxes, "labels": torch.tensor([self.cat_ids.index(a["category_id"]) for a in anns]),
                 "scores": torch.ones(len(anns)),
                 "masks": torch.stack([torch.from_numpy(self.gt.annToMask(a)).bool() for a in anns])}]


def _pycocotools_stats(gt_file, preds) -> dict:
    """pycocotools on the raw annotation file and ``preds`` ([(image id, boxes/labels/scores/masks)]), converted
    here: label i -> the i-th category id in id order; mmdet's maxDets (100, 300, 1000)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
    cat_ids = sorted(gt.getCatIds())
    return pycocotools_stats(gt, cat_ids, preds)
