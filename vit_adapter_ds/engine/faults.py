"""Faults the training loop survives: stop signals and non-finite losses / gradients.

* :class:`StopRequest` records SIGTERM / SIGUSR1 (SLURM's ``--signal`` before a time limit, preemption) instead of
  dying; the :class:`~.trainer.Trainer` finishes the iteration, saves and raises :class:`TrainingInterrupted`.
* :func:`agree` is the one tiny all-reduce per iteration through which the ranks agree on both events.
* :class:`NonFiniteGuard` is the non-finite policy. A micro-batch loss that is NaN/Inf on any rank, or a gradient that
  is (a step DeepSpeed discards for a non-finite gradient norm; under ZeRO-0 fp32, whose plain torch optimizer checks
  nothing, the guard looks at the gradients and holds the step back itself), makes every rank skip that iteration's
  optimizer step: weights, optimizer state (Adam moments, step counts) and module buffers such as BatchNorm statistics
  stay exactly as they were. Each such iteration is logged with every rank's loss terms. More than
  ``max_nonfinite_steps`` consecutive ones raise :class:`NonFiniteLossError`; every checkpoint on disk then holds
  weights from before the fault. Under fp16 with *dynamic* loss scaling, a step DeepSpeed skips for overflowing scaled
  gradients (a finite loss) is the loss scaler's normal work (it lowers the scale): not a fault, not counted.
  Under ZeRO-3, DeepSpeed's own skip keeps its parameter partitioning consistent and training continues, provided every
  rank runs the modules in the same order (``launch/slurm/README.md``, "Numerical faults").
"""
from __future__ import annotations

import math
import signal
import sys
import threading

import torch

from .. import runtime as rt
from .deepspeed_setup import dynamic_loss_scale, precision, zero_stage

REQUEUE_EXIT_CODE = 3  # launch/train.py's exit status after a signal-triggered checkpoint: "requeue me"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a complete checkpoint of ``iteration``. A ``SystemExit`` with
    status :data:`REQUEUE_EXIT_CODE`: left uncaught, the process exits with it (no traceback)."""

    def __init__(self, iteration: int, signum: int):
        super().__init__(REQUEUE_EXIT_CODE)
        self.iteration, self.signum = iteration, signum

    def __str__(self):
        return (f"stopped by {signal.Signals(self.signum).name} after iteration {self.iteration}; checkpoint "
                f"iter_{self.iteration} is complete")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive iterations with a non-finite loss or gradient."""


class StopRequest:
    """Records SIGTERM / SIGUSR1 instead of dying: the first signal asks for a stop, later ones are only noted
    (a save in progress is never cut short). ``install()`` works in the main thread only; elsewhere it is a no-op."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum = 0
        self.count = 0
        self._previous = {}

    def _handle(self, signum, frame):
        self.count += 1
        if not self.signum:
            self.signum = signum
        print(f"[rank {rt.rank()}] received {signal.Signals(signum).name} ({self.count}): "
              + ("finishing the iteration, then saving a checkpoint and exiting" if self.count == 1 else
                 "already stopping; ignored until the checkpoint is complete"), file=sys.stderr, flush=True)

    def install(self) -> "StopRequest":
        if not self._previous and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


def agree(fault: bool, signum: int, device) -> tuple[bool, int]:
    """One all-reduce (MAX) over all ranks: (some rank saw a non-finite loss / gradient, some rank's stop signal)."""
    flags = torch.tensor([float(fault), float(signum)], dtype=torch.float32, device=device)
    if rt.world_size() > 1:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return bool(flags[0] > 0), int(flags[1])


def running_stats(module: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers a training forward updates: running statistics of BatchNorm-like layers (not constant buffers
    such as BEiT's relative_position_index, which can be large)."""
    return [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for b in m.buffers(recurse=False)]


def gradients_finite(module: torch.nn.Module) -> bool:
    """True if no parameter gradient of ``module`` holds a NaN or Inf (one max-abs reduction, NaN propagates)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)))


class NonFiniteGuard:
    """The non-finite policy of one training run (see the module docstring). Per iteration, on every rank::

        guard.start(module, iteration)      # before the first micro-batch
        guard.see_loss(terms)               # each micro-batch's scalar loss terms (floats)
        fault = agree(guard.local_fault(module), ...)[0]   # after the last backward (else False)
        guard.step(engine, fault)           # engine.step(), a no-op optimizer step on a fault
        event = guard.finish(engine, fault, terms_of_iteration, last_saved)   # None, or what to log
        guard.count(iteration, event, log, last_saved) if event else guard.reset()   # raises past the limit

    ``finish`` restores the BatchNorm statistics of a skipped iteration; ``count`` logs it.
    """

    def __init__(self, ds_config: dict, max_steps: int):
        if max_steps < 0:
            raise ValueError(f"optimizer_config.max_nonfinite_steps must be >= 0, got {max_steps}")
        self.max_steps = int(max_steps)
        self.precision, self.stage = precision(ds_config), zero_stage(ds_config)
        # ZeRO-0 fp32 steps a plain torch optimizer, which applies NaN gradients: check them, hold the step back
        self.checks_gradients = self.stage == 0 and self.precision == "fp32"
        # fp16 with a dynamic loss scale: DeepSpeed's overflow skips are the loss scaler's, not faults
        self.scaler_skips = dynamic_loss_scale(ds_config)
        self.consecutive = 0
        self.iteration = 0
        self._buffers: list = []
        self._saved: list = []
        self._bad_terms = None

    # ------------------------------------------------------------------------------------------------ one iteration
    def start(self, module: torch.nn.Module, iteration: int) -> None:
        """Iteration ``iteration`` (1-based) begins: remember the BatchNorm statistics (a skipped step must not move
        them either)."""
        self.iteration = iteration
        self._buffers = running_stats(module)
        self._saved = [b.detach().clone() for b in self._buffers]
        self._bad_terms = None

    def see_loss(self, terms: dict) -> None:
        """A micro-batch's scalar loss terms; the first with a non-finite ``loss`` is kept for the log."""
        if self._bad_terms is None and not math.isfinite(terms.get("loss", 0.0)):
            self._bad_terms = dict(terms)
            print(f"[rank {rt.rank()}] iteration {self.iteration}: non-finite loss terms {self._bad_terms}",
                  file=sys.stderr, flush=True)

    def local_fault(self, module: torch.nn.Module) -> bool:
        """This rank saw a non-finite loss (or, under ZeRO-0 fp32, holds a non-finite gradient)."""
        if self._bad_terms is not None:
            return True
        return self.checks_gradients and not gradients_finite(module)

    def step(self, engine, fault: bool) -> None:
        """``engine.step()``; on a ``fault`` the optimizer step must not change anything. ZeRO-1/2/3 and DeepSpeed's
        bf16/fp16 optimizers discard a step whose gradient norm is not finite themselves (a non-finite loss gives
        such gradients on every rank once they are reduced), keeping their partitioned gradient buffers and ZeRO-3's
        parameter bookkeeping consistent. The plain torch optimizer of ZeRO-0 fp32 would apply it: there the
        engine's step runs as usual (clipping, zeroing the gradients, counters) around a no-op optimizer step."""
        if not (fault and self.checks_gradients):
            engine.step()
            return
        optimizer = engine.optimizer
        own = vars(optimizer).get("step")
        optimizer.step = lambda *args, **kwargs: None
        try:
            engine.step()
        finally:
            if own is None:
                del optimizer.step
            else:
                optimizer.step = own

    def finish(self, engine, fault: bool, terms: dict, last_saved: int) -> dict | None:
        """After ``engine.step()``: ``None`` if the step counted as a normal one, else the fault event (every rank's
        loss ``terms`` of this iteration gathered: a collective, entered by all ranks alike). Restores the module
        buffers of a skipped step; raises if DeepSpeed applied a step the ranks agreed to skip."""
        applied = engine.was_step_applied()
        if fault and applied and not self.checks_gradients:
            raise NonFiniteLossError(
                f"iteration {self.iteration}: non-finite loss ({self._bad_terms or 'on another rank'}) and DeepSpeed "
                "applied the optimizer step anyway (this optimizer does not check gradients; for bf16 set "
                "\"bf16\": {\"check_grad_overflow\": true}); the weights are no longer usable: resume from the last "
                f"complete checkpoint (iteration {last_saved})")
        if not fault and (applied or self.scaler_skips):
            return None
        with torch.no_grad():
            for b, v in zip(self._buffers, self._saved):
                b.copy_(v)
        every = [(self._bad_terms, terms)]
        if rt.world_size() > 1:
            every = [None] * rt.world_size()
            torch.distributed.all_gather_object(every, (self._bad_terms, terms))
        gn = engine.get_global_grad_norm()
        nonfinite_loss = {f"rank{r}": bad for r, (bad, _) in enumerate(every) if bad is not None}
        return {"cause": "loss" if nonfinite_loss else "gradient",
                "loss_terms": nonfinite_loss or None,  # the first non-finite micro-batch of each affected rank
                "rank_loss_terms": {f"rank{r}": t for r, (_, t) in enumerate(every)},  # iteration means
                "grad_norm": None if gn is None else float(gn)}

    def reset(self) -> None:
        """A normal step: the run of consecutive faults is over."""
        self.consecutive = 0

    def count(self, iteration: int, event: dict, log, last_saved: int) -> None:
        """Log a skipped iteration (text line and a ``"mode": "nonfinite"`` record); raise
        :class:`NonFiniteLossError` once more than ``max_steps`` consecutive iterations were skipped."""
        self.consecutive += 1
        what = (f"non-finite loss (loss terms {event['loss_terms']})" if event["cause"] == "loss" else
                f"non-finite gradient with finite losses (loss terms {event['rank_loss_terms']})")
        log.info(f"iteration {iteration}: {what}, grad norm {event['grad_norm']}; optimizer step skipped "
                 f"({self.consecutive} consecutive, at most {self.max_steps})")
        log.jsonl({"iter": iteration, "mode": "nonfinite", **event, "consecutive": self.consecutive})
        if self.consecutive > self.max_steps:
            log.close()
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive iterations (up to {iteration}) with a non-finite loss or gradient, "
                f"more than optimizer_config.max_nonfinite_steps={self.max_steps}; stopping. The newest complete "
                f"checkpoint (iteration {last_saved}) holds weights from before the fault")
