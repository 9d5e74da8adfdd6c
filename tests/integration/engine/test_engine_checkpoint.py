"""The saved train state loads with weights_only=True. (The keeping, pruning and best rules of CheckpointManager are
tested in test_checkpoint_safety.py.)"""
from __future__ import annotations

import torch

from vit_adapter_ds.checkpoint.manager import TrainState


def test_train_state_round_trips_with_weights_only(tmp_path):
    state = TrainState(iteration=7, loader={"epoch": 1, "samples_consumed_in_epoch": 8},
                       buffers={"bn.running_mean": torch.arange(3.0)}, rank=0, world_size=2)
    torch.save(state.to_dict(), tmp_path / "extra_rank0.pt")
    back = TrainState.from_dict(torch.load(tmp_path / "extra_rank0.pt", weights_only=True))
    assert back.iteration == 7 and back.loader == state.loader and back.world_size == 2
    assert torch.equal(back.buffers["bn.running_mean"], torch.arange(3.0))
    assert set(back.rng) >= {"python", "numpy", "torch"}
