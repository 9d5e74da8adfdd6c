"""The runtime shared by train, eval and predict: launcher environment -> rank / world size / device, process group.

Works under every launcher: ``deepspeed``, ``torchrun``, ``srun`` and a plain ``python`` process.
``setup_env()`` fills the torch.distributed environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Under SLURM (``srun``) they are mapped from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, because
neither ``deepspeed.init_distributed`` nor ``torch.distributed`` reads SLURM variables. A plain ``python`` run
becomes rank 0 of 1. ``init_distributed()`` starts the process group (NCCL on GPUs, gloo on CPUs) through DeepSpeed
(training) or torch (``deepspeed=False``: evaluation and prediction), ``device()`` is this rank's device.

On a CPU, DeepSpeed compiles its shared-memory all-reduce op when the process group starts (about 2 minutes on first
use); that op serves only DeepSpeed's *inference* all-reduce, never training, so it is skipped here
(``VIT_ADAPTER_DS_SHM_OP=1`` builds it anyway).
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess

import torch
import torch.distributed as dist


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=20)
        host = out.stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "127.0.0.1"
    try:
        socket.gethostbyname(host)
    except OSError:  # emulated nodes: fall back to the node address
        try:
            out = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True, timeout=20)
            for tok in out.stdout.split():
                if tok.startswith("NodeAddr="):
                    return tok.split("=", 1)[1]
        except (OSError, subprocess.SubprocessError):
            pass
        return "127.0.0.1"
    return host


def setup_env(default_port: int = 29500) -> dict:
    """Make RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT present in ``os.environ``; return them.

    Priority: variables already set by the launcher (deepspeed / torchrun), then SLURM (``srun``), then a single
    process (rank 0 of 1, port ``default_port``).
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        env.setdefault("MASTER_PORT", str(20000 + job % 20000))
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(default_port))
    return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` where CUDA exists, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _skip_cpu_shm_op() -> None:
    if torch.cuda.is_available() or os.environ.get("VIT_ADAPTER_DS_SHM_OP", "0") not in ("", "0"):
        return
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False  # read by deepspeed.comm.torch.build_shm_op


def init_distributed(timeout_s: float = 600.0, deepspeed: bool = True) -> None:
    """Initialise the process group (nccl on GPU, gloo on CPU) with a bounded collective timeout; a no-op when it
    exists or, for ``deepspeed=False``, when there is a single process."""
    setup_env()
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = datetime.timedelta(seconds=timeout_s)
    if deepspeed:
        import deepspeed as ds
        from deepspeed.accelerator import get_accelerator

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        _skip_cpu_shm_op()
        ds.init_distributed(dist_backend=get_accelerator().communication_backend_name(), timeout=timeout)
    elif int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object from ``src`` to every rank (identity with one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device="cpu") -> dict[str, float]:
    """Average a dict of python floats over ranks (float64, so the order of keys must match on every rank)."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, as DDP does before a forward."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
