"""Detection train batches grouped by orientation (mmdet 2.x ``GroupSampler`` / ``DistributedGroupSampler``): every
rank's batch holds images of one orientation (flag 1 if width / height > 1), each image once per epoch up to
mmdet's per-group padding to a multiple of W x B, and the exact-resume guarantees of the loader kept (kill at any
batch, another number of workers, another world size, another batch size, a state saved by the global order)."""
from __future__ import annotations

import io
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.data.detection import (DetectionTrainLoader, group_epoch_len, group_lists, grouped_chunks,
                                           orientation_flag)
from vit_adapter_ds.data.make_shards import write_coco

SMALL = dict(scales=((64, 96),), crop_scales=((64, 96),), crop_range=(32, 48), final_crop=(64, 64))
# (height, width): 7 landscape (flag 1), 4 portrait + 2 square (flag 0)
SIZES = [(48, 64), (64, 48), (48, 48), (40, 72), (48, 64), (72, 40), (56, 64), (64, 64), (48, 80), (64, 40),
         (48, 64), (64, 56), (40, 64)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """COCO instance shards of 13 images of both orientations (one box each) over 3 shards; returns (split dir,
    {image id: flag})."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "train2017").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for k, (h, w) in enumerate(SIZES):
        iid = 100 + k
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
        (root / "train2017" / f"{iid:012d}.jpg").write_bytes(buf.getvalue())
        images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "height": h, "width": w})
        anns.append({"id": k + 1, "image_id": iid, "category_id": 1, "bbox": [4, 4, 20, 16], "area": 320,
                     "iscrowd": 0, "segmentation": [[4, 4, 24, 4, 24, 20, 4, 20]]})
    cats = [{"id": 1, "name": "thing", "supercategory": "thing"}]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    write_coco(str(root), str(root / "shards"), "train", num_workers=1, progress=False, max_samples=5)
    return root / "shards", {im["id"]: orientation_flag(im) for im in images}


def _loader(d, **kw):
    base = dict(batch_size=2, transform_kw=SMALL, seed=5)
    return DetectionTrainLoader(d, **{**base, **kw})


def _epoch(d, world_size, **kw):
    """All ranks' batches of epoch 0: [step][rank]."""
    per_rank = [list(_loader(d, rank=r, world_size=world_size, **kw).epoch_batches()) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1
    return [list(step) for step in zip(*per_rank)]


def _same(a, b):
    assert a["meta"]["slots"] == b["meta"]["slots"] and a["meta"]["keys"] == b["meta"]["keys"]
    assert a["meta"]["group"] == b["meta"]["group"]
    assert torch.equal(a["img"], b["img"])
    for ta, tb in zip(a["targets"], b["targets"]):
        for k in ta:
            assert (torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k]), k


def test_orientation_flag_is_mmdets():
    assert orientation_flag({"width": 640, "height": 480}) == 1
    assert orientation_flag({"width": 480, "height": 640}) == 0
    assert orientation_flag({"width": 500, "height": 500}) == 0  # square: w / h > 1 is false


@pytest.mark.parametrize("world_size,batch_size", [(1, 2), (2, 2), (3, 2), (2, 3)])
def test_every_rank_batch_is_one_orientation_and_each_image_is_seen_once_up_to_mmdets_padding(
        mixed, world_size, batch_size):
    d, flag = mixed
    steps = _epoch(d, world_size, batch_size=batch_size)
    n = [sum(1 for f in flag.values() if f == g) for g in (0, 1)]
    assert n == [6, 7]
    # mmdet DistributedGroupSampler: per rank sum_g ceil(n_g / (W B)) batches
    expected_len = sum(math.ceil(k / (world_size * batch_size)) for k in n)
    assert len(steps) == expected_len == _loader(d, world_size=world_size, batch_size=batch_size).len_per_epoch
    seen = Counter()
    for step in steps:
        for b in step:
            ids = b["meta"]["image_ids"]
            assert len(ids) == batch_size
            assert len({flag[i] for i in ids}) == 1, f"batch {ids} mixes orientations"
            assert b["meta"]["group"] == flag[ids[0]]
            seen.update(ids)
    # every image at least once; group g's items are its n_g images padded to ceil(n_g / (W B)) W B by repeating
    # (each image floor or ceil of that / n_g times, as mmdet pads)
    assert set(seen) == set(flag)
    for g in (0, 1):
        total = math.ceil(n[g] / (world_size * batch_size)) * world_size * batch_size
        counts = [seen[i] for i in flag if flag[i] == g]
        assert sum(counts) == total and max(counts) - min(counts) <= 1


def test_grouping_can_be_turned_off(mixed):
    d, flag = mixed
    loader = _loader(d, batch_size=13, group_by_aspect_ratio=False, seed=0)
    b = next(loader)
    assert b["meta"]["group"] is None and len({flag[i] for i in b["meta"]["image_ids"]}) == 2
    assert loader.len_per_epoch == 1 and "group_consumed" not in loader.state_dict()


@pytest.mark.parametrize("kill_at", [1, 3, 6, 9])
def test_resume_after_a_kill_is_exact_on_every_rank_with_any_number_of_workers(mixed, kill_at):
    """2 ranks x 2 images: 4 batches per epoch; killed after ``kill_at`` batches (in epoch 0 or 1), each rank
    resumes from the saved state with another number of workers and gives the uninterrupted run's batches."""
    d, _ = mixed
    total = 11
    for rank in (0, 1):
        full = _loader(d, rank=rank, world_size=2)
        ref = [next(full) for _ in range(total)]
        a = _loader(d, rank=rank, world_size=2)
        for _ in range(kill_at):
            next(a)
        state = json.loads(json.dumps(a.state_dict()))  # as the checkpoint stores it
        b = _loader(d, rank=rank, world_size=2, num_workers=2 if kill_at % 2 else 1)
        b.load_state_dict(state)
        for r in ref[kill_at:]:
            _same(next(b), r)
        b._close()
    assert ref[4]["meta"]["epoch"] == 1 and ref[8]["meta"]["epoch"] == 2


def _global_sequence(steps):
    """{slot: (key, group, image tensor)} over all ranks' batches."""
    out = {}
    for step in steps:
        for b in step:
            for j, (slot, key) in enumerate(zip(b["meta"]["slots"], b["meta"]["keys"])):
                out[slot] = (key, b["meta"]["group"], b["img"][j])
    return out


@pytest.mark.parametrize("saved_on,resumed_on", [(2, 1), (2, 3), (1, 2)])
def test_resume_on_another_world_size_continues_the_same_chunks(mixed, saved_on, resumed_on):
    """Saved after one step on ``saved_on`` ranks, resumed on ``resumed_on``: the resumed epoch's slots hold the
    uninterrupted run's samples (with their augmentation) until the groups' samples are all handed out; only the
    padding at the end of the epoch differs. Over the whole epoch every image is seen, no batch mixes
    orientations, and each rank gets the same number of batches."""
    d, flag = mixed
    ref = _epoch(d, saved_on)
    ref_seq = _global_sequence(ref)
    first = ref[0]
    state = _loader(d, rank=0, world_size=saved_on)
    next(state)
    state = state.state_dict()
    assert state["samples_consumed_in_epoch"] == 2 * saved_on
    resumed = []
    for r in range(resumed_on):
        lo = _loader(d, rank=r, world_size=resumed_on)
        lo.load_state_dict(state)
        resumed.append(list(lo.epoch_batches()))
        assert lo.epoch == 1
    assert len({len(x) for x in resumed}) == 1
    steps = [list(s) for s in zip(*resumed)]
    seq = _global_sequence(steps)
    seen = {i for b in first for i in b["meta"]["image_ids"]}
    real = sum(math.ceil(max(0, n - c) / 2) for n, c in zip(
        [sum(1 for f in flag.values() if f == g) for g in (0, 1)], state["group_consumed"]))
    compared = 0
    for slot in sorted(seq)[:real * 2]:
        key, group, img = seq[slot]
        assert ref_seq[slot][:2] == (key, group) and torch.equal(ref_seq[slot][2], img)
        compared += 1
    assert compared >= 8
    for step in steps:
        for b in step:
            assert len({flag[i] for i in b["meta"]["image_ids"]}) == 1
            seen.update(b["meta"]["image_ids"])
    assert seen == set(flag)


def _first_cycle(loader):
    """The image ids of the rest of the epoch's plan that are first-cycle items of their group (not mmdet's
    padding); a sample's key is its image id."""
    chunks, lists = loader._grouped_plan()
    return [int(loader.reader.keys[lists[g][s + t]]) for g, s in chunks.tolist() for t in range(loader.batch_size)
            if s + t < len(lists[g])]


def _check_continuation(loaders, before, flag):
    """The rest of the epoch over all ranks' ``loaders`` hands out every image not in ``before``, each once besides
    the padding; no batch mixes orientations."""
    left = set(flag) - set(before)
    assert sorted(_first_cycle(loaders[0])) == sorted(left)
    rest = [b for lo in loaders for b in lo.epoch_batches()]
    assert {i for b in rest for i in b["meta"]["image_ids"]} >= left
    for b in rest:
        assert len({flag[i] for i in b["meta"]["image_ids"]}) == 1
    return rest


def test_resume_with_another_batch_size_repeats_and_skips_nothing(mixed):
    d, flag = mixed
    a = _loader(d, batch_size=2)
    before = [i for _ in range(3) for i in next(a)["meta"]["image_ids"]]
    assert len(set(before)) == 6
    resumed = [_loader(d, batch_size=3, rank=r, world_size=2) for r in range(2)]
    for lo in resumed:
        lo.load_state_dict(a.state_dict())
    rest = _check_continuation(resumed, before, flag)
    assert all(len(x["meta"]["image_ids"]) == 3 for x in rest)


def test_a_state_saved_by_the_global_order_continues_without_repeats(mixed):
    """A checkpoint of the ungrouped loader (no ``group_consumed``) at slot P: the grouped loader hands out the
    epoch's other samples, each once besides the padding."""
    d, flag = mixed
    old = _loader(d, group_by_aspect_ratio=False)
    before = [i for _ in range(2) for i in next(old)["meta"]["image_ids"]]
    state = old.state_dict()
    assert "group_consumed" not in state and state["samples_consumed_in_epoch"] == 4
    new = _loader(d)
    new.load_state_dict(state)
    assert new.group_consumed == [sum(1 for i in before if flag[i] == g) for g in (0, 1)]
    _check_continuation([new], before, flag)


def test_grouped_chunks_rules():
    # group 0 at order positions 0, 2, 5; group 1 at 1, 3, 4, 6 (N = 7)
    order = np.array([10, 11, 12, 13, 14, 15, 16])
    flags = np.zeros(20, np.int8)
    flags[[11, 13, 14, 16]] = 1
    lists, pos = group_lists(order, flags)
    assert lists[0].tolist() == [10, 12, 15] and lists[1].tolist() == [11, 13, 14, 16]
    # B = 2, W = 1: the group of the earliest next item each time (after [0, 0] and [1, 0] group 1's next item is
    # at position 4, group 0's at 5); group 0's last chunk wraps to its first item (mmdet's padding)
    assert grouped_chunks(pos, 7, [0, 0], 2, 1).tolist() == [[0, 0], [1, 0], [1, 2], [0, 2]]
    # W = 2: group 0 padded to 4 items, group 1 has 4: the same 4 chunks, a multiple of W
    assert grouped_chunks(pos, 7, [0, 0], 2, 2).tolist() == [[0, 0], [1, 0], [1, 2], [0, 2]]
    # B = 2, W = 3: each group padded to 6 items (3 chunks each): the padding chunks come after the real ones, in
    # the order of the cyclic continuation (group 1's item 4 is item 0 again, position 1 + 7; group 0's is 2 + 7)
    assert grouped_chunks(pos, 7, [0, 0], 2, 3).tolist() == [[0, 0], [1, 0], [1, 2], [0, 2], [1, 4], [0, 4]]
    assert group_epoch_len([3, 4], 2, 3) == 2 and group_epoch_len([3, 4], 2, 1) == 4
    # resumed from consumed counts: the suffix of the uninterrupted plan
    assert grouped_chunks(pos, 7, [2, 2], 2, 1).tolist() == [[1, 2], [0, 2]]
    # consumed counts that are not multiples of B (a batch-size change): each group continues where it stopped
    assert grouped_chunks(pos, 7, [1, 0], 3, 2).tolist() == [[1, 0], [0, 1], [1, 3], [0, 4]]
    # a chunk count that is not a multiple of W (3 here) is filled by the same rule over all groups
    assert grouped_chunks(pos, 7, [2, 4], 3, 2).tolist() == [[0, 2], [1, 4], [0, 5], [1, 7]]
