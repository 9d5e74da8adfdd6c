"""The DeepSpeed training loop.

``train(cfg, ds_config, work_dir, ...)`` builds the segmentor, its layer-decay parameter groups and the data
loaders, hands them to ``deepspeed.initialize`` (ZeRO stage, precision, gradient accumulation and clipping come from
the DeepSpeed config), then runs iteration-based training: one *iteration* is one optimizer step over
``gradient_accumulation_steps`` micro-batches on every rank. It saves crash-safe checkpoints, evaluates periodically
and logs to TensorBoard / ``metrics.jsonl``.

The engine only knows the interfaces of the parts it drives, collected in ``Components``:

* ``build_model(cfg) -> nn.Module``; in train mode ``model(img, gt_semantic_seg)`` returns a dict of scalar losses
  with the total under ``'loss'``; evaluation goes through ``evaluate`` below (the segmentor's ``predict`` gives
  probabilities, ``predict_labels`` labels).
* ``build_loaders(cfg, rank, world_size, seed) -> (train_iter, val_loader)``; ``train_iter`` is an infinite iterator of
  ``{'img', 'gt_semantic_seg'}`` batches with ``state_dict()`` / ``load_state_dict()``.
* ``build_param_groups(model, cfg) -> list[dict]`` (each group may carry ``lr_scale`` and ``group_name``).
* ``lr_at(cfg, iteration) -> float``: the base learning rate at an iteration (before ``lr_scale``).
* ``evaluate(model, val_loader, cfg, dtype, num_vis) -> (metrics dict, [(image, gt, pred) ...])``.
"""
from __future__ import annotations

import json
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config.errors import ConfigError
from . import checkpoint as ckpt
from . import distributed as du
from .deepspeed_setup import compute_dtype, precision, zero_stage
from .logging import RunLogger


@dataclass
class Components:
    build_model: Callable
    build_loaders: Callable
    build_param_groups: Callable
    lr_at: Callable
    evaluate: Callable


class IterLR:
    """Client LR scheduler for DeepSpeed: ``lr(group) = lr_at(iteration) * group['lr_scale']``.

    The trainer calls ``set_iter(i)`` before iteration ``i`` (0-based, the mmcv convention), so the learning rate of
    an iteration never depends on how often DeepSpeed called ``step()`` (it skips steps on fp16 overflow)."""

    def __init__(self, optimizer, lr_fn: Callable[[int], float]):
        self.optimizer = optimizer
        self.lr_fn = lr_fn
        self.last_iter = 0
        self._apply()

    def _apply(self):
        base = self.lr_fn(self.last_iter)
        for g in self.optimizer.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def set_iter(self, iteration: int):
        self.last_iter = iteration
        self._apply()

    def step(self, *args, **kwargs):
        self.last_iter += 1
        self._apply()

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {"last_iter": self.last_iter}

    def load_state_dict(self, state):
        self.last_iter = int(state["last_iter"])
        self._apply()


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


def train(cfg, ds_config: dict, work_dir, components: Components, *, resume: str | None = None,
          load_from: str | None = None, progress: bool = True) -> dict:
    """Run (or resume) training; returns ``{'iteration', 'metrics'}``. The process group must be initialised."""
    import deepspeed

    work_dir = Path(work_dir)
    rank, world = du.rank(), du.world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() \
        else torch.device("cpu")
    dtype = compute_dtype(ds_config)
    max_iters = int(cfg.runner.max_iters)
    gas = int(ds_config["gradient_accumulation_steps"])
    ckpt_cfg = cfg.get("checkpoint_config") or {}
    ckpt_interval = int(ckpt_cfg.get("interval", max_iters))
    keep_last = ckpt_cfg.get("max_keep_ckpts")
    eval_interval = int((cfg.get("evaluation") or {}).get("interval", max_iters))
    log_interval = int((cfg.get("log_config") or {}).get("interval", 50))
    num_vis = int((cfg.get("vis") or {}).get("num_images", 0))
    seed = int(cfg.get("seed", 0) or 0)

    if du.is_main():
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "TRAINING_FINISHED").unlink(missing_ok=True)
        cfg.dump(str(work_dir / "config.py"))
        with open(work_dir / "ds_config.json", "w") as f:
            json.dump(ds_config, f, indent=2)
    du.barrier()

    # ---- resume target (before initialize: a world-size change needs the universal-checkpoint config)
    found = ckpt.find_resume(resume, work_dir)
    if found is not None:
        tag_dir, meta = found
        if int(meta.get("world_size", world)) != world:  # DeepSpeed universal checkpoint, converted once
            tag_dir = ckpt.convert_to_universal(tag_dir, int(meta.get("zero_stage", zero_stage(ds_config))))
            ds_config = dict(ds_config, checkpoint=dict(ds_config.get("checkpoint", {}), load_universal=True))

    # ---- model, parameter groups, loaders
    seed_everything(seed)
    model = components.build_model(cfg)  # a plain module (no zero.Init), so every init function runs as written
    if load_from and found is None:  # a resumed run restores everything from its own checkpoint instead
        report = ckpt.load_for_finetune(model, load_from)
        if du.is_main():
            print(report["text"], flush=True)
            with open(work_dir / "load_from_report.json", "w") as f:
                json.dump({k: v for k, v in report.items() if k != "text"}, f, indent=1)
    if device.type == "cuda" and world > 1 and cfg.get("sync_bn", True):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    groups = components.build_param_groups(model, cfg)
    names = _group_names(groups)
    train_iter, val_loader = components.build_loaders(cfg, rank, world, seed)

    lr_fn = lambda it: components.lr_at(cfg, it)  # noqa: E731
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config,
                                                           lr_scheduler=lambda opt: IterLR(opt, lr_fn))
    start_iter = 0
    if found is not None:
        extra = ckpt.load_checkpoint(engine, tag_dir)
        start_iter = int(extra["iteration"])
        if extra.get("loader") is not None and hasattr(train_iter, "load_state_dict"):
            train_iter.load_state_dict(extra["loader"])
    log = RunLogger(work_dir, du.is_main(), max_iters, start_iter, progress=progress)
    if found is not None:
        log.info(f"resumed from {tag_dir} at iteration {start_iter}"
                 + (f" (universal checkpoint: saved with {meta.get('world_size')} ranks, now {world})"
                    if str(tag_dir).endswith("_universal") else ""))
    elif resume:
        log.info(f"--resume {resume}: no complete checkpoint in {ckpt.checkpoint_root(work_dir)}; starting fresh")
    log.info(f"world size {world}, {precision(ds_config)}, ZeRO-{zero_stage(ds_config)}, micro batch "
             f"{ds_config['train_micro_batch_size_per_gpu']} x accumulation {gas} x {world} ranks = "
             f"{ds_config['train_batch_size']} images/iteration, {max_iters} iterations, device {device}")
    meta_out = {"precision": precision(ds_config), "zero_stage": zero_stage(ds_config)}

    def save(iteration):
        du.broadcast_buffers(engine.module)
        state = train_iter.state_dict() if hasattr(train_iter, "state_dict") else None
        tag = ckpt.save_checkpoint(engine, work_dir, iteration, state, meta_out, keep_last)
        log.info(f"saved checkpoint {tag}")

    eval_copy = {}

    def eval_model():
        """The module to evaluate. Under ZeRO-3 the parameters are partitioned and every forward is a collective,
        which would deadlock on the val loader's unequal per-rank sample counts: gather them (all ranks) into a
        plain copy instead."""
        if zero_stage(ds_config) < 3:
            return engine.module
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        if "model" not in eval_copy:
            eval_copy["model"] = components.build_model(cfg).to(device=device, dtype=dtype)
        eval_copy["model"].load_state_dict(state)
        return eval_copy["model"]

    def run_eval(iteration):
        rng = ckpt.rng_state()  # evaluation must not shift the training RNG streams (resume equality)
        du.broadcast_buffers(engine.module)
        model_eval = eval_model()
        model_eval.eval()
        t = time.time()
        with torch.no_grad():
            metrics, vis = components.evaluate(model_eval, val_loader, cfg, dtype, num_vis if du.is_main() else 0)
        engine.module.train()
        ckpt.set_rng_state(rng)
        log.scalars(iteration, metrics, prefix="val/")
        log.jsonl({"iter": iteration, "mode": "val", **metrics})
        log.info(f"eval @ {iteration}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                 + f" ({time.time() - t:.1f} s)")
        if du.is_main() and vis:
            from ..utils.vis import write_png
            out = work_dir / "predictions" / f"iter_{iteration}"
            out.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(vis):
                write_png(out / f"{i:03d}.png", img)
                log.image(f"predictions/{i}", iteration, img)
        return metrics

    engine.train()
    metrics = {}
    sums: dict[str, float] = {}
    data_time = iter_time = 0.0
    window = 0
    t_last = time.time()
    for it in range(start_iter, max_iters):
        scheduler.set_iter(it)
        lrs = [g["lr"] for g in engine.optimizer.param_groups]
        for _ in range(gas):
            t0 = time.time()
            batch = next(train_iter)
            data_time += time.time() - t0
            img = batch["img"].to(device, non_blocking=True)
            img = img.to(dtype) if img.is_floating_point() else img
            gt = batch["gt_semantic_seg"].to(device, non_blocking=True)
            losses = engine(img, gt)
            engine.backward(losses["loss"])
            engine.step()
            for k, v in losses.items():
                if torch.is_tensor(v) and v.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(v.detach().float()) / gas
        window += 1
        done = it + 1
        now = time.time()
        iter_time += now - t_last
        t_last = now
        log.advance(1)
        if done % log_interval == 0 or done == max_iters:
            avg = du.all_reduce_mean({k: v / window for k, v in sums.items()}, device=device)
            grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else None
            loss_scale = float(getattr(engine.optimizer, "cur_scale", getattr(engine.optimizer, "loss_scale", 1.0))
                               or 1.0) if precision(ds_config) == "fp16" else 1.0
            rec = {"iter": done, "mode": "train", **avg, "lr": dict(zip(names, lrs)), "grad_norm": grad_norm,
                   "loss_scale": loss_scale, "time": iter_time / window, "data_time": data_time / window / gas,
                   "images_per_s": ds_config["train_batch_size"] * window / max(iter_time, 1e-9),
                   "memory_mb": _peak_memory_mb(device)}
            log.jsonl(rec)
            log.scalars(done, avg, prefix="train/")
            log.scalars(done, {f"lr/{n}": v for n, v in zip(names, lrs)})
            log.scalars(done, {"train/grad_norm": grad_norm, "train/loss_scale": loss_scale,
                               "perf/images_per_s": rec["images_per_s"], "perf/data_time": rec["data_time"],
                               "perf/iter_time": rec["time"], "perf/memory_mb": rec["memory_mb"]})
            log.advance(0, {"loss": f"{avg.get('loss', float('nan')):.4f}", "lr": f"{max(lrs):.2e}"})
            sums, window, data_time, iter_time = {}, 0, 0.0, 0.0
        if done % ckpt_interval == 0 or done == max_iters:
            save(done)
        if val_loader is not None and (done % eval_interval == 0 or done == max_iters):
            metrics = run_eval(done)
    if start_iter >= max_iters and val_loader is not None:
        metrics = run_eval(max_iters)
    if du.is_main():
        (work_dir / "TRAINING_FINISHED").write_text(json.dumps({"iteration": max_iters, "metrics": metrics,
                                                                "time": time.time()}))
        log.info(f"training finished: {max_iters} iterations; work dir {work_dir}; TensorBoard: "
                 f"tensorboard --logdir {work_dir / 'tensorboard'}; predictions: {work_dir / 'predictions'}")
    log.close()
    du.barrier()
    return {"iteration": max_iters, "metrics": metrics, "engine": engine}



