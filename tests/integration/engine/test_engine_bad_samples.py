"""A bad-sample budget overrun under 2-rank DeepSpeed training: every rank stops promptly with the same clear
error (no rank left waiting in a collective), naming the budget; with a budget that allows the corrupt sample the
same data trains to the end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import free_port
from test_engine_distributed import REPO, _env

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def corrupt_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "synthetic"
    res = subprocess.run([sys.executable, "-m", "vit_adapter_ds.data.make_shards", "synthetic", "--out", str(out),
                          "--num-train", "16", "--num-val", "4", "--size", "64", "96", "--workers", "1",
                          "--no-progress"], capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    shard = manifest["shards"][0]
    offset, size = shard["samples"][3][1]["seg.png"]
    path = out / "train" / shard["name"]
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0xFF  # one flipped byte inside the label PNG: a CRC mismatch, never a crash
    path.write_bytes(bytes(data))
    return out


def _train(work, shards, port, max_bad_fraction):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "launch" / "train.py"), "--ds_config", str(REPO / "ds_configs" / "zero2_fp32.json"),
           "--work-dir", str(work), "--no-progress", "--dist-timeout", "60", "--cfg-options", "runner.max_iters=6",
           "checkpoint_config.interval=6", "evaluation.interval=6", "log_config.interval=1", "vis.num_images=0",
           "data.samples_per_gpu=2", "data.workers_per_gpu=0", f"data.train.shard_dir={shards}/train",
           f"data.val.shard_dir={shards}/val", "data.train.crop_size=(64,64)", "data.train.scale=(128,64)",
           "evaluation.img_scale=(128,64)", f"data.train.max_bad_fraction={max_bad_fraction}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, start_new_session=True)


def test_budget_overrun_stops_every_rank(tmp_path, corrupt_shards):
    res = _train(tmp_path / "strict", corrupt_shards, free_port(), 0.0)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for rank in (0, 1):  # the same error on both ranks, raised by the loader (not a collective timing out)
        lines = [line for line in out.splitlines() if line.startswith(f"[rank{rank}]") and "TooManyBadSamples" in line]
        assert lines, out[-4000:]
    assert "Timed out" not in out
    assert not (tmp_path / "strict" / "TRAINING_FINISHED").exists()


def test_budget_that_allows_the_sample_trains(tmp_path, corrupt_shards):
    res = _train(tmp_path / "lenient", corrupt_shards, free_port(), 0.1)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert (tmp_path / "lenient" / "TRAINING_FINISHED").exists()
