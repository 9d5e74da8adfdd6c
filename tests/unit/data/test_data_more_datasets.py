"""The catalog entries of issue 21's datasets (Pascal Context 59, ...): each one's synthetic twin is written in the
dataset's raw layout and sharded by the entry's own writer; the manifest has the dataset's classes, palette and label
map (checked against mmseg's dataset classes, read from the installed mmseg's source); the labels the loader reads back
equal an independent reading of the source files (PIL / scipy, with the mapping of mmseg's converter written out
here); what does not fit the layout is refused with the file named; and one train step and one evaluation run
through the segmentation task's loaders on those shards with the official ``_base_/datasets`` pipelines."""
from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.data.catalog import get_dataset

RECIPES = Path(__file__).resolve().parents[3] / "vit_adapter_ds" / "recipes" / "_base_" / "datasets"
SIZE = (40, 56)  # H, W of the synthetic images


def mmseg_metainfo(module: str, cls: str) -> dict:
    """``METAINFO`` of the mmseg dataset class ``cls`` in ``mmseg/datasets/<module>.py``, read from the source (the
    installed mmseg's dataset package does not import without mmcv's compiled ops)."""
    import importlib.util

    spec = importlib.util.find_spec("mmseg")
    if spec is None:
        pytest.skip("mmseg is not installed")
    path = Path(spec.origin).parent / "datasets" / f"{module}.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for st in node.body:
                if isinstance(st, ast.Assign) and st.targets[0].id == "METAINFO":
                    call = st.value
                    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    raise AssertionError(f"no {cls}.METAINFO in {path}")


# ---------------------------------------------------------------------------------------------- the datasets
def reduce_zero_label(lab):
    lab = lab.astype(np.int64)
    return np.where(lab == 0, 255, np.where(lab == 255, 255, lab - 1))


def pascal_val_labels(raw):
    base = raw / "VOCdevkit" / "VOC2010"
    ids = sorted((base / "ImageSets" / "SegmentationContext" / "val.txt").read_text().split())
    return [reduce_zero_label(np.array(Image.open(base / "SegmentationClassContext" / f"{i}.png"))) for i in ids]


def pascal_refusals(raw):
    """(mutation of the raw folder, error type, message pattern naming the file)."""
    base = raw / "VOCdevkit" / "VOC2010"
    first = (base / "ImageSets" / "SegmentationContext" / "train.txt").read_text().split()[0]
    lab = base / "SegmentationClassContext" / f"{first}.png"
    img = base / "JPEGImages" / f"{first}.jpg"

    def rgb():
        Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(lab)

    def value():
        a = np.array(Image.open(lab))
        a[0, 0] = 77
        Image.fromarray(a).save(lab)

    def size():
        Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8)).save(lab)

    lab_, img_ = re.escape(str(lab)), re.escape(str(img))
    return [(lambda: lab.unlink(), FileNotFoundError, rf"no label.*{lab_}.*--skip-missing"),
            (lambda: img.unlink(), FileNotFoundError, rf"image not found: {img_}"),
            (rgb, ValueError, rf"label {lab_} has mode RGB"),
            (value, ValueError, rf"label {lab_}: values \[77\] are not labels of this dataset "
                                r"\(allowed: 0\.\.59, 255\)"),
            (size, ValueError, rf"label {lab_} is 56x41 but its image {img_} is 56x40"),
            (lambda: (base / "ImageSets" / "SegmentationContext" / "train.txt").write_text("../x\n"), ValueError,
             "is not a file id")]


# mmseg's tools/dataset_converters/coco_stuff10k.py ``clsID_to_trID``, written out: the .mat ids in train-id order
# (0 -> 0, ..., 182 -> 171); the ids absent here are the 11 COCO ids without annotations
MMSEG_COCO_STUFF10K_IDS = (list(range(0, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) +
                           list(range(46, 66)) + [67, 70] + list(range(72, 83)) + list(range(84, 91)) +
                           list(range(92, 183)))


def test_coco_stuff10k_table_is_mmsegs():
    """The written-out table above equals mmseg's converter (read from the installed mmseg's tools, if present)."""
    import importlib.util

    assert len(MMSEG_COCO_STUFF10K_IDS) == 172
    spec = importlib.util.find_spec("mmseg")
    path = Path(spec.origin).parent / ".mim" / "tools" / "dataset_converters" / "coco_stuff10k.py" if spec else None
    if path is None or not path.exists():
        pytest.skip("mmseg's dataset converters are not installed")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "clsID_to_trID":
            assert ast.literal_eval(node.value) == {c: t for t, c in enumerate(MMSEG_COCO_STUFF10K_IDS)}
            return
    raise AssertionError(f"no clsID_to_trID in {path}")


def coco10k_val_labels(raw):
    from scipy.io import loadmat

    base = raw
    table = {c: t for t, c in enumerate(MMSEG_COCO_STUFF10K_IDS)}
    out = []
    for i in sorted((base / "imageLists" / "test.txt").read_text().split()):
        s = loadmat(base / "annotations" / f"{i}.mat")["S"].astype(np.int64)
        conv = np.vectorize(table.__getitem__)(s)  # mmseg's converter, then the official reduce_zero_label
        out.append(reduce_zero_label(conv))
    return out


def coco10k_refusals(raw):
    from scipy.io import loadmat, savemat

    base = raw
    first = (base / "imageLists" / "train.txt").read_text().split()[0]
    mat, img = base / "annotations" / f"{first}.mat", base / "images" / f"{first}.jpg"
    mat_, img_ = re.escape(str(mat)), re.escape(str(img))

    def put(s):
        return lambda: savemat(mat, {"S": s})

    s = loadmat(mat)["S"]
    with12, big = s.copy(), s.astype(np.int64)
    with12[0, 0], big[0, 0] = 12, 300
    return [(lambda: mat.unlink(), FileNotFoundError, rf"no label.*{mat_}.*--skip-missing"),
            (lambda: img.unlink(), FileNotFoundError, rf"image not found: {img_}"),
            (lambda: savemat(mat, {"T": s}), ValueError, rf"label {mat_} has no key 'S' \(keys: \['T'\]\)"),
            (put(with12), ValueError, rf"label {mat_}: values \[12\] are not labels of this dataset"),
            (put(big), ValueError, rf"label {mat_}: values 0\.\.300 do not fit 0\.\.255"),
            (put(np.stack([s, s], -1)), ValueError, rf"label {mat_}: 'S' has shape \(40, 56, 2\)"),
            (put(s[:-1]), ValueError, rf"label {mat_} is 56x39 but its image {img_} is 56x40"),
            (lambda: mat.write_bytes(b"not a mat file"), ValueError, rf"label {mat_} cannot be read as a \.mat")]


def chase_val_labels(raw):
    base = raw / "CHASE_DB1"
    stems = sorted(p.stem for p in (base / "images" / "validation").glob("*.png"))
    return [np.array(Image.open(base / "annotations" / "validation" / f"{s}_1stHO.png")).astype(np.int64)
            for s in stems]


def chase_refusals(raw):
    base = raw / "CHASE_DB1"
    lab = base / "annotations" / "training" / "Image_01L_1stHO.png"
    img = base / "images" / "training" / "Image_01L.png"
    lab_, img_ = re.escape(str(lab)), re.escape(str(img))

    def raw255():  # the original annotation, before mmseg's converter divides by 128
        Image.fromarray(np.array(Image.open(lab)) * 255).save(lab)

    return [(lambda: lab.unlink(), FileNotFoundError, rf"no label.*{lab_}.*--skip-missing"),
            (raw255, ValueError, rf"label {lab_}: values \[255\] are not labels of this dataset \(allowed: 0\.\.1\)"
                                 r".*chase_db1\.py"),
            (lambda: Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(lab), ValueError,
             rf"label {lab_} has mode RGB"),
            (lambda: Image.fromarray(np.zeros((SIZE[0], SIZE[1] + 2), np.uint8)).save(lab), ValueError,
             rf"label {lab_} is 58x40 but its image {img_} is 56x40")]


def potsdam_val_labels(raw):
    stems = sorted(p.stem for p in (raw / "ann_dir" / "val").glob("*.png"))
    return [reduce_zero_label(np.array(Image.open(raw / "ann_dir" / "val" / f"{s}.png"))) for s in stems]


def potsdam_refusals(raw):
    first = sorted((raw / "ann_dir" / "train").glob("*.png"))[0]
    lab, img = first, raw / "img_dir" / "train" / first.name
    lab_, img_ = re.escape(str(lab)), re.escape(str(img))

    def value():
        a = np.array(Image.open(lab))
        a[1, 1] = 7
        Image.fromarray(a).save(lab)

    return [(lambda: lab.unlink(), FileNotFoundError, rf"no label.*{lab_}.*--skip-missing"),
            (lambda: Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(lab), ValueError,
             rf"label {lab_} has mode RGB.*potsdam\.py"),
            (value, ValueError, rf"label {lab_}: values \[7\] are not labels of this dataset "
                                r"\(allowed: 0\.\.6, 255\)"),
            (lambda: Image.fromarray(np.zeros((SIZE[0] - 1, SIZE[1]), np.uint8)).save(lab), ValueError,
             rf"label {lab_} is 56x39 but its image {img_} is 56x40")]


def test_potsdam_palette_is_the_order_of_mmsegs_rgb_conversion():
    """mmseg's potsdam.py converter (which the official README says to run) maps the colours of its ``color_map``
    (BGR, as mmcv reads the tiles; written out here) to 0..6; the entry's classes 0..5 are converted values 1..6
    (reduce-zero-label), so its palette (RGB, the official potsdam.py) must list those colours in that order."""
    color_map_bgr = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255],
                     [0, 0, 255]]
    palette = get_dataset("PotsdamDataset").palette
    assert [color_map_bgr.index(list(rgb[::-1])) for rgb in palette] == [1, 2, 3, 4, 5, 6]


CASES = {
    "pascal_context_59": dict(
        alias="PascalContextDataset59", base="pascal_context_59.py", mmseg=("pascal_context", "PascalContextDataset59"),
        label_map=[255] + list(range(254)) + [255], label_map_name="reduce_zero_label", val_labels=pascal_val_labels,
        refusals=pascal_refusals, skip_missing=True),
    "coco_stuff10k": dict(
        alias="COCOStuffDataset", base="coco_stuff10k.py", mmseg=("coco_stuff", "COCOStuffDataset"),
        palette="cocostuff", label_map=[255] + list(range(254)) + [255], label_map_name="reduce_zero_label",
        val_labels=coco10k_val_labels, refusals=coco10k_refusals, skip_missing=True),
    "chase_db1": dict(
        alias="ChaseDB1Dataset", base="chase_db1.py", mmseg=("chase_db1", "ChaseDB1Dataset"),
        label_map=list(range(256)), label_map_name="identity", val_labels=chase_val_labels, refusals=chase_refusals,
        skip_missing=True),
    "potsdam": dict(
        alias="PotsdamDataset", base="potsdam.py", mmseg=("potsdam", "PotsdamDataset"),
        label_map=[255] + list(range(254)) + [255], label_map_name="reduce_zero_label", val_labels=potsdam_val_labels,
        refusals=potsdam_refusals, skip_missing=True),
}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """``written(name)``: ``(raw folder, shard folder)`` of the entry's synthetic twin (3 train / 2 val images),
    written once per module."""
    from vit_adapter_ds.data.catalog.synthetic import write_synthetic

    made = {}

    def get(name):
        if name not in made:
            d = tmp_path_factory.mktemp(name)
            write_synthetic(str(d / "shards"), 3, 2, seed=1, size=SIZE, raw_dir=str(d / "raw"), layout=name,
                            num_workers=1, progress=False)
            made[name] = (d / "raw", d / "shards")
        return made[name]

    return get


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(CASES))
def test_synthetic_twin_gives_the_datasets_manifest(written, name):
    from vit_adapter_ds.data.manifest import read_manifest

    case = CASES[name]
    _, shards = written(name)
    meta = mmseg_metainfo(*case["mmseg"])
    entry = get_dataset(name)
    official = get_dataset(case["alias"])  # the official recipes' type: this entry, or one with its classes
    assert (official.classes, official.palette, official.evaluator) == (entry.classes, entry.palette, entry.evaluator)
    assert official is entry or case.get("palette") == official.name
    for split, n in (("train", 3), ("val", 2)):
        m = read_manifest(str(shards / split))
        assert (m["dataset"], m["split"], m["task"], m["num_samples"]) == (name, split, "segmentation", n)
        assert m["classes"] == list(meta["classes"]) and m["num_classes"] == len(meta["classes"])
        if case.get("palette"):  # the palette of the entry named (an entry with the same classes)
            assert m["palette"] == get_dataset(case["palette"]).meta(split)["palette"]
        else:
            assert m["palette"] == [list(c) for c in meta["palette"]]
        assert m["label_map"] == case["label_map"] and m["label_map_name"] == case["label_map_name"]
        assert m["ignore_index"] == 255


@pytest.mark.parametrize("name", sorted(CASES))
def test_labels_read_back_equal_the_source(written, name):
    from vit_adapter_ds.data.loader import build_val_loader

    raw, shards = written(name)
    expected = CASES[name]["val_labels"](raw)
    got = [b["gt_semantic_seg"][0].numpy() for b in build_val_loader(str(shards / "val"),
                                                                     num_classes=len(get_dataset(name).classes))]
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g.shape == e.shape and np.array_equal(g.astype(np.int64), e)
    assert any((e != 255).any() and len(np.unique(e)) >= 2 for e in expected)  # not a trivial map


@pytest.mark.parametrize("name", sorted(CASES))
def test_writer_refuses_what_does_not_fit_naming_the_file(written, name, tmp_path):
    raw, _ = written(name)
    entry = get_dataset(name)
    for i, (root, err, pattern) in enumerate(_refusals(name, raw, tmp_path)):
        with pytest.raises(err, match=pattern):
            entry.write(str(root), str(tmp_path / f"out{i}"), "train", num_workers=1, progress=False)


def _refusals(name, raw, tmp_path):
    """Yield ``(root of a mutated copy of raw, error, pattern)`` for each refusal of the case."""
    n = len(CASES[name]["refusals"](raw))
    for i in range(n):
        copy = tmp_path / f"raw{i}"
        shutil.copytree(raw, copy)
        mutate, err, pattern = CASES[name]["refusals"](copy)[i]
        mutate()
        yield copy, err, pattern


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n].get("skip_missing")])
def test_skip_missing_leaves_out_images_without_a_label(written, name, tmp_path):
    raw, _ = written(name)
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    CASES[name]["refusals"](copy)[0][0]()  # the first refusal: a missing label
    m = get_dataset(name).write(str(copy), str(tmp_path / "out"), "train", skip_missing=True, num_workers=1,
                                progress=False)
    assert m["num_samples"] == 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_train_step_and_evaluation_with_the_official_pipelines(written, name):
    """The official ``_base_/datasets`` file (its pipelines at a small scale) drives the segmentation task's loaders
    on the shards; a tiny segmentor takes one optimizer step and is evaluated (mIoU in [0, 1])."""
    from mmengine.config import Config, ConfigDict
    from torch import nn

    from vit_adapter_ds.models.heads import FCNHead
    from vit_adapter_ds.models.segmentor import EncoderDecoder
    from vit_adapter_ds.tasks.segmentation import SemanticSegmentation

    _, shards = written(name)
    cfg = Config.fromfile(str(RECIPES / CASES[name]["base"]))
    data = cfg.to_dict()["data"]
    assert data["train"]["type"] == data["val"]["type"] == CASES[name]["alias"]
    data.update(samples_per_gpu=2, workers_per_gpu=0)
    train, test = data["train"]["pipeline"], data["val"]["pipeline"]
    train[2]["img_scale"], train[3]["crop_size"], train[7]["size"] = (64, 32), (32, 32), (32, 32)
    test[1]["img_scale"] = (64, 32)
    for split in ("train", "val", "test"):
        data[split]["shard_dir"] = str(shards / ("train" if split == "train" else "val"))
    nc = len(get_dataset(name).classes)
    task = SemanticSegmentation(ConfigDict(data=data, model={"test_cfg": {"mode": "whole"}}, evaluation={}))
    task._num_classes = nc  # what the model says (no recipe model is built here)
    torch.manual_seed(0)

    class Multi(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return [self.conv(x)]

    model = EncoderDecoder(Multi(), FCNHead(8, 8, num_classes=nc, in_index=0), num_classes=nc)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = next(iter(task.build_train_loader(rank=0, world_size=1, seed=0)))
    assert tuple(batch["img"].shape) == (2, 3, 32, 32)
    labels = batch["gt_semantic_seg"]
    assert bool(((labels < nc) | (labels == 255)).all())
    losses = task.forward_loss(model, batch, "cpu", torch.float32)
    losses["loss"].backward()
    opt.step()
    assert torch.isfinite(losses["loss"])
    model.eval()
    metrics, _ = task.evaluate(model, task.build_val_loader(rank=0, world_size=1), None, 0)
    assert set(metrics) == {"aAcc", "mIoU", "mAcc", "mDice"} and 0.0 <= metrics["mIoU"] <= 1.0


def test_coco_stuff10k_reads_mmsegs_converted_layout_too(written, tmp_path):
    """images/{train2014,test2014} + annotations/{..}/*_labelTrainIds.png, as mmseg's converter writes them from the
    same raw files (done here with its table): the same labels as the shards of the .mat files."""
    from scipy.io import loadmat

    from vit_adapter_ds.data.loader import build_val_loader

    raw, shards = written("coco_stuff10k")
    table = np.zeros(256, np.uint8)
    table[MMSEG_COCO_STUFF10K_IDS] = np.arange(172)
    conv = tmp_path / "coco_stuff10k"
    for lst, sub in (("train", "train2014"), ("test", "test2014")):
        (conv / "images" / sub).mkdir(parents=True)
        (conv / "annotations" / sub).mkdir(parents=True)
        for i in (raw / "imageLists" / f"{lst}.txt").read_text().split():
            shutil.copy(raw / "images" / f"{i}.jpg", conv / "images" / sub / f"{i}.jpg")
            s = loadmat(raw / "annotations" / f"{i}.mat")["S"].astype(np.uint8)
            Image.fromarray(table[s]).save(conv / "annotations" / sub / f"{i}_labelTrainIds.png")
    m = get_dataset("coco_stuff10k").write(str(conv), str(tmp_path / "out"), "val", num_workers=1, progress=False)
    assert m["label_map_name"] == "reduce_zero_label" and m["num_samples"] == 2

    def labels(d):
        return [b["gt_semantic_seg"][0].numpy() for b in build_val_loader(str(d), num_classes=171)]

    assert all(np.array_equal(a, b) for a, b in zip(labels(tmp_path / "out"), labels(shards / "val")))
    bad = conv / "annotations" / "train2014" / sorted(os.listdir(conv / "annotations" / "train2014"))[0]
    Image.fromarray(np.full((*SIZE,), 200, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=rf"label {re.escape(str(bad))}: values \[200\]"):
        get_dataset("coco_stuff10k").write(str(conv), str(tmp_path / "out"), "train", num_workers=1, progress=False)
