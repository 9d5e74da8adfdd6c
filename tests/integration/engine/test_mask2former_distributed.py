"""Mask2Former mask losses are normalised by the number of matched masks averaged over the ranks (mmdet
``reduce_mean``): checked with two gloo processes holding different numbers of masks."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vit_adapter_ds.models.heads.mask2former import Mask2FormerCriterion, semantic_to_masks


def _case(rank: int):
    """Rank 0: an image with 2 classes; rank 1: an image with 4 classes (-> 2 and 4 matched masks)."""
    g = torch.Generator().manual_seed(10 + rank)
    label = torch.zeros(16, 16, dtype=torch.long)
    for c in range(1, 2 + 2 * rank):
        label[c * 3:c * 3 + 3] = c
    cls = torch.randn(1, 6, 6, generator=g)
    masks = torch.randn(1, 6, 8, 8, generator=g)
    labels, gt = semantic_to_masks(label, 5)
    return cls, masks, [labels], [gt]


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        crit = Mask2FormerCriterion(5, num_points=32)
        cls, masks, labels, gt = _case(rank)
        torch.manual_seed(rank)
        lc, lm, ld = crit.loss_single(cls, masks, labels, gt)
        torch.save({"cls": lc, "mask": lm, "dice": ld}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_mask_losses_use_the_mean_mask_count_over_ranks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    counts = {0: 2, 1: 4}
    mean = (counts[0] + counts[1]) / 2
    crit = Mask2FormerCriterion(5, num_points=32)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        cls, masks, labels, gt = _case(rank)
        assert labels[0].numel() == counts[rank]
        torch.manual_seed(rank)
        lc, lm, ld = crit.loss_single(cls, masks, labels, gt)       # no process group: local count
        torch.testing.assert_close(got["cls"], lc)                 # the class loss is not reduced (official)
        torch.testing.assert_close(got["mask"], lm * counts[rank] / mean)
        torch.testing.assert_close(got["dice"], ld * counts[rank] / mean)
