"""Cascade Mask R-CNN as a task of the engine: the tiny synthetic recipe (``synthetic_cascade_mask_rcnn``) trained by
``launch/train.py`` under 2-rank torchrun + DeepSpeed ZeRO-2 fp32 on the CPU over synthetic COCO shards: every
stage's losses are logged and finite, COCO AP is evaluated over the 2 ranks, deleting the last checkpoint +
``--resume auto`` reproduces the losses and the evaluation bitwise, and ``launch/export.py`` writes the official mmdet
layout, which maps back to the trained weights exactly."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
import torch

from support import free_port
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

SYNTHETIC = str(DETECTION_RECIPES["synthetic_cascade_mask_rcnn"])
ITERS = 12
TINY_TAIL = """# epoch-based as the official 3x recipes: 16 images / (2 ranks x 2) = 4 iterations per epoch
runner = dict(_delete_=True, type='EpochBasedRunner', max_epochs=3)
lr_config = dict(_delete_=True, policy='step', warmup='linear', warmup_iters=2, warmup_ratio=0.001, step=[3])
checkpoint_config = dict(_delete_=True, interval=2, max_keep_ckpts=2)
evaluation = dict(_delete_=True, interval=3, metric=['bbox', 'segm'], save_best='bbox_mAP')
"""
TERMS = ("loss", "loss_rpn_cls", "loss_rpn_bbox", *(f"s{i}.{k}" for i in range(3)
                                                    for k in ("loss_cls", "loss_bbox", "loss_mask")))


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, coco_shards):
    """The synthetic cascade recipe at 96 x 128 (single-scale resize) over 16 train / 4 val synthetic COCO images,
    3 epochs (checkpoints after epoch 2 and 3, evaluation at the end)."""
    from tiny_recipes import detection_recipe

    path = tmp_path_factory.mktemp("cascade") / "tiny_cascade.py"
    path.write_text(detection_recipe(SYNTHETIC, coco_shards, tail=TINY_TAIL))
    return path


def _train(recipe, work, extra=()):
    from launching import train

    return train(work, recipe=recipe, args=extra, port=free_port(), timeout=550, options=(
        "log_config.interval=1", "data.samples_per_gpu=2", "data.workers_per_gpu=0", "vis.num_images=1"))[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_cascade_trains_evaluates_resumes_bitwise_and_exports(tmp_path, recipe):
    from launching import REPO, env, losses, records

    ref = tmp_path / "ref"
    _train(recipe, ref)
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    assert set(TERMS) | {"s0.acc", "s1.acc", "s2.acc"} <= set(a[1])
    assert all(math.isfinite(r[k]) for r in a.values() for k in TERMS)
    val = records(ref, "val")
    assert [v["iter"] for v in val] == [ITERS] and val[-1]["num_images"] == 4  # every val image once
    assert all(math.isfinite(val[-1][k]) for k in ("bbox_mAP", "segm_mAP"))

    # export --format mmcv: the official Cascade Mask R-CNN keys, mapping back to the trained weights exactly
    from vit_adapter_ds.checkpoint.deepspeed import consolidate_deepspeed
    from vit_adapter_ds.models.detectors.keymap import cascade_from_mmdet

    exp = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(ref), "--out",
                          str(tmp_path / "model.pth")], capture_output=True, text=True, env=env(), timeout=300)
    assert exp.returncode == 0, exp.stderr[-3000:]
    exported = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert "roi_head.bbox_head.2.shared_convs.1.bn.running_mean" in exported and "rpn_head.rpn_conv.weight" in exported
    trained = consolidate_deepspeed(ref / "checkpoints" / f"iter_{ITERS}")
    back = cascade_from_mmdet(exported)
    assert set(back) == set(trained) and all(torch.equal(back[k], trained[k]) for k in back)

    res = tmp_path / "res"
    shutil.copytree(ref, res)
    shutil.rmtree(res / "checkpoints" / f"iter_{ITERS}")
    (res / "metrics.jsonl").unlink()
    out = _train(recipe, res, ["--resume", "auto"])
    assert "resumed from" in out and "at iteration 8" in out, out[-2000:]
    b = losses(res)
    assert sorted(b) == list(range(9, ITERS + 1))
    for it in b:
        assert all(b[it][k] == a[it][k] for k in TERMS), (it, a[it], b[it])
    again = records(res, "val")[-1]
    assert (again["bbox_mAP"], again["segm_mAP"]) == (val[-1]["bbox_mAP"], val[-1]["segm_mAP"])
    shutil.rmtree(tmp_path, ignore_errors=True)
