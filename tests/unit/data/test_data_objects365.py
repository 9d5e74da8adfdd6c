"""The Objects365 v2 catalog entry (data/catalog/objects365.py): its synthetic twin in the official layout
(``annotations/zhiyuan_objv2_{split}.json``, ``{split}/patch<N>/*.jpg``) sharded through ``make_shards`` into a
365-class detection manifest whose samples carry the per-image JSON with ``patch<N>/<name>`` file names, the alias
of the official config, and the refusals naming the file that does not fit."""
from __future__ import annotations

import json
import tarfile

import pytest

from vit_adapter_ds.data.catalog import get_dataset
from vit_adapter_ds.data.catalog.objects365 import V2_ABSENT, annotation_file, objects365_samples, \
    write_synthetic_objects365


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_synthetic_objects365(tmp_path_factory.mktemp("o365"), 3, 2, size=(48, 64))


def test_synthetic_twin_shards_into_a_365_class_detection_set(tmp_path, capsys):
    from vit_adapter_ds.data.make_shards import main
    from vit_adapter_ds.data.manifest import read_manifest

    assert get_dataset("Objects365V2Dataset").name == "objects365"  # the official config's type
    out = tmp_path / "shards"
    assert main(["synthetic", "--layout", "objects365", "--num-train", "3", "--num-val", "2", "--size", "48", "64",
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    m = read_manifest(str(out / "train"))
    assert (m["dataset"], m["task"], m["num_samples"], m["num_classes"]) == ("objects365", "detection", 3, 365)
    assert m["classes"][:2] == ["object1", "object2"] and [c["id"] for c in m["categories"]] == list(range(1, 366))
    assert read_manifest(str(out / "val"))["num_samples"] == 2
    recs = []
    for shard in sorted((out / "train").glob("*.tar")):
        with tarfile.open(shard) as t:
            recs += [json.load(t.extractfile(n)) for n in t.getmembers() if n.name.endswith(".json")]
    assert len(recs) == 3 and all(r["image"]["file_name"].startswith(("patch0/", "patch1/")) for r in recs)
    assert sum(len(r["annotations"]) for r in recs) > 0
    assert all("segmentation" not in a and 1 <= a["category_id"] <= 7 for r in recs for a in r["annotations"])


def _edit(raw, tmp_path, change):
    import shutil

    root = tmp_path / "edited"
    shutil.copytree(raw, root)
    path = annotation_file(str(root), "val")
    with open(path) as f:
        data = json.load(f)
    change(data, root)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(root), path


@pytest.mark.parametrize("change,error,msg", [
    (lambda d, r: d.update(categories=d["categories"][:80]), ValueError, "365 categories with ids 1..365; this file "
                                                                         "has 80"),
    (lambda d, r: d.pop("annotations"), ValueError, "not a COCO-style annotation file"),
    (lambda d, r: d["images"][0].update(file_name="objects365_v2_1.jpg"), ValueError, "has no patch<N>/ folder"),
    (lambda d, r: d["annotations"][0].update(category_id=400), ValueError, r"category_id in 1..365"),
    (lambda d, r: d["images"][0].update(file_name="images/v2/patch3/gone.jpg"), FileNotFoundError,
     r"listed in .*zhiyuan_objv2_val.json are missing, e.g. .*patch3/gone.jpg.*--skip-missing"),
])
def test_what_does_not_fit_is_refused_naming_the_file(raw, tmp_path, change, error, msg):
    root, path = _edit(raw, tmp_path, change)
    with pytest.raises(error, match=msg) as e:
        objects365_samples(root, "val")
    assert "zhiyuan_objv2_val.json" in str(e.value)


def test_missing_images_skipped_when_asked_and_the_known_absent_ones_always(raw, tmp_path):
    def change(d, r):
        d["images"][0]["file_name"] = "images/v2/patch3/gone.jpg"
        d["images"][1]["file_name"] = "images/v1/" + V2_ABSENT[1]

    root, _ = _edit(raw, tmp_path, change)
    samples, cats = objects365_samples(root, "val", skip_missing=True)
    assert samples == [] and len(cats) == 365
    with pytest.raises(FileNotFoundError, match="1 image"):  # the v2 download's known absent image is not counted
        objects365_samples(root, "val")
