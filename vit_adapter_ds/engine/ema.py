"""Training hooks of a recipe's ``custom_hooks``: mmdet 2.22's ``ExpMomentumEMAHook`` (``mmdet/core/hook/ema.py``),
the one the official HTC++ Objects365 -> COCO recipes name, as a part the :class:`~.trainer.Trainer` calls.

What it does, as mmdet's ``BaseEMAHook`` (every rule below is mmdet's unless marked *here*):

* **What is averaged.** Every floating-point entry of the model's ``state_dict()`` at the start of training
  (parameters *and* persistent buffers such as BatchNorm statistics; integer buffers like ``num_batches_tracked``
  are skipped), or only the parameters with ``skip_buffers=True``. The average starts as a copy of the weights the
  run starts from (after ``load_from``: mmdet's ``before_run`` comes after ``runner.load_checkpoint``).
* **Update rule** (``after_train_iter``, after the optimizer step, every ``interval`` iterations counted from 1):
  ``ema = (1 - m) * ema + m * weight`` with, for the 0-based iteration index ``i`` (mmcv's ``runner.iter`` inside
  ``after_train_iter``), ``m(i) = (1 - momentum) * exp(-(1 + i) / total_iter) + momentum``: close to 1 at first (the
  average follows the weights), decaying to ``momentum`` (0.0001 in the recipes) over a few ``total_iter``
  (default 2000). Iterations whose step was skipped (non-finite loss) still update it, as mmdet's hook does.
* **When the model *is* the average.** mmdet swaps weights and averages in ``after_train_epoch`` and swaps back in
  ``before_train_epoch``. mmcv's ``IterBasedRunner`` calls neither (it calls ``before_epoch`` / ``after_epoch``), so
  under the official ``runner=dict(type='IterBasedRunner')`` of these recipes evaluation and the saved model
  weights are the *trained* weights and the average only rides along in the checkpoint (``ema_*`` buffers). That
  is what happens here too. With an epoch-based recipe (converted to iterations by the detection task, its epoch
  length recorded in ``_epoch_conversion``) the evaluation at the end of an epoch runs on the average, as mmdet's
  EvalHook after the swap does. *Here* the checkpoint keeps the trained weights as model weights even then (the
  average is in the same checkpoint): DeepSpeed's optimizer holds its own fp32 copy of the weights, and a model
  swapped at save time would not resume bitwise.
* **Saved and resumed with the checkpoint.** ``state_dict()`` holds the average under mmdet's buffer names
  (``ema_`` + the state-dict name with ``.`` -> ``_``); the trainer saves it with rank 0's extra state and every
  rank loads it back on resume, so a resumed run continues the same average bitwise. (mmdet's runner ``resume_from``
  restarts the average from the resumed weights, its ``ExpMomentumEMAHook(resume_from=...)`` restores it; the
  recipes set ``resume_from=None``; *here* ``--resume`` always restores it.)
* *Here* the average is kept in float32 whatever the training precision (mmdet clones the model's tensors: float32
  in the official fp32 recipes), on the model's device. ZeRO-3 is refused: its ranks hold shards of the parameters.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..config.errors import ConfigError
from ..config.keys import Check, parse

# mmcv's priority names; the EMA update must come after the optimizer step (OptimizerHook, ABOVE_NORMAL) and before
# checkpointing and evaluation (CheckpointHook NORMAL, EvalHook LOW), which is the order the trainer calls them in
PRIORITIES = {"HIGHEST": 0, "VERY_HIGH": 10, "HIGH": 30, "ABOVE_NORMAL": 40, "NORMAL": 50, "BELOW_NORMAL": 60,
              "LOW": 70, "VERY_LOW": 90, "LOWEST": 100}


def _priority(value, where):
    level = PRIORITIES.get(value) if isinstance(value, str) else value
    if isinstance(level, bool) or not isinstance(level, int) or not PRIORITIES["ABOVE_NORMAL"] <= level < \
            PRIORITIES["NORMAL"]:
        raise ConfigError(f"recipe: {where}={value!r}: the EMA hook runs after the optimizer step and before "
                          "checkpointing and evaluation here, which is mmcv's order for a priority from 40 "
                          "('ABOVE_NORMAL') to 49 (the official recipes use 49)")
    return value


class ExpMomentumEMAHook:
    """mmdet's ``ExpMomentumEMAHook`` (see the module docstring): :meth:`attach` to the model at the start,
    :meth:`after_train_iter` after each optimizer step, :meth:`evaluation_weights` around an evaluation,
    :meth:`state_dict` / :meth:`load_state_dict` with the checkpoint."""

    official_type = "ExpMomentumEMAHook"
    SPEC = {"type": Check(str, choices=("ExpMomentumEMAHook",)), "momentum": Check(float),
            "interval": Check(int, minimum=1), "skip_buffers": Check(bool), "total_iter": Check(int, minimum=1),
            "resume_from": Check(type(None)), "priority": _priority}

    def __init__(self, momentum: float = 0.0002, interval: int = 1, skip_buffers: bool = False,
                 total_iter: int = 2000, iters_per_epoch: int | None = None):
        if not 0 < momentum < 1:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum, self.interval, self.skip_buffers = float(momentum), int(interval), bool(skip_buffers)
        self.total_iter = int(total_iter)
        self.iters_per_epoch = iters_per_epoch
        self.names: list[str] = []
        self.average: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: dict, where: str, iters_per_epoch: int | None = None) -> "ExpMomentumEMAHook":
        parse(cfg, cls.SPEC, where)
        if not 0 < float(cfg.get("momentum", 0.0002)) < 1:
            raise ConfigError(f"recipe: {where}.momentum must be in (0, 1), got {cfg['momentum']!r}")
        return cls(float(cfg.get("momentum", 0.0002)), int(cfg.get("interval", 1)),
                   bool(cfg.get("skip_buffers", False)), int(cfg.get("total_iter", 2000)), iters_per_epoch)

    # ------------------------------------------------------------------------------------------ the rule
    def momentum_at(self, iteration: int) -> float:
        """``m(i)`` of the 0-based iteration ``i`` (mmdet's ``momentum_fun(runner.iter)``)."""
        return (1 - self.momentum) * math.exp(-(1 + iteration) / self.total_iter) + self.momentum

    @staticmethod
    def buffer_name(name: str) -> str:
        return "ema_" + name.replace(".", "_")

    def _tracked(self, module) -> dict[str, torch.Tensor]:
        if self.skip_buffers:
            return dict(module.named_parameters())
        return module.state_dict(keep_vars=True)

    def attach(self, module) -> None:
        """Start the average at the module's current weights (mmdet ``before_run``)."""
        tracked = self._tracked(module)
        self.names = [n for n, t in tracked.items() if t.dtype.is_floating_point]
        clash = len({self.buffer_name(n) for n in self.names}) != len(self.names)
        if clash:
            raise ValueError("two state-dict names map to the same ema_ buffer name")
        with torch.no_grad():
            self.average = {n: tracked[n].detach().to(torch.float32).clone() for n in self.names}

    @torch.no_grad()
    def after_train_iter(self, module, iteration: int) -> None:
        """The update after the optimizer step of the 0-based ``iteration``."""
        if (iteration + 1) % self.interval:
            return
        m = self.momentum_at(iteration)
        tracked = self._tracked(module)
        for n in self.names:
            self.average[n].mul_(1 - m).add_(tracked[n].detach().to(torch.float32), alpha=m)

    # ------------------------------------------------------------------------------------------ evaluation
    def swaps_at(self, done: int) -> bool:
        """Whether the model evaluated after ``done`` iterations is the average: at the end of an epoch of an
        epoch-based recipe only (mmdet's ``after_train_epoch`` swap; never under ``IterBasedRunner``)."""
        return bool(self.iters_per_epoch) and done % int(self.iters_per_epoch) == 0

    @contextlib.contextmanager
    def evaluation_weights(self, module, done: int):
        """Inside: the module holds the average when :meth:`swaps_at` ``done`` (else unchanged); afterwards exactly
        its trained weights again (kept aside, so the average itself is never rounded to the model's dtype)."""
        if not self.swaps_at(done):
            yield module
            return
        tracked = self._tracked(module)
        kept = {n: tracked[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                tracked[n].data.copy_(self.average[n])
        try:
            yield module
        finally:
            with torch.no_grad():
                for n in self.names:
                    tracked[n].data.copy_(kept[n])

    # ------------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average under mmdet's buffer names, on the CPU."""
        return {self.buffer_name(n): self.average[n].detach().cpu().clone() for n in self.names}

    def load_state_dict(self, state: dict) -> None:
        want = {self.buffer_name(n): n for n in self.names}
        missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
        if missing or unexpected:
            raise RuntimeError(f"the checkpoint's EMA state does not fit this model: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for b, n in want.items():
                if tuple(state[b].shape) != tuple(self.average[n].shape):
                    raise RuntimeError(f"EMA {b}: checkpoint shape {tuple(state[b].shape)} != model "
                                       f"{tuple(self.average[n].shape)}")
                self.average[n].copy_(state[b].to(self.average[n].device, torch.float32))


HOOK_TYPES = {cls.official_type: cls for cls in (ExpMomentumEMAHook,)}


def check_custom_hooks(value, where: str = "custom_hooks"):
    """The recipe's ``custom_hooks``: a list of dicts, each a supported hook with valid keys (``ConfigError``)."""
    if value is None:
        return value
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"recipe: {where} must be a list of dict(type=...) hooks")
    for i, h in enumerate(value):
        w = f"{where}[{i}]"
        kind = h.get("type") if isinstance(h, dict) else None
        if kind not in HOOK_TYPES:
            raise ConfigError(f"recipe: {w}.type={kind!r} is not supported; supported hooks: "
                              f"{', '.join(sorted(HOOK_TYPES))} (mmdet's NumClassCheckHook is not needed: the model "
                              "is built from the recipe's own num_classes)")
        HOOK_TYPES[kind].from_config(h, w)
    return value


def build_hooks(cfg, zero_stage: int) -> list:
    """The hooks of ``cfg.custom_hooks`` (none: ``[]``); the epoch length of a converted epoch-based recipe decides
    when the EMA hook swaps (``_epoch_conversion``). ZeRO-3 is refused (``ConfigError``)."""
    hooks_cfg = cfg.get("custom_hooks") or []
    check_custom_hooks(hooks_cfg)
    conversion = cfg.get("_epoch_conversion") or {}
    hooks = [HOOK_TYPES[h["type"]].from_config(h, f"custom_hooks[{i}]", conversion.get("iters_per_epoch"))
             for i, h in enumerate(hooks_cfg)]
    if hooks and zero_stage >= 3:
        raise ConfigError("recipe: custom_hooks ExpMomentumEMAHook needs ZeRO stage 0, 1 or 2: under ZeRO-3 every "
                          "rank holds only a shard of the parameters, which the average of the whole model cannot "
                          "follow; use a ZeRO-2 DeepSpeed config (ds_configs/zero2_*.json)")
    return hooks
