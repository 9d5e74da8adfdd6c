"""Every built-in recipe's learning-rate schedule is accepted by the engine's scheduler (``engine/schedule.py``) as
the recipe validation (``config/schema.py``) accepts it: both read one vocabulary of ``lr_config`` keys. The official
Mask2Former panoptic recipe and its twin name ``lr_config.warmup_by_epoch=False``, which the schema took and the
scheduler refused at the start of training (the engine test overrode the whole ``lr_config``, so no test saw it).

Epoch-based detection recipes are converted first as the detection task does once it knows the loader's length
(``epochs_to_iterations``, here 1000 iterations per epoch). The values at iteration 0 and at the end are checked against
mmcv's rules: the warm-up starts at ``warmup_ratio`` x lr (linear warm-up), and the last value is the lr after every
decay (``step``: gamma per milestone passed; ``poly``: ``min_lr``)."""
from __future__ import annotations

import math

import pytest
import torch

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.engine.schedule import LR_CONFIG_KEYS, scheduler_from_config
from vit_adapter_ds.recipes import RECIPES
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks.detection import epochs_to_iterations

ALL = sorted(RECIPES) + sorted(DETECTION_RECIPES)


def test_the_scheduler_reads_the_schemas_lr_config_keys():
    from vit_adapter_ds.config.schema import SECTIONS

    assert set(LR_CONFIG_KEYS) == set(SECTIONS["lr_config"])


@pytest.mark.parametrize("name", ALL)
def test_every_recipe_builds_its_schedule(name):
    cfg = load_recipe(name).to_dict()
    if cfg["runner"].get("type") == "EpochBasedRunner":
        epochs_to_iterations(cfg, 1000)  # (past every warm-up at the end)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler_from_config(opt, cfg)
    lr, lc, max_iters = float(cfg["optimizer"]["lr"]), cfg["lr_config"], int(cfg["runner"]["max_iters"])
    first = opt.param_groups[0]["lr"]
    if lc.get("warmup") == "linear" and lc.get("warmup_iters", 0) > 0:
        assert first == pytest.approx(lr * lc.get("warmup_ratio", 0.1), rel=1e-9), (name, first)
    else:
        assert first == pytest.approx(lr, rel=1e-9), (name, first)
    sched.set_iter(max_iters - 1)
    last = opt.param_groups[0]["lr"]
    policy = lc.get("policy", "poly")
    if policy == "step":
        step = lc["step"]
        passed = (max_iters - 1) // step if isinstance(step, int) else sum(max_iters - 1 >= s for s in step)
        want = max(lr * lc.get("gamma", 0.1) ** passed, lc.get("min_lr") or 0.0)
        assert last == pytest.approx(want, rel=1e-9), (name, last, want)
    elif policy == "poly":
        min_lr = lc.get("min_lr", 0.0)
        want = (lr - min_lr) * (1 - (max_iters - 1) / max_iters) ** lc.get("power", 1.0) + min_lr
        assert last == pytest.approx(want, rel=1e-9), (name, last, want)
    else:
        assert math.isfinite(last) and 0 <= last <= lr, (name, last)
