"""The panoptic task under the real engine: the tiny ``synthetic_mask2former_panoptic`` twin (the classes of the
synthetic ``coco_panoptic`` layout, 3 things + 3 stuff) with the panoptic pipelines at 96 x 128, trains with 2-rank
DeepSpeed ZeRO-2 fp32 on the CPU; PQ (evaluated on the 4 training images, as test_engine_sparse_rcnn.py does: the
check is that the model learns, not that it generalises) rises clearly above its first value; the evaluations follow
``evaluation.dynamic_intervals`` (mmdet's rule: every 8, from iteration 13 every 6 -> 8, 18, 24; without it 8, 16,
24); the official metric=['PQ', 'bbox', 'segm'] scores the instance results against the synthetic layout's instances
file (``data.val.ins_ann_file``) and the mask AP rises; a copy of the run resumed from its iteration-18 checkpoint,
SIGKILLed after iteration 19 and resumed again, gives the same losses bitwise; ``launch/eval.py`` on the final
checkpoint gives the in-run PQ and AP; ``launch/export.py`` writes the official key layout, which maps back to the
trained weights exactly; ``launch/predict.py`` draws the thing and stuff segments of an image and writes them in
COCO's panoptic format."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from support import free_port
from launching import losses, make_synthetic_shards, records, resume_copy_through_a_kill, train
from vit_adapter_ds.data.panoptic import rgb2id
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ITERS = 24
H, W = 96, 128


def _recipe(path, shards, ins_ann_file):
    path.write_text(f"""
_base_ = ['{DETECTION_RECIPES["synthetic_mask2former_panoptic"]}']
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Resize', img_scale=({W}, {H}), keep_ratio=True),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle', img_to_float=True),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=({W}, {H}), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                     dict(type='Normalize', **img_norm_cfg), dict(type='Pad', size_divisor=32),
                     dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])]
data = dict(_delete_=True, samples_per_gpu=1, workers_per_gpu=0,
            train=dict(type='CocoPanopticDataset', shard_dir='{shards / 'train'}', pipeline=train_pipeline),
            val=dict(type='CocoPanopticDataset', shard_dir='{shards / 'train'}', pipeline=test_pipeline,
                     ins_ann_file='{ins_ann_file}'))
global_batch_size = None
runner = dict(_delete_=True, type='IterBasedRunner', max_iters={ITERS})
lr_config = dict(_delete_=True, policy='step', gamma=0.1, by_epoch=False, step=[100], warmup='linear',
                 warmup_iters=2, warmup_ratio=0.1)
optimizer = dict(lr=1e-3)
workflow = [('train', 8)]
checkpoint_config = dict(_delete_=True, by_epoch=False, interval=6, max_keep_ckpts=4)
evaluation = dict(_delete_=True, interval=8, dynamic_intervals=[(13, 6)], metric=['PQ', 'bbox', 'segm'],
                  save_best='PQ')
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook', by_epoch=False)])
vis = dict(num_images=0)
""")
    return path


def test_panoptic_trains_evaluates_predicts_and_resumes_bitwise(tmp_path):
    from vit_adapter_ds.engine.eval_cli import eval_main, predict_main, run_cli

    raw = tmp_path / "raw"
    shards = make_synthetic_shards(tmp_path / "shards", "coco_panoptic", num_train=4, num_val=2, size=(H, W),
                                   raw_dir=raw)
    ins = raw / "coco_panoptic" / "annotations" / "instances_train2017.json"  # the things of the 4 train images
    recipe = _recipe(tmp_path / "tiny_m2f_panoptic.py", shards, ins)
    ref = tmp_path / "ref"
    train(ref, recipe=recipe, port=free_port(), timeout=550)
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    assert {"loss", "loss_cls", "loss_mask", "loss_dice"} <= set(a[1])
    val = records(ref, "val")
    assert [v["iter"] for v in val] == [8, 18, 24]  # evaluation.dynamic_intervals
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "bbox_mAP", "segm_mAP_l"} <= set(val[-1])
    # measured PQ 0.0 / 18.9 / 53.2 after iterations 8 / 18 / 24
    assert val[-1]["PQ"] > max(25.0, 2 * val[0]["PQ"]), [v["PQ"] for v in val]
    # the instance AP of the ins_results against the instances file (metric 'bbox' / 'segm'), measured box / mask
    # AP 0.000 / 0.000, 0.106 / 0.069, 0.003 / 0.116 after iterations 8 / 18 / 24: the mask AP rises; the box of a
    # mask (its extent, mmdet's mask2bbox) is spread by stray pixels of the still noisy masks, so the box AP is
    # checked only to have risen once
    aps = [(v["bbox_mAP"], v["segm_mAP"]) for v in val]
    assert val[-1]["segm_mAP"] > max(0.08, 2 * val[0]["segm_mAP"]), aps
    assert max(b for b, _ in aps) > max(0.05, 2 * aps[0][0]), aps
    best = json.loads((ref / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "PQ" and best["value"] == max(v["PQ"] for v in val)

    # launch/eval.py on the final checkpoint: the in-run PQ
    out = tmp_path / "pq.json"
    assert run_cli(eval_main, ["--config", str(recipe), "--checkpoint", str(ref / "checkpoints" / f"iter_{ITERS}"),
                               "--out", str(out), "--num-workers", "0"]) == 0
    got = json.loads(out.read_text())
    for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_75"):
        assert got[k] == pytest.approx(val[-1][k], abs=1e-6), (k, got[k], val[-1][k])
    assert got["ins_ann_file"] == str(ins)

    # launch/export.py writes the official mmdet Mask2Former layout (the same keys), which maps back exactly
    from launching import REPO, env

    from vit_adapter_ds.checkpoint.deepspeed import consolidate_deepspeed
    from vit_adapter_ds.models.detectors.keymap import m2f_panoptic_from_mmdet

    exp = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(ref), "--out",
                          str(tmp_path / "model.pth")], capture_output=True, text=True, env=env(), timeout=300)
    assert exp.returncode == 0, exp.stderr[-3000:]
    exported = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert "panoptic_head.cls_embed.weight" in exported and "backbone.spm.stem.0.weight" in exported
    trained = consolidate_deepspeed(ref / "checkpoints" / f"iter_{ITERS}")
    back = m2f_panoptic_from_mmdet(exported)
    assert set(back) == set(trained) and all(torch.equal(back[k], trained[k]) for k in back)

    # launch/predict.py draws the segments of a training image and writes COCO's panoptic prediction format
    with tarfile.open(next((shards / "train").glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / member.name).write_bytes(tar.extractfile(member).read())
    drawn = tmp_path / "drawn"
    assert run_cli(predict_main, ["--config", str(recipe), "--checkpoint", str(ref / "checkpoints" / f"iter_{ITERS}"),
                                  "--images", str(tmp_path / "images"), "--out", str(drawn), "--save-json"]) == 0
    stem = member.name.rsplit(".", 1)[0]
    rec = json.loads((drawn / f"{stem}.json").read_text())
    assert {s["isthing"] for s in rec["segments_info"]} == {0, 1}, rec  # things and stuff found
    rgb = np.asarray(Image.open(tmp_path / "images" / member.name).convert("RGB"))
    ids = rgb2id(np.asarray(Image.open(drawn / rec["file_name"])))
    assert ids.shape == rgb.shape[:2] and sorted(s["id"] for s in rec["segments_info"]) == sorted(
        set(np.unique(ids).tolist()) - {0})
    pic = np.asarray(Image.open(drawn / f"{stem}.png"))
    assert pic.shape == rgb.shape and (pic != rgb).any()

    # bitwise resume: a copy without the checkpoint of iteration 24 resumes from 18, is SIGKILLed after iteration 19
    # and resumes again
    res = tmp_path / "res"
    log = resume_copy_through_a_kill(ref, res, recipe=recipe, drop=ITERS, kill_after=19)
    assert "resumed from" in log
    b = losses(res)
    assert sorted(b) == list(range(19, ITERS + 1))
    for it in b:
        assert b[it]["loss"] == a[it]["loss"] and b[it]["loss_mask"] == a[it]["loss_mask"], (it, a[it], b[it])
    shutil.rmtree(tmp_path, ignore_errors=True)
