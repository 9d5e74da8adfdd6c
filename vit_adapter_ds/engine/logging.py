"""Rank-0 observability: TensorBoard scalars and images, ``metrics.jsonl``, a tqdm progress bar, plain log lines.

Every method is a no-op on ranks other than 0, so callers need no ``if rank == 0``.

A resumed run reads as one clean run: records of iterations after the resume point (logged by the crashed run,
re-run now) move from ``metrics.jsonl`` to ``metrics.<time>.after_iter_<N>.jsonl``, and TensorBoard purges its events
after that step. A fresh start never destroys an earlier run's records (as mmcv's per-run timestamped logs): the
previous ``metrics.jsonl`` becomes ``metrics.<time>.jsonl`` and the previous TensorBoard event files move to
``tensorboard/run_<time>/``, which TensorBoard shows as a run of its own.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


class RunLogger:
    def __init__(self, work_dir, enabled: bool, total_iters: int, start_iter: int = 0, progress: bool = True,
                 resumed: bool | None = None):
        self.enabled = enabled
        self.work_dir = Path(work_dir)
        self.tb = None
        self.bar = None
        self._jsonl = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        resumed = bool(start_iter) if resumed is None else resumed
        self.tb_dir = self.work_dir / "tensorboard"
        path = self.work_dir / "metrics.jsonl"
        if not resumed:
            set_aside_previous_run(self.work_dir)
        elif path.exists():
            truncate_jsonl(path, start_iter)
        self.tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=start_iter + 1 if resumed else None)
        self._jsonl = open(path, "a")
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                            file=sys.stderr, mininterval=2.0)

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)
        sys.stdout.flush()

    def advance(self, n: int = 1, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def scalars(self, iteration: int, values: dict, prefix: str = "") -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            if v is not None and np.isfinite(v):
                self.tb.add_scalar(f"{prefix}{k}", v, iteration)

    def jsonl(self, record: dict) -> None:
        if self._jsonl is None:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def image(self, tag: str, iteration: int, hwc_uint8) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, hwc_uint8, iteration, dataformats="HWC")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _stamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S")


def _unused(path: Path) -> Path:
    """``path``, or ``path`` with ``_1``, ``_2``, ... before its last suffix when it exists already."""
    if not path.exists():
        return path
    for i in range(1, 10000):
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name next to {path}")


def set_aside_previous_run(work_dir) -> list[Path]:
    """Before a fresh (not resumed) run writes its logs: keep the previous run's ``metrics.jsonl`` as
    ``metrics.<time>.jsonl`` and move its TensorBoard event files to ``tensorboard/run_<time>/``. Returns the new
    paths."""
    work_dir = Path(work_dir)
    moved = []
    stamp = _stamp()
    metrics = work_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        target = _unused(work_dir / f"metrics.{stamp}.jsonl")
        os.replace(metrics, target)
        moved.append(target)
    tb = work_dir / "tensorboard"
    events = sorted(p for p in tb.iterdir() if p.is_file()) if tb.is_dir() else []
    if events:
        folder = _unused(tb / f"run_{stamp}")
        folder.mkdir()
        for p in events:
            os.replace(p, folder / p.name)
        moved.append(folder)
    return moved


def truncate_jsonl(path: Path, last_iter: int) -> int:
    """Keep the records of ``path`` with ``iter <= last_iter`` (and unparsable lines' predecessors only); atomic.
    The records it drops (and lines cut by a crash) are kept in ``metrics.<time>.after_iter_<last_iter>.jsonl``
    next to it. Returns the number of records dropped."""
    kept, dropped_lines = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            keep = int(rec.get("iter", 0)) <= last_iter
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            keep = False  # a line cut by the crash
        (kept if keep else dropped_lines).append(line)
    dropped = len(dropped_lines)
    if dropped:
        aside = _unused(path.with_name(f"{path.stem}.{_stamp()}.after_iter_{last_iter}{path.suffix}"))
        aside.write_text("".join(d + "\n" for d in dropped_lines))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        tmp.replace(path)
    return dropped
