"""Forward+backward time and peak memory of ViT-Adapter-T/-S backbones at 512x512 on the CPU, with and without
activation checkpointing (``with_cp``). Each configuration runs in its own process so peak RSS is its own.

    python benchmarks/backbone.py [--sizes T S] [--batch 1] [--iters 3] [--threads 2]

Prints one line per configuration and the with_cp/without ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "T": dict(embed_dim=192, depth=12, num_heads=3, deform_num_heads=6, drop_path_rate=0.1),
    "S": dict(embed_dim=384, depth=12, num_heads=6, deform_num_heads=6, drop_path_rate=0.2),
}
INDEXES = [[0, 2], [3, 5], [6, 8], [9, 11]]


def run_one(size: str, with_cp: bool, batch: int, iters: int, res: int) -> dict:
    from rss import current_rss_mb, peak_rss_mb, reset_peak_rss

    import torch

    from vit_adapter_ds.models import ViTAdapter

    torch.manual_seed(0)
    model = ViTAdapter(**CONFIGS[size], interaction_indexes=INDEXES, with_cp=with_cp).train()
    x = torch.randn(batch, 3, res, res)
    base_rss = current_rss_mb()
    reset_peak_rss()  # the peak read below is the iterations' own
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first iteration is a warm-up
            times.append(time.perf_counter() - t0)
    peak = peak_rss_mb()
    return dict(size=size, with_cp=with_cp, batch=batch, res=res, sec_per_iter=sum(times) / len(times),
                peak_extra_mb=peak - base_rss, threads=torch.get_num_threads())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["T", "S"], choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "CP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.one[0], args.one[1] == "1", args.batch, args.iters, args.res)))
        return
    results = {}
    for size in args.sizes:
        for cp in (False, True):
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            out = subprocess.run([sys.executable, __file__, "--one", size, "1" if cp else "0", "--batch",
                                  str(args.batch), "--iters", str(args.iters), "--res", str(args.res), "--threads",
                                  str(args.threads)], env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[(size, cp)] = r
            print(f"ViT-Adapter-{size} {args.res}x{args.res} batch {args.batch} with_cp={cp!s:5}: "
                  f"{r['sec_per_iter']:.2f} s/iter fwd+bwd, peak +{r['peak_extra_mb']:.0f} MB", flush=True)
    for size in args.sizes:
        a, b = results[(size, False)], results[(size, True)]
        print(f"ViT-Adapter-{size}: with_cp time x{b['sec_per_iter'] / a['sec_per_iter']:.2f}, "
              f"peak memory x{b['peak_extra_mb'] / a['peak_extra_mb']:.2f}")


if __name__ == "__main__":
    main()
