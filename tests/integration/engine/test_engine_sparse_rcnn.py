"""Sparse R-CNN as a task of the engine: the tiny synthetic recipe (``synthetic_sparse_rcnn``, box-only) trained by
``launch/train.py`` under 2-rank torchrun + DeepSpeed ZeRO-2 fp32 on the CPU. Sparse R-CNN's set prediction learns
slowly, so within a CI budget the run fits 4 synthetic COCO images (no flip; 2 ranks x 2 images = all of them each
iteration) at lr 4e-3 and is evaluated on those same images: box AP must rise clearly above its first evaluation.
A copy resumed from the second-last checkpoint (``--resume auto``), SIGKILLed as a whole job one iteration later and
resumed again, reproduces the last losses and the evaluation bitwise; ``launch/eval.py`` on the final DeepSpeed
checkpoint gives the in-run AP; ``launch/predict.py`` draws the detections (boxes only) and lists them in its JSON."""
from __future__ import annotations

import json
import math
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from support import free_port
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

SYNTHETIC = str(DETECTION_RECIPES["synthetic_sparse_rcnn"])
ITERS = 30
TRAIN = """train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', img_scale=(128, 96), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.0),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
]"""
TAIL = f"""runner = dict(_delete_=True, type='IterBasedRunner', max_iters={ITERS})
lr_config = dict(_delete_=True, policy='step', warmup='linear', warmup_iters=2, warmup_ratio=0.001, step=[100],
                 by_epoch=False)
optimizer = dict(lr=4e-3)
checkpoint_config = dict(_delete_=True, by_epoch=False, interval=5, max_keep_ckpts=2)
evaluation = dict(_delete_=True, interval=10, metric='bbox', save_best='bbox_mAP')
model = dict(test_cfg=dict(rcnn=dict(max_per_img=100)))
"""
TERMS = ("loss", *(f"stage{i}_{k}" for i in range(2) for k in ("loss_cls", "loss_bbox", "loss_iou")))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, coco_shards):
    """The synthetic Sparse R-CNN recipe at 96 x 128, trained and evaluated on the 4 val images of the synthetic COCO
    shards."""
    from tiny_recipes import detection_recipe

    path = tmp_path_factory.mktemp("sparse") / "tiny_sparse_rcnn.py"
    text = detection_recipe(SYNTHETIC, coco_shards, train_pipeline=TRAIN, tail=TAIL)
    path.write_text(text.replace("'/train'", "'/val'"))
    return path


OPTIONS = ("log_config.interval=1", "data.samples_per_gpu=2", "data.workers_per_gpu=0", "vis.num_images=1")


def _train(recipe, work, extra=()):
    from launching import train

    return train(work, recipe=recipe, args=extra, port=free_port(), timeout=550, options=OPTIONS)[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_sparse_rcnn_trains_resumes_bitwise_evaluates_and_predicts(tmp_path, recipe, coco_shards):
    from launching import losses, records, resume_copy_through_a_kill

    from vit_adapter_ds.engine.eval_cli import eval_main, predict_main, run_cli

    ref = tmp_path / "ref"
    _train(recipe, ref)
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    assert set(TERMS) | {"stage0_pos_acc", "stage1_pos_acc"} <= set(a[1])
    assert all(math.isfinite(r[k]) for r in a.values() for k in TERMS)
    val = records(ref, "val")
    assert [v["iter"] for v in val] == [10, 20, ITERS] and val[-1]["num_images"] == 4  # every image once
    # box AP clearly above its start (measured: mAP 0.0001 / mAP_50 0.001 after 10 iterations, 0.008 / 0.064 after
    # 30; 0.011 / 0.044 after 40)
    first, last = val[0], val[-1]
    assert last["bbox_mAP"] > max(0.004, 20 * first["bbox_mAP"]), val
    assert last["bbox_mAP_50"] > max(0.02, 20 * first["bbox_mAP_50"]), val

    # launch/eval.py on the final DeepSpeed checkpoint: the in-run evaluation
    out = tmp_path / "metrics.json"
    ckpt = ref / "checkpoints" / f"iter_{ITERS}"
    assert run_cli(eval_main, ["--config", str(recipe), "--checkpoint", str(ckpt), "--out", str(out),
                               "--num-workers", "0"]) == 0
    got = json.loads(out.read_text())
    assert got["num_images"] == 4 and not any(k.startswith("segm") for k in got)
    for k in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75"):
        assert got[k] == pytest.approx(val[-1][k], abs=1e-9), (k, got[k], val[-1][k])

    # launch/predict.py draws the confident boxes of a val image (taken from its shard) and lists them
    with tarfile.open(next((coco_shards / "val").glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / member.name).write_bytes(tar.extractfile(member).read())
    drawn = tmp_path / "drawn"
    assert run_cli(predict_main, ["--config", str(recipe), "--checkpoint", str(ckpt), "--images",
                                  str(tmp_path / "images"), "--out", str(drawn), "--score-thr", "0.05",
                                  "--save-json"]) == 0
    stem = member.name.rsplit(".", 1)[0]
    listed = json.loads((drawn / f"{stem}.json").read_text())["detections"]
    assert listed and all(d["score"] >= 0.05 and "segmentation" not in d for d in listed)
    pic = np.asarray(Image.open(drawn / f"{stem}.png"))
    rgb = np.asarray(Image.open(tmp_path / "images" / member.name).convert("RGB"))
    assert pic.shape == rgb.shape
    x, y, w, h = (int(round(v)) for v in listed[0]["bbox"])
    changed = (pic != rgb).any(-1)
    assert changed[max(y, 0):y + h + 1, max(x, 0):x + w + 1].any()

    # a copy without the last checkpoint, resumed, SIGKILLed one iteration later and resumed again: the same losses
    # and evaluation, bit for bit
    res = tmp_path / "res"
    log = resume_copy_through_a_kill(ref, res, recipe=recipe, drop=ITERS, kill_after=ITERS - 5 + 1, options=OPTIONS)
    assert "resumed from" in log and f"at iteration {ITERS - 5}" in log, log[-2000:]
    b = losses(res)
    assert sorted(b) == list(range(ITERS - 4, ITERS + 1))
    for it in b:
        assert all(b[it][k] == a[it][k] for k in TERMS), (it, a[it], b[it])
    assert records(res, "val")[-1]["bbox_mAP"] == val[-1]["bbox_mAP"]
    shutil.rmtree(tmp_path, ignore_errors=True)
