"""DeepSpeed JSON configs: load, fill the ``"auto"`` values from the recipe, check batch sizes and precision.

``"auto"`` values resolved here (all others are passed through unchanged):

* ``train_micro_batch_size_per_gpu`` <- ``data.samples_per_gpu``
* ``gradient_accumulation_steps`` <- ``global_batch_size / (micro * world)`` if the recipe sets ``global_batch_size``
  (the official total batch, e.g. 16), else 1
* ``train_batch_size`` <- ``micro * accumulation * world``
* ``gradient_clipping`` <- ``optimizer_config.grad_clip.max_norm`` (0.0 = off, as in the official recipes)
* ``optimizer.params.{lr, betas, eps, weight_decay}`` <- ``optimizer.*``
* ``fp16.initial_scale_power`` <- log2 of ``fp16.loss_scale.init_scale`` (512 -> 9), else 16
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from ..config.errors import ConfigError


def load_ds_config(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        shipped = sorted(q.name for q in (Path(__file__).resolve().parents[2] / "ds_configs").glob("*.json"))
        raise ConfigError(f"DeepSpeed config {str(path)!r} not found" +
                          (f"; shipped configs in ds_configs/: {', '.join(shipped)}" if shipped else ""))
    try:
        with open(p) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {p} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"DeepSpeed config {p} must hold a JSON object")
    return cfg


def _auto(v) -> bool:
    return v == "auto"


def _pos_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"DeepSpeed config: {name} must be a positive integer or \"auto\", got {v!r}")
    return v


def precision(ds: dict) -> str:
    if ds.get("fp16", {}).get("enabled", False):
        return "fp16"
    if ds.get("bf16", {}).get("enabled", False) or ds.get("bfloat16", {}).get("enabled", False):
        return "bf16"
    return "fp32"


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def dynamic_loss_scale(ds: dict) -> bool:
    """fp16 with DeepSpeed's dynamic loss scaling (``fp16.loss_scale`` 0, the default), which skips overflowing
    steps itself and lowers the scale."""
    return precision(ds) == "fp16" and float(ds.get("fp16", {}).get("loss_scale", 0) or 0) == 0


def resolve_ds_config(ds: dict, cfg, world_size: int, has_cuda: bool | None = None) -> dict:
    """Return a copy of ``ds`` with every ``"auto"`` filled from the recipe ``cfg``; raise ``ConfigError`` on
    inconsistent batch sizes or a precision the machine cannot run."""
    ds = copy.deepcopy(ds)
    has_cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
    if precision(ds) == "fp16" and not has_cuda:
        raise ConfigError("fp16 needs a GPU: this machine has none (CPU DeepSpeed raises 'Type fp16 is not supported "
                          "on your device' without AVX512-FP16/AMX). Use a *_bf16.json or *_fp32.json config.")
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise ConfigError("DeepSpeed config enables both fp16 and bf16; choose one")

    micro = ds.get("train_micro_batch_size_per_gpu", "auto")
    micro = cfg.data.samples_per_gpu if _auto(micro) else _pos_int("train_micro_batch_size_per_gpu", micro)
    gas = ds.get("gradient_accumulation_steps", "auto")
    gbs_recipe = cfg.get("global_batch_size")
    if _auto(gas):
        if gbs_recipe:
            if gbs_recipe % (micro * world_size):
                raise ConfigError(
                    f"batch sizes: the recipe's global_batch_size {gbs_recipe} is not divisible by "
                    f"micro batch {micro} x world size {world_size}; change data.samples_per_gpu, the number of "
                    f"ranks, or override global_batch_size (--cfg-options global_batch_size=N)")
            gas = gbs_recipe // (micro * world_size)
        else:
            gas = 1
    else:
        gas = _pos_int("gradient_accumulation_steps", gas)
    tbs = ds.get("train_batch_size", "auto")
    if _auto(tbs):
        tbs = micro * gas * world_size
    else:
        tbs = _pos_int("train_batch_size", tbs)
    if tbs != micro * gas * world_size:
        raise ConfigError(f"batch sizes: train_batch_size {tbs} != train_micro_batch_size_per_gpu {micro} x "
                          f"gradient_accumulation_steps {gas} x world size {world_size} = {micro * gas * world_size}")
    if gbs_recipe and tbs != gbs_recipe:
        raise ConfigError(f"batch sizes: the DeepSpeed config gives {tbs} images per step but the recipe's "
                          f"global_batch_size is {gbs_recipe}; set the config values to \"auto\" or override "
                          f"global_batch_size (--cfg-options global_batch_size={tbs})")
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = gas
    ds["train_batch_size"] = tbs

    if _auto(ds.get("gradient_clipping", 0.0)):
        grad_clip = (cfg.get("optimizer_config") or {}).get("grad_clip") or {}
        ds["gradient_clipping"] = float(grad_clip.get("max_norm", 0.0))

    opt = ds.get("optimizer")
    if opt is not None:
        params = opt.setdefault("params", {})
        recipe_opt = cfg.optimizer
        for key in ("lr", "betas", "eps", "weight_decay"):
            if _auto(params.get(key)):
                if key not in recipe_opt:
                    raise ConfigError(f"DeepSpeed config optimizer.params.{key} is \"auto\" but the recipe has no "
                                      f"optimizer.{key}")
                value = recipe_opt[key]
                params[key] = list(value) if isinstance(value, tuple) else value
    fp16 = ds.get("fp16")
    if fp16 and _auto(fp16.get("initial_scale_power")):
        init = ((cfg.get("fp16") or {}).get("loss_scale") or {})
        init = init.get("init_scale") if isinstance(init, dict) else None
        fp16["initial_scale_power"] = int(round(math.log2(init))) if init else 16
    leftover = _find_auto(ds)
    if leftover:
        raise ConfigError(f"DeepSpeed config: cannot resolve \"auto\" for {leftover}")
    return ds


def _find_auto(node, prefix=""):
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _find_auto(v, f"{prefix}{k}.")
    elif _auto(node):
        out.append(prefix.rstrip("."))
    return out


def compute_dtype(ds: dict) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision(ds)]
