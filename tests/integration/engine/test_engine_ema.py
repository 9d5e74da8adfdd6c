"""The EMA hook of the HTC++ Objects365 -> COCO recipes (``custom_hooks=[ExpMomentumEMAHook]``, engine/ema.py) in a
real run: the synthetic Mask R-CNN recipe, iteration-based with ``step=[]`` as those recipes, trained by 2 DeepSpeed
ranks (ZeRO-2 fp32). The average saved with every checkpoint follows mmdet's rule re-derived here in float64 from the
saved weights, and deleting the last checkpoints + ``--resume auto`` continues the average (and the losses)
bitwise."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from support import free_port
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

SYNTHETIC = str(DETECTION_RECIPES["synthetic_mask_rcnn"])
ITERS = 4
TOTAL_ITER = 2  # a fast momentum decay, so the average is visibly not the weights after 4 iterations
TAIL = f"""runner = dict(_delete_=True, type='IterBasedRunner', max_iters={ITERS})
lr_config = dict(_delete_=True, policy='step', warmup='linear', warmup_iters=2, warmup_ratio=0.001, step=[])
checkpoint_config = dict(_delete_=True, interval=1, max_keep_ckpts=-1)
evaluation = dict(_delete_=True, interval={ITERS}, metric=['bbox', 'segm'], save_best='auto')
custom_hooks = [dict(type='ExpMomentumEMAHook', resume_from=None, momentum=0.0001, priority=49,
                     total_iter={TOTAL_ITER})]
"""

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, coco_shards):
    from tiny_recipes import detection_recipe

    path = tmp_path_factory.mktemp("ema") / "tiny_mask_rcnn_ema.py"
    path.write_text(detection_recipe(SYNTHETIC, coco_shards, tail=TAIL))
    return path


def _train(recipe, work, extra=()):
    from launching import train

    return train(work, recipe=recipe, args=extra, port=free_port(), timeout=400, options=(
        "log_config.interval=1", "data.samples_per_gpu=2", "data.workers_per_gpu=0", "vis.num_images=0"))[1]


def _saved(tag_dir):
    """(weights, average) of a save: the consolidated model and rank 0's EMA state."""
    from vit_adapter_ds.checkpoint.deepspeed import consolidate_deepspeed
    from vit_adapter_ds.checkpoint.manager import saved_hook_states

    (ema,) = saved_hook_states(tag_dir)
    return consolidate_deepspeed(tag_dir), ema


def test_ema_follows_mmdets_rule_and_resumes_bitwise(tmp_path, recipe):
    from launching import losses

    ref = tmp_path / "ref"
    _train(recipe, ref)
    a = losses(ref)
    assert sorted(a) == list(range(1, ITERS + 1))
    root = ref / "checkpoints"
    saves = {k: _saved(root / f"iter_{k}") for k in range(1, ITERS + 1)}
    w1, e1 = saves[1]
    names = [k for k, v in w1.items() if v.is_floating_point() and "ema_" + k.replace(".", "_") in e1]
    assert len(names) > 50 and len(names) == len(e1)  # every float tensor of the model is averaged
    for k in range(1, ITERS):  # after the step of 0-based iteration k: ema <- (1 - m_k) ema + m_k w
        m = (1 - 0.0001) * math.exp(-(1 + k) / TOTAL_ITER) + 0.0001
        (_, e_prev), (w, e) = saves[k], saves[k + 1]
        for n in names:
            b = "ema_" + n.replace(".", "_")
            want = (1 - m) * e_prev[b].double() + m * w[n].double()
            assert torch.allclose(e[b].double(), want, rtol=1e-5, atol=1e-7), (k, n)
    moved = [n for n in names if not torch.equal(saves[ITERS][1]["ema_" + n.replace(".", "_")], saves[ITERS][0][n])]
    assert len(moved) > len(names) // 2  # the average is not the weights
    # IterBasedRunner (as the official recipes): the saved model weights are the trained ones, not the average

    res = tmp_path / "res"
    shutil.copytree(ref, res)
    for k in (3, 4):
        shutil.rmtree(res / "checkpoints" / f"iter_{k}")
    (res / "metrics.jsonl").unlink()
    out = _train(recipe, res, ["--resume", "auto"])
    assert "resumed from" in out and "at iteration 2" in out, out[-2000:]
    b = losses(res)
    assert sorted(b) == [3, 4] and all(b[i]["loss"] == a[i]["loss"] for i in b), (a, b)
    w, e = _saved(res / "checkpoints" / f"iter_{ITERS}")
    assert set(e) == set(saves[ITERS][1])
    assert all(torch.equal(e[k], saves[ITERS][1][k]) for k in e)
    assert all(torch.equal(w[k], saves[ITERS][0][k]) for k in w)
    shutil.rmtree(tmp_path, ignore_errors=True)
