"""``launch/plan.py``: will a recipe fit on a cluster, and how fast will it run (see :mod:`vit_adapter_ds.plan`).

    python launch/plan.py mask2former_beit_adapter_large_896_80k_ade20k_ss --gpus 16 --gpu-memory 80 \\
        --nodes 2 --ds_config ds_configs/zero2_bf16.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .estimate import GiB, Cluster, evaluate, recommend, sweep

EXAMPLE = """example (the 60+ mIoU ADE20K recipe on 16 x A100-80GB over 2 nodes, then on 4 x 24 GB):
  python launch/plan.py mask2former_beit_adapter_large_896_80k_ade20k_ss --gpus 16 --gpu-memory 80 --nodes 2 \\
      --ds_config ds_configs/zero2_bf16.json
  python launch/plan.py mask2former_beit_adapter_large_896_80k_ade20k_ss --gpus 4 --gpu-memory 24 \\
      --ds_config ds_configs/zero2_bf16.json --sweep sweep.png"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plan.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLE,
        description="Memory per GPU (model states for ZeRO-0/1/2/3 + activations measured from the recipe's own "
                    "training step on fake tensors), time per iteration, communication, and the micro-batch / "
                    "accumulation / ZeRO stage / checkpointing that fits. No GPU and no weights needed.")
    p.add_argument("recipe", help="recipe name (vit_adapter_ds/recipes) or path")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs (data-parallel ranks)")
    p.add_argument("--gpu-memory", type=float, required=True, metavar="GB", help="memory of one GPU, GB (1e9 bytes)")
    p.add_argument("--ds_config", "--ds-config", dest="ds_config", help="DeepSpeed JSON (dtype, stage, buckets); "
                   "default: fp32, DeepSpeed's defaults")
    p.add_argument("--nodes", type=int, default=1, help="nodes the GPUs are spread over (default 1)")
    p.add_argument("--intra-bw", type=float, default=200.0, metavar="GB/s",
                   help="per-GPU bandwidth inside a node (NVLink; default 200)")
    p.add_argument("--inter-bw", type=float, default=25.0, metavar="GB/s",
                   help="per-GPU bandwidth between nodes (default 25 = 200 Gb/s InfiniBand)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense peak per GPU in the training dtype (default: A100, 312 bf16/fp16, 156 tf32)")
    p.add_argument("--utilization", type=float, default=0.35, help="fraction of the peak reached (default 0.35)")
    p.add_argument("--margin", type=float, default=0.10, help="GPU memory kept free (default 0.10)")
    p.add_argument("--global-batch", type=int, default=16, help="images per optimizer step to keep (official: 16)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="training dtype (default: the ds_config's)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="training image size (default: the recipe's crop / largest resize)")
    p.add_argument("--checkpointing", choices=("both", "recipe", "on", "off"), default="both",
                   help="activation checkpointing settings to measure (default both)")
    p.add_argument("--segments-per-image", type=int, default=10,
                   help="classes per label map for Mask2Former's targets (default 10)")
    p.add_argument("--boxes-per-image", type=int, default=10, help="ground-truth boxes per detection image (10)")
    p.add_argument("--sweep", nargs="?", const="", metavar="PNG",
                   help="also print memory and images/s over 1-512 GPUs and the stages (and plot them to PNG)")
    p.add_argument("--json", metavar="OUT", help="write the whole plan as JSON")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE", help="recipe overrides")
    return p


def _gb(n) -> str:
    return f"{n / 1e9:6.1f}"


def _print_config(o: dict, cluster: Cluster, out) -> None:
    s = o["states"]
    print(f"  ZeRO-{o['stage']}{' + optimizer offload' if o['offload_optimizer'] else ''}, checkpointing "
          f"{'on' if o['with_cp'] else 'off'}, micro-batch {o['micro_batch']} x accumulation {o['accumulation']} "
          f"x {cluster.gpus} GPUs = {o['global_batch']} images per step", file=out)
    print(f"  memory per GPU {o['memory'] / 1e9:.1f} GB of {cluster.usable_bytes / 1e9:.1f} usable "
          f"(model states {s['total'] / 1e9:.1f} + activations {o['activations'] / 1e9:.1f})"
          + (f"; host memory {s['cpu'] / 1e9:.1f} GB" if s["cpu"] else ""), file=out)
    print(f"  time per iteration ~{o['step_s']:.2f} s (compute {o['compute_s']:.2f} s, communication "
          f"{o['comm_s']:.2f} s for {o['comm_bytes']['total'] / 1e9:.2f} GB per GPU), ~{o['images_per_s']:.1f} "
          "images/s", file=out)


def main(argv=None, out=sys.stdout) -> int:
    from ..config import ConfigError
    from ..engine.deepspeed_setup import load_ds_config
    from . import ds_dtype, measure

    args = build_parser().parse_args(argv)
    ds = load_ds_config(Path(args.ds_config)) if args.ds_config else None
    dtype = args.dtype or ds_dtype(ds)
    peak = args.peak_tflops or {"fp32": 156.0}.get(dtype, 312.0)
    try:
        cluster = Cluster(gpus=args.gpus, gpu_memory_gb=args.gpu_memory, nodes=args.nodes,
                          intra_bw_gbs=args.intra_bw, inter_bw_gbs=args.inter_bw, peak_tflops=peak,
                          utilization=args.utilization, margin=args.margin)
    except ValueError as e:
        raise ConfigError(f"plan: {e}") from None
    cps = {"both": (False, True), "recipe": (None,), "on": (True,), "off": (False,)}[args.checkpointing]
    t0 = time.time()
    m = measure(args.recipe, args.cfg_options, dtype=dtype, image_size=args.image_size, checkpointing=cps,
                segments_per_image=args.segments_per_image, boxes_per_image=args.boxes_per_image,
                progress=lambda s: print(f"[plan] {s}", file=sys.stderr, flush=True))
    c = m.counts
    print(f"recipe {args.recipe}: {c.trainable / 1e6:.1f} M trainable + {c.frozen / 1e6:.1f} M frozen parameters; "
          f"training image {m.image_size[0]} x {m.image_size[1]}, {dtype} (measured in {time.time() - t0:.0f} s)",
          file=out)
    print("one image's training step (fake tensors; forward + loss + backward):", file=out)
    for cp in sorted(m.peak):
        print(f"  checkpointing {'on ' if cp else 'off'}: peak {m.peak[cp] / GiB:6.2f} GiB, saved for backward "
              f"{m.saved[cp] / GiB:6.2f} GiB, {m.flops[cp] / 1e12:6.2f} TFLOPs", file=out)
    if m.stand_ins:
        print("  stand-ins (same sizes): " + "; ".join(m.stand_ins), file=out)
    stage_now = int(((ds or {}).get("zero_optimization") or {}).get("stage", 0))
    cp0 = max(m.peak)  # checkpointing on when measured
    print(f"model states per GPU on {cluster.gpus} GPUs, GB (1e9 bytes), + one image's activations "
          f"(checkpointing {'on' if cp0 else 'off'}):", file=out)
    print("  stage   params   grads  optim  master buffers  total  +1 image", file=out)
    for stage in (0, 1, 2, 3):
        o = evaluate(m, cluster, stage=stage, with_cp=cp0, micro_batch=1, global_batch=args.global_batch,
                     ds_config=ds)
        s = o["states"]
        mark = " <- ds_config" if ds is not None and stage == stage_now else ""
        print(f"  ZeRO-{stage} {_gb(s['params'])} {_gb(s['grads'])} {_gb(s['optimizer'])} {_gb(s['master'])} "
              f"{_gb(s['buffers'] + s['model_buffers'])} {_gb(s['total'])} {_gb(o['memory'])}{mark}", file=out)
    rec = recommend(m, cluster, args.global_batch, ds)
    if rec["fits"]:
        print(f"recommended (fits with the {cluster.margin:.0%} margin, {rec['fitting']} of {rec['options']} "
              "configurations fit):", file=out)
        _print_config(rec["best"], cluster, out)
    else:
        print(f"does not fit on {cluster.gpus} x {args.gpu_memory:g} GB: the most memory-saving configuration "
              "needs:", file=out)
        _print_config(rec["closest"], cluster, out)
        need = f"GPUs of >= {rec['needs_gpu_memory_gb']:.0f} GB"
        more = f", or {rec['needs_gpus']} GPUs of {args.gpu_memory:g} GB" if rec["needs_gpus"] else ""
        print(f"  would fit on {cluster.gpus} {need}{more}", file=out)
    print(f"assumptions: activations x micro-batch; {cluster.margin:.0%} of GPU memory kept free; "
          f"{peak:g} TFLOPs x {cluster.utilization:g} utilisation; ring collectives at "
          f"{cluster.ring_bw / 1e9:g} GB/s per GPU, {cluster.overlap:.0%} overlapped (vit_adapter_ds/plan/estimate.py)",
          file=out)
    rows = None
    if args.sweep is not None:
        rows = sweep(m, cluster, args.global_batch, ds_config=ds)
        print("sweep: memory per GPU (GB) / images per s of the fastest fitting configuration ('-': none fits)",
              file=out)
        print("  GPUs  " + "".join(f"{'ZeRO-' + str(s):>16}" for s in range(4)), file=out)
        for g in sorted({r["gpus"] for r in rows}):
            cells = []
            for r in (r for r in rows if r["gpus"] == g):
                cells.append(f"{r['memory'] / 1e9:5.1f} / {r['images_per_s']:7.1f}" if r["fits"] else "-")
            print(f"  {g:4d}  " + "".join(f"{c:>16}" for c in cells), file=out)
        if args.sweep:
            _plot(rows, args.sweep, args.recipe)
            print(f"sweep plot: {args.sweep}", file=out)
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": args.recipe, "cluster": cluster.__dict__, "dtype": dtype,
                                               "measured": {**m.__dict__, "counts": m.counts.__dict__},
                                               "recommendation": rec, "sweep": rows}, default=str, indent=1))
    return 0


def _plot(rows, path, title) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in range(4):
        rs = [r for r in rows if r["stage"] == stage and r["fits"]]
        a.plot([r["gpus"] for r in rs], [r["memory"] / 1e9 for r in rs], marker="o", label=f"ZeRO-{stage}")
        b.plot([r["gpus"] for r in rs], [r["images_per_s"] for r in rs], marker="o", label=f"ZeRO-{stage}")
    b.set_yscale("log", base=2)  # linear scaling is a straight line: where it bends, more GPUs stop paying
    for ax, label in ((a, "memory per GPU (GB)"), (b, "images / s (estimated)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
