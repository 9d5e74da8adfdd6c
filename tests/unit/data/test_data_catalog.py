"""The dataset catalog (vit_adapter_ds/data/catalog): a dataset defined and registered in this file -- no project
file edited -- gets its ``make_shards`` sub-command and is read by a segmentation recipe naming it; detection
recipes name detection entries only; the catalog is the only table of datasets."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data import catalog
from vit_adapter_ds.data.catalog import Dataset, get_dataset, register_dataset, unregister_dataset
from vit_adapter_ds.data.sources import pair, stems

PKG = Path(__file__).resolve().parents[3] / "vit_adapter_ds"
TINY_CLASSES = ("background", "blob")
TINY_PALETTE = [[0, 0, 0], [200, 30, 40]]


class TinyBlobs(Dataset):
    """``root/{split}/img/*.png`` with same-stem masks in ``root/{split}/mask/`` (0 = background, 1 = blob)."""
    task = "segmentation"
    aliases = ("TinyBlobsDataset",)
    classes = TINY_CLASSES
    palette = TINY_PALETTE
    label_map = "identity"
    evaluator = "miou"
    layout = "{train,val}/{img,mask}/*.png"

    @staticmethod
    def samples(root, split, skip_missing=False, follow_symlinks=False):
        d = os.path.join(root, split)
        return pair(stems(os.path.join(d, "img"), (".png",), root, follow_symlinks),
                    stems(os.path.join(d, "mask"), (".png",), root, follow_symlinks), skip_missing)


class TinyBoxes(Dataset):
    task = "detection"
    aliases = ("TinyBoxesDataset",)
    evaluator = "coco"


@pytest.fixture
def tiny(tmp_path):
    """Register the two test datasets (removed afterwards) and write 3 train / 2 val images of TinyBlobs."""
    register_dataset("tiny_blobs")(TinyBlobs)
    register_dataset("tiny_boxes")(TinyBoxes)
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for sub in ("img", "mask"):
            (tmp_path / "raw" / split / sub).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            mask[10:30, 12:36] = 1
            Image.fromarray(img).save(tmp_path / "raw" / split / "img" / f"s{i}.png")
            Image.fromarray(mask).save(tmp_path / "raw" / split / "mask" / f"s{i}.png")
    yield tmp_path
    unregister_dataset("tiny_blobs")
    unregister_dataset("tiny_boxes")


def test_registered_dataset_gets_its_make_shards_subcommand(tiny, capsys):
    from vit_adapter_ds.data.make_shards import main
    from vit_adapter_ds.data.manifest import read_manifest

    out = tiny / "shards"
    assert main(["tiny_blobs", "--root", str(tiny / "raw"), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert "train: 3 samples" in capsys.readouterr().out
    m = read_manifest(str(out / "train"))
    assert (m["dataset"], m["task"], m["num_samples"]) == ("tiny_blobs", "segmentation", 3)
    assert m["classes"] == list(TINY_CLASSES) and m["palette"] == TINY_PALETTE and m["ignore_index"] == 255
    assert m["label_map"] == list(range(256)) and m["label_map_name"] == "identity"
    assert read_manifest(str(out / "val"))["num_samples"] == 2
    with pytest.raises(SystemExit):  # unregistered: no sub-command any more
        unregister_dataset("tiny_blobs")
        main(["tiny_blobs", "--root", str(tiny / "raw")])


@pytest.mark.parametrize("name", ["tiny_blobs", "TinyBlobsDataset"])
def test_segmentation_recipe_naming_the_dataset_builds_the_task_loaders(tiny, name):
    from types import SimpleNamespace

    from tiny_recipes import seg_test_pipeline, seg_train_pipeline
    from vit_adapter_ds.tasks.segmentation import SemanticSegmentation

    TinyBlobs.write(str(tiny / "raw"), str(tiny / "shards" / "train"), "train", num_workers=1, progress=False)
    TinyBlobs.write(str(tiny / "raw"), str(tiny / "shards" / "val"), "val", num_workers=1, progress=False)
    data = {"samples_per_gpu": 2, "workers_per_gpu": 0,
            "train": {"type": name, "shard_dir": str(tiny / "shards"),
                      "pipeline": seg_train_pipeline(crop=(32, 32), scale=(64, 32))},
            "val": {"type": name, "shard_dir": str(tiny / "shards"), "pipeline": seg_test_pipeline((64, 32))}}
    task = SemanticSegmentation(SimpleNamespace(data=data))
    task._num_classes = 2  # what the model would say (no model is built here)
    batch = next(iter(task.build_train_loader(rank=0, world_size=1, seed=0)))
    assert tuple(batch["img"].shape) == (2, 3, 32, 32) and set(batch["gt_semantic_seg"].unique().tolist()) <= {0, 1}
    val = list(task.build_val_loader(rank=0, world_size=1))
    assert len(val) == 2 and tuple(val[0]["gt_semantic_seg"].shape) == (1, 40, 48)


def test_recipe_types_are_checked_against_the_catalog(tiny):
    from vit_adapter_ds.data.datasets import DetectionShards, dataset_class

    seg = {"train": {"type": "tiny_boxes", "shard_dir": "x"}}
    with pytest.raises(ConfigError, match="data.train.type='tiny_boxes' is not supported by the segmentation task"):
        dataset_class(seg, "train")
    with pytest.raises(ConfigError, match="is not supported by the segmentation task.*tiny_blobs"):
        dataset_class({"train": {"type": "NoSuchDataset"}}, "train")
    assert dataset_class({"train": {"type": "ADE20KDataset"}}, "train") is dataset_class({"train": {}}, "train")
    for kind in ("tiny_boxes", "TinyBoxesDataset", "CocoDataset", None):
        section = {"type": kind, "shard_dir": "x", "pipeline": []}
        assert DetectionShards.section({"val": section}, "val") is section
    with pytest.raises(ConfigError, match="type='TinyBlobsDataset' is not supported by the detection task"):
        DetectionShards.section({"val": {"type": "TinyBlobsDataset", "shard_dir": "x", "pipeline": []}}, "val")


def test_registration_checks_its_entry(tiny):
    class Clash(Dataset):
        aliases = ("TinyBlobsDataset",)

    with pytest.raises(ValueError, match="alias 'TinyBlobsDataset' already names dataset 'tiny_blobs'"):
        register_dataset("clash")(Clash)

    class BadMap(Dataset):
        label_map = "no_such_map"

    with pytest.raises(ValueError, match="label_map 'no_such_map'"):
        register_dataset("bad_map")(BadMap)
    assert get_dataset("TinyBlobsDataset") is TinyBlobs and TinyBlobs.name == "tiny_blobs"
    with pytest.raises(KeyError, match="no dataset 'clash'"):
        get_dataset("clash")


def test_builtin_entries():
    from vit_adapter_ds.data import classes as C
    from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES

    entries = catalog.datasets()
    assert {"ade20k", "cocostuff", "coco", "custom", "synthetic"} <= set(entries)
    assert get_dataset("ADE20KDataset").classes is C.ADE20K_CLASSES
    assert get_dataset("COCOStuffDataset").classes is C.COCO_STUFF_CLASSES
    assert get_dataset("synthetic").classes is SYNTHETIC_CLASSES
    assert (get_dataset("CocoDataset").task, get_dataset("CocoDataset").evaluator) == ("detection", "coco")
    for name in ("ade20k", "cocostuff", "custom", "synthetic"):
        assert (entries[name].task, entries[name].evaluator, entries[name].ignore_index) == ("segmentation", "miou",
                                                                                              255)


def _string_constants(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_the_catalog_is_the_only_table_of_datasets():
    """Dataset type names and class-name tables appear in the package only in the catalog (and in data/classes.py,
    whose tuples the catalog entries refer to); recipes may name them."""
    names = {a for e in catalog.datasets().values() for a in e.aliases}
    assert {"ADE20KDataset", "COCOStuffDataset", "CocoDataset", "CustomDataset"} <= names
    where = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if rel.startswith(("data/catalog/", "recipes/")):
            continue
        text = f.read_text()
        if rel != "data/classes.py" and any(t in text for t in ("ADE20K_CLASSES", "COCO_STUFF_CLASSES")):
            where.append(f"{rel}: a class-name table")
        where += [f"{rel}: {s!r}" for s in _string_constants(f) if s in names]
    assert not where, where


def test_every_entry_names_a_known_evaluator(tiny):
    from vit_adapter_ds.evaluation.coco import evaluate_detector
    from vit_adapter_ds.evaluation.evaluator import evaluate_from_cfg
    from vit_adapter_ds.evaluation.registry import dataset_evaluator

    for name in catalog.datasets():
        dataset_evaluator(name)
    assert dataset_evaluator("ADE20KDataset") is evaluate_from_cfg and dataset_evaluator("tiny_blobs") is \
        evaluate_from_cfg
    assert dataset_evaluator("coco") is evaluate_detector and dataset_evaluator("tiny_boxes") is evaluate_detector
