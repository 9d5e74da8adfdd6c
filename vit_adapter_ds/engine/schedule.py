"""Learning-rate schedule of the recipes: mmcv ``PolyLrUpdaterHook`` with linear warm-up, ``by_epoch=False``.

At iteration ``i`` (0-based, the value used for the optimizer step of iteration ``i``)::

    regular(i) = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr
    if i < warmup_iters:  k = (1 - i / warmup_iters) * (1 - warmup_ratio);  lr(i) = regular(i) * (1 - k)
    else:                 lr(i) = regular(i)

and each parameter group uses ``lr(i) * group['lr_scale']`` (layer decay). mmcv applies the warm-up to the
*regular* (already decayed) value, so at the end of warm-up there is no jump. (mmcv decays each group from its own
initial lr, ``(base_lr * lr_scale - min_lr) * coeff + min_lr``; that equals ``lr(i) * lr_scale`` for the recipes'
``min_lr = 0`` and differs slightly otherwise.)

``lr_at`` is the pure function; :class:`PolyWarmupLR` is the one scheduler the engine uses (a DeepSpeed client
``lr_scheduler``: ``step()``, ``set_iter()``, ``state_dict()``, ``load_state_dict()``, ``get_last_lr()``).
"""
from __future__ import annotations

from ..config.errors import ConfigError


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


def schedule_kwargs(cfg) -> dict:
    """``lr_at`` keyword arguments from a recipe (``optimizer.lr``, ``runner.max_iters``, ``lr_config``)."""
    from ..config.keys import check_keys, take

    lc = dict(cfg["lr_config"])
    check_keys(lc, {"policy", "warmup", "warmup_iters", "warmup_ratio", "power", "min_lr", "by_epoch"}, "lr_config")
    take(lc, "policy", str, "lr_config", default="poly", choices=("poly",))
    take(lc, "by_epoch", bool, "lr_config", default=False, choices=(False,))
    warmup = take(lc, "warmup", (str, type(None)), "lr_config", default=None, choices=(None, "linear"))
    warmup_iters = take(lc, "warmup_iters", int, "lr_config", default=0)
    if warmup and warmup_iters < 0:
        raise ConfigError(f"recipe: lr_config.warmup_iters must be >= 0, got {warmup_iters}")
    return dict(base_lr=float(cfg["optimizer"]["lr"]), max_iters=int(cfg["runner"]["max_iters"]),
                warmup_iters=warmup_iters if warmup else 0,
                warmup_ratio=take(lc, "warmup_ratio", float, "lr_config", default=0.1),
                power=take(lc, "power", float, "lr_config", default=1.0),
                min_lr=take(lc, "min_lr", float, "lr_config", default=0.0))


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

    @classmethod
    def from_config(cls, optimizer, cfg) -> "PolyWarmupLR":
        return cls(optimizer, **schedule_kwargs(cfg))

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
