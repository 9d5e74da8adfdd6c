"""Train/val loaders: rank/worker coverage, equal batch counts, exact resume (workers, world size), val exactness."""
import os

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from vit_adapter_ds.data import build_train_loader, build_val_loader, epoch_order, read_manifest
from vit_adapter_ds.data.make_shards import write_ade20k
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, write_synthetic_ade

N_TRAIN, N_VAL = 24, 10
OPTS = dict(crop_size=(32, 32), scale=(80, 40), seed=7)
pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:This DataLoader will create")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("loader")
    root = write_synthetic_ade(base / "raw", N_TRAIN, N_VAL, seed=11, size=(64, 80))
    kw = dict(classes=SYNTHETIC_CLASSES, dataset="synthetic", palette=SYNTHETIC_PALETTE, num_workers=1,
              progress=False)
    write_ade20k(root, str(base / "syn" / "train"), "train", max_samples=5, **kw)  # shards of 5,5,5,5,4
    write_ade20k(root, str(base / "syn" / "val"), "val", max_samples=3, **kw)  # 3,3,3,1
    write_ade20k(root, str(base / "one" / "train"), "train", max_samples=1000, **kw)  # a single shard
    return base


def _epoch(loader):
    return list(loader.epoch_batches())


def _keys(batches):
    return [k for b in batches for k in b["meta"]["keys"]]


def test_read_manifest_api(shards):
    m = read_manifest(str(shards / "syn"))
    assert m["classes"] == list(SYNTHETIC_CLASSES) and m["num_samples"] == N_TRAIN and len(m["palette"]) == 8
    assert read_manifest(str(shards / "syn"), "val")["num_samples"] == N_VAL


def test_batch_format(shards):
    loader = build_train_loader(str(shards / "syn"), batch_size=3, num_workers=0, num_classes=8, **OPTS)
    b = next(iter(loader))
    assert b["img"].shape == (3, 3, 32, 32) and b["img"].dtype == torch.float32
    assert b["gt_semantic_seg"].shape == (3, 32, 32) and b["gt_semantic_seg"].dtype == torch.int64
    vals = set(b["gt_semantic_seg"].unique().tolist())
    assert vals <= set(range(8)) | {255}
    assert len(b["meta"]["keys"]) == 3 and all(s == [64, 80] for s in b["meta"]["ori_shape"])
    assert loader.state_dict()["samples_consumed_in_epoch"] == 3


@pytest.mark.parametrize("world_size,batch_size,shuffle", [(3, 2, "global"), (5, 2, "global"), (2, 4, "global"),
                                                           (3, 2, "shards"), (2, 4, "none")])
def test_ranks_cover_the_dataset_with_equal_batch_counts(shards, world_size, batch_size, shuffle):
    per_rank = []
    for r in range(world_size):
        loader = build_train_loader(str(shards / "syn"), batch_size=batch_size, num_workers=0, rank=r,
                                    world_size=world_size, shuffle=shuffle, **OPTS)
        batches = _epoch(loader)
        assert len(batches) == loader.len_per_epoch == -(-N_TRAIN // (world_size * batch_size))
        assert all(len(b["meta"]["keys"]) == batch_size for b in batches)
        per_rank.append(batches)
    # global order of the epoch: step-major, then rank
    slots = sorted((g, k) for batches in per_rank for b in batches for g, k in zip(b["meta"]["slots"],
                                                                                    b["meta"]["keys"]))
    total = len(per_rank[0]) * world_size * batch_size
    assert [g for g, _ in slots] == list(range(total))
    keys = [k for _, k in slots]
    all_keys = {f"ADE_train_{i:08d}" for i in range(1, N_TRAIN + 1)}
    assert set(keys[:N_TRAIN]) == all_keys and len(set(keys[:N_TRAIN])) == N_TRAIN  # each sample once...
    assert keys[N_TRAIN:] == keys[: total - N_TRAIN]  # ...then the wrap-around repeats the start of the order


@pytest.mark.parametrize("num_workers", [2, 3])
def test_workers_do_not_change_batches(shards, num_workers):
    """Fewer shards (1) than workers (2, 3), and 5 shards split over workers: identical to a single process."""
    for name in ("one", "syn"):
        ref = _epoch(build_train_loader(str(shards / name), batch_size=2, num_workers=0, rank=1, world_size=2,
                                        **OPTS))
        got = _epoch(build_train_loader(str(shards / name), batch_size=2, num_workers=num_workers, rank=1,
                                        world_size=2, **OPTS))
        assert len(got) == len(ref) == 6
        for a, b in zip(ref, got):
            assert a["meta"]["keys"] == b["meta"]["keys"]
            assert torch.equal(a["img"], b["img"]) and torch.equal(a["gt_semantic_seg"], b["gt_semantic_seg"])


def test_exact_resume_with_a_different_worker_count(shards):
    kw = dict(batch_size=2, rank=1, world_size=2, **OPTS)
    ref_loader = build_train_loader(str(shards / "syn"), num_workers=0, **kw)
    it = iter(ref_loader)
    ref = [next(it) for _ in range(9)]  # 1.5 epochs (6 batches per epoch)
    assert [b["meta"]["epoch"] for b in ref] == [0] * 6 + [1] * 3
    a = build_train_loader(str(shards / "syn"), num_workers=0, **kw)
    it = iter(a)
    got = [next(it) for _ in range(4)]
    state = a.state_dict()
    assert state["epoch"] == 0 and state["samples_consumed_in_epoch"] == 16 and state["world_size"] == 2
    del it
    b = build_train_loader(str(shards / "syn"), num_workers=2, **kw)
    b.load_state_dict(state)
    it = iter(b)
    got += [next(it) for _ in range(5)]
    for x, y in zip(ref, got):
        assert x["meta"]["keys"] == y["meta"]["keys"] and x["meta"]["epoch"] == y["meta"]["epoch"]
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["gt_semantic_seg"], y["gt_semantic_seg"])
    assert b.state_dict()["epoch"] == 1 and b.state_dict()["samples_consumed_in_epoch"] == 12


def test_epoch_end_state_and_new_order(shards):
    loader = build_train_loader(str(shards / "syn"), batch_size=4, num_workers=0, world_size=2, **OPTS)
    it = iter(loader)
    e0 = [next(it) for _ in range(loader.len_per_epoch)]
    st = loader.state_dict()
    assert (st["epoch"], st["samples_consumed_in_epoch"]) == (1, 0)  # a finished epoch reads as the next one
    e1 = [next(it) for _ in range(loader.len_per_epoch)]
    m = read_manifest(str(shards / "syn"))
    manifest_keys = [k for s in m["shards"] for k, _ in s["samples"]]
    assert len(manifest_keys) == N_TRAIN
    # the documented layout (shards/README.md, Ranks), written out for rank 0 of W=2, B=4: step s holds slots
    # 8s .. 8s+3, slot g the sample order[g mod 24] -- 3 steps, so the epoch's first 24 slots, no wrap-around
    for epoch, batches in ((0, e0), (1, e1)):
        order = epoch_order(m, 7, epoch)
        assert sorted(order.tolist()) == list(range(N_TRAIN))  # a permutation
        assert [b["meta"]["epoch"] for b in batches] == [epoch] * 3
        for s, b in enumerate(batches):
            assert b["meta"]["slots"] == [8 * s + j for j in range(4)]
            assert b["meta"]["keys"] == [manifest_keys[order[(8 * s + j) % N_TRAIN]] for j in range(4)]
    # a new order each epoch and each seed (no seed + epoch collisions)
    orders = {(sd, ep): tuple(epoch_order(m, sd, ep).tolist()) for sd in (6, 7, 8) for ep in (0, 1, 2)}
    assert len(set(orders.values())) == len(orders)
    assert e1[0]["meta"]["keys"] != e0[0]["meta"]["keys"]


def test_epoch_order_is_a_pure_function_of_seed_and_epoch(shards):
    """A resumed run recomputes the order in a new process: it may depend on nothing but (seed, epoch) and the
    manifest -- not on the global NumPy / Python / torch RNGs (reseeded and advanced between the calls), nor on a
    previous call; and it must leave them alone."""
    import random

    def call(global_seed):
        np.random.seed(global_seed)
        np.random.random(global_seed % 7 + 1)
        random.seed(global_seed)
        torch.manual_seed(global_seed)
        before = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state())
        m = read_manifest(str(shards / "syn"))  # a fresh manifest object each time
        out = [epoch_order(m, 7, 3, shuffle=mode, window_shards=2).tolist() for mode in ("global", "shards")]
        after = (np.random.get_state()[1], random.getstate(), torch.get_rng_state())
        assert np.array_equal(before[0], after[0]) and before[1] == after[1] and torch.equal(before[2], after[2])
        return out

    first = call(1)
    for _ in range(3):  # and calls in between for other epochs
        epoch_order(read_manifest(str(shards / "syn")), 7, 4)
    assert call(2) == first and call(12345) == first


@pytest.mark.parametrize("window_shards", [1, 2, 3])
def test_shard_shuffle_reads_whole_shards_a_window_at_a_time(shards, window_shards):
    """shuffle='shards' (shards/README.md): permute the shards, then the samples within each window of
    ``window_shards`` consecutive shards of that order. Checked from the rule: the order cuts into blocks whose
    sample sets are exactly the union of ``window_shards`` whole shards (the last window may hold fewer), every shard
    in one block; the samples inside a block are shuffled (not left in manifest order)."""
    m = read_manifest(str(shards / "syn"))
    members, start = [], 0
    for s in m["shards"]:  # shards of 5, 5, 5, 5, 4 samples
        members.append(set(range(start, start + s["num_samples"])))
        start += s["num_samples"]
    assert [len(x) for x in members] == [5, 5, 5, 5, 4]
    order = epoch_order(m, 7, 0, shuffle="shards", window_shards=window_shards).tolist()
    assert sorted(order) == list(range(N_TRAIN))
    pos, used, shuffled = 0, set(), False
    while pos < N_TRAIN:
        first = next(k for k, mem in enumerate(members) if order[pos] in mem)
        # the block starting here is a set of whole shards; grow it shard by shard until it is closed
        block_shards = set()
        end = pos
        while True:
            block_shards |= {k for k, mem in enumerate(members) if set(order[pos:end]) & mem} | {first}
            size = sum(len(members[k]) for k in block_shards)
            if size == end - pos and set(order[pos:end]) == set().union(*(members[k] for k in block_shards)):
                break
            end = pos + size
            assert end <= N_TRAIN, f"block at {pos} is not made of whole shards: {order}"
        left = len(members) - len(used)
        assert len(block_shards) == min(window_shards, left), (pos, block_shards, order)
        assert not block_shards & used
        used |= block_shards
        shuffled |= order[pos:end] != sorted(order[pos:end])
        pos = end
    assert used == set(range(len(members)))
    assert shuffled
    # the shards themselves are permuted in some seed/epoch (not always manifest order)
    firsts = {epoch_order(m, sd, 0, shuffle="shards", window_shards=1)[0] // 5 for sd in range(8)}
    assert len(firsts) > 1


def _consume(shard_dir, world_size, batch_size, steps=None, state=None):
    """Run all ranks in lockstep for ``steps`` global steps (None: rest of the epoch); return (keys, state)."""
    loaders = [build_train_loader(shard_dir, batch_size=batch_size, num_workers=0, rank=r, world_size=world_size,
                                  **OPTS) for r in range(world_size)]
    for ld in loaders:
        if state is not None:
            ld.load_state_dict(state)
    n = loaders[0].remaining_in_epoch() if steps is None else steps
    assert all(ld.remaining_in_epoch() == loaders[0].remaining_in_epoch() for ld in loaders)
    iters = [iter(ld) for ld in loaders]
    slots = []
    for _ in range(n):
        for it in iters:
            b = next(it)
            slots += list(zip(b["meta"]["slots"], b["meta"]["keys"]))
    states = [ld.state_dict() for ld in loaders]
    assert all(s == states[0] for s in states)
    return sorted(slots), states[0]


@pytest.mark.parametrize("new_world", [3, 4, 1])
def test_world_size_change_continues_the_epoch(shards, new_world):
    d = str(shards / "syn")
    before, state = _consume(d, 2, 2, steps=3)  # 12 of 24 samples
    assert state["samples_consumed_in_epoch"] == 12
    after, state2 = _consume(d, new_world, 2, state=state)
    assert [g for g, _ in before] == list(range(12)) and after[0][0] == 12
    assert [g for g, _ in after] == list(range(12, 12 + len(after)))
    kb, ka = [k for _, k in before], [k for _, k in after]
    assert len(set(kb) | set(ka[: N_TRAIN - 12])) == N_TRAIN  # nothing skipped, nothing repeated in the epoch
    assert ka[N_TRAIN - 12:] == kb[: len(ka) - (N_TRAIN - 12)]  # only the wrap-around repeats
    assert (state2["epoch"], state2["samples_consumed_in_epoch"]) == (1, 0)


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (3, 0), (3, 2), (4, 3)])
def test_val_loader_visits_each_sample_once_in_order(shards, world_size, num_workers):
    seen, counts = [], []
    for r in range(world_size):
        loader = build_val_loader(str(shards / "syn"), rank=r, world_size=world_size, num_workers=num_workers)
        got = list(loader)
        counts.append(len(got))
        assert len(got) == len(loader)
        seen += [b["meta"]["keys"][0] for b in got]
    assert seen == [f"ADE_val_{i:08d}" for i in range(1, N_VAL + 1)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == N_VAL


def test_val_sample_is_the_normalised_original(shards):
    b = next(iter(build_val_loader(str(shards / "syn"), rank=0, world_size=1)))
    key = b["meta"]["keys"][0]
    raw = os.path.join(shards, "raw", "ADEChallengeData2016")
    img = decode_jpeg(read_file(os.path.join(raw, "images", "validation", key + ".jpg")), mode=ImageReadMode.RGB)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(b["img"][0], (img.double() - mean.double()).div(std.double()).float())
    from PIL import Image

    lab = np.array(Image.open(os.path.join(raw, "annotations", "validation", key + ".png"))).astype(np.int64)
    ref = np.where(lab == 0, 255, lab - 1)  # reduce_zero_label by hand
    np.testing.assert_array_equal(b["gt_semantic_seg"][0].numpy(), ref)
    assert b["meta"]["ori_shape"] == [[64, 80]]


def test_synthetic_data_is_learnable(tmp_path):
    """A 3-layer conv net reaches an mIoU far above chance (<= 0.125 for a constant prediction) in seconds."""
    import torch.nn as nn
    import torch.nn.functional as F

    from vit_adapter_ds.data.make_shards import write_synthetic

    torch.manual_seed(0)
    d = str(tmp_path / "syn")
    write_synthetic(d, 32, 8, seed=0, size=(96, 128), progress=False, num_workers=1)
    loader = build_train_loader(d, batch_size=8, crop_size=64, scale=(512, 96), num_workers=0, seed=0)

    def blk(i, o, s):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    net = nn.Sequential(blk(3, 32, 1), blk(32, 32, 2), blk(32, 32, 1), nn.Conv2d(32, 8, 1))
    opt = torch.optim.AdamW(net.parameters(), 5e-3)

    def miou():
        net.eval()
        inter, union = torch.zeros(8), torch.zeros(8)
        with torch.no_grad():
            for b in build_val_loader(d, rank=0, world_size=1):
                out = F.interpolate(net(b["img"]), size=b["img"].shape[-2:], mode="bilinear").argmax(1)
                y = b["gt_semantic_seg"]
                for c in range(8):
                    p, g = (out == c) & (y != 255), y == c
                    inter[c] += (p & g).sum()
                    union[c] += (p | g).sum()
        net.train()
        return (inter / union.clamp(min=1)).mean().item()

    assert miou() < 0.15
    it = iter(loader)
    for _ in range(100):
        b = next(it)
        logits = F.interpolate(net(b["img"]), size=b["img"].shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, b["gt_semantic_seg"], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert miou() > 0.4


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterating_leaves_the_global_torch_rng_alone(shards, num_workers):
    """A resumed run restarts the loader at another point than an uninterrupted one; if iterating drew from the
    global torch RNG, the model's dropout / drop-path masks would shift and resume would not be bitwise.

    Reference: a ``torch.Generator`` seeded like the global RNG that never sees a loader. The model's draws, one
    after each of 14 batches -- past an epoch end (12 batches per epoch: a second DataLoader iterator) and a
    resume (``load_state_dict``: a third one, mid-epoch) -- must be its draws."""
    loader = build_train_loader(str(shards / "syn"), batch_size=2, num_workers=num_workers, **OPTS)
    assert loader.len_per_epoch == 12
    ref = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    for step in range(14):
        next(loader)
        if step == 12:
            loader.load_state_dict(loader.state_dict())
        assert torch.equal(torch.rand(4), torch.rand(4, generator=ref)), f"after batch {step}"


def test_abandoned_loader_collected_in_a_forked_worker_leaves_its_workers_alone(shards):
    """An abandoned train loader (loader <-> batch generator cycle, a worker running) collected by the garbage
    collector inside another DataLoader's forked worker must not try to shut its parent's workers down."""
    import subprocess
    import sys

    code = """if True:
        import gc, sys
        from vit_adapter_ds.data import build_train_loader
        kw = dict(batch_size=2, crop_size=16, scale=(64, 16), num_workers=1)
        a = build_train_loader(sys.argv[1], **kw)
        next(a)
        del a  # kept alive by the cycle until a collection
        gc.set_threshold(50)  # the forked worker of b collects soon
        b = build_train_loader(sys.argv[1], **kw)
        for _ in range(3):
            next(b)
        print("OK")
    """
    p = subprocess.run([sys.executable, "-c", code, str(shards / "syn")], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-2000:]
    assert "can only test a child process" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr[-2000:]
