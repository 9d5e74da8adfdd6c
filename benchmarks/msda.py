"""Multi-scale deformable attention: forward and forward+backward time per implementation and dtype.

    python benchmarks/msda.py [--device cuda|cpu] [--configs injector ...] [--dtypes fp32 bf16 fp16]
                              [--impls pytorch cuda triton] [--iters 20] [--warmup 3] [--small]

Configurations (ViT-Adapter-L at 896x896, Mask2Former pixel decoder, the TMLR decoder preset):

* injector:  B=1, 3136 queries over levels 112^2, 56^2, 28^2; 16 heads x 32; 4 points
* extractor: B=1, 16464 queries over one 56^2 level; 16 heads x 32; 4 points
* m2f_pixel_decoder: B=1, 16464 queries over 112^2, 56^2, 28^2; 32 heads x 32; 4 points
* tmlr_decoder: B=4, 300 queries, 800x1333 image -> 100x167, 50x84, 25x42, 13x21; 8 heads x 32; 4 points

``--small`` divides the query count by 8 (CPU). GB/s is measured against the compulsory-bytes floor:
forward = value + sampling locations + attention weights read once, output written once; forward+backward
adds reading value, locations, weights and grad_output once more and writing the three gradients once.
The ratio column is time(pytorch reference) / time(implementation), same dtype, same run; "fwd rel err" is
max |out - float64 reference| / max |float64 reference| (``--no-check`` skips it).
Locations and weights are in the value dtype (the reference's grid_sample needs one dtype).
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from vit_adapter_ds.ops import ms_deform_attn

CONFIGS = {
    "injector": dict(batch=1, queries=3136, levels=[(112, 112), (56, 56), (28, 28)], heads=16, dim=32, points=4),
    "extractor": dict(batch=1, queries=16464, levels=[(56, 56)], heads=16, dim=32, points=4),
    "m2f_pixel_decoder": dict(batch=1, queries=16464, levels=[(112, 112), (56, 56), (28, 28)], heads=32, dim=32,
                              points=4),
    "tmlr_decoder": dict(batch=4, queries=300, levels=[(100, 167), (50, 84), (25, 42), (13, 21)], heads=8, dim=32,
                         points=4),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(cfg, dtype, device, small):
    g = torch.Generator(device="cpu").manual_seed(0)
    n, lq, m, d, p = cfg["batch"], cfg["queries"], cfg["heads"], cfg["dim"], cfg["points"]
    if small:
        lq = max(1, lq // 8)
    shapes = torch.tensor(cfg["levels"], dtype=torch.long)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    n_levels = len(cfg["levels"])
    value = torch.randn(n, int(areas.sum()), m, d, generator=g)
    loc = torch.rand(n, lq, m, n_levels, p, 2, generator=g) * 1.1 - 0.05
    attn = torch.softmax(torch.randn(n, lq, m, n_levels * p, generator=g), -1).view(n, lq, m, n_levels, p)
    to = dict(device=device, dtype=dtype)
    return value.to(**to), shapes.to(device), starts.to(device), loc.to(**to), attn.to(**to)


def floor_bytes(inputs, backward):
    value, _, _, loc, attn = inputs
    out = value.shape[0] * loc.shape[1] * value.shape[2] * value.shape[3] * value.element_size()
    fwd = value.nbytes + loc.nbytes + attn.nbytes + out
    if not backward:
        return fwd
    return fwd + 2 * (value.nbytes + loc.nbytes + attn.nbytes) + out  # re-read inputs + grad_out, write grads


def timeit(fn, device, iters, warmup):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def bench(impl, inputs, backward, device, iters, warmup):
    value, shapes, starts, loc, attn = inputs
    if backward:
        leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
        grad = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], device=device,
                           dtype=value.dtype)

        def fn():
            for t in leaves:
                t.grad = None
            ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=impl).backward(grad)
    else:
        def fn():
            with torch.no_grad():
                ms_deform_attn(value, shapes, starts, loc, attn, backend=impl)
    return timeit(fn, device, iters, warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--impls", nargs="+", default=None, help="default: pytorch cuda triton (GPU), pytorch (CPU)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="queries / 8 (for CPU runs)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the max |err| / max |ref| check of each forward against a float64 reference")
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = args.impls or (["pytorch", "cuda", "triton"] if device.type == "cuda" else ["pytorch"])
    if impls[0] != "pytorch":
        impls = ["pytorch"] + [i for i in impls if i != "pytorch"]  # the reference runs first: ratios need it
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# torch {torch.__version__}, {machine}, iters={args.iters}, small={args.small}")
    print("| config | impl | dtype | fwd ms | fwd GB/s | fwd x ref | fwd+bwd ms | fwd+bwd GB/s | fwd+bwd x ref "
          "| fwd rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        for dname in args.dtypes:
            inputs = make_inputs(CONFIGS[name], DTYPES[dname], device, args.small)
            ref = {}
            exact = None
            if not args.no_check:
                value, shapes, starts, loc, attn = inputs
                exact = ms_deform_attn(value.double(), shapes, starts, loc.double(), attn.double(), backend="pytorch")
            for impl in impls:
                row = [name, impl, dname]
                for backward in (False, True):
                    try:
                        t = bench(impl, inputs, backward, device, args.iters, args.warmup)
                    except Exception as err:  # noqa: BLE001 - report and go on with the next implementation
                        row += [f"error: {type(err).__name__}", "", ""]
                        continue
                    if impl == "pytorch":
                        ref[backward] = t
                    ratio = f"{ref[backward] / t:.2f}" if backward in ref else "n/a"
                    gbs = floor_bytes(inputs, backward) / t / 1e9
                    row += [f"{t * 1e3:.2f}", f"{gbs:.3g}", ratio]
                if exact is not None:
                    try:
                        with torch.no_grad():
                            out = ms_deform_attn(*inputs, backend=impl)
                        err = float((out.double() - exact).abs().max()) / float(exact.abs().max())
                        row.append(f"{err:.1e}")
                    except Exception as err:  # noqa: BLE001
                        row.append(f"error: {type(err).__name__}")
                else:
                    row.append("")
                print("| " + " | ".join(row) + " |", flush=True)
            del inputs, exact
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
