"""Launching tiny trainings, shared by every test that runs the engine in child processes.

* :func:`launch` runs a script under ``torchrun`` (or the ``deepspeed`` launcher, or plain python for one rank) in its
  own process group, killed as a group on timeout, on a free master port;
* :func:`train` trains a recipe through ``launch/train.py`` (the real parts);
* :func:`train_stub` trains the stub task of ``tests/helpers/stub_task.py`` (stand-in model and data);
* :func:`make_synthetic_shards` writes the built-in synthetic shards of a layout (``ade20k`` or ``coco``);
* :func:`finished`, :func:`losses`, :func:`records` read what a run left in its work dir.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "helpers" / "stub_task.py"
TRAIN = REPO / "launch" / "train.py"


def env(extra=None) -> dict:
    """The environment of a child run: this checkout first on PYTHONPATH, one OpenMP thread, the shared cache of
    JIT-built ops."""
    out = dict(os.environ)
    out.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vit_adapter_ds" / "torch_extensions"))
    out["OMP_NUM_THREADS"] = "1"
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.update(extra or {})
    return out


def prune_stale_extension_locks(max_age_s: float = 900) -> None:
    """JIT-built ops are cached in $TORCH_EXTENSIONS_DIR, and a killed build leaves a ``lock`` that blocks every later
    build forever: remove locks older than ``max_age_s`` (a live build is younger)."""
    for lock in Path(env()["TORCH_EXTENSIONS_DIR"]).glob("**/lock"):
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


def command(script, args, *, ranks: int = 2, port: int, launcher: str = "torchrun") -> list[str]:
    """The command line that runs ``script args`` on ``ranks`` processes (one rank: plain python, which needs
    ``MASTER_PORT`` in its environment, see :func:`launch`)."""
    script = [str(script), *map(str, args)]
    if ranks == 1:
        return [sys.executable, *script]
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(port), *script]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port),
            *script]


def launch(script, args, *, ranks: int = 2, port: int | None = None, launcher: str = "torchrun", extra_env=None,
           timeout: float = 400, cwd=None) -> tuple[int, str]:
    """Run ``script args`` on ``ranks`` processes; return (returncode, stdout+stderr). A run past ``timeout`` is
    killed with its whole process group and fails the test with the end of its output."""
    if port is None:
        from support import free_port
        port = free_port()
    cmd = command(script, args, ranks=ranks, port=port, launcher=launcher)
    if ranks == 1:
        extra_env = dict(extra_env or {}, MASTER_PORT=str(port))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env(extra_env), cwd=None if cwd is None else str(cwd))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timeout after {timeout}s:\n{out[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # orphans of the launcher, if any
        except ProcessLookupError:
            pass
        for f in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            f.unlink(missing_ok=True)
    return proc.returncode, out


def run_status(work_dir) -> dict | None:
    """The record of how the run in ``work_dir`` ended (``status.json``, ``vit_adapter_ds/engine/status.py``: state
    running / finished / stopped / failed, iteration, metrics of the final evaluation); None when there is none."""
    from vit_adapter_ds.engine.status import read_status

    return read_status(work_dir)


def finished(work_dir) -> bool:
    """Whether the run in ``work_dir`` recorded that it finished training (``status.json`` says ``finished``)."""
    return (run_status(work_dir) or {}).get("state") == "finished"


def train_args(work_dir, *, recipe=None, args=(), options=(), ds: str = "zero2_fp32") -> list:
    """The arguments of ``launch/train.py``: ``--config recipe`` when given (the built-in synthetic recipe
    otherwise), ``args`` before ``--cfg-options options``."""
    cli = ["--ds_config", REPO / "ds_configs" / f"{ds}.json", "--work-dir", work_dir, "--no-progress",
           "--dist-timeout", "60", *(["--config", recipe] if recipe is not None else []), *args]
    return cli + (["--cfg-options", *options] if options else [])


def train(work_dir, *, recipe=None, args=(), options=(), ds: str = "zero2_fp32", ranks: int = 2, port=None,
          timeout: float = 400, extra_env=None, expect_ok: bool = True, script=TRAIN) -> tuple[int, str]:
    """Train through ``launch/train.py`` (or ``script`` taking its arguments, see :func:`train_args`). With
    ``expect_ok`` the run must exit 0 and record that it finished."""
    rc, out = launch(script, train_args(work_dir, recipe=recipe, args=args, options=options, ds=ds), ranks=ranks,
                     port=port, extra_env=extra_env, timeout=timeout)
    if expect_ok:
        assert rc == 0, out[-4000:]
        assert finished(work_dir), out[-4000:]
    return rc, out


def train_stub(args, work_dir, *, ranks=2, port=None, ds="zero2_fp32", iters=6, extra_env=None, options=(),
               timeout=240, expect_ok=True, launcher="torchrun") -> tuple[int, str]:
    """Train the stub task (``tests/helpers/stub_task.py``) for ``iters`` iterations, checkpoints every 3 (3 kept),
    one evaluation at the end; return (returncode, output)."""
    shards = work_dir.parent / "fake_shards"
    shards.mkdir(exist_ok=True)
    opts = [f"runner.max_iters={iters}", "checkpoint_config.interval=3", "checkpoint_config.max_keep_ckpts=3",
            f"evaluation.interval={iters}", "log_config.interval=1", "data.samples_per_gpu=2",
            f"data.train.shard_dir={shards}", f"data.val.shard_dir={shards}", "global_batch_size=None",
            "model.decode_head.dropout_ratio=0.0", "evaluation.save_best=None", *options]
    cli = ["--ds_config", REPO / "ds_configs" / f"{ds}.json", "--work-dir", work_dir, "--no-progress",
           "--dist-timeout", "60", *args, "--cfg-options", *opts]
    rc, out = launch(STUBS, cli, ranks=ranks, port=port, launcher=launcher, extra_env=extra_env, timeout=timeout,
                     cwd=work_dir.parent)
    if expect_ok:
        assert rc == 0, out[-4000:]
        assert finished(work_dir), out[-4000:]
    return rc, out


def make_synthetic_shards(out, layout: str = "ade20k", num_train: int = 32, num_val: int = 6, size=(64, 96),
                          raw_dir=None):
    """The built-in synthetic shards (``make_shards synthetic``) of ``layout`` in ``out``/{train,val}; ``raw_dir``:
    keep the raw synthetic dataset (its on-disk layout) there."""
    raw = ["--raw-dir", str(raw_dir)] if raw_dir is not None else []
    res = subprocess.run([sys.executable, "-m", "vit_adapter_ds.data.make_shards", "synthetic", "--layout", layout,
                          "--out", str(out), "--num-train", str(num_train), "--num-val", str(num_val), "--size",
                          str(size[0]), str(size[1]), "--workers", "1", "--no-progress", *raw], capture_output=True,
                         text=True, env=env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return Path(out)


def records(work_dir, mode: str | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (those of ``mode`` -- 'train', 'val' -- when given)."""
    recs = [json.loads(line) for line in open(Path(work_dir) / "metrics.jsonl")]
    return [r for r in recs if mode is None or r["mode"] == mode]


def losses(work_dir) -> dict[int, dict]:
    """Training records by iteration."""
    return {r["iter"]: r for r in records(work_dir, "train")}


# ---------------------------------------------------------------------------------------------- kills
def descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (from /proc; torchrun may start its workers in sessions of their own)."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [c for c, pp in parent.items() if pp == pid]
        out += kids
        todo += kids
    return out


def _logged(work_dir, iteration: int) -> bool:
    """Whether ``metrics.jsonl`` holds the training record of ``iteration`` (a line still being written is skipped)."""
    path = Path(work_dir) / "metrics.jsonl"
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("mode") == "train" and rec.get("iter") == iteration:
            return True
    return False


def train_and_kill(work_dir, *, after_iter: int, recipe=None, args=(), options=(), ds: str = "zero2_fp32",
                   ranks: int = 2, timeout: float = 400) -> None:
    """Start :func:`train`'s run and SIGKILL the whole job -- launcher and every rank, as a node failure would -- as
    soon as the training record of iteration ``after_iter`` is logged (a checkpoint taken after iteration
    ``after_iter - 1`` is then complete). Fails when the run ends, or does not get there within ``timeout``."""
    from support import free_port

    port = free_port()
    proc = subprocess.Popen(command(TRAIN, train_args(work_dir, recipe=recipe, args=args, options=options, ds=ds),
                                    ranks=ranks, port=port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(), start_new_session=True)
    t0 = time.time()
    try:
        while not _logged(work_dir, after_iter):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before iteration {after_iter}"
            assert time.time() - t0 < timeout, f"iteration {after_iter} not logged within {timeout} s"
            time.sleep(0.05)
    finally:
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        for f in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            f.unlink(missing_ok=True)


def resume_copy_through_a_kill(ref, res, *, recipe, drop: int, kill_after: int, options=(), timeout: float = 550):
    """The detection families' bitwise-resume check, with a real crash in it: ``res`` = run ``ref`` without its
    checkpoint of iteration ``drop`` (and without its metrics), resumed (``--resume auto``) and SIGKILLed as a whole
    job once iteration ``kill_after`` is logged -- past the checkpoint it resumed from, before the next -- then resumed
    again to the end. Returns the output of that last run; ``losses(res)`` / ``records(res)`` hold the records of the
    iterations after the resumed checkpoint (the killed run's, then the last run's for the same iterations)."""
    import shutil

    shutil.copytree(ref, res)
    shutil.rmtree(Path(res) / "checkpoints" / f"iter_{drop}")
    (Path(res) / "metrics.jsonl").unlink()
    train_and_kill(res, recipe=recipe, args=["--resume", "auto"], options=options, after_iter=kill_after,
                   timeout=timeout)
    assert not finished(res) and not (Path(res) / "checkpoints" / f"iter_{drop}").exists()
    rc, out = launch(TRAIN, train_args(res, recipe=recipe, args=["--resume", "auto"], options=options),
                     timeout=timeout)
    assert rc == 0 and finished(res), out[-4000:]
    return out
