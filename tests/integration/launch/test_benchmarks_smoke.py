"""The benchmark scripts keep working: benchmarks/train_step.py at its tiniest CPU size, benchmarks/gpu_all.py's
control flow (--dry-run on the CPU, the budget, the RESULTS.md section splice), benchmarks/infer_cpu.py at a tiny
size."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_all  # noqa: E402
import train_step  # noqa: E402


def test_parse_mode():
    assert train_step.parse_mode("fp32") == {"zero": None, "dtype": "fp32", "with_cp": False}
    assert train_step.parse_mode("bf16+cp") == {"zero": None, "dtype": "bf16", "with_cp": True}
    assert train_step.parse_mode("zero3:fp16+cp") == {"zero": 3, "dtype": "fp16", "with_cp": True}
    for bad in ("fp16", "zero4:fp32", "bf16+", "fp32+cp+cp", "zero2-bf16"):
        with pytest.raises(ValueError):
            train_step.parse_mode(bad)


def test_ratios_against_the_first_mode_of_each_model():
    # time: best step (median when absent); memory: extra above the import baseline on CPU, else peak
    rows = [dict(model="a", mode="fp32", step_s=2.0, best_step_s=1.6, peak_mb=900, extra_mb=400),
            dict(model="a", mode="bf16", step_s=1.3, best_step_s=0.8, peak_mb=800, extra_mb=100),
            dict(model="b", mode="bf16", step_s=4.0, peak_mb=3000, extra_mb=None),
            dict(model="b", mode="fp32", step_s=6.0, peak_mb=4500, extra_mb=None)]
    got = [(q["vs"], q["time_x"], q["memory_x"]) for q in train_step.ratios(rows)]
    assert got == [("fp32", 1.0, 1.0), ("fp32", 0.5, 0.25), ("bf16", 1.0, 1.0), ("bf16", 1.5, 1.5)]


def test_train_step_tiniest_cpu_size_in_a_fresh_process():
    """In a child of a process whose peak RSS is large (as pytest's is late in the suite): the CPU memory figures are
    the step's own (VmHWM reset after the baseline), not a peak inherited from the parent through ru_maxrss, which
    made the extra read 0 in the fresh-clone CI run."""
    import numpy as np

    ballast = np.ones(2**30 // 8)  # 1 GiB written: this process's peak RSS is at least that
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import train_step; "
            "print(json.dumps(train_step.one('m2f_cpu', 'fp32+cp', batch=1, iters=1, warmup=0, device='cpu')))")
    res = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, timeout=600)
    del ballast
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["with_cp"] and r["zero"] is None and r["size"] == [128, 128]
    assert len(r["losses"]) == 1 and math.isfinite(r["losses"][0]) and r["losses"][0] > 0
    assert r["images_per_s"] == pytest.approx(1 / r["step_s"]) and r["best_step_s"] == r["step_s"]
    assert r["peak_mb"] >= r["extra_mb"] > 0 and r["gb_per_image"] == pytest.approx(r["peak_mb"] / 1024, abs=1e-3)


def test_segmentation_labels_are_blocky_and_in_range():
    img, gt = train_step.make_batch("m2f_cpu", 2, "cpu")
    assert img.shape == (2, 3, 128, 128) and gt.shape == (2, 128, 128)
    assert int(gt.min()) >= 0 and int(gt.max()) < 8
    assert bool((gt[:, :64, :64] == gt[:, :1, :1]).all())  # 2x2 cells of 64x64 pixels


def test_merge_replaces_only_the_marked_section(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# T\n\nbefore\n\n{gpu_all.BEGIN}\nold\n{gpu_all.END}\n\nafter\n")
    gpu_all.merge(md, f"{gpu_all.BEGIN}\nnew\n{gpu_all.END}\n")
    assert md.read_text() == f"# T\n\nbefore\n\n{gpu_all.BEGIN}\nnew\n{gpu_all.END}\n\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("# T\n")
    gpu_all.merge(plain, "S\n")
    assert plain.read_text() == "# T\n\nS\n"


def test_spent_budget_skips_every_part(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    results_md = tmp_path / "RESULTS.md"
    rc = gpu_all.main(["--dry-run", "--budget-s", "1", "--out", str(tmp_path), "--parts", "msda", "backbone",
                       "--results-md", str(results_md)])
    data = json.loads((tmp_path / "gpu_results.json").read_text())
    assert rc == 0 and not results_md.exists()
    assert {k: v["status"] for k, v in data["parts"].items()} == {"msda": "skipped", "backbone": "skipped"}
    assert all("budget" in v["why"] for v in data["parts"].values())
    assert "| msda | skipped |" in (tmp_path / "gpu_section.md").read_text()


@pytest.mark.slow
def test_gpu_all_dry_run(tmp_path):
    results = tmp_path / "RESULTS.md"
    before = f"# R\n\n{gpu_all.BEGIN}\npending\n{gpu_all.END}\n"
    results.write_text(before)
    p = subprocess.run([sys.executable, str(BENCH / "gpu_all.py"), "--dry-run", "--out", str(tmp_path),
                        "--results-md", str(results)], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert results.read_text() == before  # a dry run never touches RESULTS.md
    data = json.loads((tmp_path / "gpu_results.json").read_text())
    parts = data["parts"]
    assert data["dry_run"] and not data["env"]["cuda_available"]
    assert {k: v["status"] for k, v in parts.items()} == {
        "syncbn": "ok", "pytest_gpu": "ok", "msda": "ok", "train_step": "ok", "deepspeed": "skipped",
        "infer": "ok", "backbone": "ok"}
    sb = parts["syncbn"]["result"]
    assert sb["backend"] == "gloo" and sb["world_size"] == 1 and sb["sync_batchnorm_wanted"] is False
    assert sb["convert"]["after"] == ["Conv2d", "SyncBatchNorm", "ReLU"]
    assert "tests/unit/ops/test_ops_gpu.py" in parts["pytest_gpu"]["files"] and parts["pytest_gpu"]["collected_only"]
    assert parts["pytest_gpu"]["counts"]["collected"] > 0
    assert any(row.startswith("| tmlr_decoder | pytorch | fp32 |") for row in parts["msda"]["table"])
    ts = parts["train_step"]
    assert [(x["model"], x["mode"]) for x in ts["results"]] == [("m2f_cpu", "fp32")]
    assert all(x["finite"] for x in ts["results"])
    assert [s["model"] for s in ts["skipped"]] == ["htc_l"]
    assert len(parts["backbone"]["result"]["rows"]) == 4
    inf = parts["infer"]["result"]  # the 896 recipes' latency part, in a dry run the synthetic Mask2Former only
    assert [x["recipes"] for x in inf["rows"]] == [["synthetic_mask2former"]] and inf["rows"][0]["fp32_ms"] > 0
    text = (tmp_path / "gpu_section.md").read_text()
    assert text.startswith(gpu_all.BEGIN) and text.rstrip().endswith(gpu_all.END) and "DRY RUN" in text


@pytest.mark.parametrize("name,params_m", [("m2f_l896", 570.7), ("det_l", 347.9), ("cascade_s", 85.6),
                                           ("atss_s", 35.7), ("gfl_s", 35.8), ("sparse_s", 109.8), ("semfpn_t", 12.2)])
def test_gpu_sizes_build_with_every_checkpoint_switch(name, params_m):
    """The GPU configurations build (on the meta device) and ``+cp`` reaches the backbone and the head FFNs;
    parameter counts as the official papers' tables (Mask2Former BEiT-Adapter-L 571M, Mask R-CNN ViT-Adapter-L
    347.9M; the official READMEs' Cascade Mask R-CNN / ATSS / GFL / Sparse R-CNN ViT-Adapter-S 86M / 36M / 36M /
    110M, the paper's Table 3 Semantic FPN ViT-Adapter-T 12.2M)."""
    import torch

    for cp in (False, True):
        with torch.device("meta"):
            model = train_step.build(name, cp)
        flags = {type(m).__name__: bool(m.with_cp) for m in model.modules() if hasattr(m, "with_cp")}
        want = {"Injector", "Extractor"} | ({"BEiTBlock", "FFN"} if name == "m2f_l896" else {"Block"})
        assert flags == dict.fromkeys(want, cp)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.1)


@pytest.mark.parametrize("name", ["pan_l", "pan_cpu"])
def test_panoptic_sizes_build_and_train_a_step(name):
    """The COCO panoptic Mask2Former configurations: ``+cp`` reaches the backbone and both head FFNs (the
    ``panoptic_head`` keys); the CPU twin runs a step on the benchmark's panoptic targets (things + a stuff map)."""
    import torch

    for cp in (False, True):
        with torch.device("meta"):
            model = train_step.build(name, cp)
        flags = {type(m).__name__: bool(m.with_cp) for m in model.modules() if hasattr(m, "with_cp")}
        assert flags == dict.fromkeys({"Injector", "Extractor", "FFN", "BEiTBlock" if name == "pan_l" else "Block"},
                                      cp)
    if name == "pan_cpu":
        r = train_step.one(name, "fp32", batch=2, iters=1, warmup=0, device="cpu")
        assert r["finite"] and r["losses"][0] > 0 and r["size"] == [128, 128]


def test_planner_predicts_every_gpu_training_step_configuration():
    """benchmarks/planned_train_step.json (plan_train_step.py) holds the capacity planner's peak-memory prediction
    for every configuration gpu_all.py's train_step part measures, or says why not (the detectors without planner
    stand-ins), so the first lent GPU prints prediction and measurement side by side; the gpu_all table shows it."""
    import plan_train_step

    data = json.loads(plan_train_step.OUT.read_text())
    want = {(m, mode) for models, modes in gpu_all.TRAIN_STEP_GROUPS for m in models for mode in modes}
    got = {(r["model"], r["mode"]) for r in data["results"]}
    skipped = {(r["model"], r["mode"]) for r in data["skipped"]}
    assert want == got | skipped and not got & skipped
    assert not skipped  # every model has its stand-ins
    assert all(r["planned_mb"] == r["states_mb"] + r["activations_mb"] or
               abs(r["planned_mb"] - r["states_mb"] - r["activations_mb"]) <= 1 for r in data["results"])
    m2f = {r["mode"]: r for r in data["results"] if r["model"] == "m2f_l896"}
    # checkpointing saves activation memory; ZeRO-3 on one rank holds no less than ZeRO-2 (nothing to partition)
    assert m2f["bf16+cp"]["activations_mb"] < m2f["bf16"]["activations_mb"]
    assert m2f["fp32+cp"]["states_mb"] == m2f["fp32"]["states_mb"]
    row = {"model": "m2f_l896", "mode": "bf16+cp", "batch": 1, "size": [896, 896], "step_s": 1.0,
           "images_per_s": 1.0, "peak_mb": 20480, "gb_per_image": 20.0}
    info = {"optional": {}, "date_utc": "-", "cpu_count": 1, "python": "-", "torch": "-", "cuda": "-", "triton": "-"}
    part = {"status": "ok", "seconds": 1.0, "results": [row], "skipped": [],
            "ratios": [{"model": "m2f_l896", "mode": "bf16+cp", "vs": "bf16+cp", "time_x": 1.0, "memory_x": 1.0}]}
    text = gpu_all.section(info, {"train_step": part}, False, 1.0, 1.0)
    assert f"| 20.00 | {m2f['bf16+cp']['planned_mb'] / 1024:.2f} | 20.00 |" in text


def test_infer_cpu_runs_and_checks_the_onnx_file(tmp_path):
    """benchmarks/infer_cpu.py at a tiny size: exports, checks against PyTorch, times both runtimes."""
    pytest.importorskip("onnxruntime")
    js = tmp_path / "infer.json"
    p = subprocess.run([sys.executable, str(BENCH / "infer_cpu.py"), "--size", "64", "96", "--warmup", "0",
                        "--iters", "1", "--json", str(js)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads(js.read_text())
    assert data["info"]["verify"]["ok"] and data["info"]["size"] == [64, 96]
    assert [r["runtime"] for r in data["rows"]] == ["PyTorch", "ONNX Runtime"]
    assert all(r["images_per_s"] > 0 for r in data["rows"])
    assert "| ONNX Runtime | 1 |" in p.stdout
