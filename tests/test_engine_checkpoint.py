"""CheckpointManager rules (no DeepSpeed needed): mmcv's max_keep_ckpts semantics (-1 / None keep all), the best
checkpoint of save_best is recorded and never pruned, leftovers of interrupted saves are removed, the saved train
state loads with weights_only=True."""
from __future__ import annotations

import json

import torch

from vit_adapter_ds.engine.checkpoint import BEST, MARKER, CheckpointManager, TrainState, complete_tags


def _tags(root, iters, complete=True):
    for it in iters:
        d = root / f"iter_{it}"
        d.mkdir(parents=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (d / MARKER).write_text(json.dumps({"iteration": it, "world_size": 1}))


def _names(root):
    return [t for _, t, _ in complete_tags(root)]


def test_keep_all_with_minus_one_and_none(tmp_path):
    for keep in (-1, None):
        work = tmp_path / str(keep)
        m = CheckpointManager(work, keep)
        _tags(m.root, [1, 2, 3, 4, 5])
        m.prune()
        assert _names(m.root) == [f"iter_{i}" for i in (1, 2, 3, 4, 5)]


def test_keep_last_k_spares_the_best_and_drops_interrupted_saves(tmp_path):
    m = CheckpointManager(tmp_path, 2)
    _tags(m.root, [1, 2, 3, 4, 5])
    (m.root / "iter_4_tmp").mkdir()  # not a tag name: never touched
    (m.root / "iter_0").mkdir()      # an interrupted save older than the newest complete one
    assert m.update_best("mIoU", 0.5, 2)
    assert not m.update_best("mIoU", 0.4, 3)  # not better: best stays at iteration 2
    assert m.update_best("mIoU", 0.6, 2) and json.loads((m.root / BEST).read_text())["value"] == 0.6
    m.prune()
    assert _names(m.root) == ["iter_2", "iter_4", "iter_5"]
    assert not (m.root / "iter_0").exists() and (m.root / "iter_4_tmp").exists()


def test_train_state_round_trips_with_weights_only(tmp_path):
    state = TrainState(iteration=7, loader={"epoch": 1, "samples_consumed_in_epoch": 8},
                       buffers={"bn.running_mean": torch.arange(3.0)}, rank=0, world_size=2)
    torch.save(state.to_dict(), tmp_path / "extra_rank0.pt")
    back = TrainState.from_dict(torch.load(tmp_path / "extra_rank0.pt", weights_only=True))
    assert back.iteration == 7 and back.loader == state.loader and back.world_size == 2
    assert torch.equal(back.buffers["bn.running_mean"], torch.arange(3.0))
    assert set(back.rng) >= {"python", "numpy", "torch"}
