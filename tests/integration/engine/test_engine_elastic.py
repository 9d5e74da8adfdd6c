"""Elastic resume with the real quickstart model (ViT-Adapter + UperNet, BatchNorm everywhere): a checkpoint saved on
N ranks and resumed on M != N ranks (DeepSpeed universal checkpoint) must hold exactly what a resume on N ranks
holds -- every tensor of the state dict, BatchNorm statistics included -- and evaluate to the same metrics as the
evaluation the original run made right before it stopped.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from launching import REPO, TRAIN, launch
from tiny_recipes import seg_size_options

CROP = 64

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ITERS = 4


def _args(work, shards, ds):
    return ["--ds_config", str(REPO / "ds_configs" / f"{ds}.json"), "--work-dir", str(work), "--no-progress",
            "--dist-timeout", "120", "--resume", "auto", "--cfg-options", f"runner.max_iters={ITERS}",
            f"checkpoint_config.interval={ITERS}", f"evaluation.interval={ITERS}", "log_config.interval=1",
            "data.samples_per_gpu=2", "data.workers_per_gpu=0", "global_batch_size=4",
            f"data.train.shard_dir={shards}/train", f"data.val.shard_dir={shards}/val",
            *seg_size_options(CROP),
            "lr_config.warmup_iters=2", "vis.num_images=0"]


def _launch(script, ranks, args):
    rc, out = launch(script, args, ranks=ranks, timeout=600)
    assert rc == 0, out[-4000:]
    return out


@pytest.mark.parametrize("ds,saved_on,resumed_on", [("zero2_fp32", 2, 1), ("zero3_fp32", 1, 2)])
def test_resume_on_another_world_size_restores_everything(tmp_path, seg_shards, ds, saved_on, resumed_on):
    shards = seg_shards
    ref = tmp_path / "ref"
    _launch(TRAIN, saved_on, _args(ref, shards, ds))
    before = [json.loads(line) for line in open(ref / "metrics.jsonl") if '"val"' in line][-1]
    probe = REPO / "tests" / "helpers" / "elastic_probe.py"
    dumps = {}
    for ranks in (saved_on, resumed_on):
        work = tmp_path / f"on{ranks}"
        shutil.copytree(ref, work)
        out = _launch(probe, ranks, [*_args(work, shards, ds), "--probe-out", str(work / "probe.pt")])
        assert "resumed from" in out
        dumps[ranks] = torch.load(work / "probe.pt", weights_only=True)
    same, other = dumps[saved_on], dumps[resumed_on]
    assert same["iteration"] == other["iteration"] == ITERS
    assert (tmp_path / f"on{resumed_on}" / "checkpoints" / f"iter_{ITERS}_universal" / "COMPLETE").is_file()
    assert set(same["state_dict"]) == set(other["state_dict"])
    bn = [k for k in same["state_dict"] if k.endswith("num_batches_tracked")]
    assert bn and all(int(same["state_dict"][k]) >= ITERS for k in bn)  # a fresh model has 0 (the reported bug)
    for k, v in same["state_dict"].items():
        assert torch.equal(v, other["state_dict"][k]), k
    for key in ("mIoU", "aAcc", "mAcc"):
        assert same["metrics"][key] == before[key] and other["metrics"][key] == before[key], (key, before,
                                                                                                 same["metrics"],
                                                                                                 other["metrics"])
