"""HTC++ as a task of the engine and its test-time augmentation.

* The tiny HTC++ recipe (``synthetic_htc.py``: InstaBoost, Resize range mode, flip, pad, the synthetic COCO-Stuff
  maps + SegRescale 1/8) trains under ``launch/train.py`` with 2-rank torchrun + DeepSpeed ZeRO-2 fp32 on the CPU:
  every stage's losses and the semantic loss are logged and finite, COCO AP is evaluated, and deleting the last
  checkpoint + ``--resume auto`` reproduces the losses and the AP bitwise.
* A model with a semantic head refuses a batch without semantic labels, naming what is missing.
* The official TTA merge (``HybridTaskCascadeAug.aug_test_vote``) against hand-computed detections: boxes of two
  scales (one flipped) mapped back to the original image, scale-range filtering, concatenation and per-class
  linear soft-NMS; mask merging (flip-back + mean) by hand; ``aug_test`` output shapes on a tiny model, and with
  one scale and no flip it equals single-scale testing.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from vit_adapter_ds.models.detectors.htc_aug import (AugTestPredictor, HybridTaskCascadeAug, aug_test_cfg,
                                                     bbox_mapping, bbox_mapping_back, in_scale_ranges,
                                                     merge_aug_detections, merge_aug_masks)
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from support import pycocotools_stats_on  # noqa: E402

SYNTHETIC = str(DETECTION_RECIPES["synthetic_htc"])


# ------------------------------------------------------------------------------------------------ TTA merge by hand
def test_box_mapping_by_hand():
    b = torch.tensor([[10.0, 10, 50, 30]])
    # scale 2 (w and h) then flip within the resized width 200: x1' = 200 - 100, x2' = 200 - 20
    torch.testing.assert_close(bbox_mapping(b, (160, 200), (2.0, 2.0), True), torch.tensor([[100.0, 20, 180, 60]]))
    torch.testing.assert_close(bbox_mapping_back(torch.tensor([[100.0, 20, 180, 60]]), (160, 200), (2.0, 2.0), True),
                               b)
    torch.testing.assert_close(bbox_mapping(b, (40, 50), (0.5, 0.25), False), torch.tensor([[5.0, 2.5, 25, 7.5]]))


def test_scale_ranges_by_hand():
    # areas 32^2 (s), 32^2 + 1 px wide (m), 64^2 (m, m-), 96^2 (m, m+), 97 x 96 (l, l-), 600^2 (l, l+)
    boxes = torch.tensor([[0.0, 0, 32, 32], [0, 0, 33, 32], [0, 0, 64, 64], [0, 0, 96, 96], [0, 0, 97, 96],
                          [0, 0, 600, 600]])
    expect = {"s": [0], "m": [1, 2, 3], "m-": [1, 2], "m+": [3], "l": [4, 5], "l-": [4], "l+": [5]}
    for r, idx in expect.items():
        assert in_scale_ranges(boxes, [r]).tolist() == idx, r
    assert in_scale_ranges(boxes, ["s", "l"]).tolist() == [0, 4, 5]


def test_merge_aug_detections_by_hand():
    # original image 80 x 100. Augmentation A: scale 0.5 (40 x 50), no flip, scale index 0 (ranges 's');
    # augmentation B: scale 2 (160 x 200), flipped, scale index 1 (ranges 's', 'm').
    # A sees the box D = [10, 10, 50, 30] (area 800: 's') as [5, 5, 25, 15], E = [12, 10, 52, 30] as [6, 5, 26, 15]
    # and a large box [0, 0, 50, 40] (original [0, 0, 100, 80], area 8000: 'l', filtered out at scale 0);
    # B sees D flipped as [100, 20, 180, 60].
    a_boxes = torch.tensor([[5.0, 5, 25, 15], [6, 5, 26, 15], [0, 0, 50, 40]])
    a_probs = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.9, 0.05, 0.05]])
    b_boxes = torch.tensor([[100.0, 20, 180, 60]])
    b_probs = torch.tensor([[0.5, 0.4, 0.1]])
    metas = [((40, 50), (0.5, 0.5), False, 0), ((160, 200), (2.0, 2.0), True, 1)]
    boxes, labels, scores = merge_aug_detections([a_boxes, b_boxes], [a_probs, b_probs], metas,
                                                 scale_ranges=[["s"], ["s", "m"]], score_thr=0.001, nms_iou=0.5,
                                                 max_per_img=1000)
    # concatenated (no averaging), per class linear soft-NMS: IoU(D, D) = 1 -> weight 0 (dropped);
    # IoU(D, E) = 760 / 840 > 0.5 -> weight 1 - 760 / 840
    decay = 1 - 760 / 840
    # class 0: D(A) 0.6 kept, D(B) 0.5 -> 0, E 0.5 -> 0.5 * decay; class 1: D(B) 0.4 kept, D(A) 0.3 -> 0,
    # E 0.2 -> 0.2 * decay
    D, E = [10.0, 10, 50, 30], [12.0, 10, 52, 30]
    torch.testing.assert_close(scores, torch.tensor([0.6, 0.4, 0.5 * decay, 0.2 * decay]))
    assert labels.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(boxes, torch.tensor([D, D, E, E]))
    # max_per_img keeps the best; score_thr drops pairs at or below it (mmdet: scores > score_thr)
    _, labels, scores = merge_aug_detections([a_boxes, b_boxes], [a_probs, b_probs], metas, [["s"], ["s", "m"]],
                                             0.3, 0.5, 2)
    assert labels.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.6, 0.4])


def test_merge_aug_masks_by_hand():
    m = torch.zeros(2, 3, 4, 4)
    m[0, 1, :, 0] = 1.0            # left column of class 1 of detection 0
    flipped = m.flip(-1) * 0.5    # the flipped augmentation sees it in the right column, at half the probability
    merged = merge_aug_masks([m, flipped], [False, True])
    assert merged.shape == (2, 3, 4, 4)
    assert merged[0, 1, :, 0].tolist() == [0.75] * 4 and merged.sum() == pytest.approx(3.0)


def test_aug_cfg_is_checked():
    from vit_adapter_ds.config.errors import ConfigError

    ok = dict(score_thr=0.001, nms=dict(type="soft_nms", iou_threshold=0.5), max_per_img=1000,
              scale_ranges=[["l"], ["s", "m"]])
    assert aug_test_cfg(ok)["scale_ranges"] == (("l",), ("s", "m"))
    with pytest.raises(ConfigError, match=r"scale_ranges\[1\]"):
        aug_test_cfg(dict(ok, scale_ranges=[["l"], ["xl"]]))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) model.test_cfg.aug.nms.sigma;"):
        aug_test_cfg(dict(ok, nms=dict(type="soft_nms", iou_threshold=0.5, sigma=0.5)))


# ------------------------------------------------------------------------------------------------ tiny model
def _tiny_aug(ranges=(("s", "m", "l"),) * 3, max_per_img=100):
    from test_detection_htc import tiny_htc

    m = tiny_htc()
    aug = aug_test_cfg(dict(score_thr=m.roi_head.score_thr, nms=dict(type="soft_nms", iou_threshold=0.5),
                            max_per_img=max_per_img, scale_ranges=[list(r) for r in ranges]))
    return HybridTaskCascadeAug(m.backbone, list(m.neck), m.rpn, m.roi_head, aug).eval()


MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def test_aug_test_shapes_over_scales_and_flip():
    model = _tiny_aug()
    img = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = model.aug_test(img, [(96, 64), (128, 96)], True, MEAN, STD)
    k = len(out["boxes"])
    assert 0 < k <= 100 and out["masks"].shape == (k, 70, 90) and out["masks"].dtype == torch.bool
    assert out["labels"].shape == out["scores"].shape == (k,) and int(out["labels"].max()) < 7
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    assert (out["boxes"][:, 2] <= 90 + 1e-3).all() and (out["boxes"][:, 3] <= 70 + 1e-3).all()


def test_aug_test_with_one_scale_equals_single_scale_testing():
    from vit_adapter_ds.data import det_transforms as T

    model = _tiny_aug(ranges=(("s", "m", "l"),))
    img = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    aug = model.aug_test(img, [(128, 96)], False, MEAN, STD)
    x = T.test_transform(img, (128, 96))
    single = model.predict(T.pad_batch([T.normalize(x, MEAN, STD)], 32), [tuple(x.shape[-2:])], [(70, 90)])[0]
    assert aug["labels"].tolist() == single["labels"].tolist() and len(aug["labels"]) > 0
    torch.testing.assert_close(aug["scores"], single["scores"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aug["boxes"], single["boxes"], rtol=1e-4, atol=1e-3)
    differ = (aug["masks"] != single["masks"]).float().mean()
    assert differ < 1e-3, differ


def test_aug_predictor_recovers_the_uint8_image():
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def aug_test(self, image, scales, flip, mean, std):
            calls.append((image, scales, flip))
            return {}

    from vit_adapter_ds.data import det_transforms as T

    img = torch.randint(0, 256, (3, 37, 45), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    p = AugTestPredictor(Probe(), [(64, 32)], True, MEAN, STD)
    p.predict(T.pad_batch([T.normalize(img, MEAN, STD)], 32), [(37, 45)], [(37, 45)])
    assert torch.equal(calls[0][0], img) and calls[0][1:] == ([(64, 32)], True)
    with pytest.raises(ValueError, match="original size"):
        p.predict(T.pad_batch([T.normalize(img, MEAN, STD)], 32), [(37, 45)], [(74, 90)])
    with pytest.raises(TypeError, match="HybridTaskCascadeAug"):
        AugTestPredictor(torch.nn.Linear(1, 1), [(64, 32)], True, MEAN, STD)


def test_semantic_head_without_labels_is_a_clear_error():
    from test_detection_htc import tiny_htc
    from test_detection_model import _targets

    model = tiny_htc().train()
    with pytest.raises(ValueError, match=r"semantic head .* no semantic labels.*with_seg=True.*SegRescale"):
        model(torch.randn(2, 3, 128, 160), _targets())
    with pytest.raises(ValueError, match=r"semantic labels \(2, 8, 8\) do not match .* \(2, 11, 16, 20\)"):
        model(torch.randn(2, 3, 128, 160), _targets(), semantic_labels=torch.zeros(2, 8, 8, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ 2-rank training
HTC_TRAIN = """train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='InstaBoost', action_candidate=('normal', 'horizontal', 'skip'), action_prob=(1, 0, 0),
         scale=(0.8, 1.2), dx=15, dy=15, theta=(-1, 1), color_prob=0.5, hflag=False, aug_ratio=0.5),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', img_scale=[(128, 64), (128, 96)], multiscale_mode='range', keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='SegRescale', scale_factor=1 / 8),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
]"""
TINY_TAIL = """runner = dict(max_iters=6)
lr_config = dict(warmup_iters=2, step=[5])
checkpoint_config = dict(interval=4, max_keep_ckpts=2)
evaluation = dict(interval=6)
"""
ITERS = 6


@pytest.fixture(scope="module")
def htc_shards(synthetic_shards):
    """8 train / 4 val synthetic COCO images of 96 x 128 with semantic maps (read-only, shared)."""
    return synthetic_shards("coco", 8, 4, (96, 128))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, htc_shards):
    """The tiny HTC++ recipe at 96 x 128 over ``htc_shards``, 6 iterations (checkpoints at 4 and 6, evaluation at
    6)."""
    from tiny_recipes import detection_recipe

    shards = htc_shards
    path = tmp_path_factory.mktemp("htc") / "tiny_htc.py"
    path.write_text(detection_recipe(SYNTHETIC, shards, train_pipeline=HTC_TRAIN, tail=TINY_TAIL))
    return path


def test_tiny_recipe_is_the_detection_task_with_semantic_maps(recipe):
    from vit_adapter_ds.config import ConfigError
    from vit_adapter_ds.tasks import ObjectDetection, load_and_validate

    cfg, task, meta = load_and_validate(str(recipe))
    assert isinstance(task, ObjectDetection) and type(meta).__name__ == "HybridTaskCascade"
    batch = next(task.build_train_loader(rank=0, world_size=1, seed=0))
    h, w = batch["img"].shape[-2:]
    assert batch["semantic_seg"].shape == (2, h // 8, w // 8) and batch["semantic_seg"].dtype == torch.int64
    model = task.build_model().train()
    losses = task.forward_loss(model, batch, torch.device("cpu"), torch.float32)
    assert torch.isfinite(losses["loss_semantic_seg"]) and losses["loss_semantic_seg"] > 0
    del batch["semantic_seg"]
    with pytest.raises(ValueError, match="no semantic labels"):
        task.forward_loss(model, batch, torch.device("cpu"), torch.float32)
    no_maps = recipe.parent / "tiny_htc_no_maps.py"
    no_maps.write_text(f"_base_ = [{str(recipe)!r}]\n"
                       "train_pipeline = [dict(type='LoadImageFromFile'),\n"
                       "    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),\n"
                       "    dict(type='Resize', img_scale=(128, 96), keep_ratio=True),\n"
                       "    dict(type='Normalize', mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True),\n"
                       "    dict(type='Pad', size_divisor=32), dict(type='DefaultFormatBundle'),\n"
                       "    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks'])]\n"
                       "data = dict(train=dict(pipeline=train_pipeline))\n")
    with pytest.raises(ConfigError, match="semantic_head needs the semantic maps"):
        load_and_validate(str(no_maps))


@pytest.mark.slow
def test_tta_recipe_evaluates_through_the_task(recipe, htc_shards):
    """The _ms variant: the val loader keeps the original size and evaluate runs the aug test."""
    from vit_adapter_ds.tasks import load_and_validate

    ms = recipe.parent / "tiny_htc_ms.py"
    shards = htc_shards
    ms.write_text(f"_base_ = [{str(DETECTION_RECIPES['synthetic_htc_ms'])!r}]\n"
                  f"data = dict(train=dict(shard_dir={str(shards / 'train')!r}), "
                  f"val=dict(shard_dir={str(shards / 'val')!r}), test=dict(shard_dir={str(shards / 'val')!r}))\n")
    _, task, meta = load_and_validate(str(ms))
    assert type(meta).__name__ == "HybridTaskCascadeAug"
    val = task.build_val_loader(rank=0, world_size=1)
    assert val.scale is None and val.test_aug == {"scales": [(192, 96), (192, 128), (256, 160)], "flip": True}
    model = task.build_model()
    metrics, pictures = task.evaluate(model, val, torch.float32, num_vis=1)
    assert metrics["num_images"] == 4
    assert pictures[0].shape == (96, 128, 3)
    # reference: the aug test run here on each val image (original size), scored by pycocotools directly
    aug = AugTestPredictor(model, val.test_aug["scales"], val.test_aug["flip"], val.mean, val.std)
    images, anns, preds = [], [], []
    model.eval()
    with torch.no_grad():
        for item in val:
            images.append({k: item["image"][k] for k in ("id", "height", "width")})
            anns.extend(item["annotations"])
            preds.append((item["image"]["id"], aug.predict(item["img"], [tuple(item["img_shape"])],
                                                           [tuple(item["ori_shape"])])[0]))
    assert sum(len(p["scores"]) for _, p in preds) > 0, "no detections: the AP comparison would be vacuous"
    ref = pycocotools_stats_on(images, anns, val.categories, preds)
    for k, v in ref.items():
        assert metrics[k] == pytest.approx(v, abs=1e-12), (k, metrics[k], v)


@pytest.mark.slow
def test_tta_recipe_through_eval_and_predict_command_lines(recipe, htc_shards, tmp_path):
    """launch/eval.py and launch/predict.py on the _ms recipe run the recipe's test-time augmentation: eval's
    metrics equal the task's evaluation (the aug test), predict's detections equal the aug test of the raw image."""
    from PIL import Image

    from vit_adapter_ds.engine.eval_cli import eval_main, predict_main
    from vit_adapter_ds.models.detectors.htc_aug import AugTestPredictor
    from vit_adapter_ds.tasks import load_and_validate

    ms = tmp_path / "tiny_htc_ms.py"
    shards = htc_shards
    ms.write_text(f"_base_ = [{str(DETECTION_RECIPES['synthetic_htc_ms'])!r}]\n"
                  f"data = dict(train=dict(shard_dir={str(shards / 'train')!r}), "
                  f"val=dict(shard_dir={str(shards / 'val')!r}), test=dict(shard_dir={str(shards / 'val')!r}))\n")
    _, task, _ = load_and_validate(str(ms))
    torch.manual_seed(3)
    model = task.build_model(load_pretrained=False).eval()
    torch.save(model.state_dict(), tmp_path / "htc.pth")
    val = task.build_val_loader(rank=0, world_size=1)
    want, _ = task.evaluate(model, val, torch.float32, num_vis=0)
    assert eval_main(["--config", str(ms), "--checkpoint", str(tmp_path / "htc.pth"), "--num-workers", "0",
                      "--out", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    for k in ("bbox_mAP", "bbox_mAP_50", "segm_mAP"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    # predict one raw val image: the json detections are the aug test's (score >= 0) on the decoded image
    img_path = tmp_path / "one.png"
    i = int(val.indices[0])
    from vit_adapter_ds.data.detection import decode_det_sample
    img, _, _ = decode_det_sample(val.reader.read_global(i), val.cat2label)
    img = img.as_subclass(torch.Tensor).to(torch.uint8)
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(img_path)
    assert predict_main(["--config", str(ms), "--checkpoint", str(tmp_path / "htc.pth"), "--images", str(img_path),
                         "--out", str(tmp_path / "pred"), "--score-thr", "0", "--save-json"]) == 0
    dets = json.loads((tmp_path / "pred" / "one.json").read_text())["detections"]
    aug = AugTestPredictor(model, val.test_aug["scales"], val.test_aug["flip"], val.mean, val.std)
    from vit_adapter_ds.tasks.detection import val_loader_item
    x = val_loader_item(val, img)
    ref = aug.predict(x["img"], [x["img_shape"]], [tuple(img.shape[-2:])])[0]
    assert len(dets) == len(ref["scores"]) > 0
    assert [d["score"] for d in dets] == pytest.approx(ref["scores"].tolist(), abs=1e-6)


from support import free_port  # noqa: E402
from launching import records as _records, train as _launch_train  # noqa: E402


def _train(recipe, work, port, extra=()):
    """2-rank training of ``recipe`` through launch/train.py; returns the output."""
    return _launch_train(work, recipe=recipe, args=extra, port=port, timeout=500, options=(
        "log_config.interval=1", "data.samples_per_gpu=2", "data.workers_per_gpu=0", "vis.num_images=1"))[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_htc_trains_evaluates_and_resumes_bitwise(tmp_path, recipe):
    import math

    from launching import losses

    terms = ["loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_semantic_seg"] + [
        f"s{i}.{k}" for i in range(3) for k in ("loss_cls", "loss_bbox", "loss_mask")]
    ref = tmp_path / "ref"
    _train(recipe, ref, free_port())
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    for it, r in a.items():
        assert all(k in r and math.isfinite(r[k]) for k in terms), (it, r)
        assert r["loss_semantic_seg"] > 0 and all(f"s{i}.acc" in r for i in range(3))
    val = _records(ref, "val")
    assert [v["iter"] for v in val] == [ITERS] and val[0]["num_images"] == 4
    # the record and picture are those of the final checkpoint evaluated here in-process (one rank)
    import numpy as np
    from PIL import Image

    from vit_adapter_ds.engine.eval_cli import load_detector
    from vit_adapter_ds.evaluation.coco import CocoEvaluator
    from vit_adapter_ds.tasks import load_and_validate

    _, task, _ = load_and_validate(str(recipe))
    model = load_detector(task, ref / "checkpoints" / f"iter_{ITERS}")
    counts, add_prediction = [], CocoEvaluator.add_prediction
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CocoEvaluator, "add_prediction",
                   lambda ev, i, p: (counts.append(len(p["scores"])), add_prediction(ev, i, p)))
        want, pictures = task.evaluate(model, task.build_val_loader(rank=0, world_size=1), torch.float32, 1)
    assert len(counts) == 4 and sum(counts) > 0, counts  # detections: the AP comparison is not vacuous
    for k, v in want.items():
        if k.startswith(("bbox_", "segm_")):
            assert val[0][k] == pytest.approx(v, abs=1e-9), (k, val[0][k], v)
    drawn = np.asarray(Image.open(ref / "predictions" / f"iter_{ITERS}" / "000.png").convert("RGB"))
    np.testing.assert_array_equal(drawn, pictures[0])

    res = tmp_path / "res"
    shutil.copytree(ref, res)
    shutil.rmtree(res / "checkpoints" / f"iter_{ITERS}")
    (res / "metrics.jsonl").unlink()
    out = _train(recipe, res, free_port(), ["--resume", "auto"])
    assert "resumed from" in out and "at iteration 4" in out, out[-2000:]
    b = losses(res)
    assert sorted(b) == [5, 6]
    for it in b:
        assert all(b[it][k] == a[it][k] for k in terms), (it, a[it], b[it])
    assert _records(res, "val")[-1]["bbox_mAP"] == val[-1]["bbox_mAP"]
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_rpn_soft_nms_proposals_by_hand():
    """The RPN's optional ``nms=dict(type='soft_nms', iou_threshold=0.7)`` (no official recipe uses it since the
    official BEiT-L file's RPN NMS is plain ``nms``): per level linear soft-NMS of the sigmoid objectness, proposals
    ranked by the decayed score, ``max_per_img`` kept."""
    import math

    from vit_adapter_ds.models.detectors.mask_rcnn import RPN, FixedStrideAnchorGenerator

    rpn = RPN(8, anchor_generator=FixedStrideAnchorGenerator(), nms_type="soft_nms", test_max_per_img=2).eval()
    # level 0: A, B (IoU 90 / 110 > 0.7) and C; level 1: D = A (another level: never decayed by A)
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]])
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    objectness = torch.tensor([[logit(0.9), logit(0.8), logit(0.7), logit(0.6)]])
    kept, scores = rpn.filter_proposals(boxes, objectness, [(40, 40)], [3, 1])
    torch.testing.assert_close(scores[0], torch.tensor([0.9, 0.7]))        # A, C; then D 0.6, B 0.8 * (1 - 90/110)
    torch.testing.assert_close(kept[0], boxes[0, [0, 2]])
    rpn._post_nms_top_n["testing"] = 10
    _, scores = rpn.filter_proposals(boxes, objectness, [(40, 40)], [3, 1])
    torch.testing.assert_close(scores[0], torch.tensor([0.9, 0.7, 0.6, 0.8 * (1 - 90 / 110)]))
    with pytest.raises(ValueError, match="nms_type"):
        RPN(8, anchor_generator=FixedStrideAnchorGenerator(), nms_type="matrix")
