"""Bad-sample budget over all ranks: 2 gloo processes run the loaders alone (no model). When one rank's samples
exceed the epoch's budget, or its loader fails, every rank raises at the same batch; nobody waits in a
collective. Also the single-process rule: a tiny epoch tolerates one bad sample."""
import json
import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from vit_adapter_ds.data import TooManyBadSamples, build_train_loader, build_val_loader
from vit_adapter_ds.data.classes import reduce_zero_label_map
from vit_adapter_ds.data.loader import bad_sample_budget
from vit_adapter_ds.data.make_shards import ade20k_samples
from vit_adapter_ds.data.shard_writer import write_shards
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade

OPTS = dict(crop_size=(16, 16), scale=(64, 16), seed=0, shuffle="none")
META = {"dataset": "bad", "split": "train", "task": "segmentation", "classes": list(SYNTHETIC_CLASSES),
        "num_classes": 8, "palette": [[0, 0, 0]] * 8, "ignore_index": 255, "label_map": reduce_zero_label_map()}
N = 40
pytestmark = [pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore:This DataLoader will create")]


def _set(tmp, name, bad_positions):
    """A 40-sample train/val set (manifest order = epoch order with shuffle='none') whose samples at
    ``bad_positions`` have a truncated JPEG."""
    raw = os.path.join(tmp, "raw")
    if not os.path.isdir(raw):
        write_synthetic_ade(raw, 4, 0, seed=0, size=(24, 24))
    good = ade20k_samples(raw, "train")
    samples = []
    for i in range(N):
        paths = good[i % 4][1]
        files = {ext: open(paths[ext], "rb").read() for ext in ("jpg", "seg.png")}
        if i in bad_positions:
            files["jpg"] = files["jpg"][:60]
        samples.append((f"s{i:03d}", files))
    d = os.path.join(tmp, name)
    for split in ("train", "val"):
        write_shards(samples, os.path.join(d, split), dict(META, split=split), max_samples=16, num_workers=1,
                     progress=False)
    return d


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_train(d, rank, fraction, num_workers, break_at=None):
    """Iterate one epoch (B=2, W=2); return (batches received, error type, message)."""
    loader = build_train_loader(d, batch_size=2, rank=rank, world_size=2, num_workers=num_workers,
                                max_bad_fraction=fraction, **OPTS)
    import vit_adapter_ds.data.loader as L

    def boom(*a, **k):
        raise OSError("disk went away")

    got, decode = 0, L.decode_seg_sample
    try:
        for _ in loader.epoch_batches():
            got += 1
            if break_at is not None and rank == 1 and got == break_at:
                L.decode_seg_sample = boom  # the next batch of rank 1 fails (num_workers=0: in this process)
    except Exception as e:  # noqa: BLE001
        return got, type(e).__name__, str(e)
    finally:
        L.decode_seg_sample = decode
    return got, None, ""


def _run_val(d, rank, fraction):
    loader = build_val_loader(d, rank=rank, world_size=2, max_bad_fraction=fraction)
    got = 0
    try:
        for _ in loader:
            got += 1
    except Exception as e:  # noqa: BLE001
        return got, type(e).__name__, str(e)
    return got, None, ""


def _rank_main(rank, port, root, out):
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    mp.set_start_method("fork", force=True)  # DataLoader workers fork, as under torchrun (spawn is inherited here)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    res = {}
    try:
        budget = os.path.join(root, "budget")
        # bad samples 2, 3 (rank 1's slots of step 0; both replaced by sample 4) and 6 (rank 1, step 1):
        # 3 > budget 2 (5 % of 40) -> both ranks raise after 1 batch
        res["budget"] = _run_train(budget, rank, 0.05, num_workers=0)
        res["budget_workers"] = _run_train(budget, rank, 0.05, num_workers=1)
        res["within_budget"] = _run_train(budget, rank, 0.1, num_workers=0)  # budget 4
        import vit_adapter_ds.data.loader as L
        get_backend = dist.get_backend
        dist.get_backend = lambda *a, **k: "nccl"  # as under NCCL: the counts go over a gloo group beside it
        try:
            res["budget_side_group"] = _run_train(budget, rank, 0.05, num_workers=0)
            res["side_groups"] = len(L._GLOO_GROUPS)
        finally:
            dist.get_backend = get_backend
        res["run"] = _run_train(os.path.join(root, "run"), rank, 1.0, num_workers=1)
        res["other_error"] = _run_train(os.path.join(root, "run_ok"), rank, 0.05, num_workers=0, break_at=2)
        res["val_budget"] = _run_val(budget, rank, 0.05)  # all bad samples are in rank 0's half (0..19)
        res["val_within"] = _run_val(budget, rank, 0.1)
        dist.barrier()
    except Exception:  # noqa: BLE001
        res["crash"] = traceback.format_exc()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_stop_together_on_bad_samples(tmp_path):
    root = str(tmp_path)
    _set(root, "budget", {2, 3, 6})
    _set(root, "run", set(range(2, 40)))  # rank 1's first slot starts a run of 38 bad samples
    _set(root, "run_ok", set())
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, root, root)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, "a rank hung"
    assert [p.exitcode for p in procs] == [0, 0]
    res = [json.load(open(os.path.join(root, f"rank{r}.json"))) for r in range(2)]
    for r in res:
        assert "crash" not in r, r["crash"]
    assert [r["side_groups"] for r in res] == [1, 1]
    for case in ("budget", "budget_workers", "budget_side_group"):
        for rank, r in enumerate(res):
            got, kind, msg = r[case]
            assert (got, kind) == (1, "TooManyBadSamples"), (case, rank, r[case])
            assert "3 bad samples this epoch over all 2 rank(s), more than the budget of 2" in msg
            assert ("this rank has none" in msg) == (rank == 0)
        assert "s006 in shard" in res[1][case][2]
    for rank, r in enumerate(res):
        assert r["within_budget"] == [10, None, ""]  # 40 / (2 * 2)
        got, kind, msg = r["run"]
        assert (got, kind) == (0, "TooManyBadSamples")
        assert ("consecutive samples" in msg) if rank == 1 else ("1 other rank(s) met a run" in msg), msg
        got, kind, msg = r["other_error"]
        assert got == 2 and kind == ("OSError" if rank == 1 else "OtherRankFailed"), r["other_error"]
        got, kind, msg = r["val_budget"]
        assert kind == "TooManyBadSamples" and "3 bad samples this epoch over all 2 rank(s)" in msg, r["val_budget"]
        assert got == (4 if rank == 0 else 20)  # rank 0 alone exceeds the budget at sample 6: stops early
        assert r["val_within"] == [17 if rank == 0 else 20, None, ""]


def test_budget_rule():
    assert [bad_sample_budget(0.01, n) for n in (1, 27, 100, 250, 1000)] == [1, 1, 1, 2, 10]
    assert bad_sample_budget(0.0, 1000) == 0 and bad_sample_budget(1.0, 7) == 7
    with pytest.raises(ValueError):
        bad_sample_budget(1.5, 10)


def test_tiny_epoch_tolerates_one_bad_sample(tmp_path):
    d = _set(str(tmp_path), "one", {5})
    loader = build_train_loader(d, batch_size=2, **OPTS)  # default max_bad_fraction=0.01 -> budget 1
    assert len(list(loader.epoch_batches())) == 20 and loader.bad.total == 1
    assert len(list(build_val_loader(d))) == N - 1
    d = _set(str(tmp_path), "two", {5, 9})
    with pytest.raises(TooManyBadSamples, match="2 bad samples this epoch over all 1 rank"):
        list(build_train_loader(d, batch_size=2, **OPTS).epoch_batches())
    with pytest.raises(TooManyBadSamples, match="s009"):
        list(build_val_loader(d))
    with pytest.raises(TooManyBadSamples, match="budget of 0"):
        list(build_train_loader(_set(str(tmp_path), "one", {5}), batch_size=2, max_bad_fraction=0,
                                **OPTS).epoch_batches())
