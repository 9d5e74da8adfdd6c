"""``<work_dir>/status.json``: how the last training run in a work dir ended, for wrappers (batch scripts, CI) that
cannot trust a launcher's exit status -- the ``deepspeed`` runner exits 0 when its ``launch.py`` is killed by a
signal, and ``srun``'s status is unreliable when all ranks exit at once.

Rank 0 writes it (atomically: temporary file, fsync, rename) through :func:`recorded`:

* ``{"state": "running", ...}`` when training starts. Still ``running`` after the launcher has exited means rank 0
  was killed (SIGKILL, out of memory, node failure): treat it as a crash and resume with ``--resume auto``.
* ``{"state": "finished", "iteration": N, "metrics": {...}, ...}``: training reached ``runner.max_iters``
  (``metrics``: the final evaluation).
* ``{"state": "stopped", "iteration": N, "signal": "SIGUSR1", "exit_status": 3, ...}``: a stop signal; checkpoint
  ``iter_<N>`` is complete; requeue / resume.
* ``{"state": "failed", "error": "<exception>", ...}``: an exception on rank 0 (also when another rank died and
  rank 0's next collective failed).

Every record has ``work_dir``, ``pid``, ``host`` and ``time`` (seconds since the epoch). It is the only record of
how a run ended: ``launch/slurm/train.sbatch`` requeues on ``stopped``, ``launch/quickstart.sh`` reports
``finished``, and the tests read it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

from ..utils.redact import redact_url

STATUS_FILE = "status.json"
STATES = ("running", "finished", "stopped", "failed")


def write_status(work_dir, state: str, **info) -> Path:
    """Write ``work_dir/status.json`` atomically; returns its path."""
    if state not in STATES:
        raise ValueError(f"status state must be one of {STATES}, got {state!r}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    rec = {"state": state, **info, "work_dir": str(work_dir), "pid": os.getpid(), "host": socket.gethostname(),
           "time": time.time()}
    path = work_dir / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:  # an error message may quote a signed shard URL: never its secrets
        f.write(redact_url(json.dumps(rec, indent=1, default=str)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_stopped(work_dir, iteration: int, signum: int, exit_status, **info) -> Path:
    """The ``stopped`` record: checkpoint ``iter_<iteration>`` is complete, ``signum`` asked for the stop."""
    return write_status(work_dir, "stopped", **{**info, "iteration": iteration, "signal": signal.Signals(signum).name,
                                                "exit_status": exit_status})


def read_status(work_dir) -> dict | None:
    """The record of ``work_dir/status.json``, None when there is none."""
    path = Path(work_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def recorded(work_dir, *, main: bool = True):
    """Around a training run: ``running`` on entry; ``finished`` / ``stopped`` / ``failed`` on the way out (the
    exception is re-raised). A stop is a ``SystemExit`` carrying ``iteration`` and ``signum`` (the trainer's
    ``TrainingInterrupted``). ``main=False`` (ranks other than 0) writes nothing. The yielded dict is merged into the
    final record (e.g. ``info["iteration"] = max_iters``)."""
    info: dict = {}
    if main:
        write_status(work_dir, "running")
    try:
        yield info
    except SystemExit as e:
        if main:
            if hasattr(e, "iteration") and hasattr(e, "signum"):
                write_stopped(work_dir, e.iteration, e.signum, e.code, **info)
            else:
                write_status(work_dir, "failed", **{**info, "error": f"SystemExit({e.code!r})", "exit_status": e.code})
        raise
    except BaseException as e:
        if main:
            write_status(work_dir, "failed", **{**info, "error": f"{type(e).__name__}: {e}"[:4000]})
        raise
    else:
        if main:
            write_status(work_dir, "finished", **info)
