"""Learning-rate schedule of the recipes: mmcv ``PolyLrUpdaterHook`` with linear warm-up, ``by_epoch=False``.

At iteration ``i`` (0-based, the value used for the optimizer step of iteration ``i``)::

    regular(i) = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr
    if i < warmup_iters:  k = (1 - i / warmup_iters) * (1 - warmup_ratio);  lr(i) = regular(i) * (1 - k)
    else:                 lr(i) = regular(i)

and each parameter group uses ``lr(i) * group['lr_scale']`` (layer decay). mmcv applies the warm-up to the
*regular* (already decayed) value, so at the end of warm-up there is no jump. (mmcv decays each group from its own
initial lr, ``(base_lr * lr_scale - min_lr) * coeff + min_lr``; that equals ``lr(i) * lr_scale`` for the recipes'
``min_lr = 0`` and differs slightly otherwise.)

``lr_at`` is the pure function; ``lr_lambda`` gives the multiplicative factor ``lr(i) / base_lr`` for
``torch.optim.lr_scheduler.LambdaLR`` (whose base lrs are then the groups' ``base_lr * lr_scale``);
:class:`PolyWarmupLR` is a self-contained scheduler object (``step()``, ``state_dict()``, ``load_state_dict()``,
``get_last_lr()``) that DeepSpeed accepts as a client ``lr_scheduler``.
"""
from __future__ import annotations

from functools import partial


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
    if warmup_iters and iteration < warmup_iters:
        k = (1 - iteration / warmup_iters) * (1 - warmup_ratio)
        lr = lr * (1 - k)
    return lr


def _factor(iteration, base_lr, **kw):
    return lr_at(iteration, base_lr, **kw) / base_lr


def lr_lambda(max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6, power: float = 1.0,
              min_lr_ratio: float = 0.0):
    """A picklable ``f(iteration) -> lr(iteration) / base_lr`` for ``LambdaLR`` (``min_lr`` as a fraction of
    base_lr; with the recipes' ``min_lr=0`` the factor does not depend on base_lr)."""
    return partial(_factor, base_lr=1.0, max_iters=max_iters, warmup_iters=warmup_iters, warmup_ratio=warmup_ratio,
                   power=power, min_lr=min_lr_ratio)


def schedule_kwargs(cfg) -> dict:
    """``lr_at`` keyword arguments from a recipe (``optimizer.lr``, ``runner.max_iters``, ``lr_config``)."""
    lc = dict(cfg["lr_config"])
    if lc.get("policy", "poly") != "poly" or lc.get("by_epoch", False):
        raise ValueError(f"only the iteration-based poly policy is supported, got lr_config={lc}")
    warmup = lc.get("warmup")
    if warmup not in (None, "linear"):
        raise ValueError(f"only linear warm-up is supported, got warmup={warmup!r}")
    return dict(base_lr=float(cfg["optimizer"]["lr"]), max_iters=int(cfg["runner"]["max_iters"]),
                warmup_iters=int(lc.get("warmup_iters", 0)) if warmup else 0,
                warmup_ratio=float(lc.get("warmup_ratio", 0.1)), power=float(lc.get("power", 1.0)),
                min_lr=float(lc.get("min_lr", 0.0)))


def lr_from_cfg(cfg, iteration: int) -> float:
    """The engine's ``lr_at(cfg, iteration)`` hook: :func:`lr_at` with the recipe's settings."""
    return lr_at(iteration, **schedule_kwargs(cfg))


class PolyWarmupLR:
    """Sets ``group['lr'] = lr_at(i) * group.get('lr_scale', 1)`` for the current iteration ``i`` (starts at 0,
    applied on construction; ``step()`` advances). Works as a DeepSpeed client scheduler."""

    def __init__(self, optimizer, base_lr: float, max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                 power: float = 1.0, min_lr: float = 0.0, last_iter: int = 0):
        self.optimizer = optimizer
        self.kwargs = dict(base_lr=base_lr, max_iters=max_iters, warmup_iters=warmup_iters,
                           warmup_ratio=warmup_ratio, power=power, min_lr=min_lr)
        self.last_iter = int(last_iter)
        self._apply()

    def _apply(self):
        base = lr_at(self.last_iter, **self.kwargs)
        for g in self.optimizer.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

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
