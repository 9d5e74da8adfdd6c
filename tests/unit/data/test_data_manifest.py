"""Manifest schema: every malformed manifest is refused with a ShardSetError naming the file and the field;
``make_shards verify`` on a parent folder checks every split."""
import copy
import json
import os
import re

import pytest

from vit_adapter_ds.data import ShardSetError, build_train_loader, read_manifest
from vit_adapter_ds.data.make_shards import main as make_shards_main
from vit_adapter_ds.data.make_shards import write_ade20k
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    """shards/syn/{train,val} of a small synthetic set."""
    raw = write_synthetic_ade(tmp_path_factory.mktemp("raw"), 6, 3, seed=1, size=(24, 32))
    root = tmp_path_factory.mktemp("shards") / "syn"
    for split in ("train", "val"):
        write_ade20k(raw, str(root / split), split, classes=SYNTHETIC_CLASSES, max_samples=4, num_workers=1,
                     progress=False)
    return root


def _set(m, path, value):
    """Set (or delete, for value is DELETE) the field at ``path`` (a list of keys/indices) of ``m``."""
    for k in path[:-1]:
        m = m[k]
    if value is DELETE:
        del m[path[-1]]
    else:
        m[path[-1]] = value


DELETE = object()
# (case id, path of the field, new value, regex that the error must contain besides the file name)
CASES = [
    ("unknown_version", ["version"], 2, r"field 'version' is 2: this reader supports version\(s\) \[1\]"),
    ("string_version", ["version"], "1", r"field 'version' is '1'"),
    ("missing_version", ["version"], DELETE, r"field 'version' is missing"),
    ("wrong_format", ["format"], "webdataset", r"not a vit-adapter-ds-shards manifest \(field 'format'"),
    ("missing_num_classes", ["num_classes"], DELETE, r"field 'num_classes' is missing"),
    ("string_num_classes", ["num_classes"], "8", r"field 'num_classes' must be a positive integer, got '8'"),
    ("float_num_classes", ["num_classes"], 8.0, r"field 'num_classes' must be a positive integer, got 8.0"),
    ("bool_num_samples", ["num_samples"], True, r"field 'num_samples' must be a positive integer"),
    ("shards_not_list", ["shards"], {"a": 1}, r"field 'shards' must be a list"),
    ("shard_not_object", ["shards", 0], "shard-000000.tar", r"field 'shards\[0\]' must be an object"),
    ("shard_without_name", ["shards", 1, "name"], DELETE, r"field 'shards\[1\].name' must be a shard file name"),
    ("shard_name_with_folder", ["shards", 0, "name"], "../x.tar", r"field 'shards\[0\].name'"),
    ("string_shard_bytes", ["shards", 0, "bytes"], "100", r"field 'shards\[0\] \(shard-000000.tar\).bytes'"),
    ("bad_sha256", ["shards", 0, "sha256"], "abc", r"shards\[0\] \(shard-000000.tar\).sha256' must be 64"),
    ("samples_missing", ["shards", 0, "samples"], DELETE, r"shards\[0\] \(shard-000000.tar\).samples' is missing"),
    ("sample_not_pair", ["shards", 0, "samples", 2], "key", r"field 'shards\[0\] \(shard-000000.tar\).samples\[2\]'"),
    ("string_offset", ["shards", 1, "samples", 0, 1, "jpg", 0], "1024",
     r"field 'shards\[1\] \(shard-000001.tar\).samples\[0\]\[1\]\['jpg'\]' must be \[offset, size\]"),
    ("negative_offset", ["shards", 0, "samples", 1, 1, "seg.png", 0], -5, r"samples\[1\]\[1\]\['seg.png'\]"),
    ("offset_past_the_shard", ["shards", 0, "samples", 0, 1, "jpg", 0], 10 ** 9, r"inside the shard's \d+ bytes"),
    ("float_size", ["shards", 0, "samples", 0, 1, "jpg", 1], 10.0, r"samples\[0\]\[1\]\['jpg'\]"),
    ("classes_count", ["classes"], ["a", "b"], r"field 'classes' has 2 names but num_classes=8"),
    ("label_map_length", ["label_map"], [0] * 10, r"field 'label_map' must be null or a list of 256 entries"),
    ("label_map_entry", ["label_map", 3], 300, r"field 'label_map' entries must be integers in \[0, 255\]"),
    ("task_not_string", ["task"], 3, r"field 'task' must be a string"),
]


@pytest.mark.parametrize("name,path,value,pattern", CASES, ids=[c[0] for c in CASES])
def test_malformed_manifest_is_refused_naming_file_and_field(shard_root, tmp_path, name, path, value, pattern):
    src = shard_root / "train"
    good = json.loads((src / "manifest.json").read_text())
    d = tmp_path / "train"
    d.mkdir()
    for fn in os.listdir(src):
        if fn.endswith(".tar"):
            os.symlink(src / fn, d / fn)
    m = copy.deepcopy(good)
    _set(m, path, value)
    (d / "manifest.json").write_text(json.dumps(m))
    manifest_path = re.escape(str(d / "manifest.json"))
    with pytest.raises(ShardSetError, match=manifest_path) as e:
        read_manifest(str(d))
    assert re.search(pattern, str(e.value)), str(e.value)
    with pytest.raises(ShardSetError, match=pattern):  # the loaders refuse it the same way
        build_train_loader(str(tmp_path), batch_size=2, crop_size=16, scale=(64, 16))


@pytest.mark.parametrize("text,pattern", [("[1, 2]", "must be a JSON object, got list"),
                                          ('"manifest"', "must be a JSON object, got str"),
                                          ("{", "cannot read manifest")])
def test_manifest_that_is_not_a_json_object(tmp_path, text, pattern):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ShardSetError, match=pattern) as e:
        read_manifest(str(tmp_path))
    assert str(tmp_path / "manifest.json") in str(e.value)


def test_the_written_manifest_passes(shard_root):
    for split in ("train", "val"):
        m = read_manifest(str(shard_root), split)
        assert m["version"] == 1 and m["num_classes"] == 8 and m["shard_dir"] == str(shard_root / split)


def _copy_set(src, dst):
    os.makedirs(dst)
    for fn in os.listdir(src):
        with open(os.path.join(src, fn), "rb") as f:
            data = f.read()
        with open(os.path.join(dst, fn), "wb") as f:
            f.write(data)


def test_verify_checks_every_split_of_a_parent_folder(shard_root, tmp_path, capsys):
    assert make_shards_main(["verify", str(shard_root)]) == 0
    out = capsys.readouterr().out
    assert f"{shard_root / 'train'}: 2 shard(s), 6 samples, checksums OK" in out
    assert f"{shard_root / 'val'}: 1 shard(s), 3 samples, checksums OK" in out
    root = tmp_path / "copy"
    for split in ("train", "val"):
        _copy_set(shard_root / split, root / split)
    p = root / "val" / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    data[600] ^= 1  # same size, other content: only the checksum notices
    p.write_bytes(bytes(data))
    assert make_shards_main(["verify", str(root)]) == 1
    cap = capsys.readouterr()
    assert f"{root / 'train'}: 2 shard(s), 6 samples, checksums OK" in cap.out
    assert f"{root / 'val'}: FAILED" in cap.err and "sha256" in cap.err
    assert make_shards_main(["verify", str(root / "train")]) == 0  # a split folder itself
    (root / "train" / "manifest.json").write_text(json.dumps({"format": "vit-adapter-ds-shards", "version": 9}))
    assert make_shards_main(["verify", str(root)]) == 1
    assert "field 'version' is 9" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert make_shards_main(["verify", str(tmp_path / "nothing")]) == 1
    assert "no manifest.json" in capsys.readouterr().err
