"""lr_config.policy='CosineAnnealing' (the upgraded Mask R-CNN recipes: ``min_lr_ratio=0.01``, 2000-iteration linear
warm-up from 0.001, epoch-based) against mmcv's ``CosineAnnealingLrUpdaterHook`` / ``LrUpdaterHook`` re-derived here:
``before_train_epoch`` sets each group's ``annealing_cos(base, base * min_lr_ratio, epoch / max_epochs)``,
``before_train_iter`` replaces it by the warm-up value while ``iter < warmup_iters``; by iteration (``by_epoch=False``)
the progress is the iteration."""
from __future__ import annotations

import math

import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.engine.schedule import CosineWarmupLR, schedule_kwargs, scheduler_from_config
from vit_adapter_ds.tasks.detection import epochs_to_iterations


def _annealing_cos(start, end, factor):
    return end + 0.5 * (start - end) * (math.cos(math.pi * factor) + 1)


def _mmcv_by_epoch(bases, epochs, per_epoch, ratio, warmup_iters, warmup_ratio):
    """Per iteration, the lrs of the groups with initial lrs ``bases`` (mmcv 1.x hooks, by_epoch=True)."""
    out = []
    for e in range(epochs):
        regular = [_annealing_cos(b, b * ratio, e / epochs) for b in bases]
        for j in range(per_epoch):
            it = e * per_epoch + j
            if it < warmup_iters:
                k = (1 - it / warmup_iters) * (1 - warmup_ratio)
                out.append([r * (1 - k) for r in regular])
            else:
                out.append(list(regular))
    return out


def _optimizer(scales):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in scales]
    return torch.optim.AdamW([{"params": [p], "lr_scale": s} for p, s in zip(params, scales)], lr=1.0)


def _recipe(**lr):
    return {"optimizer": {"type": "AdamW", "lr": 1e-4}, "runner": {"type": "EpochBasedRunner", "max_epochs": 5},
            "lr_config": dict(dict(policy="CosineAnnealing", min_lr_ratio=0.01, warmup="linear", warmup_iters=10,
                                   warmup_ratio=0.001), **lr)}


def test_epoch_based_cosine_is_mmcvs():
    cfg = _recipe()
    epochs_to_iterations(cfg, 7)
    assert cfg["_epoch_conversion"] == {"max_epochs": 5, "iters_per_epoch": 7, "lr_by_epoch": True}
    opt = _optimizer([1.0, 0.65, 0.4225])
    sched = scheduler_from_config(opt, cfg)
    assert isinstance(sched, CosineWarmupLR)
    ref = _mmcv_by_epoch([1e-4, 0.65e-4, 0.4225e-4], 5, 7, 0.01, 10, 0.001)
    for it, want in enumerate(ref):
        sched.set_iter(it)
        assert sched.get_last_lr() == pytest.approx(want, rel=1e-12, abs=0), it
    sched.set_iter(34)  # the last iteration: epoch 4 of 5, not yet the minimum
    assert sched.get_last_lr()[0] == pytest.approx(_annealing_cos(1e-4, 1e-6, 4 / 5), rel=1e-12)


def test_iteration_based_cosine_with_min_lr():
    cfg = {"optimizer": {"lr": 0.02}, "runner": {"type": "IterBasedRunner", "max_iters": 50},
           "lr_config": {"policy": "CosineAnnealing", "min_lr": 1e-4, "by_epoch": False}}
    kw = schedule_kwargs(cfg)
    assert kw["max_progress"] == 50 and kw["iters_per_epoch"] == 1 and kw["warmup_iters"] == 0
    sched = scheduler_from_config(_optimizer([1.0]), cfg)
    for it in (0, 1, 17, 49, 50):
        sched.set_iter(it)
        assert sched.get_last_lr()[0] == pytest.approx(_annealing_cos(0.02, 1e-4, it / 50), rel=1e-12)


@pytest.mark.parametrize("lr,msg", [
    (dict(min_lr=1e-6), "exactly one of min_lr and min_lr_ratio"),
    (dict(min_lr_ratio=None), "exactly one of min_lr and min_lr_ratio"),
    (dict(power=1.0), "lr_config.power is not a key of policy='CosineAnnealing'"),
])
def test_bad_cosine_configs(lr, msg):
    cfg = _recipe(**lr)
    if cfg["lr_config"].get("min_lr_ratio") is None:
        cfg["lr_config"].pop("min_lr_ratio")
    epochs_to_iterations(cfg, 7)
    with pytest.raises(ConfigError, match=msg):
        schedule_kwargs(cfg)


def test_step_recipes_are_not_marked_by_epoch():
    cfg = {"runner": {"type": "EpochBasedRunner", "max_epochs": 12}, "lr_config": {"policy": "step", "step": [8, 11]}}
    epochs_to_iterations(cfg, 10)
    assert cfg["_epoch_conversion"] == {"max_epochs": 12, "iters_per_epoch": 10}
    assert cfg["lr_config"]["step"] == [80, 110]
