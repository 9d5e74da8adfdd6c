"""From the measured step (:mod:`.step`) and the model states (:mod:`.states`) to a plan for a cluster: memory per
rank for each ZeRO stage, time per iteration, communication per step, a recommendation and a sweep.

Assumptions (printed with every plan):

* Activation memory grows linearly with the micro-batch: the step is measured at one image (``peak`` of the step,
  :mod:`.activations`) and multiplied; a rank's memory is its model states + micro-batch x that peak, against the
  GPU's memory less ``margin`` (the CUDA context, the allocator's fragmentation and NCCL buffers are not
  measured: 10 % by default).
* Time per iteration: the step's FLOPs (forward + backward, recomputation under checkpointing included) over
  ``peak_tflops x utilization``, plus the communication not overlapped with it (``overlap``).
* Communication per rank and step, ring algorithms (``2 (N-1)/N`` of the data for an all-reduce, ``(N-1)/N`` for a
  reduce-scatter or an all-gather): ZeRO-0/1 all-reduce the gradients once per optimizer step (ZeRO-1 then
  all-gathers the updated weights); ZeRO-2 reduce-scatters the gradients at every micro-step and all-gathers the
  weights once per step; ZeRO-3 all-gathers the weights in forward and again in backward and reduce-scatters the
  gradients at every micro-step. Over several nodes the inter-node bandwidth bounds the ring.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .states import DTYPE_BYTES, ParamCounts, model_state_bytes

GiB = 2 ** 30


@dataclass(frozen=True)
class Cluster:
    gpus: int
    gpu_memory_gb: float
    nodes: int = 1
    intra_bw_gbs: float = 200.0     # per-GPU bus bandwidth inside a node (NVLink), GB/s
    inter_bw_gbs: float = 25.0      # per-GPU bandwidth between nodes (200 Gb/s InfiniBand), GB/s
    peak_tflops: float = 312.0      # per GPU, dense, in the training dtype (A100: 312 bf16/fp16, 156 tf32)
    utilization: float = 0.35       # fraction of the peak the step reaches (dense prediction models: 0.3-0.45)
    margin: float = 0.10            # GPU memory kept free (context, fragmentation, NCCL)
    overlap: float = 0.5            # fraction of the communication hidden behind computation

    def __post_init__(self):
        for name in ("gpus", "nodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.gpus % self.nodes:
            raise ValueError(f"gpus={self.gpus} is not a multiple of nodes={self.nodes}")
        for name in ("gpu_memory_gb", "intra_bw_gbs", "inter_bw_gbs", "peak_tflops"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("utilization",):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        for name in ("margin", "overlap"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gb * 1e9 * (1 - self.margin)

    @property
    def ring_bw(self) -> float:
        """Bytes/s one rank moves in a ring over the cluster (the slowest link)."""
        return (self.inter_bw_gbs if self.nodes > 1 else self.intra_bw_gbs) * 1e9


@dataclass
class Measured:
    """The recipe's step at one image, with and without checkpointing (:class:`.activations.StepMeasure`)."""
    counts: ParamCounts
    dtype: str
    image_size: tuple
    peak: dict            # {with_cp: peak bytes per image}
    saved: dict           # {with_cp: saved bytes per image}
    flops: dict           # {with_cp: FLOPs per image, forward + backward}
    stand_ins: list = field(default_factory=list)


def comm_bytes(counts: ParamCounts, stage: int, dtype: str, world: int, micro_steps: int) -> dict:
    """Bytes one rank sends per optimizer step, by collective (see the module docstring)."""
    if world == 1:
        return {"total": 0}
    b, psi, f = DTYPE_BYTES[dtype], counts.trainable, (world - 1) / world
    if stage == 0:
        out = {"all_reduce_grads": 2 * f * psi * b}
    elif stage == 1:
        out = {"reduce_scatter_grads": f * psi * b, "all_gather_params": f * psi * b}
    elif stage == 2:
        out = {"reduce_scatter_grads": micro_steps * f * psi * b, "all_gather_params": f * psi * b}
    else:
        total_psi = psi + counts.frozen
        out = {"all_gather_params": micro_steps * 2 * f * total_psi * b, "reduce_scatter_grads": micro_steps * f * psi * b}
    out["total"] = sum(out.values())
    return out


def evaluate(m: Measured, cluster: Cluster, *, stage: int, with_cp: bool, micro_batch: int, global_batch: int,
             ds_config: dict | None = None, offload_optimizer: bool = False) -> dict:
    """Memory, time and communication of one configuration (a dict, bytes and seconds)."""
    world = cluster.gpus
    accum = max(1, global_batch // (world * micro_batch))
    states = model_state_bytes(m.counts, stage=stage, dtype=m.dtype, world_size=world, ds_config=ds_config,
                               offload_optimizer=offload_optimizer)
    act = micro_batch * m.peak[with_cp]
    memory = states["total"] + act
    images = world * micro_batch * accum
    compute = micro_batch * accum * m.flops[with_cp] / (cluster.peak_tflops * 1e12 * cluster.utilization)
    comm = comm_bytes(m.counts, stage, m.dtype, world, accum)
    comm_s = comm["total"] / cluster.ring_bw
    step_s = compute + (1 - cluster.overlap) * comm_s
    return {"stage": stage, "with_cp": with_cp, "micro_batch": micro_batch, "accumulation": accum,
            "global_batch": images, "offload_optimizer": offload_optimizer, "states": states, "activations": act,
            "memory": memory, "fits": memory <= cluster.usable_bytes, "compute_s": compute, "comm_bytes": comm,
            "comm_s": comm_s, "step_s": step_s, "images_per_s": images / step_s if step_s else float("inf")}


def candidates(m: Measured, cluster: Cluster, global_batch: int, ds_config=None):
    """Every configuration keeping the global batch: micro-batch x accumulation x GPUs = global batch (when the
    GPUs outnumber the global batch: one image per GPU and a larger global batch), stages 0-3, checkpointing off
    / on (when measured), optimizer offload (stages 1-3)."""
    world = cluster.gpus
    per_gpu = max(1, global_batch // world)
    mbs = [d for d in range(1, per_gpu + 1) if per_gpu % d == 0]
    for stage in (0, 1, 2, 3):
        for cp in sorted(m.peak):
            for mb in mbs:
                for off in ((False,) if stage == 0 else (False, True)):
                    yield evaluate(m, cluster, stage=stage, with_cp=cp, micro_batch=mb, global_batch=global_batch,
                                   ds_config=ds_config, offload_optimizer=off)


def scaled(cluster: Cluster, gpus: int) -> Cluster:
    """``cluster`` with ``gpus`` GPUs, as many per node as it has (fewer on a single node)."""
    per_node = max(1, cluster.gpus // cluster.nodes)
    nodes = max(1, math.ceil(gpus / per_node))
    return Cluster(**{**cluster.__dict__, "gpus": gpus, "nodes": nodes if gpus % nodes == 0 else 1})


def recommend(m: Measured, cluster: Cluster, global_batch: int = 16, ds_config=None) -> dict:
    """The fastest fitting configuration (ties: the lower stage, no offload), or ``{'fits': False, ...}`` with the
    smallest GPU memory (at the most memory-saving configuration) that would fit on this many GPUs and the
    fewest GPUs of this memory that would."""
    if global_batch < 1:
        raise ValueError("global_batch must be >= 1")
    options = list(candidates(m, cluster, global_batch, ds_config))
    fitting = [o for o in options if o["fits"]]
    if fitting:
        best = min(fitting, key=lambda o: (round(o["step_s"], 6), o["offload_optimizer"], o["stage"]))
        return {"fits": True, "best": best, "fitting": len(fitting), "options": len(options)}
    thrifty = min(options, key=lambda o: o["memory"])
    need_gb = thrifty["memory"] / (1 - cluster.margin) / 1e9
    more = None
    for g in (2 ** k for k in range(0, 13)):
        if g > cluster.gpus and any(o["fits"] for o in candidates(m, scaled(cluster, g), global_batch, ds_config)):
            more = g
            break
    return {"fits": False, "closest": thrifty, "needs_gpu_memory_gb": need_gb, "needs_gpus": more,
            "options": len(options)}


def sweep(m: Measured, cluster: Cluster, global_batch: int = 16, gpu_counts=None, ds_config=None) -> list:
    """Per GPU count (1 .. 512) and stage: the fastest fitting configuration's memory and images/s (None when none
    fits); of equally fast ones, the one using the least memory."""
    rows = []
    for g in gpu_counts or [2 ** k for k in range(10)]:
        c = scaled(cluster, g)
        for stage in (0, 1, 2, 3):
            opts = [o for o in candidates(m, c, max(global_batch, g), ds_config) if o["stage"] == stage and o["fits"]]
            best = min(opts, key=lambda o: (round(o["step_s"], 6), o["memory"])) if opts else None  # tie: less memory
            rows.append({"gpus": g, "nodes": c.nodes, "stage": stage, "fits": best is not None,
                         "memory": best["memory"] if best else None,
                         "states": best["states"]["total"] if best else None, "images_per_s": best["images_per_s"] if best else None,
                         "with_cp": best["with_cp"] if best else None, "micro_batch": best["micro_batch"] if best else None,
                         "global_batch": best["global_batch"] if best else None})
    return rows
