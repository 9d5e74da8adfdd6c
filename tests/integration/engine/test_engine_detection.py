"""Detection as a task of the engine: the step learning-rate schedule (mmcv ``StepLrUpdaterHook`` + linear warm-up,
values by hand), the detection keys of the recipe validation, and the synthetic Mask R-CNN recipe trained by
``launch/train.py`` under 2-rank torchrun + DeepSpeed ZeRO-2 fp32 on the CPU: the loss falls, box AP (pycocotools)
is clearly above zero, and a copy without the last checkpoint, resumed (``--resume auto``), SIGKILLed as a whole job
one iteration later and resumed again, reproduces the losses bitwise."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from support import free_port
from vit_adapter_ds.config import ConfigError
from vit_adapter_ds.engine.schedule import (PolyWarmupLR, StepWarmupLR, lr_at, schedule_kwargs,
                                            scheduler_from_config, step_lr_at)
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import ObjectDetection, load_and_validate

SYNTHETIC = str(DETECTION_RECIPES["synthetic_mask_rcnn"])


# ------------------------------------------------------------------------------------------------ step schedule
def test_step_lr_by_hand():
    # base 0.02, milestones [4, 6], gamma 0.1, linear warm-up over 2 iterations from 0.001 x
    kw = dict(base_lr=0.02, step=[4, 6], gamma=0.1, warmup_iters=2, warmup_ratio=0.001)
    expected = [0.02 * 0.001, 0.02 * (1 - 0.5 * 0.999), 0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002]
    for i, e in enumerate(expected):
        assert step_lr_at(i, **kw) == pytest.approx(e, rel=1e-12), i
    # an int step is a period; min_lr clamps
    assert [step_lr_at(i, 1.0, 3) for i in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001])
    assert step_lr_at(9, 1.0, 3, min_lr=0.005) == 0.005
    # warm-up acts on the decayed value (mmcv): a milestone inside the warm-up
    assert step_lr_at(1, 1.0, [1], warmup_iters=4, warmup_ratio=0.0) == pytest.approx(0.1 * 0.25)


def test_step_scheduler_groups_and_state():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr_scale": 0.5}, {"params": [params[1]]}], lr=1.0)
    s = StepWarmupLR(opt, base_lr=0.1, step=[2], gamma=0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.1])
    s.step()
    s.step()
    assert s.get_last_lr() == pytest.approx([0.025, 0.05])
    state = s.state_dict()
    s.set_iter(0)
    s.load_state_dict(state)
    assert s.last_iter == 2 and s.get_last_lr() == pytest.approx([0.025, 0.05])


def _cfg(lr_config, runner=None):
    return {"optimizer": {"lr": 0.01}, "runner": runner or {"type": "IterBasedRunner", "max_iters": 10},
            "lr_config": lr_config}


def test_scheduler_picked_by_policy():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    step = scheduler_from_config(opt, _cfg({"policy": "step", "step": [5], "warmup": None}))
    assert isinstance(step, StepWarmupLR)
    step.set_iter(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    poly = scheduler_from_config(opt, _cfg({"policy": "poly", "power": 1.0, "min_lr": 0.0, "warmup": None}))
    assert isinstance(poly, PolyWarmupLR)
    poly.set_iter(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005) == lr_at(5, 0.01, 10)
    # without lr_config.policy the engine keeps poly (the segmentation recipes' schedule)
    assert isinstance(scheduler_from_config(opt, _cfg({})), PolyWarmupLR)


@pytest.mark.parametrize("lr_config,msg", [
    ({"policy": "step"}, r"lr_config.step is required"),
    ({"policy": "step", "step": [6, 4]}, "increasing"),
    ({"policy": "step", "step": [0]}, "positive"),
    ({"policy": "step", "step": [4], "power": 1.0}, "not a key of policy='step'"),
    ({"policy": "poly", "step": [4]}, "not a key of policy='poly'"),
    ({"policy": "step", "step": [4], "by_epoch": True}, "by_epoch"),
    ({"policy": "cosine"}, "policy"),
])
def test_bad_step_schedules_are_refused(lr_config, msg):
    with pytest.raises(ConfigError, match=msg):
        schedule_kwargs(_cfg(lr_config))


# ------------------------------------------------------------------------------------------------ validation
def test_synthetic_recipe_is_the_detection_task():
    cfg, task, meta = load_and_validate(SYNTHETIC)
    assert isinstance(task, ObjectDetection) and task.best_metric == "bbox_mAP" and meta.num_classes == 7
    assert schedule_kwargs(cfg)["step"] == [250]


@pytest.mark.parametrize("option,msg", [
    ("evaluation.metric=mIoU", "detection recipe evaluates 'bbox' / 'segm'"),
    ("evaluation.save_best=mIoU", "save_best='mIoU' is not a metric of this task"),
    ("evaluation.metric=['bbox','proposal']", r"evaluation.metric\[1\]='proposal' is not supported"),
    ("data.train.type=ADE20KDataset", "data.train.type='ADE20KDataset' is not supported"),
    ("data.train.crop_size=(64,64)", "data.train.crop_size"),
    ("data.val.batch_size=4", "must not set"),
    ("runner.max_epochs=36", "runner.max_epochs"),
    ("runner.type=EpochBasedRunner", r"unknown key\(s\) runner.max_iters; valid keys of runner: max_epochs, type"),
    ("lr_config.by_epoch=True", "lr_config.by_epoch=True needs runner.type='EpochBasedRunner'"),
    ("checkpoint_config.save_last=False", "save_last=False is not supported"),
    ("lr_config.step=[250,100]", "increasing"),
    ("lr_config.power=1.0", "lr_config.power is not a key of policy='step'"),
    ("lr_config.policy=poly", "lr_config.step is not a key of policy='poly'"),
    ("evaluation.save_best=mIoU_50", "save_best"),
    ("model.roi_head.bbox_head.num_classes=0.5", "num_classes"),
])
def test_detection_recipe_errors(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(SYNTHETIC, [option])


@pytest.mark.parametrize("option,msg", [("evaluation.metric=bbox", "segmentation recipe evaluates 'mIoU'"),
                                        ("evaluation.save_best=bbox_mAP", "not a metric of this task")])
def test_segmentation_recipe_refuses_detection_metrics(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(None, [option])


def test_segmentation_recipe_refuses_epoch_runner():
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.config.schema import validate_sections
    from vit_adapter_ds.tasks import task_for

    cfg = to_plain(load_recipe(None, validate=False))
    cfg["runner"] = {"type": "EpochBasedRunner", "max_epochs": 2}
    validate_sections(cfg)  # the engine sections are well-formed; the segmentation task cannot honour them
    with pytest.raises(ConfigError, match="EpochBasedRunner' is not supported by the semantic segmentation task"):
        task_for(cfg)


# ------------------------------------------------------------------------------------------------ epochs -> iterations
def test_epochs_to_iterations_by_hand():
    from vit_adapter_ds.tasks.detection import epochs_to_iterations

    cfg = {"runner": {"type": "EpochBasedRunner", "max_epochs": 36},
           "lr_config": {"policy": "step", "warmup": "linear", "warmup_iters": 500, "step": [27, 33]},
           "checkpoint_config": {"interval": 2, "max_keep_ckpts": 3}, "evaluation": {"metric": ["bbox"]}}
    epochs_to_iterations(cfg, 7)
    assert cfg["runner"] == {"type": "IterBasedRunner", "max_iters": 252}
    assert cfg["lr_config"] == {"policy": "step", "warmup": "linear", "warmup_iters": 500, "step": [189, 231],
                                "by_epoch": False}
    assert cfg["checkpoint_config"] == {"interval": 14, "max_keep_ckpts": 3, "by_epoch": False}
    assert cfg["evaluation"] == {"metric": ["bbox"], "interval": 7}
    # values already given in iterations stay
    cfg = {"runner": {"type": "EpochBasedRunner", "max_epochs": 2}, "lr_config": {"step": 5, "by_epoch": False},
           "checkpoint_config": {"interval": 3, "by_epoch": False}, "evaluation": {"interval": 2}}
    epochs_to_iterations(cfg, 10)
    assert (cfg["runner"]["max_iters"], cfg["lr_config"]["step"], cfg["checkpoint_config"]["interval"],
            cfg["evaluation"]["interval"]) == (20, 5, 3, 20)


@pytest.mark.parametrize("gbs,per_epoch", [(16, 1), (None, 4), (8, 2)])
def test_official_recipe_converted_with_the_loaders_epoch(coco_shards, monkeypatch, gbs, per_epoch):
    # 16 trainable synthetic images, 2 ranks x 2 images: len_per_epoch 4 micro-batches, / accumulation (gbs / 4)
    shards = coco_shards
    monkeypatch.setenv("WORLD_SIZE", "2")
    opts = [f"data.train.shard_dir={shards}/train", f"data.val.shard_dir={shards}/val",
            f"data.test.shard_dir={shards}/val", "model.backbone.pretrained=None", f"global_batch_size={gbs}",
            "model.roi_head.bbox_head.num_classes=7", "model.roi_head.mask_head.num_classes=7"]
    cfg, _, _ = load_and_validate(str(DETECTION_RECIPES["mask_rcnn_deit_adapter_tiny_fpn_3x_coco"]), opts)
    assert cfg.runner == {"type": "IterBasedRunner", "max_iters": 36 * per_epoch}
    assert schedule_kwargs(cfg) == dict(base_lr=1e-4, warmup_iters=500, warmup_ratio=0.001,
                                        step=[27 * per_epoch, 33 * per_epoch], gamma=0.1, min_lr=None)
    assert (cfg.checkpoint_config.interval, cfg.evaluation.interval) == (per_epoch, per_epoch)


def test_official_recipe_without_shards_validates_but_does_not_schedule():
    cfg, _, _ = load_and_validate(str(DETECTION_RECIPES["mask_rcnn_deit_adapter_tiny_fpn_3x_coco"]))
    assert cfg.runner == {"type": "EpochBasedRunner", "max_epochs": 36}
    with pytest.raises(ConfigError, match="epoch-based schedule"):
        schedule_kwargs(cfg)


# ------------------------------------------------------------------------------------------------ 2-rank training
ITERS = 20
TINY_TAIL = """# epoch-based as the official 3x recipes: 16 images / (2 ranks x 2) = 4 iterations per epoch
runner = dict(_delete_=True, type='EpochBasedRunner', max_epochs=5)
lr_config = dict(_delete_=True, policy='step', warmup='linear', warmup_iters=2, warmup_ratio=0.001, step=[4])
checkpoint_config = dict(_delete_=True, interval=2, max_keep_ckpts=2)
evaluation = dict(_delete_=True, interval=2, metric=['bbox', 'segm'], save_best='bbox_mAP')
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, coco_shards):
    """The synthetic recipe at 96 x 128 (single-scale resize instead of the multi-scale AutoAugment) over 16 train /
    4 val synthetic COCO images (``coco_shards``), epoch-based (5 epochs, lr step after epoch 4, checkpoint and
    evaluation every 2 epochs)."""
    from tiny_recipes import detection_recipe

    path = tmp_path_factory.mktemp("det") / "tiny_mask_rcnn.py"
    path.write_text(detection_recipe(SYNTHETIC, coco_shards, tail=TINY_TAIL))
    return path


OPTIONS = ("log_config.interval=1", "data.samples_per_gpu=2", "data.workers_per_gpu=0", "vis.num_images=1")


def _train(recipe, work, port, extra=(), timeout=500, ds="zero2_fp32", options=()):
    """2-rank torchrun training (DeepSpeed config ``ds``) of a detection recipe through launch/train.py; returns the
    output."""
    from launching import train

    return train(work, recipe=recipe, args=extra, ds=ds, port=port, timeout=timeout, options=(*OPTIONS, *options))[1]


def _records(work, mode):
    from launching import records

    return records(work, mode)


def _api_reproduces_the_in_run_evaluation(recipe, run_dir, exported, final: dict) -> None:
    """The Python API (README: ``init_model(recipe, run folder)(image)``) on the run's folder and on its export in
    the official mmdet layout (the released-checkpoint path) predicts the same detections; scored by pycocotools
    alone on the val images (the pixels the val loader decodes) they give the in-run evaluation's box and mask AP."""
    from support import pycocotools_stats_on

    from vit_adapter_ds.apis import init_model
    from vit_adapter_ds.data.detection import decode_det_sample
    from vit_adapter_ds.tasks import load_and_validate

    _, task, _ = load_and_validate(str(recipe))
    val = task.build_val_loader(rank=0, world_size=1)
    from_run, from_export = init_model(str(recipe), run_dir, device="cpu"), init_model(str(recipe), exported,
                                                                                        device="cpu")
    images, anns, preds = [], [], []
    for i in val.indices:
        img, _, record = decode_det_sample(val.reader.read_global(int(i)), val.cat2label)
        rgb = img.as_subclass(torch.Tensor).permute(1, 2, 0).numpy()
        got, again = from_run(rgb), from_export(rgb)
        assert np.array_equal(got.boxes, again.boxes) and np.array_equal(got.masks, again.masks)
        assert got.masks.shape[1:] == rgb.shape[:2]
        images.append({k: record["image"][k] for k in ("id", "height", "width")})
        anns.extend(record["annotations"])
        preds.append((record["image"]["id"], {"boxes": torch.from_numpy(got.boxes),
                                              "labels": torch.from_numpy(got.labels),
                                              "scores": torch.from_numpy(got.scores),
                                              "masks": torch.from_numpy(got.masks)}))
    assert len(images) == final["num_images"] and sum(len(p["scores"]) for _, p in preds) > 0
    stats = pycocotools_stats_on(images, anns, val.categories, preds)
    for k in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50"):
        assert stats[k] == pytest.approx(final[k], abs=1e-12), (k, stats[k], final[k])


@pytest.mark.slow
@pytest.mark.distributed
def test_mask_rcnn_trains_evaluates_and_resumes_bitwise(tmp_path, recipe):
    from launching import losses, resume_copy_through_a_kill

    ref = tmp_path / "ref"
    _train(recipe, ref, free_port())
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    assert {"loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(a[1])
    first = sum(a[i]["loss"] for i in (1, 2, 3)) / 3
    last = sum(a[i]["loss"] for i in range(ITERS - 4, ITERS + 1)) / 5
    assert last < 0.75 * first, (first, last)
    # 5 epochs of 4 iterations; the step schedule by hand: lr 5e-4, warm-up 2 iterations from 0.001 x, x0.1 after
    # epoch 4 = from (0-based) iteration 16
    for it, r in a.items():
        i = it - 1
        expected = 5e-4 * (1 - (1 - i / 2) * 0.999) if i < 2 else (5e-4 if i < 16 else 5e-5)
        assert all(lr == pytest.approx(expected, rel=1e-9) for lr in r["lr"].values()), (it, r["lr"])
    val = _records(ref, "val")
    assert [v["iter"] for v in val] == [8, 16, ITERS]  # every 2 epochs and at the end
    assert val[-1]["num_images"] == 4  # every val image once over the 2 ranks
    assert val[-1]["bbox_mAP"] > 0.03 and val[-1]["segm_mAP"] > 0.0, val  # measured: 0.075 / 0.076
    assert val[-1]["bbox_mAP"] > val[0]["bbox_mAP"], val                  # measured: 0.007 after 8 iterations
    assert list((ref / "predictions" / f"iter_{ITERS}").glob("*.png"))
    assert list((ref / "tensorboard").glob("events.out.tfevents.*"))

    from vit_adapter_ds.config.run_record import read_run_config
    saved = read_run_config(ref)  # the work dir records the converted values (config.json: data, never executed)
    assert saved["runner"] == {"type": "IterBasedRunner", "max_iters": ITERS} and saved["lr_config"]["step"] == [16]
    assert saved["_epoch_conversion"] == {"max_epochs": 5, "iters_per_epoch": 4}

    # export --format mmcv writes the official mmdet layout, which maps back to the trained weights exactly
    from launching import REPO, env as _env

    from vit_adapter_ds.checkpoint.deepspeed import consolidate_deepspeed
    from vit_adapter_ds.models.detectors.keymap import from_mmdet

    exp = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(ref), "--out",
                          str(tmp_path / "model.pth")], capture_output=True, text=True, env=_env(), timeout=300)
    assert exp.returncode == 0, exp.stderr[-3000:]
    exported = torch.load(tmp_path / "model.pth", map_location="cpu", weights_only=False)
    assert any(k.startswith("rpn_head.") for k in exported["state_dict"]) and "config" in exported["meta"]
    assert exported["meta"]["model_type_from"] == str(ref / "config.json")  # the run record, not config.py
    trained = consolidate_deepspeed(ref / "checkpoints" / f"iter_{ITERS}")
    back = from_mmdet(exported)
    assert set(back) == set(trained)
    unused = {"roi_heads.box_predictor.bbox_pred.weight": 4, "roi_heads.box_predictor.bbox_pred.bias": 4,
              "roi_heads.mask_predictor.mask_fcn_logits.weight": 1, "roi_heads.mask_predictor.mask_fcn_logits.bias": 1}
    for k, v in back.items():  # torchvision's background rows (never used, not in mmdet's layout) are dropped
        n = unused.get(k, 0)
        assert torch.equal(v[n:], trained[k][n:]) if n else torch.equal(v, trained[k]), k

    _api_reproduces_the_in_run_evaluation(recipe, ref, tmp_path / "model.pth", val[-1])

    res = tmp_path / "res"
    out = resume_copy_through_a_kill(ref, res, recipe=recipe, drop=ITERS, kill_after=17, options=OPTIONS)
    assert "resumed from" in out and "at iteration 16" in out, out[-2000:]
    b = losses(res)
    assert sorted(b) == list(range(17, ITERS + 1))
    terms = ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")
    for it in b:
        assert all(b[it][k] == a[it][k] for k in terms), (it, a[it], b[it])
    assert _records(res, "val")[-1]["bbox_mAP"] == val[-1]["bbox_mAP"]

    # ZeRO-3 (parameters partitioned, gathered module by module, every rank in the same module order) trains the
    # same detector for 2 epochs (8 iterations, an evaluation at the end). The first two iterations (same weights and
    # data; reductions in another order) give the ZeRO-2 run's losses; from then on last-bit differences of the
    # weights change which proposals the samplers draw, so later iterations are only checked to be finite.
    z3 = tmp_path / "zero3"
    _train(recipe, z3, free_port(), ds="zero3_fp32", options=["runner.max_epochs=2"])
    c = losses(z3)
    assert sorted(c) == list(range(1, 9))
    for it in (1, 2):
        assert all(c[it][k] == pytest.approx(a[it][k], rel=1e-4, abs=1e-6) for k in terms), (it, a[it], c[it])
    assert all(math.isfinite(c[it][k]) for it in c for k in terms)
    assert _records(z3, "val")[-1]["num_images"] == 4
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_drawn_prediction_marks_only_confident_instances():
    from vit_adapter_ds.evaluation.visualize import draw_detections

    img = torch.full((3, 40, 50), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 40, 50, dtype=torch.uint8)
    masks[0, 10:20, 10:30] = 1
    masks[1, 25:35, 5:15] = 1
    pred = {"boxes": torch.tensor([[10.0, 10.0, 29.0, 19.0], [5.0, 25.0, 14.0, 34.0]]),
            "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.1]), "masks": masks}
    out = torch.from_numpy(draw_detections(img, pred, 0.3))
    assert out.shape == (40, 50, 3) and out.dtype == torch.uint8
    changed = (out != 100).any(-1)
    assert changed[10:20, 10:30].all()               # the confident instance: mask and box
    assert not changed[25:35, 0:9].any()              # the one under score_thr: untouched
    assert not changed[:, 40:].any() and not changed[30:, 20:].any()
