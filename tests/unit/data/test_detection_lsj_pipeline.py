"""The large-scale-jitter train pipeline of the official upgraded Mask R-CNN recipes
(``upgraded_mask_rcnn/mask_rcnn_mae_adapter_base_lsj_fpn_*ep_coco.py``): its translation, and each new step against
the mmdet 2.22 rule re-derived here (``Resize._random_scale`` / ``random_sample_ratio`` + mmcv ``rescale_size``,
``RandomCrop(recompute_bbox=True)`` with ``BitmapMasks.get_bboxes``, ``FilterAnnotations``, ``Pad(size)``) and the
train loader's replacement of a sample that ``FilterAnnotations`` drops."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.data.detection import DetectionTrainLoader, _collate
from vit_adapter_ds.data.make_shards import write_coco
from vit_adapter_ds.data.synthetic import write_synthetic_coco

IMNET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def lsj_pipeline(**changes):
    steps = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="Resize", img_scale=(1024, 1024), ratio_range=(0.1, 2.0), multiscale_mode="range", keep_ratio=True),
        dict(type="RandomCrop", crop_type="absolute_range", crop_size=(1024, 1024), recompute_bbox=True,
             allow_negative_crop=True),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
        dict(type="RandomFlip", flip_ratio=0.5),
        dict(type="Normalize", **IMNET),
        dict(type="Pad", size=(1024, 1024)),
        dict(type="DefaultFormatBundle"),
        dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"]),
    ]
    for i, upd in changes.items():
        steps[int(i[1:])] = upd
    return steps


def test_lsj_pipeline_translates():
    out = T.train_ops_from_pipeline(lsj_pipeline())
    assert out == {"ops": [("resize_ratio", ((1024, 1024), (0.1, 2.0))), ("crop_recompute", (1024, 1024)),
                           ("filter_annotations", (0.01, 0.01)), ("flip", 0.5), ("pad_to", (1024, 1024))],
                   "mean": tuple(IMNET["mean"]), "std": tuple(IMNET["std"])}


@pytest.mark.parametrize("changes,msg", [
    ({"s2": dict(type="Resize", img_scale=[(1024, 1024), (512, 512)], ratio_range=(0.1, 2.0), keep_ratio=True)},
     r"\[2\].img_scale: ratio_range takes exactly one scale"),
    ({"s2": dict(type="Resize", img_scale=(1024, 1024), ratio_range=(2.0, 0.1), keep_ratio=True)},
     r"\[2\].ratio_range must be \(min, max\)"),
    ({"s3": dict(type="RandomCrop", crop_type="absolute_range", crop_size=(1024, 1024), recompute_bbox=1,
                 allow_negative_crop=True)}, r"\[3\].recompute_bbox must be True or False"),
    ({"s4": dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2), keep_empty=False)}, r"\[4\].keep_empty"),
    ({"s4": dict(type="FilterAnnotations", min_gt_bbox_wh=1e-2)}, r"\[4\].min_gt_bbox_wh must be \(w, h\)"),
    ({"s7": dict(type="Pad", size=(1024, 1024), size_divisor=32)}, r"\[7\]: size and size_divisor are exclusive"),
    ({"s7": dict(type="Pad", size=1024)}, r"\[7\].size must be \(h, w\)"),
    ({"s5": dict(type="Pad", size=(1024, 1024)), "s7": dict(type="RandomFlip", flip_ratio=0.5)},
     "Pad\\(size\\) must come after every resize"),
])
def test_lsj_pipeline_errors_name_the_step(changes, msg):
    with pytest.raises(ConfigError, match=msg):
        T.train_ops_from_pipeline(lsj_pipeline(**changes), "data.train.pipeline")


def _sample(h=300, w=500):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    m = torch.zeros(3, h, w, dtype=torch.uint8)
    m[0, 10:50, 20:61] = 1
    m[1, 100:290, 300:480] = 1
    m[2, 200:203, 5:9] = 1
    return T.make_sample(img, [[20, 10, 61, 50], [300, 100, 480, 290], [5, 200, 9, 203]], [1, 2, 0], m,
                         [[0, 0, 30, 30]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_resize_ratio_is_mmdets_random_sample_ratio(seed):
    s = _sample()
    out = T.apply_ops(s, np.random.default_rng(seed), [("resize_ratio", ((1024, 1024), (0.1, 2.0)))])
    # mmdet 2.22 Resize.random_sample_ratio: ratio = random_sample() * (max - min) + min, scale = (int(1024 r),) * 2;
    # keep_ratio: mmcv rescale_size -> factor min(long / max(h, w), short / min(h, w)), size int(x * f + 0.5)
    r = np.random.default_rng(seed).random() * (2.0 - 0.1) + 0.1
    sc = (int(1024 * r), int(1024 * r))
    f = min(max(sc) / 500.0, min(sc) / 300.0)
    nh, nw = int(300 * f + 0.5), int(500 * f + 0.5)
    assert tuple(out["img"].shape[-2:]) == (nh, nw) and tuple(out["masks"].shape[-2:]) == (nh, nw)
    ref = np.array([[20, 10, 61, 50], [300, 100, 480, 290], [5, 200, 9, 203]], np.float64) * \
        np.array([nw / 500, nh / 300, nw / 500, nh / 300])
    ref = np.minimum(np.maximum(ref, 0), [nw, nh, nw, nh])
    np.testing.assert_allclose(out["boxes"].numpy(), ref, rtol=1e-6)


def _mmdet_get_bboxes(masks):
    """mmdet 2.22 BitmapMasks.get_bboxes, re-typed: [x[0], y[0], x[-1] + 1, y[-1] + 1] of the non-zero pixels."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        x = np.where(m.any(axis=0))[0]
        y = np.where(m.any(axis=1))[0]
        if len(x) and len(y):
            boxes[i] = [x[0], y[0], x[-1] + 1, y[-1] + 1]
    return boxes


def test_crop_with_recompute_bbox_takes_the_cropped_masks_boxes():
    s = _sample()
    # an instance whose box reaches into the crop but whose mask does not: its box becomes all zeros
    s["boxes"][2] = torch.tensor([5.0, 200.0, 40.0, 260.0])
    top, left, ch, cw = 30, 25, 240, 400
    out = T.crop(s, top, left, ch, cw, recompute_bbox=True)
    plain = T.crop(s, top, left, ch, cw)
    # mmdet RandomCrop._crop_data: shift, clip to the crop, keep w > 0 and h > 0, crop the kept masks, recompute
    b = s["boxes"].numpy() - np.array([left, top, left, top], np.float32)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, cw)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, ch)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    masks = s["masks"].numpy()[keep][:, top:top + ch, left:left + cw]
    ref = _mmdet_get_bboxes(masks)
    assert keep.tolist() == [True, True, True]
    assert torch.equal(out["masks"], plain["masks"]) and torch.equal(out["labels"], plain["labels"])
    np.testing.assert_array_equal(out["boxes"].numpy(), ref)
    assert ref[2].tolist() == [0, 0, 0, 0] and ref[0].tolist() == [0, 0, 36, 20]
    assert torch.equal(out["ignore_boxes"], plain["ignore_boxes"])  # no mask: not recomputed
    assert T.mask_boxes(torch.zeros(0, 5, 5, dtype=torch.uint8)).shape == (0, 4)


def test_filter_annotations_is_mmdets():
    s = _sample()
    s["boxes"] = s["boxes"].clone()
    s["boxes"][0] = torch.tensor([20.0, 10.0, 20.005, 50.0])  # w 0.005: dropped
    s["boxes"][2] = torch.tensor([5.0, 200.0, 5.5, 200.02])   # w 0.5, h 0.02: kept
    out = T.filter_annotations(s, (1e-2, 1e-2))
    b = s["boxes"].numpy()                                     # float32, as mmdet's gt_bboxes
    keep = ((b[:, 2] - b[:, 0]) > 1e-2) & ((b[:, 3] - b[:, 1]) > 1e-2)
    assert keep.tolist() == [False, True, True]
    np.testing.assert_array_equal(out["boxes"].numpy(), b[keep])
    assert out["labels"].tolist() == [2, 0] and torch.equal(out["masks"], s["masks"][torch.from_numpy(keep)])
    with pytest.raises(T.DroppedSample, match="left none of 3 boxes"):
        T.filter_annotations(s, (1000.0, 1.0))
    empty = T.make_sample(s["img"], torch.zeros(0, 4), [], torch.zeros(0, 300, 500))
    assert T.filter_annotations(empty, (1e-2, 1e-2)) is empty


def test_pad_to_sets_pad_shape_and_the_collate_pads_to_it():
    s = T.pad_to(_sample(300, 500), (1024, 1024))
    assert s["pad_shape"] == (1024, 1024)
    mean, std = tuple(IMNET["mean"]), tuple(IMNET["std"])
    batch = _collate([s, T.pad_to(_sample(200, 700), (1024, 1024))], mean, std)
    assert batch["img"].shape == (2, 3, 1024, 1024)
    assert [t["pad_shape"] for t in batch["targets"]] == [(1024, 1024)] * 2
    assert [t["img_shape"] for t in batch["targets"]] == [(300, 500), (200, 700)]
    assert batch["img"][0, :, 300:].abs().sum() == 0 and batch["img"][0, :, :, 500:].abs().sum() == 0
    ref = (s["img"].double() - torch.tensor(mean).double()[:, None, None]) / torch.tensor(std).double()[:, None, None]
    torch.testing.assert_close(batch["img"][0, :, :300, :500].double(), ref, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="larger"):
        T.pad_to(_sample(300, 500), (256, 1024))


def test_train_loader_replaces_samples_the_filter_drops(tmp_path):
    """mmdet's dataset retries a sample FilterAnnotations drops; the loader takes the next one of the epoch order
    (never counted as bad): every batch holds only images with a box wider and taller than the threshold."""
    write_synthetic_coco(str(tmp_path), 8, 3, seed=0, size=(96, 128))
    coco = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())
    write_coco(str(tmp_path), str(tmp_path / "shards" / "train"), "train", num_workers=1, progress=False)
    sizes = {}
    for a in coco["annotations"]:
        sizes.setdefault(a["image_id"], []).append(a["bbox"][2:])
    thr = float(np.median([max(min(w, h) for w, h in v) for v in sizes.values()]))
    keeps = {i for i, v in sizes.items() if any(w > thr and h > thr for w, h in v)}
    assert 0 < len(keeps) < len(sizes)
    loader = DetectionTrainLoader(tmp_path / "shards" / "train", batch_size=2, group_by_aspect_ratio=False,
                                  ops=[("resize", ((128, 96),)), ("filter_annotations", (thr, thr))])
    seen = set()
    for batch in loader.epoch_batches():
        seen.update(batch["meta"]["image_ids"])
        for t in batch["targets"]:
            w, h = t["boxes"][:, 2] - t["boxes"][:, 0], t["boxes"][:, 3] - t["boxes"][:, 1]
            assert ((w > thr) & (h > thr)).all()
    assert seen and seen <= keeps and loader.bad.total == 0
