"""Nothing lost, nothing run: the checkpoint rules under damage and hostile input (issue "Nothing lost, nothing run").

Unit level, through the real ``CheckpointManager.save`` with a stand-in engine that writes DeepSpeed-like files:

* pruning keeps the newest intact tag of the run (a damaged newer tag, or another run's tags, never count as kept,
  and are never deleted), also after a fall-back resume with ``max_keep_ckpts=1``;
* a re-save of a tag starts from an empty folder: files of an interrupted earlier save never join it;
* a universal conversion belongs to the exact save it came from;
* fsync errors of any rank fail the save (the previous checkpoints untouched); ``best.json`` skips non-finite values
  and names complete tags only;
* readers of work dirs (eval / predict / ``--load-from`` / export) verify and fall back like ``--resume``; a
  ``latest`` pointing outside its folder is refused;
* a fresh start keeps the earlier run's metrics and TensorBoard events; a resume keeps the records it drops;
* ``--load-from`` that fills less than half the model fails, naming the prefix that would match.

With the real engine (one process; DeepSpeed on the CPU): a hostile DeepSpeed folder with a valid ``COMPLETE`` is
refused by ``--resume`` and its payload never runs; a tag of another model is refused naming both.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vit_adapter_ds.checkpoint import layout
from vit_adapter_ds.checkpoint import deepspeed as ds_ckpt
from vit_adapter_ds.checkpoint import manager as ckpt
from vit_adapter_ds.checkpoint.deepspeed import find_tag
from vit_adapter_ds.checkpoint.manager import (CheckpointManager, CheckpointSaveError, RecipeMismatchError,
                                               TrainState, find_resume, find_resume_everywhere, read_train_state)
from vit_adapter_ds.checkpoint.reader import CheckpointError, UnsafeCheckpointError
from vit_adapter_ds.checkpoint.loading import LoadReport
from vit_adapter_ds.engine.logging import RunLogger

from support import free_port as _free_port  # noqa: E402



class FakeEngine:
    """Writes what DeepSpeed's ``save_checkpoint`` writes for one rank of ``world`` (model + optimizer shards)."""

    def __init__(self, world=1, value=1.0):
        self.world, self.value = world, value

    def save_checkpoint(self, save_dir, tag, client_state=None, save_latest=True):
        d = Path(save_dir) / tag
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"module": {"w": torch.full((4,), self.value)}}, d / "mp_rank_00_model_states.pt")
        for r in range(self.world):
            torch.save({"optimizer_state_dict": {"zero_stage": 2}}, d / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")


def _save(manager, it, engine=None, rank=0, world=1):
    return manager.save(engine or FakeEngine(world), TrainState(iteration=it, loader={"pos": it}, rank=rank,
                                                                world_size=world))


def _tags(root):
    return sorted(t for _, t, _ in layout.complete_tags(root))


def _damage(tag_dir):
    p = tag_dir / "mp_rank_00_model_states.pt"
    p.write_bytes(p.read_bytes()[:-7])


# ------------------------------------------------------------------------------------------------ pruning
def test_damaged_newest_tag_and_fallback_keep_an_intact_checkpoint(tmp_path):
    """The review's case: iter_500 + a damaged iter_1000; the run falls back to iter_500, saves iter_600 with
    max_keep_ckpts=1: iter_600 (intact, at least as new as the save) survives, and --resume auto finds it."""
    first = CheckpointManager(tmp_path, 2)
    _save(first, 500)
    _save(first, 1000)
    _damage(tmp_path / "checkpoints" / "iter_1000")
    found = find_resume("auto", tmp_path, report=lambda m: None)
    assert found[0].name == "iter_500"
    run = CheckpointManager(tmp_path, 1)
    run.continue_run(found[1])
    _save(run, 600)
    tag, meta = find_resume("auto", tmp_path, report=lambda m: None)
    assert tag.name == "iter_600" and not layout.verify(tag, meta)
    assert (tmp_path / "checkpoints" / "iter_1000").is_dir()  # damaged: not counted, not deleted
    assert not (tmp_path / "checkpoints" / "iter_500").exists()  # a newer intact tag of the run exists


def test_resumed_from_tag_survives_until_a_newer_intact_one_exists(tmp_path):
    first = CheckpointManager(tmp_path, 1)
    _save(first, 5)
    run = CheckpointManager(tmp_path, 1)
    run.continue_run(layout.read_marker(tmp_path / "checkpoints" / "iter_5"))
    fails = {"n": 0}

    class Broken(FakeEngine):
        def save_checkpoint(self, save_dir, tag, client_state=None, save_latest=True):
            super().save_checkpoint(save_dir, tag)
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").unlink()  # crash: then the rank dies
            fails["n"] += 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _save(run, 6, Broken())
    run.prune()
    assert _tags(tmp_path / "checkpoints") == ["iter_5"] and fails["n"] == 1


def test_another_runs_tags_are_never_kept_nor_deleted(tmp_path):
    """A work dir that still holds an older run's iter_1000: a new run keeps its own saves, leaves the old tag alone,
    and --resume auto continues the new run (the most recently saved tag), not the older run's higher number."""
    old = CheckpointManager(tmp_path, 1)
    _save(old, 1000)
    new = CheckpointManager(tmp_path, 1)
    _save(new, 100)
    _save(new, 200)
    assert _tags(tmp_path / "checkpoints") == ["iter_1000", "iter_200"]
    assert find_resume("auto", tmp_path)[0].name == "iter_200"


def test_keep_last_counts_only_intact_tags_of_the_run_and_spares_the_best(tmp_path):
    m = CheckpointManager(tmp_path, 2)
    _save(m, 1)
    m.record_best("mIoU", 0.5, 1)
    _save(m, 2)
    _save(m, 3)
    (m.root / "iter_9.partial").mkdir()  # leftover of an interrupted save: removed
    (m.root / "iter_0").mkdir()  # a folder without a marker: never loaded, never deleted
    (m.root / "iter_4_tmp").mkdir()  # not a tag name: never touched
    _save(m, 4)
    _damage(m.root / "iter_4")
    _save(m, 5)
    # intact tags of the run, newest first: 5, 3, 2, 1 -> keep 5 and 3, and 1 (best); the damaged 4 stays
    assert _tags(m.root) == ["iter_1", "iter_3", "iter_4", "iter_5"]
    assert not (m.root / "iter_9.partial").exists() and (m.root / "iter_0").exists() and (m.root / "iter_4_tmp").exists()


@pytest.mark.parametrize("keep", [-1, None])
def test_keep_all(tmp_path, keep):
    m = CheckpointManager(tmp_path, keep)
    for it in range(1, 6):
        _save(m, it)
    assert _tags(m.root) == [f"iter_{i}" for i in range(1, 6)]


# ------------------------------------------------------------------------------------------------ empty-folder saves
def test_resave_never_keeps_files_of_an_earlier_save(tmp_path):
    """An interrupted 4-rank save left extra_rank2/3 (in its folder and in the partial one); a 1-rank re-save of
    the same iteration lists only its own files, and rank 3's state is not the old 4-rank one."""
    m4 = CheckpointManager(tmp_path, -1)
    (m4.root / "iter_7").mkdir(parents=True)
    for r in range(4):
        torch.save(TrainState(iteration=7, loader={"pos": "old"}, rank=r, world_size=4).to_dict(),
                   m4.root / "iter_7" / f"extra_rank{r}.pt")
    (m4.root / "iter_7.partial").mkdir()
    torch.save({"iteration": 7}, m4.root / "iter_7.partial" / "extra_rank3.pt")
    m1 = CheckpointManager(tmp_path, -1)
    tag = _save(m1, 7)
    meta = layout.read_marker(tag)
    assert sorted(meta["files"]) == ["extra_rank0.pt", "mp_rank_00_model_states.pt",
                                     "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert not (tag / "extra_rank3.pt").exists() and not layout.verify(tag, meta)
    state, _ = read_train_state(tag, 3)
    assert state.loader == {"pos": 7} and state.world_size == 1


def test_a_planted_or_leftover_file_fails_verification(tmp_path):
    tag = _save(CheckpointManager(tmp_path, -1), 3)
    torch.save({"iteration": 3}, tag / "extra_rank5.pt")
    problems = layout.verify(tag, layout.read_marker(tag))
    assert len(problems) == 1 and "extra_rank5.pt: not written by this save" in problems[0]


def test_same_world_size_needs_the_ranks_own_state(tmp_path):
    tag = _save(CheckpointManager(tmp_path, -1), 3, world=2)
    with pytest.raises(CheckpointError, match="extra_rank1.pt is missing"):
        read_train_state(tag, 1, world_size=2)


def test_a_swap_cut_short_is_recovered(tmp_path):
    m = CheckpointManager(tmp_path, -1)
    tag = _save(m, 3)
    os.rename(tag, tag.with_name("iter_3.replaced"))  # crash between the two renames of a re-save
    m.recover()
    assert _tags(m.root) == ["iter_3"]


# ------------------------------------------------------------------------------------------------ universal
def test_universal_conversion_belongs_to_the_save_it_came_from(tmp_path, monkeypatch):
    """A universal folder is reused only for the very save it was converted from: re-saving iter_N (new COMPLETE)
    makes the old conversion stale, and the next world-size change converts again."""
    calls = []

    def fake_convert(cmd, capture_output, text):
        out = Path(cmd[cmd.index("--output_folder") + 1])
        (out / "zero" / "w").mkdir(parents=True)
        torch.save({"param": torch.full((4,), float(len(calls)))}, out / "zero" / "w" / "fp32.pt")
        calls.append(cmd)
        return type("R", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(ds_ckpt.subprocess, "run", fake_convert)
    m = CheckpointManager(tmp_path, -1)
    tag = _save(m, 4)
    uni = ds_ckpt.convert_to_universal(tag, 2)
    assert len(calls) == 1 and ds_ckpt.convert_to_universal(tag, 2) == uni and len(calls) == 1
    # an older conversion planted next to a re-saved tag (the swap removes it; here it survived a crash)
    stale = uni.with_name("stale")
    os.rename(uni, stale)
    _save(m, 4, FakeEngine(value=2.0))
    os.rename(stale, uni)
    ds_ckpt.convert_to_universal(tag, 2)
    assert len(calls) == 2
    assert layout.read_marker(uni)["converted_from"] == layout.marker_digest(tag)


# ------------------------------------------------------------------------------------------------ durability
def test_an_fsync_error_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, 1)
    _save(m, 1)
    real = layout.fsync_path

    def failing(p):
        if "extra_rank0" in str(p):
            raise OSError(5, "Input/output error")
        return real(p)

    monkeypatch.setattr(layout, "fsync_path", failing)
    with pytest.raises(CheckpointSaveError, match="rank 0: OSError.*Input/output error"):
        _save(m, 2)
    monkeypatch.setattr(layout, "fsync_path", real)
    assert _tags(m.root) == ["iter_1"] and find_resume("auto", tmp_path)[0].name == "iter_1"


def test_best_skips_non_finite_values(tmp_path):
    m = CheckpointManager(tmp_path, -1)
    assert not m.is_better("mIoU", math.nan)
    m.record_best("mIoU", math.nan, 1)  # as an older version wrote it
    assert m.is_better("mIoU", 0.1)
    assert m.update_best("mIoU", 0.2, 2) and not m.update_best("mIoU", 0.1, 3)
    assert not m.is_better("mIoU", math.inf) and not m.is_better("mIoU", -math.inf)
    assert m.update_best("mIoU", 0.5, 4) and m.best()["tag"] == "iter_4" and m.best()["value"] == 0.5


def test_any_error_on_rank_zero_reaches_the_caller(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyError("marker field")

    monkeypatch.setattr(ckpt, "find_resume", boom)
    with pytest.raises(RuntimeError, match="KeyError: 'marker field'"):
        find_resume_everywhere("auto", tmp_path)


# ------------------------------------------------------------------------------------------------ readers
def test_readers_of_a_work_dir_fall_back_from_a_damaged_newest_tag(tmp_path):
    m = CheckpointManager(tmp_path, -1)
    _save(m, 1)
    _save(m, 2)
    _damage(m.root / "iter_2")
    warnings = []
    assert find_tag(tmp_path, report=warnings.append)[0].name == "iter_1"
    assert len(warnings) == 1 and "iter_2" in warnings[0] and "cut short" in warnings[0]
    with pytest.raises(CheckpointError, match="iter_2 is damaged"):
        find_tag(m.root / "iter_2")


@pytest.mark.parametrize("name", ["../../x", "/etc", "a/b", ".."])
def test_latest_pointing_outside_its_folder_is_refused(tmp_path, name):
    root = tmp_path / "ckpts"
    root.mkdir()
    (root / "latest").write_text(name)
    with pytest.raises(CheckpointError, match="not a checkpoint folder inside"):
        find_tag(root)


# ------------------------------------------------------------------------------------------------ logs
def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_fresh_start_keeps_the_earlier_metrics_and_events(tmp_path):
    old = [{"iter": i, "mode": "train", "loss": 1.0 / i} for i in range(1, 3201)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    log = RunLogger(tmp_path, True, 10, 0, progress=False, resumed=False)
    log.scalars(1, {"loss": 1.0})
    log.jsonl({"iter": 1, "loss": 0.5})
    log.close()
    kept = [p for p in tmp_path.glob("metrics.*.jsonl")]
    assert len(kept) == 1 and _records(kept[0]) == old
    assert _records(tmp_path / "metrics.jsonl") == [{"iter": 1, "loss": 0.5}]
    log = RunLogger(tmp_path, True, 10, 0, progress=False, resumed=False)  # and again: the first run's events too
    log.close()
    runs = sorted(p for p in (tmp_path / "tensorboard").iterdir() if p.is_dir())
    assert len(runs) == 1 and any(runs[0].iterdir())
    assert len(list(tmp_path.glob("metrics.*.jsonl"))) == 2


def test_a_resume_moves_the_dropped_records_aside(tmp_path):
    recs = [{"iter": i} for i in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"iter": 1')
    RunLogger(tmp_path, True, 20, 6, progress=False, resumed=True).close()
    assert _records(tmp_path / "metrics.jsonl") == recs[:6]
    aside = list(tmp_path.glob("metrics.*.after_iter_6.jsonl"))
    assert len(aside) == 1 and aside[0].read_text().splitlines()[:4] == [json.dumps(r) for r in recs[6:]]


# ------------------------------------------------------------------------------------------------ --load-from
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3))
        self.head = nn.Linear(3, 2)


def test_load_from_that_loads_too_little_names_the_prefix(tmp_path):
    from vit_adapter_ds.checkpoint.loading import load_into
    from vit_adapter_ds.engine.trainer import check_load_from_coverage

    model = Tiny()
    prefixed = {f"net.{k}": v for k, v in Tiny().state_dict().items()}
    report = load_into(model, prefixed, reinit_mismatched=True)
    assert report.loaded == []
    with pytest.raises(CheckpointError, match=r"only 0 of the model's 6 tensors.*'net\.' removed \(6 tensors\)"):
        check_load_from_coverage(report, model, "x.pth")
    check_load_from_coverage(report, model, "x.pth", allow_partial=True)
    bare = {k.split(".", 1)[1]: v for k, v in Tiny().state_dict().items() if k.startswith("backbone.")}
    with pytest.raises(CheckpointError, match=r"'backbone\.' added \(4 tensors\)"):
        check_load_from_coverage(load_into(model, bare), model, "y.pth")
    check_load_from_coverage(LoadReport("z", loaded=list(model.state_dict())[:3]), model, "z.pth")  # half: fine


# ------------------------------------------------------------------------------------------------ real engine
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_resume_refuses_a_hostile_deepspeed_folder_and_another_model(tmp_path):
    """One real training (1 rank), then: (a) its tag with a pickled payload planted in the model states and a
    COMPLETE rewritten to match is refused by --resume (the file named; the payload never runs); (b) a tag whose
    marker names another model is refused naming both, and resumes with --resume-other-recipe."""
    from launching import train_stub as run

    work = tmp_path / "work"
    code, out = run([], work, ranks=1, port=_free_port(), iters=3,
                    options=["checkpoint_config.interval=3"])
    assert code == 0, out[-3000:]
    tag = work / "checkpoints" / "iter_3"
    meta = layout.read_marker(tag)
    assert meta["run_id"] and meta["model_fingerprint"] and meta["recipe"]

    hostile = tmp_path / "hostile" / "iter_3"
    hostile.parent.mkdir()
    import shutil
    shutil.copytree(tag, hostile)
    marker = tmp_path / "PAYLOAD_RAN"
    model_states = hostile / "mp_rank_00_model_states.pt"
    sd = torch.load(model_states, weights_only=False)
    sd["client"] = Payload(marker)
    torch.save(sd, model_states)
    (hostile / "COMPLETE").write_text(json.dumps(dict(meta, files=layout.file_manifest(hostile))))
    assert not layout.verify(hostile, layout.read_marker(hostile))
    code, out = run(["--resume", str(hostile)], tmp_path / "w2", ranks=1, port=_free_port(), iters=6,
                    expect_ok=False)
    assert code != 0 and not marker.exists()
    assert code == 2 and re.search(r"error: refusing to load \S*mp_rank_00_model_states.pt: .*\(posix.system\)", out), \
        out[-3000:]
    assert json.loads((tmp_path / "w2" / "status.json").read_text())["state"] == "failed"

    other = dict(meta, model_fingerprint="0123456789abcdef", recipe="mask2former_elsewhere")
    (tag / "COMPLETE").write_text(json.dumps(other))
    code, out = run(["--resume", "auto"], work, ranks=1, port=_free_port(), iters=6, expect_ok=False)
    assert code != 0 and "mask2former_elsewhere" in out and "0123456789abcdef" in out \
        and meta["model_fingerprint"] in out and "--resume-other-recipe" in out, out[-3000:]
    code, out = run(["--resume", "auto", "--resume-other-recipe"], work, ranks=1, port=_free_port(), iters=6)
    assert code == 0 and "resuming it anyway" in out and "resumed from" in out, out[-3000:]


def test_unsafe_files_are_named(tmp_path):
    d = tmp_path / "iter_1"
    d.mkdir()
    torch.save({"x": Payload(tmp_path / "ran")}, d / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(UnsafeCheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        ds_ckpt.refuse_unsafe_files(d)
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_save_best_on_two_ranks_with_unaligned_intervals(tmp_path):
    """Evaluations every 2 iterations, checkpoints every 3, save_best on 2 ranks: every rank takes part in each
    best save (rank 0 decides), the run finishes, and best.json names a complete tag of the best evaluation in
    metrics.jsonl."""
    from launching import train_stub as run

    work = tmp_path / "work"
    code, out = run([], work, ranks=2, port=_free_port(), iters=6,
                    options=["evaluation.interval=2", "checkpoint_config.interval=3", "evaluation.save_best=aAcc",
                             "checkpoint_config.max_keep_ckpts=1", "optimizer.lr=0.05"])
    assert code == 0, out[-3000:]
    vals = [r for r in _records(work / "metrics.jsonl") if r.get("mode") == "val"]
    assert [r["iter"] for r in vals] == [2, 4, 6]
    best_iter = max(vals, key=lambda r: (r["aAcc"], -r["iter"]))["iter"]  # the first of equal values stays best
    best = json.loads((work / "checkpoints" / "best.json").read_text())
    assert best["iteration"] == best_iter and best["tag"] == f"iter_{best_iter}"
    tag = work / "checkpoints" / best["tag"]
    assert not layout.verify(tag, layout.read_marker(tag))
    assert find_resume("auto", work)[0].name == "iter_6"


class ModelOnlyEngine(FakeEngine):
    """A ZeRO-0 save: model states only (what eval / predict / --load-from consolidate from a work dir)."""

    def save_checkpoint(self, save_dir, tag, client_state=None, save_latest=True):
        d = Path(save_dir) / tag
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"module": {"w": torch.full((4,), self.value)}}, d / "mp_rank_00_model_states.pt")


def test_eval_weights_of_a_work_dir_skip_a_damaged_newest_tag_with_a_warning(tmp_path, capsys):
    """What launch/eval.py, predict.py and --load-from read from a work dir (read_state_dict): the newest intact
    save's weights, and a warning naming the damaged one (was: the damaged newest tag, without a word)."""
    from vit_adapter_ds.checkpoint.loading import read_state_dict

    m = CheckpointManager(tmp_path, -1)
    _save(m, 1, ModelOnlyEngine(value=1.0))
    _save(m, 2, ModelOnlyEngine(value=2.0))
    assert torch.equal(read_state_dict(tmp_path)["w"], torch.full((4,), 2.0))
    p = m.root / "iter_2" / "mp_rank_00_model_states.pt"
    data = bytearray(p.read_bytes())
    data[-30] ^= 0xFF  # same size, one byte changed: only the CRC-32 sees it
    p.write_bytes(bytes(data))
    capsys.readouterr()
    assert torch.equal(read_state_dict(tmp_path)["w"], torch.full((4,), 1.0))
    err = capsys.readouterr().err
    assert "warning:" in err and "iter_2" in err and "CRC-32" in err


# ------------------------------------------------------------------------------------------------ the manager decides
def test_step_decides_when_to_save_what_is_best_and_never_saves_twice(tmp_path):
    """One call per iteration: a save every ``interval`` iterations and at ``max_iters``, a save of a better
    evaluation that is not saved already (best.json names it once complete), a save before a stop; never one
    iteration twice, and nothing on other iterations."""
    lines, states = [], []

    def state(it):
        states.append(it)
        return TrainState(iteration=it, loader={"pos": it})

    m = CheckpointManager(tmp_path, -1, interval=3, max_iters=8, best_metric="mIoU", log=lines.append)
    scores = {2: 0.5, 3: 0.6, 4: 0.4, 6: 0.7}
    evaluate = {it: (lambda i: {"mIoU": scores[i]}) for it in scores}
    saved = {}
    for it in range(1, 9):
        res = m.step(it, FakeEngine(), state, evaluate=evaluate.get(it), stop=(it == 5))
        saved[it] = (res.saved is not None, res.best)
    assert states == [2, 3, 5, 6, 8]  # 2: best; 3: interval (then best, already saved); 5: stop; 6; 8: the last
    assert saved[2] == (True, True) and saved[3] == (True, True) and saved[4] == (False, False)
    assert saved[6] == (True, True) and saved[7] == (False, False) and m.last_saved == 8
    assert m.best()["tag"] == "iter_6" and _tags(m.root) == [f"iter_{i}" for i in (2, 3, 5, 6, 8)]
    assert "best mIoU 0.7000 at iteration 6" in lines and sum("saved checkpoint" in x for x in lines) == 5
    with pytest.raises(KeyError, match="save_best='mIoU'"):
        m.step(10, FakeEngine(), state, evaluate=lambda i: {"aAcc": 1.0})
    assert m.step(8, FakeEngine(), state, evaluate=lambda i: {"mIoU": 0.9}, periodic=False).best
    assert states == [2, 3, 5, 6, 8] and m.best()["tag"] == "iter_8"  # iteration 8 is saved already: not again
