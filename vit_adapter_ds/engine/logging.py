"""Rank-0 observability: TensorBoard scalars and images, ``metrics.jsonl``, a tqdm progress bar, plain log lines.

Every method is a no-op on ranks other than 0, so callers need no ``if rank == 0``.

A resumed run reads as one clean run: records of iterations after the resume point (logged by the crashed run,
re-run now) are dropped from ``metrics.jsonl``, and TensorBoard purges its events after that step.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


class RunLogger:
    def __init__(self, work_dir, enabled: bool, total_iters: int, start_iter: int = 0, progress: bool = True):
        self.enabled = enabled
        self.work_dir = Path(work_dir)
        self.tb = None
        self.bar = None
        self._jsonl = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb_dir = self.work_dir / "tensorboard"
        self.tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=start_iter + 1 if start_iter else None)
        path = self.work_dir / "metrics.jsonl"
        if path.exists():
            truncate_jsonl(path, start_iter)
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


def truncate_jsonl(path: Path, last_iter: int) -> int:
    """Keep the records of ``path`` with ``iter <= last_iter`` (and unparsable lines' predecessors only); atomic.
    Returns the number of records dropped."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line cut by the crash
            continue
        if int(rec.get("iter", 0)) <= last_iter:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        tmp.replace(path)
    return dropped
