"""Learning-rate schedules of the recipes, by iteration (``by_epoch=False``), with mmcv's linear warm-up:
``lr_config.policy='poly'`` (mmcv ``PolyLrUpdaterHook``, segmentation) and ``'step'`` (mmcv ``StepLrUpdaterHook``,
detection). :func:`scheduler_from_config` picks the scheduler class by ``lr_config.policy``.

Poly schedule:

At iteration ``i`` (0-based, the value used for the optimizer step of iteration ``i``)::

    regular(i) = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr
    if i < warmup_iters:  k = (1 - i / warmup_iters) * (1 - warmup_ratio);  lr(i) = regular(i) * (1 - k)
    else:                 lr(i) = regular(i)

and each parameter group uses ``lr(i) * group['lr_scale']`` (layer decay). mmcv applies the warm-up to the
*regular* (already decayed) value, so at the end of warm-up there is no jump. (mmcv decays each group from its own
initial lr, ``(base_lr * lr_scale - min_lr) * coeff + min_lr``; that equals ``lr(i) * lr_scale`` for the recipes'
``min_lr = 0`` and differs slightly otherwise.)

Step schedule (mmcv ``StepLrUpdaterHook``; ``step`` a list of milestones or one period, ``gamma`` default 0.1)::

    exp = number of milestones <= i      (a list ``step``)      exp = i // step      (an int ``step``)
    regular(i) = max(base_lr * gamma ** exp, min_lr)             (no ``max`` when ``min_lr`` is None, the default)

with the same linear warm-up on ``regular(i)`` (mmcv's ``LrUpdaterHook.get_warmup_lr``). Each group again gets
``lr(i) * lr_scale`` (mmcv: ``max(base_lr * lr_scale * gamma ** exp, min_lr)``, equal for ``min_lr=None``).

Cosine schedule (mmcv ``CosineAnnealingLrUpdaterHook``, the upgraded Mask R-CNN recipes; ``min_lr_ratio`` or
``min_lr``, exactly one)::

    progress = i // iters_per_epoch, max_progress = max_epochs    (by_epoch, mmcv's default: the epoch's rate)
    progress = i, max_progress = max_iters                        (by_epoch=False)
    target = base_lr * min_lr_ratio  (or min_lr)
    regular(i) = target + (base_lr - target) * (cos(pi * progress / max_progress) + 1) / 2     (mmcv annealing_cos)

with the same linear warm-up by iteration on ``regular(i)`` (mmcv's by-epoch hooks warm up per iteration on the
epoch's rate). Each group gets ``lr(i) * lr_scale`` (mmcv anneals each group's own lr to its own ``min_lr_ratio``
target: equal; with ``min_lr`` the targets differ slightly, as for poly). An epoch-based recipe reaches here
converted (``_epoch_conversion``, :func:`~vit_adapter_ds.tasks.detection.epochs_to_iterations` records
``lr_by_epoch``).

``lr_at`` / ``step_lr_at`` / ``cosine_lr_at`` are the pure functions; :class:`PolyWarmupLR` and :class:`StepWarmupLR` are the DeepSpeed
client ``lr_scheduler`` classes (``step()``, ``set_iter()``, ``state_dict()``, ``load_state_dict()``,
``get_last_lr()``); ``SCHEDULERS`` maps a policy to its class. ``lr_config.warmup_ratio`` defaults to 0.1 and
``power`` to 1.0 (mmcv's defaults). Epoch-based schedules (``by_epoch=True``, ``EpochBasedRunner``) are refused:
the engine counts iterations (``runner=dict(type='IterBasedRunner', max_iters=...)``, step milestones in
iterations); the detection task rewrites epoch-based recipes in iterations before this is called.
"""
from __future__ import annotations

import math

from ..config.errors import ConfigError
from ..config.schema import SECTIONS


def lr_at(iteration: int, base_lr: float, max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
          power: float = 1.0, min_lr: float = 0.0) -> float:
    """The base learning rate at ``iteration`` (see the module docstring). Iterations past ``max_iters`` give
    ``min_lr``."""
    if max_iters <= 0:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    progress = min(iteration, max_iters) / max_iters
    lr = (base_lr - min_lr) * (1 - progress) ** power + min_lr
    return _warmup(iteration, lr, warmup_iters, warmup_ratio)


def _warmup(iteration: int, lr: float, warmup_iters: int, warmup_ratio: float) -> float:
    """mmcv's linear warm-up applied to the regular value ``lr`` at ``iteration``."""
    if warmup_iters and iteration < warmup_iters:
        k = (1 - iteration / warmup_iters) * (1 - warmup_ratio)
        lr = lr * (1 - k)
    return lr


def step_lr_at(iteration: int, base_lr: float, step, gamma: float = 0.1, warmup_iters: int = 0,
               warmup_ratio: float = 0.1, min_lr: float | None = None) -> float:
    """The base learning rate of the step schedule at ``iteration`` (see the module docstring)."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if isinstance(step, int):
        if step <= 0:
            raise ValueError(f"step must be positive, got {step}")
        exp = iteration // step
    else:
        if any(s <= 0 for s in step):  # [] (no milestone): mmcv's constant rate after the warm-up
            raise ValueError(f"step milestones must be positive, got {step}")
        exp = len(step)
        for i, s in enumerate(step):
            if iteration < s:
                exp = i
                break
    lr = base_lr * gamma ** exp
    if min_lr is not None:
        lr = max(lr, min_lr)
    return _warmup(iteration, lr, warmup_iters, warmup_ratio)


def cosine_lr_at(iteration: int, base_lr: float, max_progress: int, iters_per_epoch: int = 1,
                 min_lr_ratio: float | None = None, min_lr: float | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1) -> float:
    """The base learning rate of the cosine schedule at ``iteration`` (see the module docstring)."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if (min_lr_ratio is None) == (min_lr is None):
        raise ValueError("exactly one of min_lr and min_lr_ratio (mmcv asserts it)")
    target = base_lr * min_lr_ratio if min_lr_ratio is not None else min_lr
    factor = (iteration // int(iters_per_epoch)) / max_progress
    lr = target + 0.5 * (base_lr - target) * (math.cos(math.pi * factor) + 1)
    return _warmup(iteration, lr, warmup_iters, warmup_ratio)


# the keys of lr_config are the recipe schema's (one vocabulary: config/schema.py); which policy uses which:
LR_CONFIG_KEYS = frozenset(SECTIONS["lr_config"])
POLICY_KEYS = {"poly": {"power", "min_lr"}, "step": {"step", "gamma", "min_lr"},
               "CosineAnnealing": {"min_lr", "min_lr_ratio"}}


def schedule_kwargs(cfg) -> dict:
    """The keyword arguments of the ``lr_config.policy`` scheduler class (``SCHEDULERS[policy]``) from a recipe
    (``optimizer.lr``, ``runner.max_iters``, ``lr_config``); raises ``ConfigError`` for a key the policy does not
    use, an ill-typed value or an epoch-based schedule."""
    from ..config.keys import check_keys, take

    lc = dict(cfg["lr_config"])
    check_keys(lc, LR_CONFIG_KEYS, "lr_config")
    policy = take(lc, "policy", str, "lr_config", default="poly", choices=tuple(POLICY_KEYS))
    other = sorted(k for k in lc if k in LR_CONFIG_KEYS - POLICY_KEYS[policy] - {
        "policy", "warmup", "warmup_iters", "warmup_ratio", "by_epoch", "warmup_by_epoch"})
    if other:
        raise ConfigError(f"recipe: lr_config.{other[0]} is not a key of policy={policy!r} (its keys: "
                          f"{', '.join(sorted(POLICY_KEYS[policy]))})")
    if take(lc, "by_epoch", bool, "lr_config", default=False) or cfg["runner"].get("type") == "EpochBasedRunner":
        raise ConfigError("recipe: an epoch-based schedule (lr_config.by_epoch=True / EpochBasedRunner) is not "
                          "supported here: the engine schedules by iteration (the detection task rewrites epoch-based "
                          "recipes in iterations once data.train.shard_dir is readable)")
    # mmcv's warmup_by_epoch=True counts warm-up epochs; the engine warms up by iteration (the official recipes
    # that name it say False)
    take(lc, "warmup_by_epoch", bool, "lr_config", default=False, choices=(False,))
    warmup = take(lc, "warmup", (str, type(None)), "lr_config", default=None, choices=(None, "linear"))
    warmup_iters = take(lc, "warmup_iters", int, "lr_config", default=0)
    if warmup and warmup_iters < 0:
        raise ConfigError(f"recipe: lr_config.warmup_iters must be >= 0, got {warmup_iters}")
    common = dict(base_lr=float(cfg["optimizer"]["lr"]), warmup_iters=warmup_iters if warmup else 0,
                  warmup_ratio=take(lc, "warmup_ratio", float, "lr_config", default=0.1))
    if policy == "CosineAnnealing":
        ratio = take(lc, "min_lr_ratio", (float, type(None)), "lr_config", default=None)
        min_lr = take(lc, "min_lr", (float, type(None)), "lr_config", default=None)
        if (ratio is None) == (min_lr is None):
            raise ConfigError("recipe: lr_config: policy='CosineAnnealing' needs exactly one of min_lr and "
                              "min_lr_ratio (mmcv asserts it)")
        conv = cfg.get("_epoch_conversion") or {}
        per, maxp = (int(conv["iters_per_epoch"]), int(conv["max_epochs"])) if conv.get("lr_by_epoch") else \
            (1, int(cfg["runner"]["max_iters"]))
        return dict(common, max_progress=maxp, iters_per_epoch=per, min_lr_ratio=ratio, min_lr=min_lr)
    if policy == "poly":
        return dict(common, max_iters=int(cfg["runner"]["max_iters"]),
                    power=take(lc, "power", float, "lr_config", default=1.0),
                    min_lr=take(lc, "min_lr", float, "lr_config", default=0.0))
    step = take(lc, "step", (int, list), "lr_config")
    if isinstance(step, int):
        if step < 1:
            raise ConfigError(f"recipe: lr_config.step must be a positive number of iterations, got {step}")
    else:
        step = [take({"s": s}, "s", int, f"lr_config.step[{i}]") for i, s in enumerate(step)]
        if any(s < 1 for s in step) or step != sorted(step):  # []: constant after the warm-up (mmcv)
            raise ConfigError(f"recipe: lr_config.step must be increasing positive iterations, got {step}")
    return dict(common, step=step, gamma=take(lc, "gamma", float, "lr_config", default=0.1),
                min_lr=take(lc, "min_lr", (float, type(None)), "lr_config", default=None))


class _IterScheduler:
    """Sets ``group['lr'] = self.lr_at(i) * group.get('lr_scale', 1)`` for the current iteration ``i`` (starts at
    ``last_iter``, applied on construction; ``step()`` advances). Works as a DeepSpeed client scheduler."""

    def __init__(self, optimizer, last_iter: int = 0, **kwargs):
        self.optimizer = optimizer
        self.kwargs = kwargs
        self.last_iter = int(last_iter)
        self._apply()

    def lr_at(self, iteration: int) -> float:
        raise NotImplementedError

    def _apply(self):
        base = self.lr_at(self.last_iter)
        for g in self.optimizer.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    @classmethod
    def from_config(cls, optimizer, cfg):
        return scheduler_from_config(optimizer, cfg, expect=cls)

    def set_iter(self, iteration: int) -> None:
        """Use the learning rate of ``iteration`` (0-based, the mmcv convention). The engine calls this before every
        iteration, so the rate never depends on how often DeepSpeed called ``step()`` (it skips fp16 overflows)."""
        self.last_iter = int(iteration)
        self._apply()

    def step(self, *args, **kwargs):
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {"last_iter": self.last_iter, **self.kwargs}

    def load_state_dict(self, state: dict) -> None:
        self.last_iter = int(state["last_iter"])
        self._apply()


class PolyWarmupLR(_IterScheduler):
    """``lr_config.policy='poly'``: :func:`lr_at` per iteration, times each group's ``lr_scale``."""

    def __init__(self, optimizer, base_lr: float, max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                 power: float = 1.0, min_lr: float = 0.0, last_iter: int = 0):
        super().__init__(optimizer, last_iter, base_lr=base_lr, max_iters=max_iters, warmup_iters=warmup_iters,
                         warmup_ratio=warmup_ratio, power=power, min_lr=min_lr)

    def lr_at(self, iteration: int) -> float:
        return lr_at(iteration, **self.kwargs)


class StepWarmupLR(_IterScheduler):
    """``lr_config.policy='step'``: :func:`step_lr_at` per iteration, times each group's ``lr_scale``."""

    def __init__(self, optimizer, base_lr: float, step, gamma: float = 0.1, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, min_lr: float | None = None, last_iter: int = 0):
        step = int(step) if isinstance(step, int) else [int(s) for s in step]
        super().__init__(optimizer, last_iter, base_lr=base_lr, step=step, gamma=gamma, warmup_iters=warmup_iters,
                         warmup_ratio=warmup_ratio, min_lr=min_lr)

    def lr_at(self, iteration: int) -> float:
        return step_lr_at(iteration, **self.kwargs)


class CosineWarmupLR(_IterScheduler):
    """``lr_config.policy='CosineAnnealing'``: :func:`cosine_lr_at` per iteration, times each group's ``lr_scale``."""

    def __init__(self, optimizer, base_lr: float, max_progress: int, iters_per_epoch: int = 1,
                 min_lr_ratio: float | None = None, min_lr: float | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, last_iter: int = 0):
        super().__init__(optimizer, last_iter, base_lr=base_lr, max_progress=int(max_progress),
                         iters_per_epoch=int(iters_per_epoch), min_lr_ratio=min_lr_ratio, min_lr=min_lr,
                         warmup_iters=warmup_iters, warmup_ratio=warmup_ratio)

    def lr_at(self, iteration: int) -> float:
        return cosine_lr_at(iteration, **self.kwargs)


SCHEDULERS = {"poly": PolyWarmupLR, "step": StepWarmupLR,  # lr_config.policy -> scheduler class
              "CosineAnnealing": CosineWarmupLR}


def scheduler_from_config(optimizer, cfg, expect=None):
    """The scheduler of the recipe's ``lr_config.policy`` (``SCHEDULERS``) over ``optimizer``, at iteration 0."""
    policy = (cfg["lr_config"] or {}).get("policy", "poly")
    kwargs = schedule_kwargs(cfg)
    cls = SCHEDULERS[policy]
    if expect is not None and cls is not expect:
        raise ConfigError(f"recipe: lr_config.policy={policy!r} needs {cls.__name__}, not {expect.__name__}")
    return cls(optimizer, **kwargs)
