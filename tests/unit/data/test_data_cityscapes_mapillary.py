"""Cityscapes and Mapillary Vistas (issue 21): the synthetic twins in each dataset's raw layout go through the entry's
real writer; the manifests carry the official classes / palette / label map; the labels read back from the shards
equal the source PNGs (read independently with PIL); the writers refuse what does not fit, naming the file; and the
official ``_base_/datasets`` pipelines drive one train step and an evaluation through the segmentation task's
loaders (Mapillary with the official ``MapillaryHack`` step, validated on Cityscapes as the official recipe is)."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data import classes as C
from vit_adapter_ds.data.catalog import get_dataset

RECIPES = Path(__file__).resolve().parents[3] / "vit_adapter_ds" / "recipes" / "_base_" / "datasets"

# the official MapillaryHack (czczup/ViT-Adapter segmentation/mmseg_custom/datasets/pipelines/transform.py), typed
# from that file independently of the package's table
OFFICIAL_HACK_MAP = [[13, 24, 41], [2, 15], [17], [6], [3], [45, 47], [48], [50], [30], [29], [27], [19],
                     [20, 21, 22], [55], [61], [54], [58], [57], [52]]


def official_mapillary_hack(gt_map):
    others = [i for i in range(66) if not any(i in m for m in OFFICIAL_HACK_MAP)]
    new_gt_map = np.zeros_like(gt_map)
    for value in others:
        new_gt_map[gt_map == value] = 255
    for index, values in enumerate(OFFICIAL_HACK_MAP):
        for value in values:
            new_gt_map[gt_map == value] = index
    return new_gt_map


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """``{layout: (raw root, shard folder)}`` of ``make_shards synthetic --layout {cityscapes,mapillary}``
    (3 train, 2 val images of 48 x 64)."""
    from vit_adapter_ds.data.make_shards import main

    base = tmp_path_factory.mktemp("cs_mv")
    out = {}
    for layout in ("cityscapes", "mapillary"):
        raw, shards = base / f"{layout}_raw", base / layout
        assert main(["synthetic", "--layout", layout, "--out", str(shards), "--raw-dir", str(raw), "--num-train", "3",
                     "--num-val", "2", "--size", "48", "64", "--workers", "1", "--no-progress"]) == 0
        out[layout] = (raw, shards)
    return out


def _mmseg_cityscapes_meta():
    """classes / palette of mmseg's CityscapesDataset, read from the installed file (no import: mmseg's package
    import needs mmcv's compiled ops)."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("mmseg")
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        pytest.skip("reference missing: mmseg not installed")
    path = Path(spec.origin).parent / "datasets" / "cityscapes.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "METAINFO":
            return {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
    pytest.fail(f"no METAINFO in {path}")


def _read_back(shard_dir):
    """``{key: (image (H, W, 3), label (H, W) as stored)}`` of a shard set."""
    from vit_adapter_ds.data.decode import ShardReader, decode_image, decode_label, image_member
    from vit_adapter_ds.data.manifest import read_manifest

    m = read_manifest(str(shard_dir))
    reader = ShardReader(m)
    out = {}
    for i in range(m["num_samples"]):
        s = reader.read_global(i)
        ext = image_member(s)
        out[str(reader.keys[i])] = (decode_image(s[ext], ext).permute(1, 2, 0).numpy(),
                                    decode_label(s["seg.png"]).numpy())
    reader.close()
    return out


def test_cityscapes_twin_manifest_and_labels(written):
    from vit_adapter_ds.data.manifest import read_manifest

    raw, shards = written["cityscapes"]
    meta = _mmseg_cityscapes_meta()
    entry = get_dataset("CityscapesDataset")
    assert entry.name == "cityscapes" and entry.classes == tuple(meta["classes"]) and entry.palette == meta["palette"]
    for split, n in (("train", 3), ("val", 2)):
        m = read_manifest(str(shards / split))
        assert (m["dataset"], m["task"], m["num_samples"], m["num_classes"]) == ("cityscapes", "segmentation", n, 19)
        assert m["classes"] == list(meta["classes"]) and m["palette"] == meta["palette"]
        assert (m["label_map"], m["label_map_name"], m["ignore_index"]) == (list(range(256)), "identity", 255)
        got = _read_back(shards / split)
        files = sorted((raw / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))
        assert sorted(got) == sorted(f.name[: -len("_leftImg8bit.png")] for f in files) and len(files) == n
        for f in files:
            key = f.name[: -len("_leftImg8bit.png")]
            lab = raw / "gtFine" / split / f.parent.name / f"{key}_gtFine_labelTrainIds.png"
            with Image.open(lab) as im:
                assert im.mode == "L"
                want = np.array(im)
            with Image.open(f) as im:
                img = np.array(im.convert("RGB"))
            assert np.array_equal(got[key][1], want) and np.array_equal(got[key][0], img)
            assert set(np.unique(want).tolist()) <= set(range(19)) | {255}
    assert {p.name for p in (raw / "leftImg8bit" / "train").iterdir()} == {"aachen", "bremen"}  # city folders


def test_mapillary_twin_manifest_and_labels(written):
    from vit_adapter_ds.data.manifest import read_manifest

    raw, shards = written["mapillary"]
    entry = get_dataset("MapillaryDataset")
    # anchors of the official MapillaryDataset's CLASSES / PALETTE (mmseg_custom/datasets/mapillary.py)
    assert entry.name == "mapillary" and len(entry.classes) == len(entry.palette) == 66
    assert (entry.classes[0], entry.classes[13], entry.classes[19], entry.classes[55], entry.classes[65]) == \
        ("Bird", "Road", "Person", "Car", "Unlabeled")
    assert (entry.palette[0], entry.palette[13], entry.palette[65]) == ([165, 42, 42], [128, 64, 128], [0, 0, 0])
    folders = {"train": ("training", "validation"), "val": ("validation",)}
    for split, n in (("train", 5), ("val", 2)):  # train = training + validation, as the official img_dir list
        m = read_manifest(str(shards / split))
        assert (m["dataset"], m["num_samples"], m["num_classes"]) == ("mapillary", n, 66)
        assert m["classes"] == list(C.MAPILLARY_CLASSES) and m["palette"] == C.MAPILLARY_PALETTE
        assert (m["label_map"], m["label_map_name"]) == (list(range(256)), "identity")
        got = _read_back(shards / split)
        files = sorted(f for d in folders[split] for f in (raw / d / "images").glob("*.jpg"))
        assert sorted(got) == sorted(f.stem for f in files)
        for f in files:
            with Image.open(f.parent.parent / "labels" / f"{f.stem}.png") as im:
                assert im.mode == "P"
                want = np.array(im)  # palette indices = the Mapillary ids
            assert np.array_equal(got[f.stem][1], want)
            assert set(np.unique(want).tolist()) <= set(range(66))


def test_mapillary_hack_table_equals_the_official_step():
    from vit_adapter_ds.data.pipeline import mapillary_hack

    remap = mapillary_hack()
    ids = np.arange(66, dtype=np.uint8)
    assert np.array_equal(np.array(remap["lut"][:66], np.uint8), official_mapillary_hack(ids))
    assert remap["lut"][66:] == [254] * 190  # never in v1.2 labels (the writer refuses them): invalid, not 'road'
    assert (remap["in_classes"], remap["num_classes"]) == (66, 19)


def _copy(raw, tmp_path):
    dst = tmp_path / "raw"
    shutil.copytree(raw, dst)
    return dst


def test_cityscapes_writer_refuses_what_does_not_fit(written, tmp_path):
    from vit_adapter_ds.data.catalog.cityscapes import write_cityscapes

    root = _copy(written["cityscapes"][0], tmp_path)
    lab = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000001_gtFine_labelTrainIds.png"
    img = root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000001_leftImg8bit.png"
    good = lab.read_bytes()
    kw = dict(num_workers=1, progress=False)

    def write():
        return write_cityscapes(str(root), str(tmp_path / "out"), "val", **kw)

    lab.unlink()  # an image without its label
    with pytest.raises(FileNotFoundError, match=f"1 image.*{img}: {lab} not found.*--skip-missing"):
        write()
    assert write_cityscapes(str(root), str(tmp_path / "skip"), "val", skip_missing=True, **kw)["num_samples"] == 1
    (lab.parent / "frankfurt_000000_000001_gtFine_labelIds.png").write_bytes(good)
    with pytest.raises(FileNotFoundError, match="convert_datasets/cityscapes.py"):
        write()
    arr = np.array(Image.open(img).convert("L"))
    for bad, match in ((np.full(arr.shape, 19, np.uint8), r"holds values \[19\] outside 0..18 and 255"),
                       (np.full(arr.shape, 254, np.uint8), r"holds values \[254\]")):
        Image.fromarray(bad).save(lab)
        with pytest.raises(ValueError, match=f"label {lab} {match}"):
            write()
    Image.fromarray(np.zeros((*arr.shape, 3), np.uint8)).save(lab)  # RGB
    with pytest.raises(ValueError, match=f"label {lab}: must be an 8-bit gray or palette PNG \\(colour type 2"):
        write()
    Image.fromarray(np.zeros((arr.shape[0], arr.shape[1] + 1), np.uint8)).save(lab)
    with pytest.raises(ValueError, match=f"label {lab} is 48x65, the image {img} 48x64"):
        write()
    lab.write_bytes(good)
    assert not (tmp_path / "out" / "manifest.json").exists()  # nothing written by a refused run ...
    assert write()["num_samples"] == 2  # ... and the set is written once the label fits


def test_mapillary_writer_refuses_what_does_not_fit(written, tmp_path):
    from vit_adapter_ds.data.catalog.mapillary import write_mapillary

    root = _copy(written["mapillary"][0], tmp_path)
    lab, img = root / "validation" / "labels" / "v000001.png", root / "validation" / "images" / "v000001.jpg"
    good = lab.read_bytes()
    kw = dict(num_workers=1, progress=False)

    def write(split="train"):
        return write_mapillary(str(root), str(tmp_path / "out"), split, **kw)

    lab.unlink()
    with pytest.raises(FileNotFoundError, match=f"{img}: {lab} not found"):
        write()
    im = Image.frombytes("P", (64, 48), np.full((48, 64), 66, np.uint8).tobytes())
    im.putpalette([v for rgb in C.MAPILLARY_PALETTE for v in rgb])
    im.save(lab)
    with pytest.raises(ValueError, match=rf"label {lab} holds values \[66\] outside 0..65"):
        write("val")
    Image.fromarray(np.zeros((48, 64), np.uint16)).save(lab)  # 16-bit gray
    with pytest.raises(ValueError, match=f"label {lab}: must be an 8-bit gray or palette PNG"):
        write()
    lab.write_bytes(good)
    assert write()["num_samples"] == 5


def _task(data, nc):
    from mmengine.config import ConfigDict

    from vit_adapter_ds.tasks.segmentation import SemanticSegmentation

    task = SemanticSegmentation(ConfigDict(data=data, model={"test_cfg": {"mode": "whole"}}, evaluation={}))
    task._num_classes = nc  # what the model says (no recipe model is built here)
    return task


def _small(data, shards_train, shards_val, mapillary=False):
    """The base file's data section with its pipelines at 32 x 32 crops, reading the given shard folders."""
    data.update(samples_per_gpu=2, workers_per_gpu=0)
    train, test = data["train"]["pipeline"], data["val"]["pipeline"]
    o = 1 if mapillary else 0  # MapillaryHack sits after LoadAnnotations
    train[2 + o]["img_scale"], train[3 + o]["crop_size"], train[7 + o]["size"] = (64, 32), (32, 32), (32, 32)
    test[1]["img_scale"] = (64, 32)
    data["train"]["shard_dir"] = str(shards_train)
    data["val"]["shard_dir"] = data["test"]["shard_dir"] = str(shards_val)
    return data


def _step_and_evaluate(task, nc):
    from torch import nn

    from vit_adapter_ds.models.heads import FCNHead
    from vit_adapter_ds.models.segmentor import EncoderDecoder

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
    losses = task.forward_loss(model, batch, "cpu", torch.float32)
    losses["loss"].backward()
    opt.step()
    assert torch.isfinite(losses["loss"])
    model.eval()
    metrics, _ = task.evaluate(model, task.build_val_loader(rank=0, world_size=1), None, 0)
    assert set(metrics) == {"aAcc", "mIoU", "mAcc", "mDice"} and 0.0 <= metrics["mIoU"] <= 1.0
    return batch


def test_cityscapes_train_step_and_evaluation_with_the_official_pipelines(written):
    from mmengine.config import Config

    _, shards = written["cityscapes"]
    data = Config.fromfile(str(RECIPES / "cityscapes_896x896.py")).to_dict()["data"]
    assert data["train"]["type"] == data["val"]["type"] == "CityscapesDataset"
    assert data["train"]["pipeline"][3]["crop_size"] == (896, 896) and data["samples_per_gpu"] == 2
    task = _task(_small(data, shards / "train", shards / "val"), 19)
    batch = _step_and_evaluate(task, 19)
    labels = batch["gt_semantic_seg"]
    assert bool(((labels < 19) | (labels == 255)).all())


def test_mapillary_trains_through_mapillary_hack_and_validates_on_cityscapes(written):
    """The official first stage: Mapillary shards (66 ids) mapped by MapillaryHack to the 19 Cityscapes classes,
    validated on Cityscapes val; the loader's label table is the official step's; without the step (or on other
    shards) the loader refuses."""
    from mmengine.config import Config

    from vit_adapter_ds.data.loader import _lut
    from vit_adapter_ds.data.manifest import ShardSetError

    _, mv = written["mapillary"]
    _, cs = written["cityscapes"]
    data = Config.fromfile(str(RECIPES / "mapillary_896x896.py")).to_dict()["data"]
    assert (data["train"]["type"], data["val"]["type"]) == ("MapillaryDataset", "CityscapesDataset")
    assert data["train"]["pipeline"][2] == {"type": "MapillaryHack"}
    task = _task(_small(data, mv / "train", cs / "val", mapillary=True), 19)
    loader = task.build_train_loader(rank=0, world_size=1, seed=0)
    lut = _lut(loader.manifest, loader.opts["label_remap"]).numpy()
    for key, (_, stored) in _read_back(mv / "train").items():  # the ids as stored -> the official step's labels
        assert np.array_equal(lut[stored], official_mapillary_hack(stored)), key
    batch = _step_and_evaluate(task, 19)
    labels = batch["gt_semantic_seg"]
    assert bool(((labels < 19) | (labels == 255)).all()) and bool((labels == 13).any())  # Car 55 -> car 13

    no_hack = Config.fromfile(str(RECIPES / "mapillary_896x896.py")).to_dict()["data"]
    del no_hack["train"]["pipeline"][2]
    with pytest.raises(ShardSetError, match="the manifest has 66 classes, the model/recipe 19"):
        _task(_small(no_hack, mv / "train", cs / "val"), 19).build_train_loader(rank=0, world_size=1, seed=0)
    on_cs = Config.fromfile(str(RECIPES / "mapillary_896x896.py")).to_dict()["data"]
    with pytest.raises(ShardSetError, match="MapillaryHack maps 66 classes .*, the manifest has 19"):
        _task(_small(on_cs, cs / "train", cs / "val", mapillary=True), 19).build_train_loader(rank=0, world_size=1,
                                                                                             seed=0)
    bad = Config.fromfile(str(RECIPES / "mapillary_896x896.py")).to_dict()["data"]
    bad["train"]["pipeline"][2]["ignore_index"] = 255
    with pytest.raises(ConfigError, match=r"pipeline\[2\].ignore_index: unknown or unsupported key"):
        _task(_small(bad, mv / "train", cs / "val", mapillary=True), 19).build_train_loader(rank=0, world_size=1,
                                                                                           seed=0)
    moved = Config.fromfile(str(RECIPES / "mapillary_896x896.py")).to_dict()["data"]
    moved["train"]["pipeline"].insert(4, moved["train"]["pipeline"].pop(2))  # after Resize: not the official order
    with pytest.raises(ConfigError, match="the steps must be"):
        _task(moved, 19).build_train_loader(rank=0, world_size=1, seed=0)
    keyed = _small(Config.fromfile(str(RECIPES / "mapillary_896x896.py")).to_dict()["data"], mv / "train",
                   cs / "val", mapillary=True)
    keyed["train"]["label_remap"] = None
    with pytest.raises(ConfigError, match=r"data.train sets \['label_remap'\]"):
        _task(keyed, 19).build_train_loader(rank=0, world_size=1, seed=0)


def test_make_shards_lists_the_new_datasets(capsys):
    from vit_adapter_ds.data.make_shards import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "cityscapes" in text and "mapillary" in text
    with pytest.raises(SystemExit):
        main(["mapillary", "--help"])
    assert "training + validation" in capsys.readouterr().out
