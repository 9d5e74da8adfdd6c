#!/usr/bin/env python
"""Every GPU-only test and benchmark of the project in one call on one GPU, within a time budget (< 10 minutes).

Parts, in this order, each in its own subprocess with its own time limit (a part that would start with less than
``MIN_PART_S`` of the total budget left is skipped with a message, as is the rest of a part whose limit is hit):

====================  ====  =========================================================================================
part                  s     what
====================  ====  =========================================================================================
env                   --    GPU name / memory / capability, driver, torch / triton / CUDA / Python versions, which
                            optional packages import (deepspeed, mmengine, webdataset)
syncbn                30    1-rank NCCL group: ``nn.SyncBatchNorm`` forward/backward against a float64 batch-norm
                            computed by hand, and ``vit_adapter_ds.models.norm.convert_sync_batchnorm(force=True)``
pytest_gpu            150   ``pytest -m gpu`` over every test file that uses the ``gpu`` marker (builds the CUDA
                            extension on first use)
msda                  90    ``benchmarks/msda.py`` (CUDA extension, Triton, reference; fp32 / fp16 / bf16)
train_step            170   ``benchmarks/train_step.py``: Mask2Former + BEiT-Adapter-L 896 and Mask R-CNN +
                            ViT-Adapter-L (fp32 / +with_cp / bf16 autocast, ZeRO-2 / ZeRO-3 under DeepSpeed when it
                            imports), the paper's Table 2 / 3 heads with ViT-Adapter-S/T (Cascade Mask R-CNN,
                            ATSS, GFL, Sparse R-CNN at 800x1344, Semantic FPN at 512; fp32 / bf16+cp), then UperNet
                            T/S 512 while the budget lasts
deepspeed             50    a 2-step DeepSpeed fp16 and a 2-step DeepSpeed bf16 run (ZeRO-2, synthetic Mask2Former)
infer                 60    inference latency of the ``*_896_*`` recipes (Mask2Former BEiT / BEiTv2-Adapter-L, one
                            896 x 896 window as their sliding-window test decodes it, whole-image ``model.logits``,
                            batch 1, untrained weights): ms per window, median of 5 after 2 warm-ups, fp32 and bf16
                            autocast, ``max_memory_allocated``; one row per distinct model (recipes that differ only
                            in data / schedule / pretrained weights / _ms test share it), while the part's time lasts
backbone              40    ``benchmarks/backbone.py``'s ViT-Adapter-T/S at 512 on CUDA: fwd+bwd time and
                            ``max_memory_allocated``, with_cp off/on, fp32 / bf16 autocast
====================  ====  =========================================================================================

It writes ``gpu_section.md`` (the "GPU run" section of ``benchmarks/RESULTS.md``), ``gpu_results.json`` (all
figures, machine-readable) and ``gpu_all.log`` into ``--out``; without ``--dry-run`` it also replaces the section
between the ``gpu_all`` markers of ``--results-md`` and writes ``benchmarks/gpu_results.json``.

One call on a lent GPU (the device tool; its image: Python 3.12, torch, triton, timm, no mmengine / deepspeed /
webdataset). Once, here, from the repository root: ``bash benchmarks/gpu_wheels.sh deepspeed`` (mmengine + the
pure-Python packages it needs, a deepspeed wheel built here and pydantic for it, ~6 MB, into the ignored ``.whl/``;
without ``deepspeed`` the DeepSpeed parts are reported as skipped). Then one call::

    run(carry=[".whl"], timeout_s=600, command="python3 -m pip install -q --no-index --no-deps --no-compile
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
        python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1;
        PYTHONUNBUFFERED=1 python3 benchmarks/gpu_all.py --out $OUT")

(one line; ~330 characters). What comes back under ``files_at``: ``gpu_section.md``, ``gpu_results.json``,
``gpu_all.log``. Back here: ``python benchmarks/gpu_all.py --merge <files_at>/gpu_section.md`` splices the section
into ``benchmarks/RESULTS.md``; copy ``gpu_results.json`` next to it. The default budget (570 s) leaves the call
inside the tool's 600 s; the 15 minutes of device time of a task also pay the machine's start (a minute or more),
so there is time for one full call and a short second one. ``--dry-run`` runs the same control flow on the CPU at
tiny sizes (GPU parts reported as skipped, RESULTS.md untouched); ``tests/integration/launch/test_benchmarks_smoke.py`` runs it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- gpu_all: begin -->", "<!-- gpu_all: end -->"
TOTAL_BUDGET_S = 570
MIN_PART_S = 15
DRY_SCALE = 4  # a dry run's limits are this many times longer: it runs on a (shared) CPU
# train_step gave 30 s to infer (its last group, UperNet T/S, runs only while its budget lasts)
PART_BUDGET_S = {"syncbn": 30, "pytest_gpu": 150, "msda": 90, "train_step": 170, "deepspeed": 50, "infer": 60,
                 "backbone": 40}
OPTIONAL = ("deepspeed", "mmengine", "webdataset", "timm")
_LARGE = ["fp32", "bf16+cp", "bf16", "fp32+cp"]  # the official setting (bf16 + with_cp) second
# the train_step part's configurations (ZeRO modes only where DeepSpeed imports); plan_train_step.py predicts each
TRAIN_STEP_GROUPS = [(["m2f_l896"], _LARGE + ["zero2:bf16+cp", "zero3:bf16+cp"]), (["det_l", "htc_l"], _LARGE),
                     (["cascade_s", "atss_s", "gfl_s", "sparse_s", "semfpn_t", "pan_l"], ["fp32", "bf16+cp"]),
                     (["tiny", "small"], ["fp32", "fp32+cp", "bf16"])]


# ---------------------------------------------------------------------------------------------- workers
# Each runs in a subprocess (``--worker NAME``) and prints one ``RESULT {json}`` line.

def worker_syncbn(dry: bool) -> dict:
    """SyncBatchNorm in a 1-rank process group (NCCL on CUDA; gloo and eval mode only in a dry run)."""
    import socket

    import torch
    import torch.distributed as dist
    from torch import nn

    from vit_adapter_ds.models.norm import DistributedBatchNorm2d, convert_sync_batchnorm, sync_batchnorm_wanted

    cuda = torch.cuda.is_available() and not dry
    backend = "nccl" if cuda else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    device = torch.device("cuda" if cuda else "cpu")
    out = {"backend": dist.get_backend(), "world_size": dist.get_world_size(),
           "sync_batchnorm_wanted": sync_batchnorm_wanted()}
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(4, 8, 6, 5, generator=g, dtype=torch.float64) * 3 + 1
    grad64 = torch.randn(4, 8, 6, 5, generator=g, dtype=torch.float64)
    # float64 reference by hand: biased variance for the normalisation, unbiased for the running statistics
    leaf = x64.clone().requires_grad_()
    mean = leaf.mean((0, 2, 3), keepdim=True)
    var = leaf.var((0, 2, 3), unbiased=False, keepdim=True)
    ref = (leaf - mean) / torch.sqrt(var + 1e-5)
    ref.backward(grad64)
    run_mean = 0.1 * x64.mean((0, 2, 3))
    run_var = 0.9 + 0.1 * x64.var((0, 2, 3), unbiased=True)

    def rel(a, b):
        return float((a.double().cpu() - b).abs().max() / b.abs().max())

    if cuda:
        bn = nn.SyncBatchNorm(8).to(device).train()
        x = x64.float().to(device).requires_grad_()
        y = bn(x)
        y.backward(grad64.float().to(device))
        out["syncbn_train"] = {"out_rel_err": rel(y.detach(), ref.detach()), "grad_rel_err": rel(x.grad, leaf.grad),
                               "running_mean_rel_err": rel(bn.running_mean, run_mean),
                               "running_var_rel_err": rel(bn.running_var, run_var)}
        ok = all(v < 1e-4 for v in out["syncbn_train"].values())
        # with one rank nn.SyncBatchNorm falls back to F.batch_norm; the synchronising autograd function itself
        # (NCCL all_gather of the statistics + the CUDA gather-stats kernels) is torch-internal: called directly
        try:
            from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction

            x = x64.float().to(device).requires_grad_()
            w, b = torch.ones(8, device=device), torch.zeros(8, device=device)
            rm, rv = torch.zeros(8, device=device), torch.ones(8, device=device)
            y = SyncBNFunction.apply(x, w, b, rm, rv, 1e-5, 0.1, dist.group.WORLD, 1)
            y.backward(grad64.float().to(device))
            out["sync_function"] = {"out_rel_err": rel(y.detach(), ref.detach()),
                                    "grad_rel_err": rel(x.grad, leaf.grad),
                                    "running_mean_rel_err": rel(rm, run_mean), "running_var_rel_err": rel(rv, run_var)}
            ok &= all(v < 1e-4 for v in out["sync_function"].values())
        except Exception as e:  # noqa: BLE001 (torch-internal API: reported, not fatal)
            out["sync_function"] = f"not run: {type(e).__name__}: {e}"
        t = torch.full((4,), 3.0, device=device)
        dist.all_reduce(t)
        out["all_reduce_ok"] = bool((t == 3.0).all())
        ok &= out["all_reduce_ok"]
    else:
        out["syncbn_train"] = "skipped: train-mode nn.SyncBatchNorm needs CUDA (dry run)"
        ok = True
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), DistributedBatchNorm2d(8), nn.ReLU()).to(device)
    x = x64.float().to(device)
    with torch.no_grad():
        want_train = model(x)  # train mode: batch statistics, updates the running ones once
        model.eval()
        want_eval = model(x)
        model.train()
    before = [type(m).__name__ for m in model]
    converted = convert_sync_batchnorm(model, force=True)
    out["convert"] = {"before": before, "after": [type(m).__name__ for m in converted]}
    ok &= isinstance(converted[1], nn.SyncBatchNorm)
    with torch.no_grad():
        converted.eval()
        got_eval = converted(x)
        out["convert"]["eval_rel_err"] = rel(got_eval, want_eval.double().cpu())
        if cuda:
            converted.train()
            got_train = converted(x)
            out["convert"]["train_rel_err"] = rel(got_train, want_train.double().cpu())
    ok &= all(v < 1e-5 for k, v in out["convert"].items() if k.endswith("rel_err"))
    dist.destroy_process_group()
    out["ok"] = bool(ok)
    return out


def worker_backbone(dry: bool) -> dict:
    """benchmarks/backbone.py's configurations on CUDA (fwd+bwd of the backbone alone)."""
    import torch

    sys.path.insert(0, str(HERE))
    from backbone import CONFIGS, INDEXES  # noqa: E402  (benchmarks/backbone.py: the same model table)

    from vit_adapter_ds.models import ViTAdapter

    cuda = torch.cuda.is_available() and not dry
    device = "cuda" if cuda else "cpu"
    sizes, res, batch, iters = (["T"], 64, 1, 1) if dry else (["T", "S"], 512, 2, 5)
    rows = []
    for size in sizes:
        for with_cp in (False, True):
            for dtype in ("fp32", "bf16"):
                torch.manual_seed(0)
                model = ViTAdapter(**CONFIGS[size], interaction_indexes=INDEXES, with_cp=with_cp).to(device).train()
                x = torch.randn(batch, 3, res, res, device=device)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for i in range(iters + 1):
                    t0 = time.perf_counter()
                    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                        outs = model(x)
                    sum(o.float().mean() for o in outs).backward()
                    model.zero_grad(set_to_none=True)
                    if cuda:
                        torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - t0)
                rows.append({"size": size, "with_cp": with_cp, "dtype": dtype, "batch": batch, "res": res,
                             "ms_per_iter": 1000 * sorted(times)[len(times) // 2],
                             "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None})
                del model, x, outs
                if cuda:
                    torch.cuda.empty_cache()
    return {"device": device, "rows": rows}


def infer_recipes() -> list[str]:
    """The built-in ``*_896_*`` recipes (the 896 x 896 BEiT / BEiTv2-Adapter-L Mask2Former family)."""
    return sorted(p.stem for p in (ROOT / "vit_adapter_ds" / "recipes").glob("*_896_*.py"))


def worker_infer(dry: bool) -> dict:
    """GPU inference latency of one test window of each distinct ``*_896_*`` model (dry run: the synthetic
    Mask2Former at 128 on the CPU, one recipe, to check the control flow)."""
    import torch

    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.tasks import task_for

    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    recipes = ["synthetic_mask2former"] if dry else infer_recipes()
    warmup, iters = (0, 1) if dry else (2, 5)
    deadline = time.monotonic() + PART_BUDGET_S["infer"] * (DRY_SCALE if dry else 1) - 20
    rows, seen, skipped = [], {}, []
    for recipe in recipes:
        cfg = load_recipe(recipe)
        model_cfg = to_plain(cfg.model)
        model_cfg.pop("pretrained", None)
        model_cfg.get("backbone", {}).pop("pretrained", None)
        # the _ms recipes' Aug class and test settings change the test procedure, not one window's computation
        key = json.dumps({k: v for k, v in model_cfg.items() if k not in ("type", "test_cfg")}, sort_keys=True,
                         default=str)
        if key in seen:  # same architecture as an earlier recipe (other data / schedule / pretrained weights)
            seen[key]["recipes"].append(recipe)
            continue
        if time.monotonic() > deadline:
            skipped.append(recipe)
            continue
        test_cfg = model_cfg.get("test_cfg") or {}
        size = tuple(test_cfg.get("crop_size") or (128, 128))
        if dry:
            size = (128, 128)
        torch.manual_seed(0)
        with device:
            model = task_for(cfg).build_model(load_pretrained=False).eval()
        x = torch.randn(1, 3, *size, device=device)
        row = {"recipes": [recipe], "model": type(model).__name__, "backbone": type(model.backbone).__name__,
               "classes": int(model.num_classes), "size": list(size), "params_m": round(
                   sum(p.numel() for p in model.parameters()) / 1e6, 1)}
        for dtype in ("fp32", "bf16"):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                for i in range(warmup + iters):
                    t0 = time.perf_counter()
                    model.logits(x, mode="whole")
                    if cuda:
                        torch.cuda.synchronize()
                    if i >= warmup:
                        times.append(time.perf_counter() - t0)
            row[f"{dtype}_ms"] = round(1000 * sorted(times)[len(times) // 2], 2)
            row[f"{dtype}_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None
        seen[key] = row
        rows.append(row)
        del model, x
        if cuda:
            torch.cuda.empty_cache()
    return {"device": str(device), "rows": rows, "skipped": skipped, "warmup": warmup, "iters": iters}


WORKERS = {"syncbn": worker_syncbn, "backbone": worker_backbone, "infer": worker_infer}


# ---------------------------------------------------------------------------------------------- driver

class Runner:
    """Runs the parts in order under one total budget and collects their results."""

    def __init__(self, dry: bool, total_s: float, out: Path, log):
        self.dry, self.total_s, self.out, self.log = dry, total_s, out, log
        self.start = time.monotonic()
        self.parts: dict[str, dict] = {}

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def limit(self, name: str) -> float | None:
        """This part's time limit, or None (and the part recorded as skipped) when the budget is spent."""
        left = self.left()
        if left < MIN_PART_S:
            self.skip(name, f"total budget of {self.total_s:.0f} s spent ({left:.0f} s left)")
            return None
        return min(PART_BUDGET_S[name] * (DRY_SCALE if self.dry else 1), left)

    def skip(self, name: str, why: str) -> None:
        self.parts[name] = {"status": "skipped", "why": why, "seconds": 0.0}
        self.say(f"[{name}] skipped: {why}")

    def call(self, name: str, cmd: list[str], limit: float, env: dict | None = None):
        """Run ``cmd``; returns (returncode or None on timeout, stdout, stderr, seconds)."""
        self.say(f"[{name}] $ {' '.join(cmd)}  (limit {limit:.0f} s)")
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT,
                               env=dict(os.environ, **(env or {})))
            rc, so, se = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc = None
            so = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            se = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        dt = time.monotonic() - t0
        self.log.write(f"--- [{name}] stdout\n{so}\n--- [{name}] stderr\n{se}\n")
        self.log.flush()
        return rc, so, se, dt

    def record(self, name: str, rc, dt: float, se: str, **fields) -> dict:
        status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
        r = {"status": status, "seconds": round(dt, 1), **fields}
        if status != "ok":
            r["stderr_tail"] = se[-2000:]
        self.parts[name] = r
        self.say(f"[{name}] {status} in {dt:.0f} s")
        return r

    def worker(self, name: str) -> None:
        limit = self.limit(name)
        if limit is None:
            return
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name] + (["--dry-run"] if self.dry else [])
        rc, so, se, dt = self.call(name, cmd, limit)
        line = [ln for ln in so.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(line[-1][7:]) if line else None
        if rc == 0 and result is not None and result.get("ok") is False:
            rc = 1
        self.record(name, rc if result is not None or rc is None else 1, dt, se, result=result)


def env_info(dry: bool) -> dict:
    import torch

    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 (reported, not fatal)
        info["triton"] = f"does not import: {type(e).__name__}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count)
        if shutil.which("nvidia-smi"):
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True)
            info["driver"] = q.stdout.strip() or None
    info["optional"] = {}
    for mod in OPTIONAL:
        if importlib.util.find_spec(mod) is None:
            info["optional"][mod] = None
            continue
        try:
            info["optional"][mod] = importlib.metadata.version(mod)
        except importlib.metadata.PackageNotFoundError:
            info["optional"][mod] = "?"
        if mod == "deepspeed" and not dry:  # a broken install can fail on import: try it (in a subprocess)
            q = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True,
                               timeout=180)
            if q.returncode:
                info["optional"][mod] = None
                info["deepspeed_import_error"] = q.stderr[-500:]
    return info


def gpu_test_files() -> list[str]:
    """Test files that use the ``gpu`` marker."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if re.search(r"pytest\.mark\.gpu\b", p.read_text()))


def part_pytest(r: Runner) -> None:
    limit = r.limit("pytest_gpu")
    if limit is None:
        return
    files = gpu_test_files()
    if not files:
        r.skip("pytest_gpu", "no test file uses the gpu marker")
        return
    xml = r.out / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           "-o", f"timeout={int(limit)}", *files] + (["--co"] if r.dry else [])
    rc, so, se, dt = r.call("pytest_gpu", cmd, limit)
    counts, failed = {}, []
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
        xml.unlink()
    collected = re.search(r"(\d+) tests? collected", so)
    if collected:
        counts["collected"] = int(collected.group(1))
    summary = [ln for ln in so.splitlines() if re.search(r"\d+ (passed|failed|skipped|error|tests? collected)", ln)]
    r.record("pytest_gpu", rc, dt, se, files=files, counts=counts,
             failed=failed[:50], summary=summary[-1] if summary else "", collected_only=r.dry)


def part_msda(r: Runner) -> None:
    limit = r.limit("msda")
    if limit is None:
        return
    args = (["--device", "cpu", "--small", "--configs", "tmlr_decoder", "--dtypes", "fp32", "--iters", "1",
             "--warmup", "0"] if r.dry else ["--iters", "10", "--warmup", "3"])
    rc, so, se, dt = r.call("msda", [sys.executable, str(HERE / "msda.py"), *args], limit)
    r.record("msda", rc, dt, se, header=[ln for ln in so.splitlines() if ln.startswith("#")],
             table=[ln for ln in so.splitlines() if ln.startswith("|")])


def part_train_step(r: Runner, deepspeed_ok: bool) -> None:
    limit = r.limit("train_step")
    if limit is None:
        return
    js = r.out / "train_step.json"
    if r.dry:
        groups = [(["m2f_cpu", "htc_l"], ["fp32"], ["--device", "cpu", "--iters", "1", "--warmup", "0"])]
    else:
        groups = [(models, [m for m in modes if deepspeed_ok or not m.startswith("zero")], [])
                  for models, modes in TRAIN_STEP_GROUPS]
    t0, results, skipped, rc_all, se_all = time.monotonic(), [], [], 0, ""
    for models, modes, extra in groups:
        left = limit - (time.monotonic() - t0)
        if left < MIN_PART_S:
            skipped.append({"model": " ".join(models), "why": "train_step part's time limit spent"})
            r.say(f"[train_step] {' '.join(models)} skipped: the part's time limit is spent")
            continue
        cmd = [sys.executable, str(HERE / "train_step.py"), "--models", *models, "--modes", *modes,
               "--json", str(js), "--budget-s", str(round(max(1.0, left - 45))),
               "--timeout-s", str(round(max(10.0, min(100.0, left - 5)))), *extra]
        rc, so, se, _ = r.call("train_step", cmd, left)
        rc_all = rc_all if rc == 0 else rc
        se_all += se[-1000:]
        if js.is_file():
            data = json.loads(js.read_text())
            results += data["results"]
            skipped += data["skipped"]
            js.unlink()
    sys.path.insert(0, str(HERE))
    from train_step import ratios  # noqa: E402

    r.record("train_step", rc_all, time.monotonic() - t0, se_all, results=results, ratios=ratios(results),
             skipped=skipped)


def part_deepspeed(r: Runner, deepspeed_ok: bool) -> None:
    if not deepspeed_ok:
        r.skip("deepspeed", "deepspeed does not import here (carry a deepspeed wheel: benchmarks/README.md)")
        return
    if r.dry:
        r.skip("deepspeed", "GPU part (dry run)")
        return
    limit = r.limit("deepspeed")
    if limit is None:
        return
    js = r.out / "deepspeed.json"
    cmd = [sys.executable, str(HERE / "train_step.py"), "--models", "m2f_cpu", "--modes", "zero2:fp16", "zero2:bf16",
           "--iters", "1", "--warmup", "1", "--json", str(js), "--timeout-s", str(max(10.0, limit / 2 - 2))]
    ext = os.environ.get("TORCH_EXTENSIONS_DIR") or tempfile.mkdtemp(prefix="torch_extensions_")  # not in --out
    rc, so, se, dt = r.call("deepspeed", cmd, limit, env={"TORCH_EXTENSIONS_DIR": ext})
    data = json.loads(js.read_text()) if js.is_file() else {"results": [], "skipped": []}
    js.unlink(missing_ok=True)
    runs = [{"mode": x["mode"], "losses": x["losses"], "finite": x["finite"], "step_s": x["step_s"]}
            for x in data["results"]]
    if rc == 0 and (len(runs) < 2 or not all(x["finite"] for x in runs)):
        rc = 1
    r.record("deepspeed", rc, dt, se, runs=runs, skipped=data["skipped"])


# ---------------------------------------------------------------------------------------------- report

def _fmt(v, nd=2):
    return f"{v:.{nd}f}" if isinstance(v, float) else ("" if v is None else str(v))


def section(info: dict, parts: dict, dry: bool, total_s: float, wall_s: float) -> str:
    L = [BEGIN, "## GPU run (benchmarks/gpu_all.py)", ""]
    if dry:
        L += ["**DRY RUN on the CPU** (tiny sizes, GPU parts skipped): checks the script, not figures.", ""]
    gpu = (f"{info['gpu']} ({info['gpu_memory_gib']} GiB, compute capability {info['capability']}, "
           f"{info['multiprocessors']} SMs, driver {info.get('driver')})" if info.get("gpu") else "no CUDA device")
    opt = ", ".join(f"{k} {v}" if v else f"{k} absent" for k, v in info["optional"].items())
    L += [f"`python benchmarks/gpu_all.py{' --dry-run' if dry else ''}` — {info['date_utc']}, {gpu}; "
          f"{info['cpu_count']} CPU cores; Python {info['python']}, torch {info['torch']} (CUDA {info['cuda']}), "
          f"triton {info['triton']}; {opt}. {wall_s:.0f} s in all (budget {total_s:.0f} s). All figures: "
          "`benchmarks/gpu_results.json`.", "",
          "| part | status | s | note |", "|---|---|---|---|"]
    for name, p in parts.items():
        note = p.get("why", "")
        if name == "pytest_gpu" and p.get("summary"):
            note = p["summary"].strip() + ("" if not p.get("failed") else "; failed: " + ", ".join(p["failed"][:8]))
        L.append(f"| {name} | {p['status']} | {p['seconds']:.0f} | {note} |")
    ts = parts.get("train_step", {})
    if ts.get("results"):
        L += ["", "### Training step (benchmarks/train_step.py)", "",
              "Median of 3 steps after 1 warm-up (ratios: best step); peak = `torch.cuda.max_memory_allocated` "
              "(weights, AdamW states "
              "and activations), planned = the capacity planner's prediction of that peak "
              "(benchmarks/planned_train_step.json, made on the CPU by plan_train_step.py), GB/image = peak / "
              "batch; `bf16` = autocast (fp32 weights), `zeroN:` = one-process "
              "`deepspeed.initialize` with DeepSpeed's own bf16 (whole model cast); ratios against the first mode "
              "of the same model in this run.", "",
              "| model | mode | batch | size | s / step | images/s | peak GB | planned GB | GB / image | time x | "
              "memory x |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        rat = {(q["model"], q["mode"]): q for q in ts["ratios"]}
        sys.path.insert(0, str(HERE))
        from plan_train_step import load as load_planned  # the planner's predictions (plan_train_step.py)
        plan = load_planned()
        for x in ts["results"]:
            q = rat[(x["model"], x["mode"])]
            p = plan.get((x["model"], x["mode"]))
            planned = f"{p['planned_mb'] / 1024:.2f}" if p else "-"
            L.append(f"| {x['model']} | {x['mode']} | {x['batch']} | {x['size'][0]}x{x['size'][1]} | "
                     f"{x['step_s']:.3f} | {x['images_per_s']:.2f} | {x['peak_mb'] / 1024:.2f} | {planned} | "
                     f"{x['gb_per_image']:.2f} | {q['time_x']:.2f} (vs {q['vs']}) | {q['memory_x']:.2f} |")
        for s in ts.get("skipped", []):
            L.append(f"\nSkipped: {s['model']} {s.get('mode', '')}: {s['why'][:300]}")
    ms = parts.get("msda", {})
    if ms.get("table"):
        L += ["", "### Multi-scale deformable attention (benchmarks/msda.py)", "", *ms.get("header", []), "",
              *ms["table"]]
    bb = parts.get("backbone", {}).get("result")
    if bb:
        L += ["", "### Backbone forward+backward (benchmarks/backbone.py's models)", "",
              "| model | with_cp | dtype | batch | res | ms / iter | peak MB |", "|---|---|---|---|---|---|---|"]
        for x in bb["rows"]:
            L.append(f"| ViT-Adapter-{x['size']} | {x['with_cp']} | {x['dtype']} | {x['batch']} | {x['res']} | "
                     f"{x['ms_per_iter']:.1f} | {_fmt(x['peak_mb'])} |")
    inf = parts.get("infer", {}).get("result")
    if inf and inf.get("rows"):
        L += ["", "### Inference latency of the 896 recipes (one sliding window, batch 1)", "",
              f"`model.logits(x, mode='whole')` on one {inf['rows'][0]['size'][0]} x {inf['rows'][0]['size'][1]} "
              f"window (what the recipes' slide test decodes per window), untrained weights, median of "
              f"{inf['iters']} after {inf['warmup']} warm-ups; bf16 = autocast.", "",
              "| recipes | model | classes | params M | fp32 ms | bf16 ms | fp32 peak MB | bf16 peak MB |",
              "|---|---|---|---|---|---|---|---|"]
        for x in inf["rows"]:
            L.append(f"| {', '.join(x['recipes'])} | {x['model']} + {x['backbone']} | {x['classes']} | "
                     f"{x['params_m']} | {x['fp32_ms']:.1f} | {x['bf16_ms']:.1f} | {_fmt(x['fp32_peak_mb'])} | "
                     f"{_fmt(x['bf16_peak_mb'])} |")
        if inf.get("skipped"):
            L.append(f"\nNot measured (the part's time ran out): {', '.join(inf['skipped'])}")
    ds = parts.get("deepspeed", {})
    if ds.get("runs"):
        L += ["", "### DeepSpeed 2-step runs (ZeRO-2, synthetic Mask2Former)", "",
              "| mode | losses | finite | s / step |", "|---|---|---|---|"]
        for x in ds["runs"]:
            L.append(f"| {x['mode']} | {', '.join(f'{v:.4f}' for v in x['losses'])} | {x['finite']} | "
                     f"{x['step_s']:.3f} |")
    sb = parts.get("syncbn", {}).get("result")
    if sb:
        L += ["", "### SyncBatchNorm (1-rank group)", "", f"backend {sb['backend']}, world size {sb['world_size']}, "
              f"sync_batchnorm_wanted() = {sb['sync_batchnorm_wanted']} (needs world > 1; conversion forced); "
              f"nn.SyncBatchNorm train vs float64 by hand: {sb['syncbn_train']}; the synchronising function "
              f"called directly: {sb.get('sync_function', 'not run')}; NCCL all_reduce ok: "
              f"{sb.get('all_reduce_ok', 'not run')}; convert_sync_batchnorm: {sb['convert']}; ok = {sb['ok']}"]
    L += ["", END]
    return "\n".join(L) + "\n"


def merge(results_md: Path, text: str) -> None:
    """Replace the marked section of ``results_md`` by ``text`` (append it when there are no markers)."""
    old = results_md.read_text() if results_md.is_file() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    results_md.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, GPU parts skipped; RESULTS.md untouched")
    ap.add_argument("--out", default=None, help="folder for gpu_section.md, gpu_results.json, gpu_all.log "
                                                 "(default: $OUT if set, else a new temporary folder)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"total time budget (s); default {TOTAL_BUDGET_S}, x{DRY_SCALE} for a dry run")
    ap.add_argument("--parts", nargs="+", default=["syncbn", "pytest_gpu", "msda", "train_step", "deepspeed",
                                                   "infer", "backbone"], choices=list(PART_BUDGET_S))
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--merge", default=None, metavar="SECTION_MD",
                    help="only splice this gpu_section.md into --results-md and exit")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(WORKERS[a.worker](a.dry_run)), flush=True)
        return 0
    if a.merge:
        merge(Path(a.results_md), Path(a.merge).read_text())
        return 0
    out = Path(a.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_all_"))
    out.mkdir(parents=True, exist_ok=True)
    if a.budget_s is None:
        a.budget_s = TOTAL_BUDGET_S * (DRY_SCALE if a.dry_run else 1)
    if a.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every subprocess sees the CPU only
    with open(out / "gpu_all.log", "w") as log:
        r = Runner(a.dry_run, a.budget_s, out, log)
        info = env_info(a.dry_run)
        r.say(f"[env] {json.dumps(info)}")
        if not info["cuda_available"] and not a.dry_run:
            r.say("[env] no CUDA device: use --dry-run on a CPU machine")
        deepspeed_ok = info["optional"].get("deepspeed") is not None
        steps = {"syncbn": lambda: r.worker("syncbn"), "pytest_gpu": lambda: part_pytest(r),
                 "msda": lambda: part_msda(r), "train_step": lambda: part_train_step(r, deepspeed_ok),
                 "deepspeed": lambda: part_deepspeed(r, deepspeed_ok), "infer": lambda: r.worker("infer"),
                 "backbone": lambda: r.worker("backbone")}
        for name in a.parts:
            try:
                steps[name]()
            except Exception as e:  # noqa: BLE001 (one broken part must not lose the others' figures)
                r.parts[name] = {"status": "failed", "seconds": 0.0, "why": f"{type(e).__name__}: {e}"}
                r.say(f"[{name}] failed in the driver: {type(e).__name__}: {e}")
        wall = time.monotonic() - r.start
        text = section(info, r.parts, a.dry_run, a.budget_s, wall)
        payload = {"dry_run": a.dry_run, "env": info, "budget_s": a.budget_s, "wall_s": round(wall, 1),
                   "parts": r.parts}
        (out / "gpu_section.md").write_text(text)
        (out / "gpu_results.json").write_text(json.dumps(payload, indent=1))
        if not a.dry_run:
            merge(Path(a.results_md), text)
            (HERE / "gpu_results.json").write_text(json.dumps(payload, indent=1))
        r.say(f"[done] {wall:.0f} s; wrote {out / 'gpu_section.md'} and {out / 'gpu_results.json'}")
    bad = [n for n, p in r.parts.items() if p["status"] in ("failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
