"""The planner's cluster arithmetic (vit_adapter_ds.plan.estimate) against figures worked out by hand from its
stated rules, and launch/plan.py end to end on the tiny quickstart recipe."""
from __future__ import annotations

import io
import json

import pytest

from vit_adapter_ds.plan.estimate import Cluster, Measured, comm_bytes, evaluate, recommend, sweep
from vit_adapter_ds.plan.states import ParamCounts

PSI = 300_000_000  # a ViT-L-sized model


def _measured(peak_gb=(12.0, 4.0), tflops=(3.0, 4.0), dtype="bf16"):
    counts = ParamCounts(trainable=PSI, frozen=0, buffers=0, largest_param=4_000_000, num_tensors=400)
    return Measured(counts=counts, dtype=dtype, image_size=(896, 896),
                    peak={False: peak_gb[0] * 1e9, True: peak_gb[1] * 1e9}, saved={False: 1, True: 1},
                    flops={False: tflops[0] * 1e12, True: tflops[1] * 1e12})


def test_ring_communication_by_stage():
    c = ParamCounts(trainable=1000, frozen=200, buffers=0, largest_param=10, num_tensors=3)
    # bf16 (2 bytes), 4 ranks: (N-1)/N = 0.75; 3 micro-steps per optimizer step
    assert comm_bytes(c, 0, "bf16", 4, 3)["total"] == pytest.approx(2 * 0.75 * 1000 * 2)
    assert comm_bytes(c, 1, "bf16", 4, 3)["total"] == pytest.approx(0.75 * 1000 * 2 * 2)
    assert comm_bytes(c, 2, "bf16", 4, 3)["total"] == pytest.approx(3 * 0.75 * 1000 * 2 + 0.75 * 1000 * 2)
    assert comm_bytes(c, 3, "bf16", 4, 3)["total"] == pytest.approx(3 * 2 * 0.75 * 1200 * 2 + 3 * 0.75 * 1000 * 2)
    assert comm_bytes(c, 3, "bf16", 1, 3)["total"] == 0


def test_one_configuration_by_hand():
    cl = Cluster(gpus=8, gpu_memory_gb=80, peak_tflops=100, utilization=0.5, overlap=0.0, intra_bw_gbs=100)
    o = evaluate(_measured(), cl, stage=2, with_cp=True, micro_batch=1, global_batch=16)
    assert o["accumulation"] == 2 and o["global_batch"] == 16
    assert o["activations"] == 4e9
    assert o["compute_s"] == pytest.approx(2 * 4e12 / 50e12)
    comm = 2 * (7 / 8) * PSI * 2 + (7 / 8) * PSI * 2
    assert o["comm_s"] == pytest.approx(comm / 100e9) and o["step_s"] == pytest.approx(o["compute_s"] + comm / 100e9)
    assert o["memory"] == o["states"]["total"] + 4e9


def test_recommendation_fits_or_says_what_would():
    m = _measured()
    big = recommend(m, Cluster(gpus=16, gpu_memory_gb=80, nodes=2), 16)
    assert big["fits"] and big["best"]["memory"] <= 80e9 * 0.9
    assert big["best"]["micro_batch"] * big["best"]["accumulation"] * 16 == 16
    small = recommend(m, Cluster(gpus=4, gpu_memory_gb=4), 16)  # one image: 4 GB of activations
    assert not small["fits"]
    closest = small["closest"]  # the most memory-saving: ZeRO-3 + offload, checkpointing on, one image
    assert closest["stage"] == 3 and closest["with_cp"] and closest["micro_batch"] == 1
    assert small["needs_gpu_memory_gb"] == pytest.approx(closest["memory"] / 0.9 / 1e9)
    assert small["needs_gpus"] is None  # one image's activations alone exceed 3.6 GB: more GPUs do not help
    # small buckets; ZeRO-3 + optimizer offload keeps 2 bytes of weights + 2 of gradients per parameter on the GPU,
    # shared by the GPUs: 1.2 GB + 2 GB of activations on one GPU (> 2.7 GB usable), 0.6 + 2 GB on two
    ds = {"zero_optimization": {"reduce_bucket_size": 1000000, "stage3_prefetch_bucket_size": 1000000}}
    tight = recommend(_measured(peak_gb=(12.0, 2.0)), Cluster(gpus=1, gpu_memory_gb=3), 16, ds)
    assert not tight["fits"] and tight["needs_gpus"] == 2
    mid = recommend(m, Cluster(gpus=4, gpu_memory_gb=12), 16)
    assert mid["fits"] and mid["best"]["with_cp"]  # 12 GB of activations without checkpointing do not fit
    with pytest.raises(ValueError, match="gpus"):
        Cluster(gpus=0, gpu_memory_gb=80)
    with pytest.raises(ValueError, match="multiple of nodes"):
        Cluster(gpus=6, gpu_memory_gb=80, nodes=4)


def test_sweep_scales_and_memory_falls_with_zero3():
    rows = sweep(_measured(), Cluster(gpus=8, gpu_memory_gb=80), 16, gpu_counts=[1, 8, 64])
    z3 = {r["gpus"]: r for r in rows if r["stage"] == 3}
    assert z3[64]["states"] < z3[8]["states"] < z3[1]["states"]  # the fastest fitting configuration of each count
    z0 = {r["gpus"]: r for r in rows if r["stage"] == 0}
    assert z0[64]["states"] == z0[8]["states"] == z0[1]["states"]  # replicated
    assert z3[64]["global_batch"] == 64 and z3[64]["images_per_s"] > z3[8]["images_per_s"]


@pytest.mark.slow
def test_plan_cli_on_the_quickstart_recipe(tmp_path):
    from vit_adapter_ds.plan.cli import main

    out = io.StringIO()
    j = tmp_path / "plan.json"
    assert main(["synthetic_quickstart", "--gpus", "2", "--gpu-memory", "16", "--ds_config",
                 "ds_configs/zero2_bf16.json", "--checkpointing", "recipe", "--json", str(j), "--image-size", "64",
                 "64", "--sweep"], out=out) == 0
    text = out.getvalue()
    assert "recommended" in text and "ZeRO-2" in text and "<- ds_config" in text and "sweep" in text
    plan = json.loads(j.read_text())
    assert plan["dtype"] == "bf16" and plan["recommendation"]["fits"]
    assert plan["measured"]["image_size"] == [64, 64]


def test_plan_cli_refuses_bad_input(capsys):
    from vit_adapter_ds.engine.eval_cli import run_cli
    from vit_adapter_ds.plan.cli import main

    assert run_cli(main, ["synthetic_quickstart", "--gpus", "0", "--gpu-memory", "16"]) == 2
    assert "gpus must be >= 1" in capsys.readouterr().err
