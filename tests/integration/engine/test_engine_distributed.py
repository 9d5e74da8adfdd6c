"""Multi-rank DeepSpeed runs of the real engine on stand-in components (``tests/helpers/stub_task.py``):
ZeRO-1/2/3 fp32 and bf16, bitwise resume (also after SIGKILL), 2 -> 1 rank resume via universal checkpoints,
export round trip, per-group learning rates against the mmcv formula.

Each run is a ``deepspeed --num_gpus N`` subprocess in its own process group (killed as a group on timeout), with a
free master port per run (tests/helpers/support.py). About 15-30 s per run on a 2-core CPU.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from launching import REPO, env as _env, finished, losses, train_stub as run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _resume_copy(src, dst, keep_iter=3):
    shutil.copytree(src, dst)
    for d in (dst / "checkpoints").glob("iter_*"):
        if d.name != f"iter_{keep_iter}":
            shutil.rmtree(d)
    (dst / "metrics.jsonl").unlink()
    (dst / "status.json").unlink()  # the copy has not finished: only its resumed run may say so


COMMON = ["lr_config.warmup_iters=3", "optimizer.lr=0.01", "model.decode_head.dropout_ratio=0.1"]


@pytest.fixture(scope="module")
def z2_ref(tmp_path_factory):
    """Uninterrupted 2-rank ZeRO-2 fp32 run (deepspeed launcher), 6 iterations, checkpoints at 3 and 6."""
    work = tmp_path_factory.mktemp("z2") / "ref"
    run([], work, ds="zero2_fp32", options=COMMON, launcher="deepspeed",
        extra_env={"STUB_DUMP_OUTPUT": str(work.parent / "live.pt")})
    return work


@pytest.fixture(scope="module")
def z3_ref(tmp_path_factory):
    """Same with ZeRO-3 (torchrun); the final evaluation dumps the live model's logits on fixed inputs."""
    work = tmp_path_factory.mktemp("z3") / "ref"
    run([], work, ds="zero3_fp32", options=COMMON,
        extra_env={"STUB_DUMP_OUTPUT": str(work.parent / "live.pt")})
    return work


def _check_resume(ref, tmp_path, ds):
    a = losses(ref)
    assert sorted(a) == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in a.values())
    assert (ref / "checkpoints" / "iter_3" / "COMPLETE").is_file()
    res = tmp_path / "res"
    _resume_copy(ref, res)
    _, out = run(["--resume", "auto"], res, ds=ds, options=COMMON)
    assert "resumed from" in out and "iteration 3" in out
    b = losses(res)
    assert sorted(b) == [4, 5, 6]
    for it in (4, 5, 6):  # float repr round-trips: equal strings = equal bits
        assert b[it]["loss"] == a[it]["loss"] and b[it]["loss_ce"] == a[it]["loss_ce"], (it, a[it], b[it])
        assert b[it]["lr"] == a[it]["lr"]


def test_zero2_resume_is_bitwise(z2_ref, tmp_path):
    _check_resume(z2_ref, tmp_path, "zero2_fp32")


def test_zero3_resume_is_bitwise(z3_ref, tmp_path):
    _check_resume(z3_ref, tmp_path, "zero3_fp32")


def test_zero1_fp32_matches_zero2(z2_ref, tmp_path):
    run([], tmp_path / "z1", ds="zero1_fp32", options=COMMON)
    a, b = losses(tmp_path / "z1"), losses(z2_ref)
    for it in range(1, 7):
        assert abs(a[it]["loss"] - b[it]["loss"]) <= 1e-5 * abs(b[it]["loss"])


def test_bf16_zero2_runs_and_tracks_fp32(z2_ref, tmp_path):
    run([], tmp_path / "bf16", ds="zero2_bf16", options=COMMON)
    a, b = losses(tmp_path / "bf16"), losses(z2_ref)
    for it in range(1, 7):
        assert abs(a[it]["loss"] - b[it]["loss"]) <= 2e-2 * abs(b[it]["loss"]), (a[it]["loss"], b[it]["loss"])
    cfg = json.loads((tmp_path / "bf16" / "ds_config.json").read_text())
    assert cfg["bf16"]["enabled"] and cfg["train_batch_size"] == 4
    # BatchNorm statistics stay fp32 under bf16 (the saved buffers are the module's own)
    extra = torch.load(tmp_path / "bf16" / "checkpoints" / "iter_6" / "extra_rank0.pt", weights_only=True)
    stats = {k: v for k, v in extra["buffers"].items() if k.endswith(("running_mean", "running_var"))}
    assert stats and all(v.dtype == torch.float32 for v in stats.values()), {k: v.dtype for k, v in stats.items()}


def test_sigkill_then_resume_auto(z2_ref, tmp_path):
    """Rank 1 is SIGKILLed during iteration 6 (checkpoints at 3, 6): the launcher tears the job down, no
    "finished" in status.json; --resume auto continues from iter_3 and reproduces the uninterrupted losses."""
    crashed = tmp_path / "crash"
    rc, out = run([], crashed, options=COMMON, expect_ok=False, launcher="deepspeed",
                  extra_env={"STUB_CRASH_AT_ITER": "5", "STUB_CRASH_FILE": str(crashed / "metrics.jsonl")})
    assert rc != 0 and not finished(crashed), out[-3000:]
    tags = sorted(p.name for p in (crashed / "checkpoints").glob("iter_*") if (p / "COMPLETE").exists())
    assert tags == ["iter_3"], tags
    _, out = run(["--resume", "auto"], crashed, options=COMMON)
    assert "resumed from" in out and "iteration 3" in out
    a, b = losses(z2_ref), losses(crashed)  # the crashed run's metrics.jsonl is appended to
    for it in (4, 5, 6):
        assert b[it]["loss"] == a[it]["loss"], (it, a[it], b[it])
    # the resumed run reads as one clean run: every iteration logged once (iterations 4-5 re-ran)
    iters = [json.loads(line)["iter"] for line in open(crashed / "metrics.jsonl") if '"train"' in line]
    assert iters == [1, 2, 3, 4, 5, 6], iters


def test_incomplete_checkpoint_is_never_resumed(tmp_path):
    from vit_adapter_ds.checkpoint.manager import find_resume
    root = tmp_path / "checkpoints"
    for it, complete in ((2, True), (4, True), (6, False)):
        (root / f"iter_{it}").mkdir(parents=True)
        if complete:
            (root / f"iter_{it}" / "COMPLETE").write_text(json.dumps({"iteration": it, "world_size": 2}))
    (root / "iter_4_universal").mkdir()
    (root / "latest").write_text("iter_6")
    tag, meta = find_resume("auto", tmp_path)
    assert tag.name == "iter_4" and meta["iteration"] == 4
    assert find_resume("auto", tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError):
        find_resume(str(root / "iter_6"), tmp_path)


def test_universal_resume_two_to_one_rank(tmp_path):
    opts = ["global_batch_size=4"]  # no dropout: 1 rank cannot replay rank 1's dropout masks
    ref = tmp_path / "ref"
    run([], ref, options=opts)
    one = tmp_path / "one"
    _resume_copy(ref, one)
    _, out = run(["--resume", "auto"], one, ranks=1, options=opts)
    assert "universal checkpoint: saved with 2 ranks, now 1" in out
    assert (one / "checkpoints" / "iter_3_universal" / "COMPLETE").is_file()
    a, b = losses(ref), losses(one)
    assert json.loads((one / "ds_config.json").read_text())["gradient_accumulation_steps"] == 2
    for it in (4, 5, 6):  # same samples per step, gradient summed in another order
        assert abs(b[it]["loss"] - a[it]["loss"]) <= 1e-5 * abs(a[it]["loss"]), (it, a[it]["loss"], b[it]["loss"])


@pytest.mark.parametrize("ref", ["z2_ref", "z3_ref"])
def test_export_reproduces_live_model(ref, tmp_path, request):
    """Consolidated fp32 export (mmcv / torch / safetensors) loaded into a fresh model gives exactly the logits the
    trained model produced at its final evaluation (ZeRO-3: the gathered copy of the partitioned parameters)."""
    z3_ref = request.getfixturevalue(ref)
    for fmt, name in (("mmcv", "m.pth"), ("torch", "t.pth"), ("safetensors", "s.safetensors")):
        res = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(z3_ref), "--out",
                              str(tmp_path / name), "--format", fmt], capture_output=True, text=True, env=_env(),
                             timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
    sys.path.insert(0, str(REPO / "tests" / "helpers"))
    from safetensors.torch import load_file
    from stub_task import TinySeg, make_batch

    live = torch.load(z3_ref.parent / "live.pt", map_location="cpu", weights_only=True)
    x = make_batch(777, 0, 2)["img"]
    keys = set(TinySeg().state_dict())  # the in-process model's keys, every parameter and buffer
    mm = torch.load(tmp_path / "m.pth", map_location="cpu", weights_only=True)  # plain data only
    assert set(mm) == {"meta", "state_dict"} and mm["meta"]["iter"] == 6
    loaded = {"mmcv": mm["state_dict"],
              "torch": torch.load(tmp_path / "t.pth", map_location="cpu", weights_only=True),
              "safetensors": load_file(str(tmp_path / "s.safetensors"))}
    for fmt, sd in loaded.items():
        assert isinstance(sd, dict) and set(sd) == keys, (fmt, sorted(set(sd) ^ keys))
        model = TinySeg()
        model.load_state_dict(sd, strict=True)
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert torch.equal(out, live), (fmt, (out - live).abs().max())
        # the same bits in every format, dtype included (fp32 export)
        for k, v in sd.items():
            assert v.dtype == mm["state_dict"][k].dtype and torch.equal(v, mm["state_dict"][k]), (fmt, k)
    assert any(v.dtype == torch.float32 for v in mm["state_dict"].values())


def test_lr_per_group_follows_poly_warmup(z2_ref):
    """Logged lr of each group = lr_scale x mmcv poly(1.0) with linear warm-up, computed here by hand."""
    for it, r in losses(z2_ref).items():
        i = it - 1  # the lr used during iteration i (0-based)
        regular = 0.01 * (1 - i / 6)
        expected = regular * (1 - (1 - i / 3) * (1 - 1e-6)) if i < 3 else regular
        assert r["lr"]["decay"] == pytest.approx(expected, rel=1e-12, abs=1e-18)
        assert r["lr"]["no_decay"] == pytest.approx(0.5 * expected, rel=1e-12, abs=1e-18)
