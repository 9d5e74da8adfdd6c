"""A bad-sample budget overrun under 2-rank DeepSpeed training: every rank stops promptly with the same clear
error (no rank left waiting in a collective), naming the budget; with a budget that allows the corrupt sample the
same data trains to the end."""
from __future__ import annotations

import json

import pytest

from launching import finished, make_synthetic_shards, train
from tiny_recipes import seg_size_options

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def corrupt_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "synthetic"
    make_synthetic_shards(out, "ade20k", 16, 4, (64, 96))
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    shard = manifest["shards"][0]
    offset, size = shard["samples"][3][1]["seg.png"]
    path = out / "train" / shard["name"]
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0xFF  # one flipped byte inside the label PNG: a CRC mismatch, never a crash
    path.write_bytes(bytes(data))
    return out


def _train(work, shards, max_bad_fraction):
    """2-rank training through launch/train.py on ``shards``; returns (returncode, output)."""
    return train(work, expect_ok=False, timeout=300, options=(
        "runner.max_iters=6", "checkpoint_config.interval=6", "evaluation.interval=6", "log_config.interval=1",
        "vis.num_images=0", "data.samples_per_gpu=2", "data.workers_per_gpu=0", f"data.train.shard_dir={shards}/train",
        f"data.val.shard_dir={shards}/val", *seg_size_options(64),
        f"data.train.max_bad_fraction={max_bad_fraction}"))


def test_budget_overrun_stops_every_rank(tmp_path, corrupt_shards):
    rc, out = _train(tmp_path / "strict", corrupt_shards, 0.0)
    assert rc != 0
    for rank in (0, 1):  # the same error on both ranks, raised by the loader (not a collective timing out)
        lines = [line for line in out.splitlines() if line.startswith(f"[rank{rank}]") and "TooManyBadSamples" in line]
        assert lines, out[-4000:]
    assert "Timed out" not in out
    assert not finished(tmp_path / "strict")


def test_budget_that_allows_the_sample_trains(tmp_path, corrupt_shards):
    rc, out = _train(tmp_path / "lenient", corrupt_shards, 0.1)
    assert rc == 0, out[-4000:]
    assert finished(tmp_path / "lenient")
