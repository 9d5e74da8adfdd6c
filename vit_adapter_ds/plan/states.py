"""Model-state memory per rank of a DeepSpeed (0.19) training run, as a pure function of parameter counts and the
DeepSpeed config: weights, gradients, Adam states, fp32 master weights, ZeRO bucket buffers and model buffers.

The rules follow DeepSpeed 0.19.8's source (runtime/engine.py ``_do_optimizer_sanity_check``, zero/stage_1_and_2.py,
zero/stage3.py, fp16/fused_optimizer.py, bf16_optimizer.py) and were checked against the tensors a 2-rank CPU run
holds (tests/unit/plan/test_plan_states.py). Activations are not included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# DeepSpeed 0.19 defaults (runtime/zero/config.py)
DEFAULTS = {"reduce_bucket_size": int(5e8), "allgather_bucket_size": int(5e8), "stage3_prefetch_bucket_size": int(5e7),
            "stage3_max_live_parameters": int(1e9), "stage3_param_persistence_threshold": int(1e5),
            "contiguous_gradients": True}
NCCL_START_ALIGNMENT = 2  # ZeRO-1/2 and BF16_Optimizer pad each flat group to a multiple of 2 * world_size elements


@dataclass(frozen=True)
class ParamCounts:
    trainable: int      # elements of parameters with requires_grad
    frozen: int         # elements of parameters without grad (kept in the training dtype, no grads/optimizer)
    buffers: int        # elements of floating-point buffers (fp32 unless data_types.buffer_dtype casts them)
    largest_param: int  # elements of the largest single trainable parameter (ZeRO-3 gathers / buckets)
    num_tensors: int    # number of trainable parameter tensors
    # optional detail (filled by count_params): sizes of each trainable / frozen tensor make ZeRO-3's per-tensor
    # partition padding and its persistent small parameters exact; bytes of non-floating buffers (int64 index
    # tables), which DeepSpeed never casts
    sizes: tuple = ()
    frozen_sizes: tuple = ()
    other_buffer_bytes: int = 0


def count_params(model) -> ParamCounts:
    """Counts of ``model`` (also on the meta device: only shapes are read); shared parameters are counted once."""
    seen, trainable, frozen = set(), [], []
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (trainable if p.requires_grad else frozen).append(int(p.numel()))
    floating, other = 0, 0
    for b in model.buffers():
        if b.is_floating_point():
            floating += int(b.numel())
        else:
            other += int(b.numel()) * b.element_size()
    return ParamCounts(trainable=sum(trainable), frozen=sum(frozen), buffers=floating,
                       largest_param=max(trainable, default=0), num_tensors=len(trainable), sizes=tuple(trainable),
                       frozen_sizes=tuple(frozen), other_buffer_bytes=other)


def _zero_cfg(ds_config: dict | None) -> dict:
    z = dict((ds_config or {}).get("zero_optimization") or {})
    out = dict(DEFAULTS)
    for k in DEFAULTS:
        v = z.get(k)
        if v is not None and v != "auto":
            out[k] = int(v) if k != "contiguous_gradients" else bool(v)
    out["overlap_comm"] = z.get("overlap_comm")
    return out


def _offload(z: dict, key: str) -> bool:
    v = z.get(key)
    return isinstance(v, dict) and str(v.get("device", "none")).lower() not in ("none", "")


def model_state_bytes(counts: ParamCounts, *, stage: int, dtype: str, world_size: int, ds_config: dict | None = None,
                      offload_optimizer: bool = False, offload_param: bool = False, optimizer: str = "adamw") -> dict:
    """Bytes PER RANK of the model states of a DeepSpeed run (see the module docstring). Keys: ``params``, ``grads``,
    ``optimizer``, ``master``, ``buffers`` (ZeRO communication / bucket and step-time buffers, their parts in
    ``buffers_detail``), ``model_buffers``, ``cpu`` (host bytes under offload, not in ``total``), ``total`` (device
    bytes) and ``notes``. Where ranks differ (ZeRO-2's whole gradients of parameters crossing a partition edge) the
    largest rank is given. ``offload_optimizer`` / ``offload_param`` are also read from ``ds_config``."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be one of 0, 1, 2, 3 (ZeRO stage), got {stage!r}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int (data-parallel ranks), got {world_size!r}")
    if optimizer.lower() not in ("adam", "adamw"):
        raise ValueError(f"optimizer must be 'adam' or 'adamw' (2 fp32 states per element), got {optimizer!r}")
    for f in ("trainable", "frozen", "buffers", "largest_param", "num_tensors"):
        if getattr(counts, f) < 0:
            raise ValueError(f"ParamCounts.{f} must be >= 0, got {getattr(counts, f)}")
    zraw = dict((ds_config or {}).get("zero_optimization") or {})
    offload_optimizer = offload_optimizer or _offload(zraw, "offload_optimizer")
    offload_param = offload_param or _offload(zraw, "offload_param")
    if offload_param and stage != 3:
        raise ValueError(f"offload_param (ZeRO-Infinity parameter offload) needs ZeRO stage 3, got stage {stage}")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3, got stage 0")
    z = _zero_cfg(ds_config)
    data_types = (ds_config or {}).get("data_types") or {}
    grad_accum = data_types.get("grad_accum_dtype") or dtype
    if grad_accum not in DTYPE_BYTES:
        raise ValueError(f"data_types.grad_accum_dtype must be one of {sorted(DTYPE_BYTES)}, got {grad_accum!r}")
    if stage == 0 and grad_accum != dtype:
        raise ValueError(f"DeepSpeed refuses ZeRO-0 with {dtype} weights and {grad_accum} gradient accumulation "
                         "(engine._do_optimizer_sanity_check: unsupported mix)")

    N, b, ga = world_size, DTYPE_BYTES[dtype], DTYPE_BYTES[grad_accum]
    T, F = counts.trainable, counts.frozen
    notes: list[str] = []
    detail: dict[str, int] = {}
    cpu = 0
    overlap = z["overlap_comm"] if z["overlap_comm"] is not None else stage == 3  # DeepSpeed's dynamic default
    buf_dtype = DTYPE_BYTES[dtype]
    bd = DTYPE_BYTES.get(data_types.get("buffer_dtype") or "fp32", 4)
    model_buffers = counts.buffers * bd + counts.other_buffer_bytes
    notes.append(f"model buffers replicated on every rank in {data_types.get('buffer_dtype') or 'their own dtype (fp32)'}")

    if stage == 0:
        params, grads, opt = (T + F) * b, T * b, 8 * T
        master = 4 * T if b != 4 else 0
        notes.append("ZeRO-0: weights, gradients and Adam states replicated on every rank")
        if b != 4:
            notes.append(f"ZeRO-0 {dtype}: FP16_Optimizer keeps an fp32 master copy and builds fp32 gradients at step")
            detail["step_fp32_grads"] = 4 * T
    elif stage in (1, 2):
        align = NCCL_START_ALIGNMENT * N
        Tp = math.ceil(T / align) * align if T else 0
        part = Tp // N
        notes.append(f"ZeRO-{stage}: flat {dtype} group padded to a multiple of {align} elements "
                     f"({Tp - T} padding), partition of {part} elements per rank")
        params = (Tp + F) * b
        master = 4 * part
        notes.append("ZeRO-1/2: fp32 master partition is a copy (clone) even in fp32")
        opt = 8 * part
        bf16_opt = stage == 1 and dtype == "bf16" and grad_accum == "fp32" and not offload_optimizer
        if bf16_opt:
            grads = 4 * Tp
            notes.append("ZeRO-1 bf16 + fp32 grad_accum_dtype: BF16_Optimizer with a full fp32 gradient "
                         "accumulation buffer")
        elif stage == 1:
            grads = T * ga
            notes.append(f"ZeRO-1: optimizer states partitioned over {N} ranks, full gradients on every rank")
        else:
            grads = min(T, part + counts.largest_param) * ga
            notes.append(f"ZeRO-2: gradients and optimizer states partitioned over {N} ranks (gradients of "
                         "parameters crossing the partition edge kept whole: + largest parameter, at most all)")
        if (z["contiguous_gradients"] or offload_optimizer) and not bf16_opt:
            n_buf = 2 if overlap else 1
            rb = z["reduce_bucket_size"] * (ga if stage == 1 else buf_dtype) * n_buf
            detail["reduce_bucket"] = rb
            notes.append(f"contiguous_gradients: {n_buf} reduce bucket(s) of {z['reduce_bucket_size']} elements "
                         "during backward")
        if b != 4 and not offload_optimizer:
            detail["step_fp32_grads"] = 4 * part
            notes.append("step: gradient partition cast to fp32")
        if offload_optimizer:
            cpu += master + opt + 4 * part + part * b
            master = opt = 0
            detail["offload_grad_staging"] = counts.largest_param * b
            notes.append("offload_optimizer: fp32 master, Adam states and fp32 gradient partition in host memory")
    else:
        sizes = counts.sizes or ((T,) if T else ())
        fsizes = counts.frozen_sizes or ((F,) if F else ())
        thr = z["stage3_param_persistence_threshold"]
        part = sum(math.ceil(s / N) for s in sizes)
        fpart = sum(math.ceil(s / N) for s in fsizes)
        persistent = sum(s for s in sizes if s <= thr) + sum(s for s in fsizes if s <= thr)
        notes.append(f"ZeRO-3: weights, gradients and optimizer states partitioned over {N} ranks "
                     f"(each tensor padded to a multiple of {N})")
        if persistent:
            notes.append(f"ZeRO-3: parameters of <= {thr} elements (stage3_param_persistence_threshold) "
                         "also kept whole on every rank")
        params = (part + fpart + persistent) * b
        master = 4 * part
        notes.append("ZeRO-3: fp32 master partition is a separate copy (measured also in fp32 with DeepSpeed 0.19.8)")
        opt = 8 * part
        grads = part * ga
        if z["contiguous_gradients"]:
            detail["reduce_bucket"] = z["reduce_bucket_size"] * buf_dtype
            notes.append(f"ZeRO-3 contiguous_gradients: persistent reduce bucket of {z['reduce_bucket_size']} "
                         "elements")
        live = min(z["stage3_prefetch_bucket_size"], z["stage3_max_live_parameters"], T) + counts.largest_param
        detail["gathered_params"] = min(live, T + F) * b
        notes.append("ZeRO-3: gathered parameters in flight ~ prefetch bucket + largest parameter")
        if b != 4:
            detail["step_fp32_grads"] = 4 * part
        if offload_param:
            cpu += (part + fpart) * b
            params = persistent * b
            notes.append("offload_param: parameter partitions in host memory")
        if offload_optimizer:
            cpu += master + opt + 4 * part
            master = opt = 0
            detail.pop("step_fp32_grads", None)
            notes.append("offload_optimizer: fp32 master, Adam states and fp32 gradients in host memory")
    buffers = sum(detail.values())
    total = params + grads + opt + master + buffers + model_buffers
    return {"params": int(params), "grads": int(grads), "optimizer": int(opt), "master": int(master),
            "buffers": int(buffers), "buffers_detail": detail, "model_buffers": int(model_buffers), "cpu": int(cpu),
            "total": int(total), "notes": notes}
