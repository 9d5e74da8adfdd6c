"""The non-finite policy of the real engine (``vit_adapter_ds.engine.faults``) on the stub task, 2 ranks on the CPU,
under ZeRO-0, ZeRO-1 and ZeRO-3 fp32 and ZeRO-2 bf16 (fp16 dynamic loss scaling: a GPU-only test).

One fault script for every configuration (rank 1, gas 1, so iteration ``k`` is micro-batch ``k - 1``;
``optimizer_config.max_nonfinite_steps=1``; a checkpoint after every iteration):

* iteration 2: NaN ``loss_ce`` -> step skipped, logged with rank 1's loss terms;
* iteration 3: clean -> the step is applied (training continues after a skip; the run of faults is reset);
* iteration 4: finite losses, an Inf gradient (``STUB_INF_GRAD_AT_BATCH``) -> detected and skipped (ZeRO-0 fp32:
  by the guard's own gradient check, elsewhere by DeepSpeed's gradient-norm check);
* iteration 5: NaN loss again -> the second consecutive fault is one too many: ``NonFiniteLossError``.

What is compared is read back from the saved checkpoints, bit for bit: the weights, the optimizer state (fp32 master
weights, Adam moments and step counts of every rank's shard) and the BatchNorm statistics after iteration 2 equal
those after 1, after 4 those after 3, and iteration 3 changed them (so the comparison can fail). Under ZeRO-3, a
process resumed from ``iter_2`` reproduces iterations 3-5 bit for bit: the skipped step left no state behind.

Below, the guard alone on a fake engine (fast): ZeRO-0 fp32's held-back torch step, what counts as a fault under each
precision (fp16 dynamic loss scaling: a finite-loss overflow skip does not; a static scale: it does), the error for a
step DeepSpeed applied despite a fault, and the consecutive-fault limit.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from support import free_port
from launching import REPO, train_stub as run  # noqa: F401

FAULTS = {"STUB_NAN_AT_BATCH": "1,4", "STUB_INF_GRAD_AT_BATCH": "3"}
OPTS = ["optimizer.lr=0.01", "lr_config.warmup_iters=2", "checkpoint_config.interval=1",
        "checkpoint_config.max_keep_ckpts=-1", "optimizer_config.max_nonfinite_steps=1"]


def _ds_config(tmp_path, name):
    """A config of ``ds_configs/`` by name, or ``zero0_fp32``: ``zero1_fp32`` with stage 0 (a plain torch optimizer
    that checks nothing). Returned as the path stem ``run`` expects (it appends ``.json``)."""
    if name != "zero0_fp32":
        return name
    cfg = json.loads((REPO / "ds_configs" / "zero1_fp32.json").read_text())
    cfg["zero_optimization"] = {"stage": 0}
    path = tmp_path / "zero0_fp32.json"
    path.write_text(json.dumps(cfg))
    return str(path.with_suffix(""))


def _tensors(obj, prefix=""):
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}/{k}"))
    return out


def training_state(tag_dir):
    """Every tensor that a skipped step must leave alone, by path: module weights and any optimizer state in the
    model-state files, every optimizer shard, and the saved module buffers (not the RNG states or data position)."""
    out = {}
    for f in sorted(tag_dir.glob("*model_states.pt")):
        sd = torch.load(f, map_location="cpu", weights_only=False)
        out.update(_tensors({"module": sd.get("module"), "optimizer": sd.get("optimizer")}, f.name))
    for f in sorted(tag_dir.glob("*optim_states.pt")):
        out.update(_tensors(torch.load(f, map_location="cpu", weights_only=False), f.name))
    extra = torch.load(tag_dir / "extra_rank0.pt", map_location="cpu", weights_only=True)
    out.update(_tensors(extra["buffers"], "buffers"))
    return out


def assert_same(a, b, what):
    assert sorted(a) == sorted(b), what
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{what}: {k} differs"


def complete(work_dir):
    return sorted((p.name for p in (work_dir / "checkpoints").glob("iter_*") if (p / "COMPLETE").is_file()),
                  key=lambda n: int(n.split("_")[1]))


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("ds", ["zero0_fp32", "zero1_fp32", "zero3_fp32", "zero2_bf16"])
def test_nonfinite_loss_and_gradient_skipped_then_stop(tmp_path, ds):
    work = tmp_path / "run"
    rc, out = run([], work, port=free_port(), iters=6, ds=_ds_config(tmp_path, ds), expect_ok=False, options=OPTS,
                  extra_env=FAULTS)
    assert rc != 0, out[-3000:]
    assert "NonFiniteLossError: 2 consecutive iterations (up to 5)" in out, out[-4000:]
    assert "max_nonfinite_steps=1" in out
    assert "iteration 2: non-finite loss terms {'loss_ce': nan" in out  # rank 1's own line
    recs = [json.loads(line) for line in open(work / "metrics.jsonl")]
    bad = [r for r in recs if r["mode"] == "nonfinite"]
    assert [(r["iter"], r["cause"], r["consecutive"]) for r in bad] == [(2, "loss", 1), (4, "gradient", 1),
                                                                       (5, "loss", 2)], bad
    for r in (bad[0], bad[2]):  # the NaN loss: rank 1's terms, loss_ce NaN, the auxiliary term finite
        assert list(r["loss_terms"]) == ["rank1"]
        t = r["loss_terms"]["rank1"]
        assert math.isnan(t["loss_ce"]) and math.isnan(t["loss"]) and math.isfinite(t["loss_aux"]), t
    grad = bad[1]  # the Inf gradient: every loss finite, all ranks' terms logged
    assert grad["loss_terms"] is None and sorted(grad["rank_loss_terms"]) == ["rank0", "rank1"]
    assert all(math.isfinite(v) for t in grad["rank_loss_terms"].values() for v in t.values()), grad
    assert grad["grad_norm"] is None or not math.isfinite(grad["grad_norm"])
    assert "iteration 4: non-finite gradient with finite losses" in out
    assert complete(work) == ["iter_1", "iter_2", "iter_3", "iter_4"]
    s1, s2, s3, s4 = (training_state(work / "checkpoints" / f"iter_{i}") for i in (1, 2, 3, 4))
    assert len(s1) > 4
    assert_same(s1, s2, "the step of iteration 2 (NaN loss) was not skipped")
    assert_same(s3, s4, "the step of iteration 4 (Inf gradient) was not skipped")
    assert any(not torch.equal(s2[k], s3[k]) for k in s2), "iteration 3 should have trained"
    assert all(torch.isfinite(v).all() for v in s4.values() if v.is_floating_point())
    if ds == "zero3_fp32":
        # the skip left nothing behind (ZeRO-3's partitioned gradient buffers, parameter trace, counters): a fresh
        # process resumed from iter_2 runs iterations 3-5 (the same faults, shifted by the 2 micro-batches before
        # it) to the same states and losses, bit for bit
        res = tmp_path / "resumed"
        shutil.copytree(work, res)
        for d in (res / "checkpoints").glob("iter_*"):
            if d.name != "iter_2":
                shutil.rmtree(d)
        (res / "metrics.jsonl").unlink()
        rc, out = run(["--resume", "auto"], res, port=free_port(), iters=6, ds=ds, options=OPTS, expect_ok=False,
                      extra_env=dict(FAULTS, STUB_NAN_OFFSET="2"))
        assert "resumed from" in out and "iteration 2" in out, out[-3000:]
        assert rc != 0 and "NonFiniteLossError: 2 consecutive iterations (up to 5)" in out, out[-3000:]
        for i in (3, 4):
            assert_same(training_state(work / "checkpoints" / f"iter_{i}"),
                        training_state(res / "checkpoints" / f"iter_{i}"), f"iter_{i}: faulty run vs resumed")
        again = [json.loads(line) for line in open(res / "metrics.jsonl")]
        assert [r for r in again if r["mode"] == "train"] and all(
            r["loss"] == next(q["loss"] for q in recs if (q["iter"], q["mode"]) == (r["iter"], "train"))
            for r in again if r["mode"] == "train")


@pytest.mark.distributed
@pytest.mark.slow
def test_nonfinite_with_gradient_accumulation_skips_the_whole_iteration(tmp_path):
    """gas 2 (2 ranks x 2 images x 2 micro-batches = global batch 8), ZeRO-2 fp32: a NaN loss in the *second*
    micro-batch of iteration 2 (micro-batch 3), an Inf gradient in the *first* of iteration 4 (micro-batch 6) and a
    NaN loss in the second of iteration 5 (micro-batch 9). The ranks agree after the last micro-batch; the whole
    iteration's step is skipped (the clean micro-batch's gradients are dropped with it), iteration 3 trains, and the
    second consecutive fault stops the run."""
    work = tmp_path / "gas2"
    rc, out = run([], work, port=free_port(), iters=6, ds="zero2_fp32", expect_ok=False,
                  options=OPTS + ["global_batch_size=8"],
                  extra_env={"STUB_NAN_AT_BATCH": "3,9", "STUB_INF_GRAD_AT_BATCH": "6"})
    assert rc != 0, out[-3000:]
    assert "accumulation 2" in out, out[-3000:]
    assert "NonFiniteLossError: 2 consecutive iterations (up to 5)" in out, out[-4000:]
    recs = [json.loads(line) for line in open(work / "metrics.jsonl")]
    bad = [(r["iter"], r["cause"], r["consecutive"]) for r in recs if r["mode"] == "nonfinite"]
    assert bad == [(2, "loss", 1), (4, "gradient", 1), (5, "loss", 2)], bad
    assert complete(work) == ["iter_1", "iter_2", "iter_3", "iter_4"]
    s1, s2, s3, s4 = (training_state(work / "checkpoints" / f"iter_{i}") for i in (1, 2, 3, 4))
    assert_same(s1, s2, "iteration 2 (NaN in its second micro-batch) was not skipped as a whole")
    assert_same(s3, s4, "iteration 4 (Inf gradient in its first micro-batch) was not skipped as a whole")
    assert any(not torch.equal(s2[k], s3[k]) for k in s2), "iteration 3 should have trained"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fp16 is not supported on this CPU)")
def test_fp16_loss_scaler_skips_are_not_faults(tmp_path):
    """fp16 with dynamic loss scaling (1 rank on a GPU): Inf gradients with finite losses in iterations 2-5 are the
    loss scaler's overflows (DeepSpeed skips the step, lowers the scale): not counted, although 4 consecutive would
    exceed max_nonfinite_steps=1; a NaN *loss* in iteration 6 is a fault and is logged. The run finishes."""
    work = tmp_path / "fp16"
    env = {"STUB_NAN_RANK": "0", "STUB_INF_GRAD_AT_BATCH": "1,2,3,4", "STUB_NAN_AT_BATCH": "5"}
    rc, out = run([], work, ranks=1, port=free_port(), iters=6, ds="zero2_fp16", options=OPTS, extra_env=env)
    recs = [json.loads(line) for line in open(work / "metrics.jsonl")]
    bad = [r for r in recs if r["mode"] == "nonfinite"]
    assert [(r["iter"], r["cause"], r["consecutive"]) for r in bad] == [(6, "loss", 1)], bad
    scales = {r["iter"]: r["loss_scale"] for r in recs if r["mode"] == "train"}
    assert scales[6] < scales[1], scales  # the scaler lowered the scale


# --------------------------------------------------------------------------------------------- the guard alone
class FakeEngine:
    """What the guard uses of a DeepSpeed engine: ``step()`` (optimizer step, then zeroing the gradients, as
    DeepSpeed's ZeRO-0 fp32 engine does), ``was_step_applied()``, ``get_global_grad_norm()``."""

    def __init__(self, module, applied=True):
        self.module, self.applied = module, applied
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad()

    def was_step_applied(self):
        return self.applied

    def get_global_grad_norm(self):
        return None


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))


def _backward(net, scale=1.0):
    net(torch.randn(8, 3)).sum().mul(scale).backward()


ZERO0_FP32 = {"zero_optimization": {"stage": 0}}


def test_zero0_fp32_fault_holds_the_torch_step_back():
    """ZeRO-0 fp32: the guard finds an Inf gradient itself; the step on it leaves weights, Adam state and the
    BatchNorm statistics as they were, the gradients are cleared, and the next clean step trains again."""
    from vit_adapter_ds.engine.faults import NonFiniteGuard
    net = _net()
    engine = FakeEngine(net)
    guard = NonFiniteGuard(ZERO0_FP32, max_steps=1)
    guard.start(net, 1)
    _backward(net)
    assert not guard.local_fault(net)
    guard.step(engine, False)
    assert guard.finish(engine, False, {"loss": 1.0}, last_saved=0) is None
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adam = {k: v.clone() for k, v in _tensors(engine.optimizer.state_dict()).items()}
    guard.start(net, 2)
    _backward(net, scale=float("inf"))  # also moves the BatchNorm statistics
    assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    assert guard.local_fault(net)
    guard.step(engine, True)
    event = guard.finish(engine, True, {"loss": 1.0}, last_saved=0)
    assert event["cause"] == "gradient" and event["loss_terms"] is None and event["rank_loss_terms"] == {
        "rank0": {"loss": 1.0}}
    assert_same(before, net.state_dict(), "weights / buffers")
    assert_same(adam, _tensors(engine.optimizer.state_dict()), "Adam state")
    assert all(p.grad is None for p in net.parameters())
    guard.start(net, 3)
    _backward(net)
    guard.step(engine, False)  # the optimizer's own step() is back
    assert not torch.equal(net[0].weight, before["0.weight"])


@pytest.mark.parametrize("ds,applied,loss,want", [
    ({"fp16": {"enabled": True, "loss_scale": 0}}, False, 1.0, None),          # the loss scaler's overflow skip
    ({"fp16": {"enabled": True, "loss_scale": 0}}, False, float("nan"), "loss"),
    ({"fp16": {"enabled": True, "loss_scale": 128}}, False, 1.0, "gradient"),  # static scale: a fault
    ({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}, False, 1.0, "gradient"),
    ({"zero_optimization": {"stage": 3}}, False, float("inf"), "loss"),
    ({"zero_optimization": {"stage": 3}}, True, 1.0, None),
])
def test_what_counts_as_a_fault(ds, applied, loss, want):
    from vit_adapter_ds.engine.faults import NonFiniteGuard
    net = _net()
    guard = NonFiniteGuard(ds, max_steps=0)
    guard.start(net, 7)
    guard.see_loss({"loss_ce": loss, "loss": loss})
    fault = guard.local_fault(net)
    event = guard.finish(FakeEngine(net, applied=applied), fault, {"loss": loss}, last_saved=4)
    assert (event and event["cause"]) == want


def test_applied_despite_a_fault_and_the_limit():
    """A step DeepSpeed applied although the ranks agreed on a fault is an error naming the last checkpoint; more
    than max_steps consecutive faults stop, a normal step in between resets the count."""
    from vit_adapter_ds.engine.faults import NonFiniteGuard, NonFiniteLossError

    class Log:
        def __init__(self):
            self.lines, self.records = [], []
            self.info, self.jsonl, self.close = self.lines.append, self.records.append, lambda: None
    net = _net()
    guard = NonFiniteGuard({"bf16": {"enabled": True}}, max_steps=1)
    guard.start(net, 5)
    guard.see_loss({"loss": float("nan")})
    with pytest.raises(NonFiniteLossError, match=r"iteration 5: non-finite loss .*last complete checkpoint "
                                                 r"\(iteration 4\)"):
        guard.finish(FakeEngine(net, applied=True), True, {"loss": float("nan")}, last_saved=4)
    log, event = Log(), {"cause": "gradient", "loss_terms": None, "rank_loss_terms": {}, "grad_norm": None}
    guard.count(6, event, log, last_saved=4)
    guard.reset()
    guard.count(8, event, log, last_saved=4)
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive iterations \(up to 9\).*iteration 4"):
        guard.count(9, event, log, last_saved=4)
    assert [r["consecutive"] for r in log.records] == [1, 1, 2] and [r["iter"] for r in log.records] == [6, 8, 9]
    with pytest.raises(ValueError):
        NonFiniteGuard({}, max_steps=-1)
