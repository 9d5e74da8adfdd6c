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

Ranks do not outlive their launcher (``bind_to_launcher()``, called by ``init_distributed()``): a process started by
a launcher (``RANK`` / ``LOCAL_RANK`` / ``SLURM_PROCID`` in its environment when this module was imported) asks the
Linux kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``; the parent is deepspeed's ``launch.py``,
torchrun's agent or ``slurmstepd``), and a watchdog thread sends it SIGTERM when the ``deepspeed`` runner above
``launch.py`` is gone (the runner does not pass SIGTERM on to ``launch.py``). A training rank then stops the way a
stop signal always does: it finishes the iteration, saves a complete checkpoint and exits with status 3.
``VIT_ADAPTER_DS_LAUNCHER_WATCH=0`` turns both off.
"""
from __future__ import annotations

import os

# recorded before anything slow is imported: the process that started this one (the launcher), and whether a
# launcher set the rank variables (setup_env() fills them in later for a plain ``python`` run)
_PARENT_AT_IMPORT = os.getppid()
_LAUNCHED = any(k in os.environ for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))

import ctypes  # noqa: E402
import datetime  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


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


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (``[0]`` state, ``[1]`` parent pid, ``[19]`` start
    time); None for a process that is gone or a zombie."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def _cmdline(pid: int) -> list[str]:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_deepspeed_launch(cmd: list[str]) -> bool:
    """``python -u -m deepspeed.launcher.launch ...`` (the per-node launcher that starts the ranks)."""
    return "deepspeed.launcher.launch" in cmd[:4] or any(a.endswith("deepspeed/launcher/launch.py") for a in cmd[:3])


def is_deepspeed_runner(cmd: list[str]) -> bool:
    """The ``deepspeed`` command (``python .../bin/deepspeed ...``), which starts ``launch.py``."""
    return any(os.path.basename(a) in ("deepspeed", "ds") for a in cmd[:2]) or "deepspeed.launcher.runner" in cmd[:4]


class LauncherWatch:
    """A daemon thread that sends SIGTERM to this process once one of ``watched`` (pid -> description) has exited
    (checked every ``interval`` seconds; a reused pid is told apart by its start time)."""

    def __init__(self, watched: dict[int, str], interval: float = 1.0):
        self.watched = {pid: (what, (_stat(pid) or [None] * 20)[19]) for pid, what in watched.items()}
        self.interval = interval
        self.fired = None
        self._thread = threading.Thread(target=self._run, name="launcher-watch", daemon=True)

    def start(self) -> "LauncherWatch":
        self._thread.start()
        return self

    def _run(self) -> None:
        import time
        while True:
            time.sleep(self.interval)
            for pid, (what, start) in self.watched.items():
                st = _stat(pid)
                if st is None or st[19] != start:
                    self.fired = pid
                    print(f"[rank {os.environ.get('RANK', '?')}] {what} (pid {pid}) has exited: sending SIGTERM to "
                          f"this rank (pid {os.getpid()}) so that it does not run on as an orphan",
                          file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return


_BOUND: dict | None = None


def bind_to_launcher() -> dict | None:
    """Make this rank get SIGTERM when its launcher dies; returns what is watched, None when nothing is (not started
    by a launcher, not Linux, ``VIT_ADAPTER_DS_LAUNCHER_WATCH=0``). Idempotent.

    * ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel signals this process when its parent exits (deepspeed's
      ``launch.py``, torchrun's agent, ``slurmstepd``, or whoever set ``RANK``). A parent that died before the call
      (the parent pid differs from the one recorded at import) is treated the same: SIGTERM at once.
    * When the parent is deepspeed's ``launch.py`` and its parent the ``deepspeed`` runner, a
      :class:`LauncherWatch` thread watches the runner: a SIGTERM to the runner alone ends it without reaching
      ``launch.py``, which would otherwise keep the ranks training.
    """
    global _BOUND
    if _BOUND is not None:
        return _BOUND
    if (not _LAUNCHED or not sys.platform.startswith("linux")
            or os.environ.get("VIT_ADAPTER_DS_LAUNCHER_WATCH", "1") in ("0", "")):
        return None
    parent = _PARENT_AT_IMPORT
    bound = {"parent": parent, "pdeathsig": False, "watch": {}}
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        bound["pdeathsig"] = libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    watched = {} if bound["pdeathsig"] else {parent: "the launcher"}
    pcmd = _cmdline(parent)
    if is_deepspeed_launch(pcmd):
        st = _stat(parent)
        runner = int(st[1]) if st else 0
        if runner > 1 and is_deepspeed_runner(_cmdline(runner)):
            watched[runner] = "the deepspeed runner"
    bound["watch"] = watched
    _BOUND = bound
    if os.getppid() != parent:  # the parent died before the prctl: the kernel will not signal any more
        print(f"[rank {os.environ.get('RANK', '?')}] the launcher (pid {parent}) has already exited: sending SIGTERM "
              "to this rank", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    if watched:
        LauncherWatch(watched).start()
    return bound


def init_distributed(timeout_s: float = 600.0, deepspeed: bool = True) -> None:
    """Initialise the process group (nccl on GPU, gloo on CPU) with a bounded collective timeout; a no-op when it
    exists or, for ``deepspeed=False``, when there is a single process. Binds the rank to its launcher first
    (:func:`bind_to_launcher`)."""
    setup_env()
    bind_to_launcher()
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


def close_distributed() -> None:
    """Destroy the process group (when one exists) at the end of a command that returns normally: a process left to
    tear gloo / NCCL down at interpreter exit can abort ("terminate called without an active exception", SIGABRT)
    after its work is done, which the launcher reports as a failed rank."""
    if dist.is_initialized():
        dist.destroy_process_group()


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


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` with one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


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
