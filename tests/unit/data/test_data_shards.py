"""Shard writers: byte-exact round trips, manifests, bounded shards, atomicity, dataset layouts, label maps."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.data import ShardSetError, read_manifest, verify_shards
from vit_adapter_ds.data.classes import COCO_STUFF_IDS, coco_stuff_label_map, reduce_zero_label_map
from vit_adapter_ds.data.decode import ShardReader, decode_seg_sample
from vit_adapter_ds.data.make_shards import write_ade20k, write_coco, write_cocostuff, write_custom
from vit_adapter_ds.data.shard_writer import plan_shards, write_shards
from vit_adapter_ds.data.synthetic import (SYNTHETIC_CLASSES, SYNTHETIC_TO_COCO_STUFF_ID, write_synthetic_ade,
                                           write_synthetic_coco)

SIZE = (64, 80)


def _tar_members(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t}


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return write_synthetic_ade(tmp_path_factory.mktemp("raw"), 13, 4, seed=3, size=SIZE)


def test_ade20k_round_trip_bytes_and_manifest(ade_root, tmp_path):
    out = str(tmp_path / "train")
    m = write_ade20k(ade_root, out, "train", max_samples=4, num_workers=2, progress=False)
    assert [s["num_samples"] for s in m["shards"]] == [4, 4, 4, 1]
    assert m["num_samples"] == 13 and m["label_map"] == reduce_zero_label_map() and m["num_classes"] == 150
    seen = []
    for s in m["shards"]:
        p = os.path.join(out, s["name"])
        assert os.path.getsize(p) == s["bytes"]
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == s["sha256"]
        members = _tar_members(p)
        assert len(members) == 2 * s["num_samples"]
        for key, idx in s["samples"]:
            seen.append(key)
            img = open(os.path.join(ade_root, "images", "training", key + ".jpg"), "rb").read()
            ann = open(os.path.join(ade_root, "annotations", "training", key + ".png"), "rb").read()
            assert members[key + ".jpg"] == img and members[key + ".seg.png"] == ann  # original bytes
            raw = open(p, "rb").read()
            off, size = idx["jpg"]
            assert raw[off:off + size] == img  # the member index points at the data
    assert seen == sorted(seen) == [f"ADE_train_{i:08d}" for i in range(1, 14)]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    m2 = read_manifest(str(tmp_path))  # parent folder -> train/
    assert m2["num_samples"] == 13 and m2["shard_dir"] == out
    verify_shards(out, m2, "sha256")


def test_shards_are_readable_by_webdataset(ade_root, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = str(tmp_path / "train")
    m = write_ade20k(ade_root, out, "train", max_samples=5, num_workers=1, progress=False)
    urls = [os.path.join(out, s["name"]) for s in m["shards"]]
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in got] == [k for s in m["shards"] for k, _ in s["samples"]]
    assert all(set(s) >= {"jpg", "seg.png"} for s in got)
    assert got[0]["jpg"] == open(os.path.join(ade_root, "images", "training", got[0]["__key__"] + ".jpg"),
                                 "rb").read()


def test_writer_is_deterministic_and_bounded(tmp_path):
    samples = [(f"k{i:03d}", {"bin": bytes([i]) * (100 + 37 * i), "json": b"{}"}) for i in range(20)]
    a = write_shards(samples, str(tmp_path / "a"), {"task": "x"}, max_samples=6, max_bytes=10_000, num_workers=2,
                     progress=False)
    b = write_shards(samples, str(tmp_path / "b"), {"task": "x"}, max_samples=6, max_bytes=10_000, num_workers=1,
                     progress=False)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    for s in a["shards"]:
        assert s["num_samples"] <= 6 and (s["bytes"] <= 10_000 + 10240 or s["num_samples"] == 1)
    assert sum(s["num_samples"] for s in a["shards"]) == 20
    # byte bound alone: 3 samples of 1000 bytes need > 2048 per sample with headers -> one per shard at 2500
    plan = plan_shards([(str(i), {"x": b"0" * 1000}) for i in range(3)], max_samples=100, max_bytes=2500)
    assert [len(p) for p in plan] == [1, 1, 1]


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        write_shards([], str(tmp_path / "e"), {})
    with pytest.raises(ValueError, match="invalid sample key"):
        write_shards([("a.b", {"x": b"1"})], str(tmp_path / "e"), {})
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([("a", {"x": b"1"}), ("a", {"x": b"2"})], str(tmp_path / "e"), {})


def test_killed_writer_leaves_no_complete_looking_set(tmp_path, monkeypatch):
    import vit_adapter_ds.data.shard_writer as sw

    out = str(tmp_path / "s")
    samples = [(f"k{i}", {"bin": b"x" * 50}) for i in range(6)]
    write_shards(samples, out, {"task": "segmentation"}, max_samples=2, num_workers=1, progress=False)
    assert os.path.exists(os.path.join(out, "manifest.json"))
    calls = []

    def dying(job):  # the second shard "crashes" after its temporary file was started
        if calls:
            open(os.path.join(job[0], job[1] + ".tmp"), "wb").write(b"partial")
            raise KeyboardInterrupt
        calls.append(job)
        return real(job)

    real = sw._write_one
    monkeypatch.setattr(sw, "_write_one", dying)
    with pytest.raises(KeyboardInterrupt):
        write_shards(samples, out, {"task": "segmentation"}, max_samples=2, num_workers=1, progress=False)
    assert not os.path.exists(os.path.join(out, "manifest.json"))  # old manifest removed first, new not written
    with pytest.raises(ShardSetError, match="did not finish"):
        read_manifest(out)
    monkeypatch.setattr(sw, "_write_one", real)
    write_shards(samples, out, {"task": "segmentation"}, max_samples=2, num_workers=1, progress=False)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_synthetic_is_deterministic_and_structured(tmp_path):
    a = write_synthetic_ade(tmp_path / "a", 3, 1, seed=5, size=SIZE)
    b = write_synthetic_ade(tmp_path / "b", 3, 1, seed=5, size=SIZE)
    c = write_synthetic_ade(tmp_path / "c", 3, 1, seed=6, size=SIZE)
    f = os.path.join("images", "training", "ADE_train_00000002.jpg")
    assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read()
    assert open(os.path.join(a, f), "rb").read() != open(os.path.join(c, f), "rb").read()
    big = write_synthetic_ade(tmp_path / "big", 4, 0, seed=0)
    im = Image.open(os.path.join(big, "images", "training", "ADE_train_00000001.jpg"))
    assert im.size == (683, 512) and im.format == "JPEG"
    labels = np.concatenate([np.array(Image.open(os.path.join(big, "annotations", "training", fn))).ravel()
                             for fn in sorted(os.listdir(os.path.join(big, "annotations", "training")))])
    present = set(np.unique(labels).tolist())
    assert 0 in present and 1 in present and len(present - {0}) >= 5 and max(present) <= len(SYNTHETIC_CLASSES)


def test_synthetic_cli(tmp_path, capsys):
    out = tmp_path / "syn"
    r = subprocess.run([sys.executable, "-m", "vit_adapter_ds.data.make_shards", "synthetic", "--out", str(out),
                        "--num-train", "5", "--num-val", "2", "--size", "64", "80", "--max-samples", "2",
                        "--no-progress", "--workers", "1", "--raw-dir", str(tmp_path / "raw")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    mt, mv = read_manifest(str(out), "train"), read_manifest(str(out), "val")
    assert (mt["num_samples"], mv["num_samples"], len(mt["shards"])) == (5, 2, 3)
    assert mt["classes"] == list(SYNTHETIC_CLASSES) and mt["dataset"] == "synthetic" and len(mt["palette"]) == 8
    from vit_adapter_ds.data.make_shards import main

    assert main(["verify", str(out / "train")]) == 0
    assert "checksums OK" in capsys.readouterr().out
    assert main(["ade20k", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "ade"), "--splits", "val",
                 "--no-progress", "--workers", "1"]) == 0
    assert read_manifest(str(tmp_path / "ade"), "val")["num_samples"] == 2
    for layout, task, nc in (("cocostuff", "segmentation", 171), ("coco", "detection", 7)):
        assert main(["synthetic", "--layout", layout, "--out", str(tmp_path / layout), "--num-train", "2",
                     "--num-val", "1", "--size", "32", "40", "--no-progress", "--workers", "1"]) == 0
        m = read_manifest(str(tmp_path / layout), "val")
        assert (m["task"], m["num_classes"], m["num_samples"]) == (task, nc, 1)


def _mmseg_converter_table():
    """mmseg's ``clsID_to_trID`` (tools/dataset_converters/coco_stuff164k.py); skips (a failure in strict mode)
    when mmseg or its converter is missing -- never a silent fallback."""
    try:
        import mmseg
    except ImportError as e:
        pytest.skip(f"reference missing: mmseg not importable ({e})")
    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", "dataset_converters", "coco_stuff164k.py")
    if not os.path.exists(path):
        pytest.skip(f"reference missing: mmseg's COCO-Stuff converter {path}")
    spec = importlib.util.spec_from_file_location("_mmseg_coco_stuff164k", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.clsID_to_trID


# Independent copy of the ids absent from mmseg's converter table (tools/dataset_converters/coco_stuff164k.py,
# clsID_to_trID): COCO category ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91 (1-based) have no annotations.
_ABSENT = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _hand_table():
    """The converter's table from that description: the 171 present ids 0..181 numbered in order, 255 kept."""
    table = {i: t for t, i in enumerate(sorted(set(range(182)) - set(_ABSENT)))}
    table[255] = 255
    return table


def _check_label_map(table):
    lut = coco_stuff_label_map()
    assert len(table) == 172
    for orig, train_id in table.items():
        assert lut[orig] == train_id, orig
    for orig in range(256):
        if orig not in table:
            assert lut[orig] == 254  # invalid -> reported as bad data by the loader


def test_coco_stuff_label_map_matches_the_hand_written_table():
    _check_label_map(_hand_table())
    assert sorted(set(range(182)) - set(COCO_STUFF_IDS)) == list(_ABSENT)


def test_coco_stuff_label_map_matches_mmseg():
    table = _mmseg_converter_table()
    assert dict(table) == _hand_table()
    _check_label_map(table)


def test_cocostuff_and_coco_writers(tmp_path):
    root = write_synthetic_coco(tmp_path / "coco", 4, 2, seed=1, size=SIZE)
    m = write_cocostuff(root, str(tmp_path / "cs" / "val"), "val", num_workers=1, progress=False)
    assert m["num_classes"] == 171 and m["label_map_name"] == "coco_stuff_164k"
    table = _hand_table()  # equal to mmseg's converter table (test_coco_stuff_label_map_matches_mmseg)
    reader = ShardReader(m)
    lut = torch.tensor(m["label_map"], dtype=torch.uint8)
    for si, s in enumerate(m["shards"]):
        for i, (key, _) in enumerate(s["samples"]):
            img, lab = decode_seg_sample(reader.read(si, i), lut, 171)
            raw = np.array(Image.open(os.path.join(root, "stuffthingmaps_trainval2017", "val2017", key + ".png")))
            ref = raw.copy()  # mmseg's convert_to_trainID, applied to the raw map
            for c, t in table.items():
                ref[raw == c] = t
            np.testing.assert_array_equal(lab.numpy(), ref)
            assert set(np.unique(raw)) <= set(SYNTHETIC_TO_COCO_STUFF_ID) | {255}
    # COCO instances: image bytes + per-image annotation JSON
    d = write_coco(root, str(tmp_path / "det" / "train"), "train", num_workers=1, progress=False)
    coco = json.load(open(os.path.join(root, "annotations", "instances_train2017.json")))
    assert d["task"] == "detection" and d["num_samples"] == 4 and [c["id"] for c in d["categories"]] == list(
        range(1, 8))
    members = _tar_members(os.path.join(str(tmp_path / "det" / "train"), d["shards"][0]["name"]))
    for im in coco["images"]:
        key = f"{im['id']:012d}"
        rec = json.loads(members[key + ".json"])
        assert rec["image"] == im
        assert rec["annotations"] == [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert members[key + ".jpg"] == open(os.path.join(root, "images", "train2017", im["file_name"]), "rb").read()


def test_custom_layout(tmp_path):
    imgs, masks = tmp_path / "img", tmp_path / "mask"
    imgs.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(imgs / f"a.{i}.png")
        Image.fromarray(np.full((20, 30), i, np.uint8)).save(masks / f"a.{i}.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(imgs / "nomask.jpg")
    (tmp_path / "classes.txt").write_text("# my classes\nroad\ncar\n\nsky\n")
    with pytest.raises(FileNotFoundError, match="no mask"):
        write_custom(str(imgs), str(masks), str(tmp_path / "classes.txt"), str(tmp_path / "out"), "train")
    m = write_custom(str(imgs), str(masks), str(tmp_path / "classes.txt"), str(tmp_path / "out"), "train",
                     skip_missing=True, num_workers=1, progress=False)
    assert m["classes"] == ["road", "car", "sky"] and m["num_samples"] == 3
    reader = ShardReader(m)
    lut = torch.tensor(m["label_map"], dtype=torch.uint8)
    keys = [k for k, _ in m["shards"][0]["samples"]]
    assert keys == ["a_0", "a_1", "a_2"]
    for i in range(3):
        sample = reader.read(0, i)
        assert sample["png"] == (imgs / f"a.{i}.png").read_bytes()
        img, lab = decode_seg_sample(sample, lut, 3)
        assert img.shape == (3, 20, 30) and int(lab.unique().item()) == i


def test_manifest_errors(tmp_path, ade_root):
    with pytest.raises(ShardSetError, match="not found"):
        read_manifest(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardSetError, match="no manifest.json"):
        read_manifest(str(tmp_path / "empty"))
    out = str(tmp_path / "s")
    m = write_ade20k(ade_root, out, "train", max_samples=5, num_workers=1, progress=False)
    path = os.path.join(out, "manifest.json")
    good = json.load(open(path))
    bad = dict(good, num_samples=good["num_samples"] + 1)
    json.dump(bad, open(path, "w"))
    with pytest.raises(ShardSetError, match="num_samples"):
        read_manifest(out)
    json.dump(dict(good, shards=[]), open(path, "w"))
    with pytest.raises(ShardSetError, match="lists no shards"):
        read_manifest(out)
    json.dump(good, open(path, "w"))
    m = read_manifest(out)
    p0 = os.path.join(out, m["shards"][0]["name"])
    data = bytearray(open(p0, "rb").read())
    data[700] ^= 0xFF  # same size, different content
    open(p0, "wb").write(bytes(data))
    verify_shards(out, m, "size")
    with pytest.raises(ShardSetError, match="sha256"):
        verify_shards(out, m, "sha256")
    os.remove(p0)
    with pytest.raises(ShardSetError, match="missing or unreadable"):
        verify_shards(out, m, "exists")
