"""Box-only detection training (ATSS, GFL, Sparse R-CNN): the official ``coco_detection`` train pipeline collects
no ``gt_masks`` (``Collect(keys=['img', 'gt_bboxes', 'gt_labels'])``) and translates; a detector that predicts masks
is refused with such a pipeline (it would train without mask targets), and the official box-only dataset base
validates its own pipelines."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data.pipeline import collects_masks, train_ops_from_pipeline
from vit_adapter_ds.recipes.detection import DETECTION_RECIPE_DIR
from vit_adapter_ds.tasks import load_and_validate

BASE = DETECTION_RECIPE_DIR.parent / "_base_" / "datasets" / "coco_detection.py"


def test_official_coco_detection_pipeline_translates_without_masks():
    cfg = Config.fromfile(str(BASE))
    pipe = cfg.train_pipeline
    assert [s["type"] for s in pipe] == ["LoadImageFromFile", "LoadAnnotations", "Resize", "RandomFlip",
                                         "Normalize", "Pad", "DefaultFormatBundle", "Collect"]
    assert pipe[-1]["keys"] == ["img", "gt_bboxes", "gt_labels"] and not collects_masks(pipe)
    out = train_ops_from_pipeline(pipe)
    assert [op[0] for op in out["ops"]] == ["resize", "flip"]
    assert cfg.evaluation == dict(interval=1, metric="bbox")
    with pytest.raises(ConfigError, match="collects img, gt_bboxes, gt_labels"):
        train_ops_from_pipeline(pipe[:-1] + [dict(type="Collect", keys=["img", "gt_bboxes"])])


def test_mask_detector_refuses_a_pipeline_without_gt_masks():
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    cfg = Config.fromfile(str(DETECTION_RECIPES["synthetic_mask_rcnn"]))
    assert collects_masks(cfg.data.train.pipeline)
    pipe = [dict(s) for s in cfg.data.train.pipeline]
    pipe[-1] = dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels"])
    with pytest.raises(ConfigError, match="predicts masks and trains on them"):
        load_and_validate(str(DETECTION_RECIPES["synthetic_mask_rcnn"]),
                          {"data.train.pipeline": pipe, "data.train.shard_dir": "/nonexistent/shards"})
