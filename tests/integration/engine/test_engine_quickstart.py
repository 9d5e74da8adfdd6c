"""The engine with the real parts: tiny ViT-Adapter + UperNet from the quickstart recipe, the synthetic shards and
the real loader/evaluator, trained by 2 DeepSpeed ranks (torchrun, ZeRO-2 fp32) for a few iterations; bitwise resume
with the real (resumable) loader; outputs (TensorBoard, predictions, metrics.jsonl, config); per-group learning
rates = the mmcv poly formula (by hand) x the official layer-decay scale; two-stage load-from report."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from support import free_port
from launching import REPO, losses, train
from tiny_recipes import seg_size_options

CROP = 64


@pytest.fixture(scope="module")
def shards(seg_shards):
    return seg_shards


def _train(work, shards, port, args=(), iters=4):
    """2-rank training of the synthetic recipe at a 64-pixel crop through launch/train.py; returns the output."""
    return train(work, port=port, args=args, options=(
        f"runner.max_iters={iters}", "checkpoint_config.interval=2", f"evaluation.interval={iters}",
        "log_config.interval=1", "data.samples_per_gpu=2", "data.workers_per_gpu=0",
        f"data.train.shard_dir={shards}/train", f"data.val.shard_dir={shards}/val",
        *seg_size_options(CROP),
        "lr_config.warmup_iters=2", "vis.num_images=2"))[1]


pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_real_parts_train_resume_and_outputs(tmp_path, shards):
    ref = tmp_path / "ref"
    _train(ref, shards, free_port())
    a = losses(ref)
    assert sorted(a) == [1, 2, 3, 4]
    assert {"loss", "loss_ce", "loss_aux", "acc"} <= set(a[1])
    val = [json.loads(line) for line in open(ref / "metrics.jsonl") if '"val"' in line]
    assert val and {"mIoU", "aAcc", "mAcc"} <= set(val[-1])
    assert list((ref / "predictions" / "iter_4").glob("*.png"))
    assert list((ref / "tensorboard").glob("events.out.tfevents.*"))
    assert (ref / "config.py").is_file() and (ref / "ds_config.json").is_file()
    best = json.loads((ref / "checkpoints" / "best.json").read_text())  # the recipe's evaluation.save_best='mIoU'
    assert best["metric"] == "mIoU" and best["tag"] == "iter_4" and best["value"] == val[-1]["mIoU"]

    # learning rates: mmcv poly(1.0) + linear warm-up by hand, times 0.95 ** (num_layers + 1 - layer_id)
    from vit_adapter_ds.config import load_recipe
    cfg = load_recipe(None)
    base, n = cfg.optimizer.lr, cfg.optimizer.paramwise_cfg.num_layers + 2
    for it, r in a.items():
        i = it - 1
        regular = base * (1 - i / 4)
        expected = regular * (1 - (1 - i / 2) * (1 - 1e-6)) if i < 2 else regular
        for name, lr in r["lr"].items():
            layer_id = int(name.split("_")[1])  # group names 'layer_<id>_{decay,no_decay}'
            assert lr == pytest.approx(expected * 0.95 ** (n - layer_id - 1), rel=1e-9), (it, name)

    _readme_inference_lines_reproduce_the_in_run_evaluation(ref, shards, val[-1], tmp_path)

    # bitwise resume with the real loader (its position comes back from the checkpoint)
    res = tmp_path / "res"
    shutil.copytree(ref, res)
    shutil.rmtree(res / "checkpoints" / "iter_4")
    (res / "metrics.jsonl").unlink()
    out = _train(res, shards, free_port(), ["--resume", "auto"])
    assert "resumed from" in out
    b = losses(res)
    for it in (3, 4):
        assert b[it]["loss"] == a[it]["loss"], (it, a[it]["loss"], b[it]["loss"])


def _readme_inference_lines_reproduce_the_in_run_evaluation(ref, shards, final: dict, tmp_path):
    """The README's three inference lines (between its ``inference-quickstart`` markers), run on this run's folder
    and a val image, work; the same ``model`` on every val image (the pixels the val loader decodes) gives the
    in-run evaluation's mIoU, computed here from a confusion matrix (the evaluator's own code is not used)."""
    import re

    import numpy as np
    from PIL import Image

    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.data.loader import build_val_loader

    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- inference-quickstart.*?-->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert block.count("\n") == 3 and "work_dirs/synthetic_quickstart" in block and '"image.png"' in block
    cfg = load_recipe(None)
    mean, std = np.asarray(cfg.img_norm_cfg.mean), np.asarray(cfg.img_norm_cfg.std)
    loader = build_val_loader(f"{shards}/val", num_classes=8, mean=tuple(mean), std=tuple(std))
    pixels, labels = [], []
    for b in loader:
        x = b["img"][0].numpy().transpose(1, 2, 0).astype(np.float64)
        pixels.append(np.clip(np.round(x * std + mean), 0, 255).astype(np.uint8))
        labels.append(b["gt_semantic_seg"][0].numpy().astype(np.int64))
    Image.fromarray(pixels[0]).save(tmp_path / "image.png")
    # the run was trained and evaluated with the test's smaller scales: the same --cfg-options for the model
    code = block.replace('"work_dirs/synthetic_quickstart"',
                         f"{str(ref)!r}, cfg_options={seg_size_options(CROP)!r}").replace(
        '"image.png"', repr(str(tmp_path / "image.png")))
    scope = {}
    exec(code, scope)  # noqa: S102 - the README's own lines
    model, result = scope["model"], scope["result"]
    assert result.label_map.shape == pixels[0].shape[:2]
    conf = np.zeros((8, 8), np.int64)
    for rgb, lab in zip(pixels, labels):
        pred = model(rgb).label_map
        keep = lab != 255
        conf += np.bincount(lab[keep] * 8 + pred[keep], minlength=64).reshape(8, 8)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    miou = float(np.mean(inter[union > 0] / union[union > 0]))
    assert miou == pytest.approx(final["mIoU"], abs=1e-9), (miou, final["mIoU"])


def test_two_stage_load_from_reinitialises_class_layers(tmp_path):
    """A stage-1 segmentor with 11 classes saved in the official mmcv format, loaded into an 8-class model: every
    tensor but the two classifiers is copied; the classifiers keep their fresh init; the report says so."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.checkpoint.reader import to_mmcv
    from vit_adapter_ds.checkpoint.loading import load_into
    from vit_adapter_ds.models.registry import build_model

    c1 = load_recipe(None, ["model.decode_head.num_classes=11", "model.auxiliary_head.num_classes=11"])
    torch.manual_seed(1)
    stage1 = build_model(c1.model)
    sd1 = stage1.state_dict()
    path = tmp_path / "stage1.pth"
    torch.save(to_mmcv({k: v + 0.5 if v.is_floating_point() else v for k, v in sd1.items()}, {"iter": 7}), path)
    torch.manual_seed(2)
    stage2 = build_model(load_recipe(None).model)
    fresh = {k: v.clone() for k, v in stage2.state_dict().items()}
    report = load_into(stage2, path, reinit_mismatched=True)  # what --load-from does
    cls = {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias", "auxiliary_head.conv_seg.weight",
           "auxiliary_head.conv_seg.bias"}
    assert {k for k, _, _ in report.reinitialised} == cls
    assert report.unexpected == [] and report.missing == []
    assert len(report.loaded) == len(sd1) - 4
    assert "4 re-initialised" in str(report)
    now = stage2.state_dict()
    for k in now:
        if k in cls:
            assert torch.equal(now[k], fresh[k])
        elif now[k].is_floating_point():
            assert torch.equal(now[k], sd1[k] + 0.5), k
