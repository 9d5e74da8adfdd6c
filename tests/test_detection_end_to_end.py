"""The detection parts fit together: the synthetic Mask R-CNN recipe's model trains on batches of the detection
train loader (built from the recipe's pipeline) and evaluate_detector scores it on the val loader."""
from __future__ import annotations

import math

import torch
from mmengine import Config

from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.data.detection import DetectionTrainLoader, DetectionValLoader
from vit_adapter_ds.data.make_shards import write_coco
from vit_adapter_ds.data.synthetic import write_synthetic_coco
from vit_adapter_ds.evaluation.coco import evaluate_detector
from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES


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
    metrics = evaluate_detector(model, val, val.categories)
    assert metrics["num_images"] == 2
    assert all(0.0 <= metrics[f"{t}_mAP"] <= 1.0 for t in ("bbox", "segm"))
    assert model.training
