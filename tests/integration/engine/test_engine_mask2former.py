"""Mask2Former under the real engine: the tiny ``synthetic_mask2former`` recipe trains with 2-rank DeepSpeed ZeRO-2 on
the CPU (matching, point-sampled losses and deep supervision across ranks), its mIoU rises, and a SIGKILL of the
whole job followed by ``--resume auto`` reproduces the uninterrupted losses bitwise (the point sampling draws from
the global torch RNG, which the checkpoint restores)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from support import free_port
from launching import TRAIN, command, env, finished, launch, losses, train_args
from tiny_recipes import seg_size_options

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ITERS = 24


def _args(work, shards, extra=()):
    return train_args(work, recipe="synthetic_mask2former", args=extra, options=(
        f"runner.max_iters={ITERS}", "checkpoint_config.interval=8", "evaluation.interval=8", "log_config.interval=1",
        "data.samples_per_gpu=2", "data.workers_per_gpu=0", f"data.train.shard_dir={shards}/train",
        f"data.val.shard_dir={shards}/val", *seg_size_options(64), "lr_config.warmup_iters=2", "optimizer.lr=1e-3",
        "vis.num_images=1"))


def _run(work, shards, extra=(), timeout=600):
    rc, out = launch(TRAIN, _args(work, shards, extra), port=free_port(), timeout=timeout)
    assert rc == 0, out[-4000:]
    return out


def test_mask2former_trains_and_resumes_bitwise_after_sigkill(tmp_path, seg_shards):
    shards = seg_shards
    ref = tmp_path / "ref"
    _run(ref, shards)
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    assert {"loss", "loss_cls", "loss_mask", "loss_dice", "d0.loss_cls"} <= set(a[1])
    val = [json.loads(line) for line in open(ref / "metrics.jsonl") if '"val"' in line]
    assert [v["iter"] for v in val] == [8, 16, 24]
    assert val[-1]["mIoU"] > val[0]["mIoU"], val
    assert list((ref / "predictions" / f"iter_{ITERS}").glob("*.png"))

    crashed = tmp_path / "crash"
    proc = subprocess.Popen(command(TRAIN, _args(crashed, shards), port=free_port()), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=env(), start_new_session=True)
    t0 = time.time()
    try:  # kill the whole job (launcher and both ranks) once iteration 10 is logged: checkpoint iter_8 exists
        while time.time() - t0 < 400:
            path = crashed / "metrics.jsonl"
            if path.exists() and any('"iter": 10,' in line and '"train"' in line for line in open(path)):
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:  # torchrun starts its workers in sessions of their own: kill them by work dir, then the launcher
        subprocess.run(["pkill", "-KILL", "-f", "--", f"--work-dir {crashed} "], check=False)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not finished(crashed)
    out = _run(crashed, shards, ["--resume", "auto"])
    resumed = int(re.search(r"resumed from \S+ at iteration (\d+)", out).group(1))
    assert resumed in (8, 16), out[-2000:]
    b = losses(crashed)
    for it in range(resumed + 1, ITERS + 1):
        assert b[it]["loss"] == a[it]["loss"] and b[it]["loss_mask"] == a[it]["loss_mask"], (it, a[it], b[it])
    shutil.rmtree(tmp_path, ignore_errors=True)
