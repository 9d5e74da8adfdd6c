"""HTC++ train data: Resize 'range' against mmdet's rule, the semantic map's Resize / flip / Pad / SegRescale against
cv2's INTER_NEAREST rule (what mmcv calls; written out in this file, checked once against the pinned cv2) and
hand-computed arrays, InstaBoost against the instaboostfast library called
directly, semantic maps in the instance shards (make_shards coco --stuff-maps, synthetic --layout coco), and the
official HTC++ pipeline through the loader: batch ``semantic_seg``, determinism, worker-count independence and
exact resume."""
from __future__ import annotations

import copy
import io
import json
import math
import os
import random
from pathlib import Path

import cv2
import instaboostfast
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.data import instaboost as IB
from vit_adapter_ds.data.decode import BadSample, ShardReader
from vit_adapter_ds.data.detection import DetectionTrainLoader, decode_semantic_map
from vit_adapter_ds.data.make_shards import main as make_shards_main
from vit_adapter_ds.data.make_shards import write_coco, write_synthetic
from vit_adapter_ds.data.manifest import ShardSetError, read_manifest

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
INSTABOOST = dict(type='InstaBoost', action_candidate=('normal', 'horizontal', 'skip'), action_prob=(1, 0, 0),
                  scale=(0.8, 1.2), dx=15, dy=15, theta=(-1, 1), color_prob=0.5, hflag=False, aug_ratio=0.5)


def htc_pipeline(resize=None, flip_ratio=0.5, instaboost=INSTABOOST):
    """The official HTC++ train pipeline (htc++_beitv2_adapter_large_fpn_3x_coco.py), optionally another Resize /
    flip ratio / InstaBoost."""
    return [
        dict(type='LoadImageFromFile'),
        dict(instaboost),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
        resize or dict(type='Resize', img_scale=[(1600, 400), (1600, 1400)], multiscale_mode='range',
                       keep_ratio=True),
        dict(type='RandomFlip', flip_ratio=flip_ratio),
        dict(type='Normalize', **NORM),
        dict(type='Pad', size_divisor=32),
        dict(type='SegRescale', scale_factor=1 / 8),
        dict(type='DefaultFormatBundle'),
        dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
    ]


def _nearest_src(src, dst):
    """Source index of each output position under OpenCV 4.x's ``INTER_NEAREST`` (imgproc/src/resize.cpp,
    ``resize`` + ``resizeNN``): ``inv_scale = (double)dst / src``, ``ifx = 1. / inv_scale``,
    ``sx = min(cvFloor(x * ifx), src - 1)``, all in IEEE double (Python floats: the same on every platform).
    Not the exact rational ``x * src // dst``: the double reciprocal rounds below an integer at some positions
    (src 2 -> dst 98: 49 * (1 / 49.0) = 0.9999999999999999, so output 49 reads source 0, and cv2 agrees)."""
    ifx = 1.0 / (float(dst) / float(src))
    return [min(math.floor(x * ifx), src - 1) for x in range(int(dst))]


def inter_nearest(a, h, w):
    """The reference of every nearest resize in this file (mmcv ``imresize(interpolation='nearest')`` =
    ``cv2.resize(INTER_NEAREST)``), stated independently of any cv2 wheel; checked against the pinned cv2 once in
    test_inter_nearest_reference_is_pinned_cv2."""
    a = np.asarray(a)
    return a[np.array(_nearest_src(a.shape[0], h))[:, None], np.array(_nearest_src(a.shape[1], w))[None, :]]


def _pinned(name):
    for line in (Path(__file__).resolve().parents[3] / "constraints" / "references.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.lower().startswith(name + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"constraints/references.txt pins no {name}")


def test_inter_nearest_reference_is_pinned_cv2():
    """The rule above is what cv2 computes, checked with the cv2 that constraints/references.txt pins (what the
    official mmcv/mmdet ran on); another cv2 is reported as such, not as a resize defect."""
    pinned = _pinned("opencv-python")  # 4.11.0.86: cv2.__version__ is its first three parts
    assert cv2.__version__ == ".".join(pinned.split(".")[:3]), (
        f"cv2 {cv2.__version__} is installed, constraints/references.txt pins opencv-python=={pinned}: the nearest "
        f"reference was checked against that; install with pip install -c constraints/references.txt")
    rng = np.random.default_rng(7)
    cases = [(2, 98), (3, 147), (2, 196), (1, 5), (7, 1), (64, 1600)]  # the first three: double rounding
    cases += [tuple(rng.integers(1, 400, 2)) for _ in range(300)]
    for src, dst in cases:
        a = np.arange(src, dtype=np.int32)[None, :].repeat(2, 0)
        got = cv2.resize(a.astype(np.float32), (int(dst), 2), interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)
        assert got.tolist() == _nearest_src(src, dst), (src, dst)
    assert _nearest_src(2, 98)[49] == 0  # the double-rounding case, not 49 * 2 // 98 = 1
    b = rng.integers(0, 256, (37, 50)).astype(np.uint8)
    np.testing.assert_array_equal(inter_nearest(b, 11, 15), cv2.resize(b, (15, 11), interpolation=cv2.INTER_NEAREST))


# ------------------------------------------------------------------------------------------------ pipeline ops
def test_official_pipeline_translates_to_ops():
    tr = T.train_ops_from_pipeline(htc_pipeline())
    assert tr["ops"] == [
        ("instaboost", IB.InstaBoostParams(("normal", "horizontal", "skip"), (1, 0, 0), (0.8, 1.2), 15, 15, (-1, 1),
                                           0.5, False, 0.5)),
        ("load_seg", None), ("resize_range", ((1600, 400), (1600, 1400))), ("flip", 0.5), ("pad_seg", 32),
        ("seg_rescale", 0.125)]
    assert tr["mean"] == (123.675, 116.28, 103.53)


@pytest.mark.parametrize("edit, match", [
    (lambda p: p.pop(7), None),  # no SegRescale: fine (full-size maps)
    (lambda p: p.__setitem__(2, dict(type='LoadAnnotations', with_bbox=True, with_mask=True)), "SegRescale"),
    (lambda p: p.insert(2, p.pop(1)), "InstaBoost must directly follow"),
    (lambda p: p.insert(6, p.pop(7)), "after Pad"),
    (lambda p: p.__setitem__(9, dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks'])),
     "gt_semantic_seg"),
    (lambda p: p[1].__setitem__("action_prob", (0.5, 0, 0)), "summing to 1"),
    (lambda p: p[1].__setitem__("flavour", 1), "flavour"),
])
def test_pipeline_errors(edit, match):
    p = htc_pipeline()
    edit(p)
    if match is None:
        assert ("seg_rescale", 0.125) not in T.train_ops_from_pipeline(p)["ops"]
    else:
        with pytest.raises(ConfigError, match=match):
            T.train_ops_from_pipeline(p)


def test_task_accepts_official_seg_prefix():
    from vit_adapter_ds.tasks.detection import train_loader_kwargs

    kw = train_loader_kwargs({"samples_per_gpu": 1, "train": {
        "shard_dir": "shards/coco/train", "seg_prefix": "data/coco/stuffthingmaps/train2017/",
        "pipeline": htc_pipeline()}})
    assert kw["seg_prefix"] == "data/coco/stuffthingmaps/train2017/" and kw["ops"][0][0] == "instaboost"


def test_missing_instaboostfast_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "instaboostfast", None)
    with pytest.raises(ImportError, match=r"pip install \.\[htc\]"):
        T.train_ops_from_pipeline(htc_pipeline())


# ------------------------------------------------------------------------------------------------ Resize 'range'
def mmdet_range_scale(scales, rng):
    """mmdet Resize.random_sample with numpy randint semantics (inclusive max)."""
    longs, shorts = [max(s) for s in scales], [min(s) for s in scales]
    return int(rng.integers(min(longs), max(longs) + 1)), int(rng.integers(min(shorts), max(shorts) + 1))


def test_resize_range_is_mmdet_rule():
    scales = ((1600, 400), (1600, 1400))
    seg = torch.from_numpy(np.random.default_rng(0).integers(0, 182, (48, 64)).astype(np.uint8))
    for seed in range(20):
        s = T.make_sample(torch.zeros(3, 48, 64, dtype=torch.uint8), [[4, 4, 20, 30]], [1],
                          torch.ones(1, 48, 64, dtype=torch.uint8), seg=seg)
        o = T.random_resize_range(s, np.random.default_rng(seed), scales)
        long_edge, short_edge = mmdet_range_scale(scales, np.random.default_rng(seed))
        assert long_edge == 1600 and 400 <= short_edge <= 1400
        f = min(long_edge / 64, short_edge / 48)  # mmcv rescale_size
        nh, nw = int(48 * f + 0.5), int(64 * f + 0.5)
        assert tuple(o["img"].shape[-2:]) == (nh, nw) and tuple(o["seg"].shape) == (nh, nw)
        np.testing.assert_array_equal(o["seg"].numpy(), inter_nearest(seg.numpy(), nh, nw))
        torch.testing.assert_close(o["boxes"].as_subclass(torch.Tensor),
                                   torch.tensor([[4 * nw / 64, 4 * nh / 48, 20 * nw / 64, 30 * nh / 48]]))
    # the two draws' ranges
    class Rng:
        def __init__(self):
            self.calls = []

        def integers(self, lo, hi):
            self.calls.append((lo, hi))
            return lo

    r = Rng()
    T.random_resize_range(T.make_sample(torch.zeros(3, 10, 20, dtype=torch.uint8), [], [],
                                        torch.zeros(0, 10, 20)), r, [(1333, 640), (1000, 800)])
    assert r.calls == [(1000, 1334), (640, 801)]


# ------------------------------------------------------------------------------------------------ semantic map ops
def test_nearest_resize_is_cv2_inter_nearest():
    rng = np.random.default_rng(1)
    for _ in range(200):
        sh, sw = rng.integers(1, 70, 2)
        dh, dw = rng.integers(1, 150, 2)
        a = rng.integers(0, 256, (sh, sw)).astype(np.uint8)
        np.testing.assert_array_equal(T.resize_nearest(torch.from_numpy(a), (dh, dw)).numpy(),
                                      inter_nearest(a, dh, dw))
    # instance masks in Resize follow the same rule
    m = rng.integers(0, 2, (2, 13, 17)).astype(np.uint8)
    s = T.make_sample(torch.zeros(3, 13, 17, dtype=torch.uint8), [[0, 0, 5, 5], [1, 1, 9, 9]], [0, 1], m)
    o = T.resize(s, (29, 23))
    for k in range(2):
        np.testing.assert_array_equal(o["masks"][k].numpy(), inter_nearest(m[k], 29, 23))


def test_seg_pad_flip_rescale_hand_computed():
    seg = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.uint8)
    s = T.make_sample(torch.zeros(3, 2, 3, dtype=torch.uint8), [[0, 0, 1, 1]], [0],
                      torch.zeros(1, 2, 3, dtype=torch.uint8), seg=seg)
    f = T.hflip(s)
    assert f["seg"].tolist() == [[3, 2, 1], [6, 5, 4]]
    p = T.pad_seg(f, 4)
    assert p["seg"].tolist() == [[3, 2, 1, 255], [6, 5, 4, 255], [255] * 4, [255] * 4]
    # SegRescale 1/8 of a padded 32 x 64 map: mmcv.imrescale -> (4, 8), nearest picks rows / cols 0, 8, 16, ...
    a = np.arange(32 * 64).reshape(32, 64) % 251
    s = T.make_sample(torch.zeros(3, 32, 64, dtype=torch.uint8), [], [], torch.zeros(0, 32, 64),
                      seg=torch.from_numpy(a.astype(np.uint8)))
    r = T.seg_rescale(s, 1 / 8)["seg"].numpy()
    assert r.shape == (4, 8)
    np.testing.assert_array_equal(r, a[::8, ::8])
    # a factor that does not divide: size int(x * f + 0.5), then cv2 nearest
    b = np.random.default_rng(2).integers(0, 255, (37, 50)).astype(np.uint8)
    s = T.make_sample(torch.zeros(3, 37, 50, dtype=torch.uint8), [], [], torch.zeros(0, 37, 50),
                      seg=torch.from_numpy(b))
    r = T.seg_rescale(s, 0.3)["seg"].numpy()
    assert r.shape == (int(37 * 0.3 + 0.5), int(50 * 0.3 + 0.5)) == (11, 15)
    np.testing.assert_array_equal(r, inter_nearest(b, 11, 15))
    # crop cuts the map with the image
    c = T.crop(s, 5, 7, 10, 12)["seg"].numpy()
    np.testing.assert_array_equal(c, b[5:15, 7:19])


def test_semantic_map_decoding_checks_values_and_size():
    def png(a, mode="L"):
        buf = io.BytesIO()
        im = Image.fromarray(a.astype(np.uint8), mode="L")
        if mode == "P":
            im = im.convert("P")
        im.save(buf, format="PNG")
        return buf.getvalue()

    a = np.array([[0, 181], [255, 7]])
    assert decode_semantic_map({"seg.png": png(a)}, (2, 2), 183).tolist() == a.tolist()
    with pytest.raises(BadSample, match="outside"):
        decode_semantic_map({"seg.png": png(np.array([[200, 1]]))}, (1, 2), 183)
    with pytest.raises(BadSample, match="size"):
        decode_semantic_map({"seg.png": png(a)}, (3, 2), 183)
    with pytest.raises(BadSample, match="missing semantic map"):
        decode_semantic_map({}, (2, 2), 183)
    with pytest.raises(BadSample, match="semantic map"):
        decode_semantic_map({"seg.png": png(a)[:-10]}, (2, 2), 183)


# ------------------------------------------------------------------------------------------------ InstaBoost
def _instaboost_input():
    h, w = 64, 80
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 3) % 256, (yy * 4) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    polys = [[20, 14, 36, 14, 36, 30, 20, 30], [44, 20, 62, 24, 50, 44], [16, 36, 30, 36, 30, 50, 16, 50]]
    boxes = [[20, 14, 36, 30], [44, 20, 62, 44], [16, 36, 30, 50]]
    parsed = {"boxes": np.asarray(boxes, np.float32), "labels": np.asarray([3, 0, 5], np.int64),
              "segmentations": [[p] for p in polys], "ignore_boxes": np.asarray([[0, 0, 5, 5]], np.float32),
              "skipped": 0}
    return rgb, parsed


def test_instaboost_equals_the_library_with_the_same_seeded_global_state():
    rgb, parsed = _instaboost_input()
    params = IB.InstaBoostParams(color_prob=1.0, aug_ratio=1.0)
    np_before, py_before = np.random.get_state(), random.getstate()
    img, out = IB.apply(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), parsed, np.random.default_rng(7),
                        params)
    # the caller's global random states are untouched
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1]) and np_after[2:] == np_before[2:]
    assert random.getstate() == py_before
    # reference: mmdet's _load_anns by hand, the library itself under the documented seed, mmdet's _parse_anns
    rng = np.random.default_rng(7)
    assert rng.random() < 1.0
    seed = int(rng.integers(0, 2 ** 32))
    anns = [{"category_id": int(l), "segmentation": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            for b, l, s in zip(parsed["boxes"].tolist(), parsed["labels"].tolist(), parsed["segmentations"])]
    cfg = instaboostfast.InstaBoostConfig(('normal', 'horizontal', 'skip'), (1, 0, 0), (0.8, 1.2), 15, 15, (-1, 1),
                                          1.0, False)
    np.random.seed(seed)
    random.seed(seed)
    ref_anns, ref_bgr = instaboostfast.get_new_data(copy.deepcopy(anns), np.ascontiguousarray(rgb[:, :, ::-1]), cfg,
                                                    background=None)
    np.random.set_state(np_before)
    random.setstate(py_before)
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref_bgr[:, :, ::-1])
    assert not np.array_equal(img.permute(1, 2, 0).numpy(), rgb)  # it did something
    kept = [a for a in ref_anns if a["bbox"][2] > 0 and a["bbox"][3] > 0]
    assert len(kept) == len(out["labels"]) > 0
    for a, box, label, seg in zip(kept, out["boxes"].tolist(), out["labels"].tolist(), out["segmentations"]):
        x, y, w, h = a["bbox"]
        np.testing.assert_allclose(box, [x, y, x + w, y + h], rtol=0, atol=1e-4)
        assert label == a["category_id"] and seg == a["segmentation"]
        # boxes consistent with the masks (pycocotools on the returned polygons)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, 64, 80))
        np.testing.assert_allclose(mask_utils.toBbox(rle), [x, y, w, h], atol=1e-4)
        m = mask_utils.decode(rle)
        ys, xs = np.nonzero(m)
        assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
    np.testing.assert_array_equal(out["ignore_boxes"], parsed["ignore_boxes"])  # crowd regions untouched


def test_instaboost_not_applied_and_input_forms():
    rgb, parsed = _instaboost_input()
    img = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    o_img, o_parsed = IB.apply(img, parsed, np.random.default_rng(0), IB.InstaBoostParams(aug_ratio=0.0))
    assert o_img is img and o_parsed is parsed
    # compressed RLE -> the same mask as uncompressed RLE; nothing usable -> an empty mask
    m = np.zeros((6, 5), np.uint8)
    m[1:4, 2:5] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    unc = IB.library_segmentation({"size": [6, 5], "counts": rle["counts"].decode()}, 6, 5)
    assert isinstance(unc["counts"], list)
    np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(unc, 6, 5)), m)
    empty = IB.library_segmentation([[1, 2, 3, 4]], 6, 5)
    assert mask_utils.decode(mask_utils.frPyObjects(empty, 6, 5)).sum() == 0
    # mmdet's _parse_anns: instances with w <= 0 or h <= 0 are dropped
    back = IB.from_coco_anns([{"category_id": 1, "segmentation": [], "bbox": [3, 4, 0, 5]},
                              {"category_id": 2, "segmentation": [[1]], "bbox": [3, 4, 2, 5]}], parsed)
    assert back["labels"].tolist() == [2] and back["boxes"].tolist() == [[3, 4, 5, 9]]


# ------------------------------------------------------------------------------------------------ shards + loader
@pytest.fixture(scope="module")
def htc_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("htc")
    write_synthetic(str(root / "shards"), 6, 0, seed=0, size=(64, 96), raw_dir=str(root / "raw"), layout="coco",
                    num_workers=1, progress=False)
    return root


def _same(a, b):
    assert a["meta"]["slots"] == b["meta"]["slots"] and a["meta"]["keys"] == b["meta"]["keys"]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["semantic_seg"], b["semantic_seg"])
    for ta, tb in zip(a["targets"], b["targets"]):
        for k in ta:
            assert (torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k]), k


def test_synthetic_coco_shards_hold_semantic_maps(htc_shards):
    m = read_manifest(htc_shards / "shards" / "train")
    assert m["semantic_seg"]["num_classes"] == 183 and m["semantic_seg"]["ignore_index"] == 255
    reader = ShardReader(m)
    raw = reader.read_global(0)
    key = str(reader.keys[0])
    path = htc_shards / "raw" / "stuffthingmaps_trainval2017" / "train2017" / f"{key}.png"
    assert raw["seg.png"] == path.read_bytes()
    # consistent with the instances: inside each instance mask the map holds that class's COCO-Stuff id (or 255 on
    # the 2-pixel boundary ring), nowhere else a value outside the synthetic ids
    from vit_adapter_ds.data.synthetic import SYNTHETIC_TO_COCO_STUFF_ID

    for g in range(len(reader)):
        raw = reader.read_global(g)
        rec = json.loads(raw["json"])
        seg = np.array(Image.open(io.BytesIO(raw["seg.png"])))
        assert set(np.unique(seg).tolist()) <= set(SYNTHETIC_TO_COCO_STUFF_ID) | {255}
        for a in rec["annotations"]:
            rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
            inside = seg[mask_utils.decode(rle).astype(bool)]
            assert set(inside.tolist()) <= {SYNTHETIC_TO_COCO_STUFF_ID[a["category_id"]], 255}
            assert (inside != 255).mean() > 0.3
    reader.close()


def test_official_htc_pipeline_batches(htc_shards, monkeypatch):
    d = htc_shards / "shards" / "train"
    tr = T.train_ops_from_pipeline(htc_pipeline())
    kw = dict(batch_size=2, ops=tr["ops"], mean=tr["mean"], std=tr["std"], seed=5,
              seg_prefix="data/coco/stuffthingmaps/train2017/")
    calls = []
    real = IB.get_new_data
    monkeypatch.setattr(IB, "get_new_data", lambda *a: calls.append(1) or real(*a))
    full = DetectionTrainLoader(d, **kw)
    ref = [next(full) for _ in range(4)]  # 3 batches per epoch: crosses into epoch 1
    assert calls, "InstaBoost never ran"
    for b in ref:
        B, _, H, W = b["img"].shape
        s = b["semantic_seg"]
        assert s.dtype == torch.int64 and tuple(s.shape) == (B, int(H / 8 + 0.5), int(W / 8 + 0.5))
        assert set(torch.unique(s).tolist()) <= {0, 12, 26, 45, 91, 118, 150, 181, 255}
        for i, t in enumerate(b["targets"]):
            h, w = t["img_shape"]
            assert 400 <= min(h, w) <= 1400 and max(h, w) <= 1600
            assert (s[i, -(-h // 8):] == 255).all() and (s[i, :, -(-w // 8):] == 255).all()  # padding
            assert (s[i, : h // 8, : w // 8] != 255).any()
            assert t["boxes"].shape[0] == t["masks"].shape[0] == t["labels"].shape[0]
    # same (seed, epoch, slot) -> the same batches, with 0 or 2 workers, and after resuming from a state_dict
    two = DetectionTrainLoader(d, num_workers=2, **kw)
    for r in ref:
        _same(next(two), r)
    a = DetectionTrainLoader(d, **kw)
    next(a)
    b = DetectionTrainLoader(d, num_workers=2, **kw)
    b.load_state_dict(a.state_dict())
    for r in ref[1:]:
        _same(next(b), r)
    for loader in (two, b):  # shut the workers down now (not at garbage collection)
        loader._close()


def test_semantic_seg_content_against_nearest_rule(htc_shards):
    # fixed scale and a sure flip: every step of the map can be recomputed (mmcv's cv2 rules) from the raw PNG
    d = htc_shards / "shards" / "train"
    pipe = htc_pipeline(resize=dict(type='Resize', img_scale=(160, 120), keep_ratio=True), flip_ratio=1.0)
    tr = T.train_ops_from_pipeline(pipe)
    batch = next(DetectionTrainLoader(d, batch_size=3, ops=tr["ops"], mean=tr["mean"], std=tr["std"]))
    _, _, H, W = batch["img"].shape
    for i, key in enumerate(batch["meta"]["keys"]):
        raw = np.array(Image.open(htc_shards / "raw" / "stuffthingmaps_trainval2017" / "train2017" / f"{key}.png"))
        f = min(160 / 96, 120 / 64)
        nh, nw = int(64 * f + 0.5), int(96 * f + 0.5)
        assert tuple(batch["targets"][i]["img_shape"]) == (nh, nw) == (107, 160)
        m = inter_nearest(raw, nh, nw)[:, ::-1]  # horizontal flip
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        m = np.pad(m, ((0, ph - nh), (0, pw - nw)), constant_values=255)  # mmdet Pad of the map: 255 bottom/right
        m = inter_nearest(m, int(ph / 8 + 0.5), int(pw / 8 + 0.5))
        ref = np.full((H // 8, W // 8), 255, np.int64)
        ref[: m.shape[0], : m.shape[1]] = m
        np.testing.assert_array_equal(batch["semantic_seg"][i].numpy(), ref)


def test_pipeline_with_maps_over_shards_without_them_fails_clearly(htc_shards, tmp_path):
    out = tmp_path / "nomaps"
    write_coco(str(htc_shards / "raw"), str(out), "train", num_workers=1, progress=False)
    tr = T.train_ops_from_pipeline(htc_pipeline())
    with pytest.raises(ShardSetError, match=r"(?s)nomaps.*--stuff-maps"):
        DetectionTrainLoader(out, batch_size=1, ops=tr["ops"], mean=tr["mean"], std=tr["std"])


def test_make_shards_coco_stuff_maps_round_trip(tmp_path):
    root, maps = tmp_path / "coco", tmp_path / "stuffthingmaps"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (maps / "train2017").mkdir(parents=True)
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i, (h, w) in enumerate([(40, 48), (36, 44), (32, 40)], start=1):
        name = f"{i:012d}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(root / "train2017" / f"{name}.jpg")
        images.append({"id": i, "file_name": f"{name}.jpg", "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0,
                     "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]})
        seg = rng.integers(0, 182, (h, w)).astype(np.uint8)
        seg[0] = 255
        if i == 1:
            Image.fromarray(seg, mode="L").save(maps / "train2017" / f"{name}.png")
        elif i == 2:
            Image.fromarray(seg, mode="L").convert("P").save(maps / "train2017" / f"{name}.png")
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    args = ["coco", "--root", str(root), "--stuff-maps", str(maps), "--splits", "train", "--workers", "1",
            "--no-progress", "--out", str(tmp_path / "out")]
    with pytest.raises(FileNotFoundError, match="skip-missing"):  # image 3 has no map
        make_shards_main(args)
    assert make_shards_main(args + ["--skip-missing"]) == 0
    m = read_manifest(tmp_path / "out" / "train")
    assert m["num_samples"] == 2 and m["semantic_seg"]["num_classes"] == 183
    assert m["semantic_seg"]["source"] == os.path.abspath(maps / "train2017")
    reader = ShardReader(m)
    for g in range(2):
        raw = reader.read_global(g)
        path = maps / "train2017" / f"{reader.keys[g]}.png"
        assert raw["seg.png"] == path.read_bytes()
        h, w = images[g]["height"], images[g]["width"]
        np.testing.assert_array_equal(decode_semantic_map(raw, (h, w), 183).numpy(), np.array(Image.open(path)))
    reader.close()
    # a map of the wrong size is refused at writing time
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(maps / "train2017" / f"{3:012d}.png")
    with pytest.raises(ValueError, match="5x5"):
        make_shards_main(args)
