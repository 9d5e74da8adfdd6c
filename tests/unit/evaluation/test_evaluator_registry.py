"""The tasks evaluate with the evaluator that the dataset's catalog entry names (evaluation/registry.py
recipe_evaluator), not one they import: a dataset registered with another evaluator is evaluated by it."""
from __future__ import annotations

import pytest

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data.catalog import Dataset, register_dataset, unregister_dataset
from vit_adapter_ds.evaluation import registry
from vit_adapter_ds.evaluation.coco import evaluate_detector
from vit_adapter_ds.evaluation.evaluator import evaluate_from_cfg
from vit_adapter_ds.evaluation.registry import recipe_evaluator

CALLS = []


def fake_evaluate(model, val_loader, cfg, dtype=None, num_vis=0, num_classes=None):
    CALLS.append((val_loader, num_classes))
    return {"mIoU": 0.25, "aAcc": 0.5, "mAcc": 0.75}, []


class Blobs(Dataset):
    task = "segmentation"
    aliases = ("BlobsDataset",)
    classes = ("background", "blob")
    evaluator = "fake_miou"


@pytest.fixture
def blobs(monkeypatch):
    monkeypatch.setitem(registry.EVALUATORS, "fake_miou", f"{__name__}:fake_evaluate")
    monkeypatch.setitem(registry.EVALUATOR_TASKS, "fake_miou", "segmentation")
    register_dataset("test_blobs")(Blobs)
    yield
    unregister_dataset("test_blobs")


def test_the_recipe_names_the_dataset_and_so_its_evaluator():
    assert recipe_evaluator({"val": {"type": "ADE20KDataset"}}, "segmentation") is evaluate_from_cfg
    assert recipe_evaluator({"train": {"type": "cocostuff"}, "val": {}}, "segmentation") is evaluate_from_cfg
    assert recipe_evaluator({"val": {"type": "CocoDataset"}}, "detection") is evaluate_detector
    # no dataset named (or only the loader): the one evaluator of the task's catalog entries
    assert recipe_evaluator({"val": {"type": "SegmentationShards"}}, "segmentation") is evaluate_from_cfg
    assert recipe_evaluator({}, "detection") is evaluate_detector
    with pytest.raises(ConfigError, match=r"data\.val\.type='ADE20KDataset' is not supported by the detection"):
        recipe_evaluator({"val": {"type": "ADE20KDataset"}}, "detection")


def test_a_registered_dataset_is_evaluated_by_its_evaluator(blobs):
    assert recipe_evaluator({"val": {"type": "BlobsDataset"}}, "segmentation") is fake_evaluate
    with pytest.raises(ConfigError, match=r"evaluated by \['fake_miou', 'miou'\]; name the dataset"):
        recipe_evaluator({}, "segmentation")  # two evaluators among the segmentation entries: ambiguous
    cfg = load_recipe(None, ["data.train.type=test_blobs", "data.val.type=BlobsDataset"])
    from vit_adapter_ds.tasks import task_for

    task = task_for(cfg)
    CALLS.clear()
    assert task.evaluate(None, "the loader", None, 0) == ({"mIoU": 0.25, "aAcc": 0.5, "mAcc": 0.75}, [])
    assert CALLS == [("the loader", 8)]


def test_an_evaluator_of_another_task_is_refused(blobs, monkeypatch):
    monkeypatch.setattr(Blobs, "evaluator", "coco")
    with pytest.raises(ConfigError, match=r"data\.val\.type='test_blobs' is evaluated by 'coco', not an evaluator "
                                          r"of the segmentation task"):
        recipe_evaluator({"val": {"type": "test_blobs"}}, "segmentation")
