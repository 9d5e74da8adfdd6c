#!/usr/bin/env python
"""CPU inference speed of a recipe's segmentor: PyTorch (eager, ``model.logits(x, mode='whole')``) against ONNX
Runtime running the same model exported by ``vit_adapter_ds/deploy/onnx.py`` (``launch/export.py --format onnx``).

    OMP_NUM_THREADS=1 python benchmarks/infer_cpu.py                       # synthetic_quickstart at its test size
    python benchmarks/infer_cpu.py --recipe synthetic_mask2former --threads 1 2 --iters 30

The input is one image (batch 1) at the recipe's test size of the built-in synthetic images (512 x 683 resized by
the test pipeline: ``Resize(keep_ratio)`` to ``img_scale``, ``ResizeToMultiple(32)``; ``--size H W`` to override),
the weights a seeded untrained model (speed does not depend on them). The ONNX file is exported once and checked
against PyTorch first (the benchmark refuses a file that fails the check). For each thread count: ``--warmup``
untimed runs, then the median of ``--iters`` timed runs, as ms / image and images / s; PyTorch with
``torch.set_num_threads(n)``, ONNX Runtime with ``intra_op_num_threads=n`` (inter-op 1, all graph optimisations).
Prints a Markdown table (for ``benchmarks/RESULTS.md``) and, with ``--json``, writes the figures.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def timed(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="synthetic_quickstart")
    ap.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None)
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.deploy.onnx import export_onnx, preprocessing, verify_onnx
    from vit_adapter_ds.models.test_time_resize import KeepRatioResize
    from vit_adapter_ds.tasks import task_for

    cfg = load_recipe(a.recipe)
    task = task_for(cfg)
    prep = preprocessing(cfg, task)
    size = tuple(a.size) if a.size else KeepRatioResize(32)(512, 683, prep["scale"])
    torch.manual_seed(0)
    model = task.build_model(load_pretrained=False).eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "model.onnx", size)
        export_s = time.perf_counter() - t0
        report = verify_onnx(path, model, mean=prep["mean"], std=prep["std"])
        print(report.summary(), file=sys.stderr)
        if not report.ok:
            return 1
        rows = []
        for n in a.threads:
            torch.set_num_threads(n)
            with torch.no_grad():
                pt = timed(lambda: model.logits(x, mode="whole"), a.warmup, a.iters)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = n, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {"img": x.numpy()}
            rt = timed(lambda: sess.run(None, feed), a.warmup, a.iters)
            for runtime, times in (("PyTorch", pt), ("ONNX Runtime", rt)):
                med = statistics.median(times)
                rows.append({"runtime": runtime, "threads": n, "ms": round(1000 * med, 2),
                             "images_per_s": round(1 / med, 2), "min_ms": round(1000 * min(times), 2)})
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort.__version__, "recipe": a.recipe, "size": list(size),
            "model": type(model).__name__, "export_s": round(export_s, 1), "verify": report.as_dict(),
            "warmup": a.warmup, "iters": a.iters, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(f"`python benchmarks/infer_cpu.py --recipe {a.recipe} --threads {' '.join(map(str, a.threads))}` -- "
          f"{info['date_utc']}, {info['cpu']} ({info['cpu_count']} cores), torch {info['torch']}, onnxruntime "
          f"{info['onnxruntime']}; {info['model']} at {size[0]} x {size[1]}, batch 1; median of {a.iters} after "
          f"{a.warmup} warm-ups; export {info['export_s']} s.\n")
    print("| runtime | threads | ms / image | images / s | best ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['threads']} | {r['ms']:.1f} | {r['images_per_s']:.2f} | {r['min_ms']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
