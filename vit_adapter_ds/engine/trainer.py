"""The DeepSpeed training loop: a small :class:`Trainer` over a task's parts (see :mod:`vit_adapter_ds.tasks.base`).

``Trainer(task, ds_config, work_dir, ...).fit()`` builds the task's model, its parameter groups and loaders, hands
them to ``deepspeed.initialize`` (ZeRO stage, precision, gradient accumulation and clipping come from the DeepSpeed
config) and runs iteration-based training: one *iteration* is one optimizer step over ``gradient_accumulation_steps``
micro-batches on every rank. It logs (TensorBoard, ``metrics.jsonl``, progress bar), evaluates every
``evaluation.interval`` iterations, and saves crash-safe checkpoints that resume bitwise, also on another number of
ranks. When to save, what to keep and what is best is decided by the checkpoint manager
(:class:`vit_adapter_ds.checkpoint.manager.CheckpointManager`), asked once per iteration. The engine knows nothing
of images or labels: the task moves a batch to the device and returns the loss dict.

Cluster behaviour (see ``launch/slurm/README.md``; the parts live in :mod:`.faults`):

* **Stop signals.** SIGTERM and SIGUSR1 (SLURM's ``--signal`` before a time limit, preemption) only set a flag.
  Every rank finishes the current iteration; the ranks agree through one tiny all-reduce per iteration, save a
  complete checkpoint of that iteration and raise :class:`TrainingInterrupted` (``launch/train.py`` exits with
  :data:`REQUEUE_EXIT_CODE`; rank 0 records ``"state": "stopped"`` in ``status.json``), which the sbatch script
  turns into ``scontrol requeue``. Further signals while the checkpoint is written are recorded and ignored,
  so they cannot cut the save short.
* **Non-finite losses and gradients** (:class:`~.faults.NonFiniteGuard`, agreed through the same all-reduce): the
  iteration's optimizer step is skipped on every rank (weights, optimizer state and BatchNorm statistics
  unchanged) and logged with the iteration and every rank's loss terms, under every ZeRO stage and precision. After
  more than ``optimizer_config.max_nonfinite_steps`` (default 3) consecutive such iterations, training stops with
  :class:`NonFiniteLossError`; the checkpoints on disk all hold weights from before the fault. Under fp16 dynamic
  loss scaling, the steps DeepSpeed skips for overflowing scaled gradients are the loss scaler's and not counted.
"""
from __future__ import annotations

import contextlib
import json
import random
import resource
import signal
import time
from pathlib import Path

import numpy as np
import torch

from .. import runtime as rt
from ..config.run_record import write_run_config
from ..config.schema import eval_interval_at
from ..models.norm import convert_sync_batchnorm, keep_norm_stats_fp32
from ..checkpoint import manager as ckpt
from ..checkpoint.deepspeed import convert_to_universal
from .deepspeed_setup import compute_dtype, precision, zero_stage
from .ema import build_hooks
from .faults import (REQUEUE_EXIT_CODE, STOP_SIGNALS, NonFiniteGuard, NonFiniteLossError, StopRequest,  # noqa: F401
                     TrainingInterrupted, agree)
from .logging import RunLogger
from .optim import param_groups_for_recipe
from .schedule import scheduler_from_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _group_names(groups) -> list[str]:
    names, seen = [], {}
    for i, g in enumerate(groups):
        n = str(g.get("group_name", f"group{i}"))
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        else:
            seen[n] = 0
        names.append(n)
    return names


class Trainer:
    """Build, step, log, evaluate, save / resume. The process group must be initialised (``runtime``)."""

    def __init__(self, task, ds_config: dict, work_dir, *, resume: str | None = None, load_from: str | None = None,
                 progress: bool = True, resume_other_recipe: bool = False, load_from_partial: bool = False):
        cfg = task.cfg
        self.task, self.cfg, self.ds_config = task, cfg, dict(ds_config)
        self.work_dir = Path(work_dir)
        self.resume, self.load_from, self.progress = resume, load_from, progress
        self.resume_other_recipe, self.load_from_partial = resume_other_recipe, load_from_partial
        self.rank, self.world = rt.rank(), rt.world_size()
        self.device = rt.device()
        self.dtype = compute_dtype(ds_config)
        self.max_iters = int(cfg.runner.max_iters)
        self.gas = int(ds_config["gradient_accumulation_steps"])
        ck = cfg.get("checkpoint_config") or {}
        ev = cfg.get("evaluation") or {}
        self.eval_interval = int(ev.get("interval", self.max_iters))
        self.eval_dynamic_intervals = list(ev.get("dynamic_intervals") or ())  # mmdet's EvalHook, schema.py
        save_best = ev.get("save_best")
        self.log_interval = int((cfg.get("log_config") or {}).get("interval", 50))
        max_nf = (cfg.get("optimizer_config") or {}).get("max_nonfinite_steps", 3)
        self.nonfinite_guard = NonFiniteGuard(ds_config, 3 if max_nf is None else int(max_nf))
        self.stop_request = StopRequest()
        self.num_vis = int((cfg.get("vis") or {}).get("num_images", 0))
        self.seed = int(cfg.get("seed", 0) or 0)
        self.checkpoints = ckpt.CheckpointManager(
            self.work_dir, ck.get("max_keep_ckpts"),
            {"precision": precision(ds_config), "zero_stage": zero_stage(ds_config), "recipe": recipe_name(cfg)},
            interval=int(ck.get("interval", self.max_iters)), max_iters=self.max_iters,
            best_metric=task.best_metric if save_best == "auto" else save_best, log=lambda msg: self.log.info(msg))
        self.start_iter = 0
        self._eval_copy = None
        self.hooks = build_hooks(cfg, zero_stage(ds_config))  # custom_hooks (engine/ema.py); ZeRO-3 refused

    # ------------------------------------------------------------------------------------------------ build
    def _prepare_work_dir(self) -> None:
        if rt.is_main():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.dump(str(self.work_dir / "config.py"))
            write_run_config(self.cfg, self.work_dir)
            with open(self.work_dir / "ds_config.json", "w") as f:
                json.dump(self.ds_config, f, indent=2)
        rt.barrier()

    def build(self) -> "Trainer":
        import deepspeed

        self.stop_request.install()  # a stop signal during the (long) build is acted on after the first iteration
        self._prepare_work_dir()
        # rank 0 verifies the resume target and checks its files are data only; every rank gets its decision
        found = ckpt.find_resume_everywhere(self.resume, self.work_dir)
        self.resume_dir = None
        self.universal = False
        seed_everything(self.seed)
        # a plain module (no zero.Init), so every init function runs as written; a resumed run restores all weights
        model = self.task.build_model(load_pretrained=found is None)
        fingerprint = ckpt.model_fingerprint(model)
        self.checkpoints.meta["model_fingerprint"] = fingerprint
        if found is not None:
            tag_dir, meta = found
            ckpt.check_recipe(tag_dir, meta, fingerprint, recipe_name(self.cfg), self.resume_other_recipe,
                              report=self._warn)
            self.checkpoints.continue_run(meta)
            saved_world = int(meta.get("world_size", self.world))
            if saved_world != self.world:  # before initialize: the universal-checkpoint config
                tag_dir = convert_to_universal(tag_dir, int(meta.get("zero_stage", zero_stage(self.ds_config))))
                self.ds_config["checkpoint"] = dict(self.ds_config.get("checkpoint", {}), load_universal=True)
                self.universal = saved_world
            self.resume_dir = tag_dir
        report = getattr(model, "pretrained_report", None)
        if report is not None and rt.is_main():
            print(str(report), flush=True)
        if self.load_from and self.resume_dir is None:
            self._load_from(model)
        model = convert_sync_batchnorm(model)
        model.to(self.device)
        groups = self.task.param_groups(model)  # None: the recipe's groups (layer decay)
        if groups is None:
            groups = param_groups_for_recipe(model, self.cfg)
        self.group_names = _group_names(groups)
        self.train_loader = self.task.build_train_loader(self.rank, self.world, self.seed)
        self.val_loader = self.task.build_val_loader(self.rank, self.world)
        cfg = self.cfg
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, config=self.ds_config,
            lr_scheduler=lambda opt: scheduler_from_config(opt, cfg))
        keep_norm_stats_fp32(self.engine.module)  # bf16/fp16 casts buffers too; statistics stay fp32
        for hook in self.hooks:  # the EMA starts at the weights the run starts from (after load_from, as mmdet)
            hook.attach(self.engine.module)
        if self.resume_dir is not None:
            state = ckpt.load(self.engine, self.resume_dir)
            if self.hooks:
                self._load_hook_states(self.resume_dir)
            self.start_iter = self.checkpoints.last_saved = state.iteration
            if state.loader is not None and hasattr(self.train_loader, "load_state_dict"):
                self.train_loader.load_state_dict(state.loader)
        self.log = RunLogger(self.work_dir, rt.is_main(), self.max_iters, self.start_iter, progress=self.progress,
                             resumed=self.resume_dir is not None)
        self._log_start()
        return self

    def _load_hook_states(self, tag_dir) -> None:
        saved = ckpt.saved_hook_states(tag_dir)
        if saved is None or len(saved) != len(self.hooks):
            raise ckpt.CheckpointError(f"{tag_dir} holds no state for the recipe's {len(self.hooks)} custom hook(s) "
                                       "(saved by a run without them)")
        for hook, state in zip(self.hooks, saved):
            hook.load_state_dict(state)

    def _warn(self, msg: str) -> None:
        if rt.is_main():
            print(f"warning: {msg}", flush=True)

    def _load_from(self, model) -> None:
        from ..checkpoint.loading import load_into

        report = load_into(model, self.load_from, reinit_mismatched=True,  # the task may adapt foreign layouts
                           filter_fn=self.task.checkpoint_filter)
        check_load_from_coverage(report, model, self.load_from, allow_partial=self.load_from_partial)
        if rt.is_main():
            print(f"load_from {self.load_from}: {report}", flush=True)
            with open(self.work_dir / "load_from_report.json", "w") as f:
                json.dump(report.to_dict(), f, indent=1)

    def _log_start(self) -> None:
        ds = self.ds_config
        if self.resume_dir is not None:
            self.log.info(f"resumed from {self.resume_dir} at iteration {self.start_iter}"
                          + (f" (universal checkpoint: saved with {self.universal} ranks, now {self.world})"
                             if self.universal else ""))
        elif self.resume:
            self.log.info(f"--resume {self.resume}: no complete checkpoint in {self.checkpoints.root}; starting fresh")
        self.log.info(f"world size {self.world}, {precision(ds)}, ZeRO-{zero_stage(ds)}, micro batch "
                      f"{ds['train_micro_batch_size_per_gpu']} x accumulation {self.gas} x {self.world} ranks = "
                      f"{ds['train_batch_size']} images/iteration, {self.max_iters} iterations, device {self.device}")

    # ------------------------------------------------------------------------------------------------ steps
    def train_step(self, iteration: int) -> dict[str, float]:
        """One iteration (``gas`` micro-batches, one optimizer step); returns this rank's mean of each scalar. The
        step's ``gas`` batches are read first and the micro-steps run inside ``task.step_context`` over them.

        Sets ``self.nonfinite_event`` (``None``, or what to log when this iteration's step was skipped for a
        non-finite loss / gradient, on every rank) and ``self.stop_signum`` (a stop signal reached some rank)."""
        self.scheduler.set_iter(iteration)
        self._lrs = [g["lr"] for g in self.engine.optimizer.param_groups]  # DeepSpeed's step() advances them
        sums: dict[str, float] = {}
        self._data_time = 0.0
        guard = self.nonfinite_guard
        guard.start(self.engine.module, iteration + 1)
        fault = False
        t0 = time.time()
        batches = [next(self.train_loader) for _ in range(self.gas)]  # the whole step's, before its first forward
        self._data_time += time.time() - t0
        with self.task.step_context(self.engine.module, batches):  # e.g. losses normalised over the whole step
            for micro in range(self.gas):
                batch, batches[micro] = batches[micro], None
                losses = self.task.forward_loss(self.engine, batch, self.device, self.dtype)
                terms = {k: float(v.detach().float()) for k, v in losses.items()
                         if torch.is_tensor(v) and v.numel() == 1}
                guard.see_loss(terms)
                self.engine.backward(losses["loss"])
                if micro == self.gas - 1:
                    fault, self.stop_signum = agree(guard.local_fault(self.engine.module), self.stop_request.signum,
                                                    self.device)
                guard.step(self.engine, fault)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v / self.gas
        self.nonfinite_event = guard.finish(self.engine, fault, sums, self.checkpoints.last_saved)
        return sums

    def _log_train(self, done: int, window: dict) -> None:
        avg = rt.all_reduce_mean({k: v / window["n"] for k, v in window["sums"].items()}, device=self.device)
        lrs = window["lrs"]
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        loss_scale = 1.0
        if precision(self.ds_config) == "fp16":
            opt = self.engine.optimizer
            loss_scale = float(getattr(opt, "cur_scale", getattr(opt, "loss_scale", 1.0)) or 1.0)
        n = window["n"]
        rec = {"iter": done, "mode": "train", **avg, "lr": dict(zip(self.group_names, lrs)), "grad_norm": grad_norm,
               "loss_scale": loss_scale, "time": window["iter_time"] / n,
               "data_time": window["data_time"] / n / self.gas,
               "images_per_s": self.ds_config["train_batch_size"] * n / max(window["iter_time"], 1e-9),
               "memory_mb": _peak_memory_mb(self.device)}
        self.log.jsonl(rec)
        self.log.scalars(done, avg, prefix="train/")
        self.log.scalars(done, {f"lr/{n_}": v for n_, v in zip(self.group_names, lrs)})
        self.log.scalars(done, {"train/grad_norm": grad_norm, "train/loss_scale": loss_scale,
                                "perf/images_per_s": rec["images_per_s"], "perf/data_time": rec["data_time"],
                                "perf/iter_time": rec["time"], "perf/memory_mb": rec["memory_mb"]})
        self.log.advance(0, {"loss": f"{avg.get('loss', float('nan')):.4f}", "lr": f"{max(lrs):.2e}"})

    # ------------------------------------------------------------------------------------------------ save / eval
    def train_state(self, iteration: int) -> "ckpt.TrainState":
        """What a checkpoint of ``iteration`` holds besides DeepSpeed's shards (the manager saves it)."""
        rt.broadcast_buffers(self.engine.module)
        buffers = ckpt.module_buffers(self.engine.module) if rt.is_main() else None
        loader = self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None
        hooks = [h.state_dict() for h in self.hooks] if rt.is_main() and self.hooks else None
        return ckpt.TrainState(iteration=iteration, loader=loader, buffers=buffers, rank=self.rank,
                               world_size=self.world, hooks=hooks)

    def _eval_model(self):
        """The module to evaluate. Under ZeRO-3 the parameters are partitioned and every forward is a collective,
        which would deadlock on the val loader's unequal per-rank sample counts: gather them (all ranks) into a
        plain copy instead."""
        import deepspeed

        if zero_stage(self.ds_config) < 3:
            return self.engine.module
        with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
            state = {k: v.detach().clone() for k, v in self.engine.module.state_dict().items()}
        if self._eval_copy is None:
            self._eval_copy = self.task.build_model(load_pretrained=False).to(device=self.device, dtype=self.dtype)
            keep_norm_stats_fp32(self._eval_copy)
        self._eval_copy.load_state_dict(state)
        return self._eval_copy

    def evaluate(self, iteration: int) -> dict:
        rng = ckpt.rng_state()  # evaluation must not shift the training RNG streams (resume equality)
        rt.broadcast_buffers(self.engine.module)
        t = time.time()
        with contextlib.ExitStack() as weights:
            for hook in self.hooks:  # an epoch end of an epoch-based recipe evaluates the EMA (mmdet's swap)
                weights.enter_context(hook.evaluation_weights(self.engine.module, iteration))
            model = self._eval_model()
            model.eval()
            with torch.no_grad():
                metrics, vis = self.task.evaluate(model, self.val_loader, self.dtype,
                                                  self.num_vis if rt.is_main() else 0)
        self.engine.module.train()
        ckpt.set_rng_state(rng)
        self.log.scalars(iteration, metrics, prefix="val/")
        self.log.jsonl({"iter": iteration, "mode": "val", **metrics})
        self.log.info(f"eval @ {iteration}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                      + f" ({time.time() - t:.1f} s)")
        if rt.is_main() and vis:
            from ..utils.vis import write_png
            out = self.work_dir / "predictions" / f"iter_{iteration}"
            out.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(vis):
                write_png(out / f"{i:03d}.png", img)
                self.log.image(f"predictions/{i}", iteration, img)
        return metrics

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Run (or continue) training to ``runner.max_iters``; returns ``{'iteration', 'metrics', 'engine'}``."""
        self.engine.train()
        metrics: dict = {}
        window = {"sums": {}, "n": 0, "iter_time": 0.0, "data_time": 0.0, "lrs": []}
        t_last = time.time()
        self.stop_request.install()  # (again: no-op if build() did; fit() may follow a build() elsewhere)
        try:
            metrics = self._loop(window, t_last)
        finally:
            self.stop_request.uninstall()
        if self.start_iter >= self.max_iters and self.val_loader is not None:  # a finished run: evaluate (and best)
            metrics = self.checkpoints.step(self.max_iters, self.engine, self.train_state, evaluate=self.evaluate,
                                            periodic=False).metrics
        if rt.is_main():  # the record of how the run ended is status.json (engine/status.py, written by cli.py)
            self.log.info(f"training finished: {self.max_iters} iterations; work dir {self.work_dir}; TensorBoard: "
                          f"tensorboard --logdir {self.work_dir / 'tensorboard'}; predictions: "
                          f"{self.work_dir / 'predictions'}")
        self.log.close()
        rt.barrier()
        return {"iteration": self.max_iters, "metrics": metrics, "engine": self.engine}

    def _loop(self, window: dict, t_last: float) -> dict:
        metrics: dict = {}
        for it in range(self.start_iter, self.max_iters):
            sums = self.train_step(it)
            for hook in self.hooks:  # after the optimizer step, before checkpointing / evaluation (mmcv priority)
                hook.after_train_iter(self.engine.module, it)
            if self.nonfinite_event is not None:
                self.nonfinite_guard.count(it + 1, self.nonfinite_event, self.log, self.checkpoints.last_saved)
            else:
                self.nonfinite_guard.reset()
            window["lrs"] = self._lrs
            for k, v in sums.items():
                window["sums"][k] = window["sums"].get(k, 0.0) + v
            window["n"] += 1
            window["data_time"] += self._data_time
            done = it + 1
            now = time.time()
            window["iter_time"] += now - t_last
            t_last = now
            self.log.advance(1)
            if done % self.log_interval == 0 or done == self.max_iters:
                self._log_train(done, window)
                window = {"sums": {}, "n": 0, "iter_time": 0.0, "data_time": 0.0, "lrs": []}
            interval = eval_interval_at(done, self.eval_interval, self.eval_dynamic_intervals)
            evaluate = self.val_loader is not None and (done % interval == 0 or done == self.max_iters)
            stop = bool(self.stop_signum) and done < self.max_iters
            step = self.checkpoints.step(done, self.engine, self.train_state, stop=stop,  # save / best / keep
                                         evaluate=self.evaluate if evaluate else None)
            if step.metrics is not None:
                metrics = step.metrics
            if stop:
                self._stop(done, self.stop_signum)
        return metrics

    def _stop(self, done: int, signum: int) -> None:
        """Every rank arrives here after the same iteration (the flag was all-reduced; the manager saved it): record
        the stop, then raise. Rank 0 writes ``status.json`` before the barrier: once any rank has exited (status 3),
        DeepSpeed's ``launch.py`` terminates the others, rank 0 included, so a record written on the way out could
        be lost and the run would read as crashed (``running``)."""
        from .status import write_stopped

        self.log.info(f"stopped by {signal.Signals(signum).name} after iteration {done}: checkpoint iter_{done} is "
                      f"complete; continue with --resume auto (exit status {REQUEUE_EXIT_CODE})")
        self.log.close()
        if rt.is_main():
            write_stopped(self.work_dir, done, signum, REQUEUE_EXIT_CODE)
        rt.barrier()
        raise TrainingInterrupted(done, signum)


def recipe_name(cfg) -> str | None:
    """The recipe's file stem (``upernet_deit_adapter_tiny_512_160k_ade20k``), None for a config built in code."""
    filename = getattr(cfg, "filename", None)
    return Path(filename).stem if filename else None


LOAD_FROM_MIN_FRACTION = 0.5


def check_load_from_coverage(report, model, source, allow_partial: bool = False) -> None:
    """``--load-from`` that fills fewer than half of the model's tensors is an error (unless ``allow_partial``):
    the checkpoint is probably of another model, or its keys carry a prefix. The message names the prefix that would
    make the most keys match."""
    own = list(model.state_dict())
    loaded = len(report.loaded)
    if allow_partial or not own or loaded >= LOAD_FROM_MIN_FRACTION * len(own):
        return
    hint = best_matching_prefix(report.unexpected, own)
    from ..checkpoint.reader import CheckpointError

    raise CheckpointError(
        f"--load-from {source}: only {loaded} of the model's {len(own)} tensors were found in it"
        + (f"; {hint}" if hint else f" (it holds {len(report.unexpected)} tensors the model does not have)")
        + ". Pass --load-from-partial to load a partial checkpoint on purpose")


def _prefix_counts(keys: list[str], targets: set[str]) -> dict[str, int]:
    """``{prefix: how many keys are prefix + a target}`` over the dotted prefixes of ``keys``."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in targets:
                prefix = ".".join(parts[:i]) + "."
                counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def best_matching_prefix(theirs: list[str], own: list[str]) -> str:
    """A hint like ``"its keys match the model's with the prefix 'module.backbone.' removed (612 tensors)"``: the
    prefix to remove from (or add to) the checkpoint's keys that makes the most of them model keys."""
    strip = _prefix_counts(theirs, set(own))  # checkpoint key = prefix + model key
    add = _prefix_counts(own, set(theirs))  # model key = prefix + checkpoint key
    best = max([(n, "removed", p) for p, n in strip.items()] + [(n, "added", p) for p, n in add.items()],
               default=None)
    if best is None:
        return ""
    n, how, prefix = best
    return f"its keys match the model's with the prefix {prefix!r} {how} ({n} tensors)"


def train(task, ds_config: dict, work_dir, **kwargs) -> dict:
    """``Trainer(task, ds_config, work_dir, **kwargs).build().fit()``."""
    return Trainer(task, ds_config, work_dir, **kwargs).build().fit()
