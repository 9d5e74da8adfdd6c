#!/usr/bin/env python
"""Training-step benchmark: UperNet + ViT-Adapter-T/S at 512x512 (the official recipes' model), one process.

One step = forward (loss dict) + backward + AdamW step, batch ``--batch`` (official: 2 per GPU). Each configuration
runs in a fresh subprocess so that the peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS of the process,
which includes ~1 GB of imported libraries, reported separately as the baseline) belongs to it alone.

    python benchmarks/train_step.py                       # T and S, fp32 / fp32+with_cp / bf16, CPU or GPU
    python benchmarks/train_step.py --sizes tiny --iters 3 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

RECIPES = {"tiny": "upernet_deit_adapter_tiny_512_160k_ade20k", "small": "upernet_deit_adapter_small_512_160k_ade20k"}


def one(size: str, with_cp: bool, dtype: str, batch: int, iters: int, warmup: int, device: str) -> dict:
    import torch

    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.models.registry import build_model

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cfg = load_recipe(RECIPES[size], [f"model.backbone.with_cp={with_cp}", "model.pretrained=None"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    img = torch.randn(batch, 3, 512, 512, device=device)
    gt = torch.randint(0, 150, (batch, 512, 512), device=device)
    amp = dtype == "bf16"
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=amp):
            loss = model(img, gt)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"size": size, "with_cp": with_cp, "dtype": dtype, "batch": batch, "device": device,
            "step_s": sorted(times)[len(times) // 2], "steps": len(times), "peak_mb": round(peak),
            "baseline_rss_mb": round(base_rss), "loss": float(loss)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(RECIPES))
    p.add_argument("--modes", nargs="+", default=["fp32", "fp32+cp", "bf16"], choices=["fp32", "fp32+cp", "bf16",
                                                                                        "bf16+cp"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a._one:
        size, mode, _ = a._one
        r = one(size, mode.endswith("+cp"), mode.split("+")[0], a.batch, a.iters, a.warmup, device)
        print("RESULT " + json.dumps(r))
        return 0
    results = []
    print(f"device {device}, batch {a.batch}, 512x512, median of {a.iters} steps after {a.warmup} warm-up, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':<8}{'mode':<10}{'step (s)':>10}{'peak (MB)':>11}{'imports (MB)':>14}")
    for size in a.sizes:
        for mode in a.modes:
            cmd = [sys.executable, __file__, "--_one", size, mode, "x", "--batch", str(a.batch), "--iters",
                   str(a.iters), "--warmup", str(a.warmup), "--device", device]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                print(f"{size:<8}{mode:<10} failed: {out.stderr[-500:]}")
                continue
            r = json.loads(line[0][7:])
            results.append(r)
            print(f"{size:<8}{mode:<10}{r['step_s']:>10.2f}{r['peak_mb']:>11}{r['baseline_rss_mb']:>14}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
