"""Detection data: the official AutoAugment / crop pipeline against hand-computed boxes, mmdet's annotation rules
for malformed annotations (never a crash), images without annotations, bad samples, and exact resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.data.detection import (DetectionTrainLoader, DetectionValLoader, parse_annotations,
                                           segmentation_to_mask)
from vit_adapter_ds.data.make_shards import write_coco
from vit_adapter_ds.data.synthetic import write_synthetic_coco


class ScriptedRng:
    """Returns scripted values and checks the exact (lo, hi) range of every draw."""

    def __init__(self, script):
        self.script = list(script)

    def random(self):
        kind, v = self.script.pop(0)
        assert kind == "random"
        return v

    def integers(self, lo, hi):
        rng, v = self.script.pop(0)
        assert rng == (lo, hi), f"draw range ({lo}, {hi}), expected {rng}"
        assert lo <= v < hi
        return v


def _sample():
    img = torch.arange(3 * 100 * 200, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(3, 100, 200)
    m = torch.zeros(2, 100, 200, dtype=torch.uint8)
    m[0, 10:50, 20:60] = 1
    m[1, 80:99, 150:199] = 1
    return T.make_sample(img, [[20, 10, 60, 50], [150, 80, 199, 99]], [1, 2], m, [[0, 0, 10, 10]])


def test_policy_resize_only_hand_checked():
    # no flip; policy 0; scale (608, 1333): f = min(1333/200, 608/100) = 6.08 -> (608, 1216)
    # final crop (1024, 1024): h = min(608, 1024) = 608, w = randint(1024, 1025); offsets h 0, w in [0, 192]
    rng = ScriptedRng([("random", 0.7), ((0, 2), 0), ((0, 11), 4), ((608, 609), 608), ((1024, 1025), 1024),
                       ((0, 1), 0), ((0, 193), 100)])
    o = T.train_transform(_sample(), rng)
    assert not rng.script
    assert tuple(o["img"].shape) == (3, 608, 1024)
    # boxes * 6.08, then shifted by -100 in x and clipped to [0, 1024]
    exp = torch.tensor([[20 * 6.08 - 100, 10 * 6.08, 60 * 6.08 - 100, 50 * 6.08],
                        [150 * 6.08 - 100, 80 * 6.08, 1024, 99 * 6.08]])
    torch.testing.assert_close(o["boxes"].as_subclass(torch.Tensor), exp)
    assert o["labels"].tolist() == [1, 2]
    assert o["masks"].shape == (2, 608, 1024)
    # the crowd box [0, 0, 10, 10] -> [0, 0, 60.8, 60.8] - 100 in x -> no area: dropped
    assert o["ignore_boxes"].shape == (0, 4)


def test_policy_resize_crop_resize_with_flip_hand_checked():
    # flip: boxes -> [140, 10, 180, 50], [1, 80, 50, 99]
    # policy 1: resize (400, 1333): f = min(6.665, 4) = 4 -> (400, 800); boxes [560,40,720,200], [4,320,200,396]
    # crop (384, 600): h = 390, w = 500, top 5, left 250 -> box 1 [310, 35, 470, 195]; box 2 x2 < 250: dropped
    # resize (800, 1333) of 390 x 500: f = min(2.666, 2.0513) -> (int(800.5), int(1026.14)) = (800, 1026)
    #   x * 1026/500, y * 800/390
    # final crop: h 800, w 1024, top 0, left 2
    rng = ScriptedRng([("random", 0.2), ((0, 2), 1), ((0, 3), 0), ((384, 401), 390), ((384, 601), 500),
                       ((0, 11), 5), ((0, 301), 250), ((0, 11), 10), ((800, 801), 800), ((1024, 1025), 1024),
                       ((0, 1), 0), ((0, 3), 2)])
    o = T.train_transform(_sample(), rng)
    assert not rng.script
    assert tuple(o["img"].shape) == (3, 800, 1024)
    sx, sy = 1026 / 500, 800 / 390
    exp = torch.tensor([[310 * sx - 2, 35 * sy, 470 * sx - 2, 195 * sy]])
    torch.testing.assert_close(o["boxes"].as_subclass(torch.Tensor), exp)
    assert o["labels"].tolist() == [1]
    assert o["masks"].shape == (1, 800, 1024)
    # the mask follows the box: its bounding box is the box up to the nearest-neighbour rounding
    ys, xs = torch.nonzero(o["masks"][0], as_tuple=True)
    assert abs(xs.min().item() - exp[0, 0].item()) <= 3 and abs(xs.max().item() + 1 - exp[0, 2].item()) <= 3
    assert abs(ys.min().item() - exp[0, 1].item()) <= 3 and abs(ys.max().item() + 1 - exp[0, 3].item()) <= 3


def test_negative_crop_is_kept():
    s = _sample()
    o = T.crop(s, 60, 70, 10, 10)  # a crop between the two boxes
    assert o["boxes"].shape == (0, 4) and o["labels"].shape == (0,) and o["masks"].shape == (0, 10, 10)


def test_rescale_size_is_mmcv_rule():
    assert T.rescale_size(480, 640, (1333, 800)) == (800, 1067)
    assert T.rescale_size(427, 640, (1333, 800)) == (800, 1199)
    assert T.rescale_size(200, 1000, (1333, 800)) == (267, 1333)


def test_pad_batch_to_multiple_of_32():
    b = T.pad_batch([torch.ones(3, 33, 40), torch.ones(3, 20, 70)], 32)
    assert b.shape == (2, 3, 64, 96) and b[0, :, 33:].eq(0).all() and b[1, :, :, 70:].eq(0).all()


CAT2LABEL = {1: 0, 5: 1}


def _ann(**kw):
    a = {"bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0, "category_id": 1,
         "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
    a.update(kw)
    return a


def test_malformed_annotations_follow_mmdet_rules():
    image = {"id": 1, "height": 50, "width": 60}
    anns = [
        _ann(),                                              # kept
        _ann(bbox=[70, 10, 20, 20]),                         # outside the image -> skipped
        _ann(bbox=[-30, 10, 20, 20]),                        # outside (left) -> skipped
        _ann(area=0),                                        # zero area -> skipped
        _ann(bbox=[10, 10, 0.5, 20]),                        # w < 1 -> skipped
        _ann(category_id=99),                                # unknown category -> skipped
        _ann(ignore=True),                                   # ignore flag -> skipped
        _ann(bbox=None),                                     # missing box -> skipped
        _ann(bbox=[1, 2, float("nan"), 4]),                  # NaN -> skipped
        _ann(bbox=[1, 2, 3]),                                # 3 numbers -> skipped
        _ann(iscrowd=1, bbox=[0, 0, 10, 10]),                # crowd -> ignored region
        _ann(segmentation=[], category_id=5),                # empty polygon list: box kept, empty mask
        _ann(segmentation=[[1, 2, 3, 4]], bbox=[50, 40, 20, 20]),  # degenerate polygon; box partly outside: kept
    ]
    p = parse_annotations(image, anns, CAT2LABEL)
    assert p["skipped"] == 9
    np.testing.assert_array_equal(p["boxes"], [[10, 10, 30, 30], [10, 10, 30, 30], [50, 40, 70, 60]])
    assert p["labels"].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(p["ignore_boxes"], [[0, 0, 10, 10]])
    masks = [segmentation_to_mask(s, 50, 60) for s in p["segmentations"]]
    assert masks[0].sum() > 0 and masks[1].sum() == 0 and masks[2].sum() == 0


def test_segmentation_formats():
    from pycocotools import mask as mask_utils

    m = np.zeros((20, 30), np.uint8)
    m[5:10, 3:20] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    np.testing.assert_array_equal(segmentation_to_mask({"size": [20, 30], "counts": rle["counts"].decode()}, 20, 30), m)
    # uncompressed RLE (COCO crowd format): column-major run lengths
    counts = []
    flat = m.flatten(order="F")
    cur, run = 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    np.testing.assert_array_equal(segmentation_to_mask({"size": [20, 30], "counts": counts}, 20, 30), m)
    assert segmentation_to_mask({"size": [10, 10], "counts": "xx"}, 20, 30).sum() == 0   # wrong size
    assert segmentation_to_mask("garbage", 20, 30).sum() == 0
    assert segmentation_to_mask([[0, 0, "a", 1, 2, 3]], 20, 30).sum() == 0


SMALL = dict(scales=((96, 160), (128, 160)), crop_scales=((64, 160), (80, 160)), crop_range=(48, 96),
             final_crop=(128, 128))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_synthetic_coco(str(root), 8, 3, seed=0, size=(96, 128))
    ann_file = root / "annotations" / "instances_train2017.json"
    coco = json.loads(ann_file.read_text())
    empty_id = coco["images"][2]["id"]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != empty_id]
    odd = coco["images"][3]["id"]
    nid = max(a["id"] for a in coco["annotations"]) + 1
    coco["annotations"] += [
        {"id": nid, "image_id": odd, "category_id": 2, "bbox": [500, 500, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": [[500, 500, 510, 500, 510, 510]]},
        {"id": nid + 1, "image_id": odd, "category_id": 2, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0,
         "segmentation": []},
        {"id": nid + 2, "image_id": odd, "category_id": 3, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 1,
         "segmentation": {"size": [96, 128], "counts": [0, 96 * 128]}},
        {"id": nid + 3, "image_id": odd, "category_id": 4, "bbox": [20, 20, 30, 30], "area": 900, "iscrowd": 0,
         "segmentation": []},
    ]
    ann_file.write_text(json.dumps(coco))
    # a corrupt image (the writer copies bytes without decoding)
    bad_img = root / "images" / "train2017" / coco["images"][5]["file_name"]
    bad_img.write_bytes(bad_img.read_bytes()[:200])
    write_coco(str(root), str(root / "shards" / "train"), "train", num_workers=1, progress=False)
    write_coco(str(root), str(root / "shards" / "val"), "val", num_workers=1, progress=False)
    return root / "shards", empty_id, coco["images"][5]["id"]


def _same(a, b):
    assert a["meta"]["slots"] == b["meta"]["slots"] and a["meta"]["keys"] == b["meta"]["keys"]
    assert torch.equal(a["img"], b["img"])
    for ta, tb in zip(a["targets"], b["targets"]):
        assert ta.keys() == tb.keys()
        for k in ta:
            assert (torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k]), k


def test_train_loader_filters_empty_images_and_survives_malformed_and_bad(shards):
    d, empty_id, bad_id = shards
    loader = DetectionTrainLoader(d / "train", batch_size=2, transform_kw=SMALL, max_bad_fraction=0.5)
    assert loader.num_samples == 7  # 8 images, one without annotations
    ids = set()
    for batch in loader.epoch_batches():
        assert batch["img"].shape[0] == 2 and batch["img"].shape[-1] % 32 == 0 and batch["img"].shape[-2] % 32 == 0
        ids.update(batch["meta"]["image_ids"])
        for t in batch["targets"]:
            assert t["boxes"].shape[0] == t["labels"].shape[0] == t["masks"].shape[0]
            assert tuple(t["masks"].shape[1:]) == tuple(t["img_shape"])
            b = t["boxes"]
            assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
            assert (b[:, 2] <= t["img_shape"][1]).all() and (b[:, 3] <= t["img_shape"][0]).all()
    assert empty_id not in ids and bad_id not in ids
    assert loader.bad.total == 1
    assert loader.epoch == 1


def test_train_loader_exact_resume(shards):
    d = shards[0] / "train"
    kw = dict(batch_size=2, transform_kw=SMALL, max_bad_fraction=0.5, seed=3)
    full = DetectionTrainLoader(d, **kw)
    ref = [next(full) for _ in range(6)]  # crosses into epoch 1 (4 batches per epoch)
    a = DetectionTrainLoader(d, **kw)
    next(a)
    state = a.state_dict()
    assert state["samples_consumed_in_epoch"] == 2
    b = DetectionTrainLoader(d, num_workers=1, **kw)
    b.load_state_dict(state)
    for r in ref[1:]:
        _same(next(b), r)
    assert ref[4]["meta"]["epoch"] == 1 and ref[0]["meta"]["keys"] != ref[4]["meta"]["keys"]


def test_val_loader_each_image_once_across_ranks(shards):
    d = shards[0] / "val"
    seen = []
    for r in range(2):
        for item in DetectionValLoader(d, rank=r, world_size=2, scale=(160, 128)):
            assert item["img"].shape == (1, 3, 128, 160) and tuple(item["img_shape"]) == (120, 160)
            assert tuple(item["ori_shape"]) == (96, 128)
            seen.append(item["image"]["id"])
    assert sorted(seen) == [500000, 500001, 500002]


def test_val_loader_skips_a_corrupt_image_within_the_budget_and_fails_past_it(shards, caplog):
    """The detection val loader keeps the segmentation loader's bad-sample rule (loader.agreed_pass): a corrupt
    image is skipped and named while the budget allows it, and the pass fails with TooManyBadSamples past it."""
    from vit_adapter_ds.data import TooManyBadSamples

    d, _, corrupt_id = shards
    caplog.set_level("WARNING", logger="vit_adapter_ds.data.loader")
    loader = DetectionValLoader(d / "train", split="train", max_bad_fraction=0.5, scale=(160, 128))
    ids = [item["image"]["id"] for item in loader]
    assert len(ids) == 7 and corrupt_id not in ids and loader.bad.total == 1
    assert "detection val loader (rank 0): skipped bad sample" in caplog.text
    with pytest.raises(TooManyBadSamples, match=r"1 bad samples this epoch .* budget of 0"):
        list(DetectionValLoader(d / "train", split="train", max_bad_fraction=0.0, scale=(160, 128)))


def test_segmentation_shards_are_refused(tmp_path):
    from vit_adapter_ds.data.make_shards import write_synthetic
    from vit_adapter_ds.data.manifest import ShardSetError

    write_synthetic(str(tmp_path / "seg"), num_train=1, num_val=1, size=(64, 64), num_workers=1, progress=False)
    with pytest.raises(ShardSetError, match="not detection"):
        DetectionTrainLoader(tmp_path / "seg" / "train", batch_size=1)


def test_bad_sample_budget_raises(shards):
    from vit_adapter_ds.data.loader import TooManyBadSamples

    loader = DetectionTrainLoader(shards[0] / "train", batch_size=2, transform_kw=SMALL, max_bad_fraction=0.0)
    with pytest.raises(TooManyBadSamples, match="budget of 0"):
        for _ in loader.epoch_batches():
            pass
