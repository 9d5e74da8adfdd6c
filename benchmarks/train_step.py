#!/usr/bin/env python
"""Training-step benchmark of the official recipes' models, one process per configuration.

Models (``--models``; ``--sizes`` is the older name of the same option):

* ``tiny`` / ``small``: UperNet + ViT-Adapter-T/S, 512x512, 150 classes (official batch 2 per GPU);
* ``m2f_l896``: Mask2Former + BEiT-Adapter-L, 896x896, 150 classes
  (``mask2former_beit_adapter_large_896_80k_ade20k_ss``, official batch 1 per GPU) -- a GPU size;
* ``m2f_cpu``: the same structure reduced to the ``synthetic_mask2former`` recipe (embed 96, depth 4, 64-channel
  head, 16 queries), 128x128, 8 classes -- the CPU size;
* ``det_l``: Mask R-CNN + detection ViT-Adapter-L (``mask_rcnn_augreg_adapter_large_fpn_3x_coco``), 800x1344
  (the largest DETR-style training scale, padded to 32), 80 classes, batch 2 per GPU -- a GPU size;
* ``det_cpu``: Mask R-CNN reduced to the ``synthetic_mask_rcnn`` recipe, 128x128, 7 classes -- the CPU size;
* ``htc_l``: HTC++ + detection BEiT-Adapter-L (``htc++_beit_adapter_large_fpn_3x_coco``: RPN NMS, 183-class
  semantic head), 1216x1600 (the largest ``Resize`` range scale of a 4:3 image, 1200x1600, padded to 32), 80
  classes, batch 1 per GPU -- a GPU size (skipped on a CPU device);
* ``htc_cpu``: HTC++ reduced to the ``synthetic_htc`` recipe (BEiT-Adapter embed 96, depth 4, 32-channel heads),
  128x128, 7 classes -- the CPU size.
* ``cascade_s`` / ``atss_s`` / ``gfl_s`` / ``sparse_s``: the paper's Table 2 detectors with ViT-Adapter-S (the official
  ``*_deit_adapter_small_fpn_3x_coco`` recipes), 800x1344, 80 classes, batch 2 per GPU -- GPU sizes; ``semfpn_t``:
  Semantic FPN + ViT-Adapter-T (the paper recipe ``fpn_deit_adapter_tiny_512_80k_ade20k``), 512x512, batch 4;
  ``cascade_cpu`` / ``atss_cpu`` / ``gfl_cpu`` / ``sparse_cpu``: their ``synthetic_*`` twins, 128x128, 7 classes.
  The box-only detectors (ATSS, GFL, Sparse R-CNN) get the same targets without the masks.
* ``pan_l``: the COCO panoptic Mask2Former + BEiTv2-Adapter-L (``mask2former_beitv2_adapter_large_16x1_3x_coco-
  panoptic``), 800x1344 (its largest DETR-style training image, padded to 32), 80 things + 53 stuff, batch 1 per
  GPU; ``pan_cpu``: its ``synthetic_mask2former_panoptic`` twin, 128x128, 3 things + 3 stuff. Targets: the 4 boxes'
  masks as things, and a blocky stuff map as the panoptic semantic map.

One step = forward (loss dict) + backward + AdamW step on random images (segmentation: blocky label maps with
a dozen classes per image; detection: 4 boxes with rectangle masks per image; HTC++ also a random semantic map
at 1/8 of the image, as ``SegRescale(1/8)``). Modes (``--modes``)::

    fp32 | bf16 [+cp]                 bare PyTorch; bf16 = torch.autocast around the forward (fp32 weights)
    zero2:bf16+cp, zero3:fp32, ...    one-process deepspeed.initialize (ZeRO stage 0-3, DeepSpeed's own
                                      fp32 / bf16 / fp16: the whole model cast, fp32 master weights)

``+cp`` = activation checkpointing: ``model.backbone.with_cp`` and, for Mask2Former, the ``with_cp`` of the
pixel-decoder and transformer-decoder FFNs (as the official recipe); without ``+cp`` all of them are off.
Each configuration runs in a fresh subprocess so that the peak memory belongs to it alone: CUDA
``max_memory_allocated`` (reported as GB per image = peak / batch as well), CPU peak RSS of the process, which
includes the imported libraries (reported separately as the baseline; ``extra`` = peak - baseline).
Step time = median of ``--iters`` steps after ``--warmup``; ratios (time: best step, memory: peak, CPU: extra)
are against the first mode given, same model, same invocation.

    python benchmarks/train_step.py                                     # tiny + small, fp32 / fp32+cp / bf16
    python benchmarks/train_step.py --models m2f_cpu det_cpu htc_cpu --modes fp32 fp32+cp bf16 --iters 2
    python benchmarks/train_step.py --models m2f_l896 det_l htc_l --modes bf16+cp bf16 fp32+cp fp32 \\
        zero2:bf16+cp zero3:bf16+cp --json out.json                     # GPU
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from rss import current_rss_mb, peak_rss_mb, reset_peak_rss

M2F_HEAD_CP = ("model.decode_head.pixel_decoder.encoder.transformerlayers.ffn_cfgs.with_cp",
               "model.decode_head.transformer_decoder.transformerlayers.ffn_cfgs.with_cp")
PAN_HEAD_CP = tuple(k.replace("decode_head", "panoptic_head") for k in M2F_HEAD_CP)

MODELS = {
    "tiny": dict(task="seg", recipe="upernet_deit_adapter_tiny_512_160k_ade20k", size=(512, 512), classes=150,
                 batch=2, label="ViT-Adapter-T + UperNet"),
    "small": dict(task="seg", recipe="upernet_deit_adapter_small_512_160k_ade20k", size=(512, 512), classes=150,
                  batch=2, label="ViT-Adapter-S + UperNet"),
    "m2f_l896": dict(task="seg", recipe="mask2former_beit_adapter_large_896_80k_ade20k_ss", size=(896, 896),
                     classes=150, batch=1, head_cp=M2F_HEAD_CP, label="BEiT-Adapter-L + Mask2Former"),
    "m2f_cpu": dict(task="seg", recipe="synthetic_mask2former", size=(128, 128), classes=8, batch=2,
                    head_cp=M2F_HEAD_CP, label="synthetic ViT-Adapter + Mask2Former"),
    "det_l": dict(task="det", recipe="mask_rcnn_augreg_adapter_large_fpn_3x_coco", size=(800, 1344), classes=80,
                  batch=2, label="ViT-Adapter-L + Mask R-CNN"),
    "det_cpu": dict(task="det", recipe="synthetic_mask_rcnn", size=(128, 128), classes=7, batch=2,
                    label="synthetic ViT-Adapter + Mask R-CNN"),
    "htc_l": dict(task="htc", recipe="htc++_beit_adapter_large_fpn_3x_coco", size=(1216, 1600), classes=80,
                  semantic_classes=183, batch=1, label="BEiT-Adapter-L + HTC++", gpu_only=True),
    "htc_cpu": dict(task="htc", recipe="synthetic_htc", size=(128, 128), classes=7, semantic_classes=183, batch=2,
                    label="synthetic BEiT-Adapter + HTC++"),
    # the paper's Table 2 detectors and Table 3 Semantic FPN at their official sizes (GPU), each with its CPU twin
    "cascade_s": dict(task="det", recipe="cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco", size=(800, 1344),
                      classes=80, batch=2, label="ViT-Adapter-S + Cascade Mask R-CNN"),
    "atss_s": dict(task="det", recipe="atss_deit_adapter_small_fpn_3x_coco", size=(800, 1344), classes=80, batch=2,
                   label="ViT-Adapter-S + ATSS"),
    "gfl_s": dict(task="det", recipe="gfl_deit_adapter_small_fpn_3x_coco", size=(800, 1344), classes=80, batch=2,
                  label="ViT-Adapter-S + GFL"),
    "sparse_s": dict(task="det", recipe="sparse_rcnn_deit_adapter_small_fpn_3x_coco", size=(800, 1344), classes=80,
                     batch=2, label="ViT-Adapter-S + Sparse R-CNN"),
    "semfpn_t": dict(task="seg", recipe="fpn_deit_adapter_tiny_512_80k_ade20k", size=(512, 512), classes=150, batch=4,
                     label="ViT-Adapter-T + Semantic FPN (paper recipe)"),
    # the COCO panoptic Mask2Former (80 things + 53 stuff) at its largest training image (800 x 1333 padded)
    "pan_l": dict(task="pan", recipe="mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic", size=(800, 1344),
                  classes=133, things=80, batch=1, head_cp=PAN_HEAD_CP,
                  label="BEiTv2-Adapter-L + Mask2Former (COCO panoptic)"),
    "pan_cpu": dict(task="pan", recipe="synthetic_mask2former_panoptic", size=(128, 128), classes=6, things=3,
                    batch=2, head_cp=PAN_HEAD_CP, label="synthetic ViT-Adapter + Mask2Former (panoptic)"),
    "cascade_cpu": dict(task="det", recipe="synthetic_cascade_mask_rcnn", size=(128, 128), classes=7, batch=2,
                        label="synthetic ViT-Adapter + Cascade Mask R-CNN"),
    "atss_cpu": dict(task="det", recipe="synthetic_atss", size=(128, 128), classes=7, batch=2,
                     label="synthetic ViT-Adapter + ATSS"),
    "gfl_cpu": dict(task="det", recipe="synthetic_gfl", size=(128, 128), classes=7, batch=2,
                    label="synthetic ViT-Adapter + GFL"),
    "sparse_cpu": dict(task="det", recipe="synthetic_sparse_rcnn", size=(128, 128), classes=7, batch=2,
                       label="synthetic ViT-Adapter + Sparse R-CNN"),
}
MODE_RE = re.compile(r"^(?:zero([0-3]):)?(fp32|bf16|fp16)(\+cp)?$")


def parse_mode(mode: str) -> dict:
    """``'zero2:bf16+cp'`` -> ``{'zero': 2, 'dtype': 'bf16', 'with_cp': True}`` (``zero`` None: bare PyTorch)."""
    m = MODE_RE.match(mode)
    if not m:
        raise ValueError(f"mode {mode!r}: expected [zero0-3:]fp32|bf16|fp16[+cp]")
    zero = None if m.group(1) is None else int(m.group(1))
    if zero is None and m.group(2) == "fp16":
        raise ValueError(f"mode {mode!r}: fp16 needs loss scaling; use it under DeepSpeed (zeroN:fp16)")
    return {"zero": zero, "dtype": m.group(2), "with_cp": bool(m.group(3))}


def build(name: str, with_cp: bool):
    """The model of ``MODELS[name]`` with random init and every checkpointing switch set to ``with_cp``."""
    spec = MODELS[name]
    if spec["task"] == "seg":
        from vit_adapter_ds.config import load_recipe
        from vit_adapter_ds.models.registry import build_model

        opts = [f"model.backbone.with_cp={with_cp}", "model.pretrained=None"]
        opts += [f"{key}={with_cp}" for key in spec.get("head_cp", ())]
        cfg = load_recipe(spec["recipe"], opts)
        return build_model(cfg.model, load_pretrained=False)
    from mmengine import Config

    from vit_adapter_ds.models.detectors import DETECTORS
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    cfg = Config.fromfile(str(DETECTION_RECIPES[spec["recipe"]]))
    cfg.merge_from_dict({"model.backbone.with_cp": with_cp, **{k: with_cp for k in spec.get("head_cp", ())}})
    model = cfg.model.to_dict()
    model.pop("pretrained", None)
    model["backbone"].pop("pretrained", None)
    return DETECTORS[model["type"]].from_config(model)


def make_batch(name: str, batch: int, device: str, seed: int = 0):
    """Random images and targets of the model's size (see the module docstring)."""
    import torch

    spec = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    h, w = spec["size"]
    img = torch.randn(batch, 3, h, w, generator=g)
    if spec["task"] == "seg":
        cells = (max(2, h // 64), max(2, w // 64))
        maps = []
        for _ in range(batch):
            present = torch.randperm(spec["classes"], generator=g)[:min(12, spec["classes"])]
            coarse = present[torch.randint(0, len(present), cells, generator=g)]
            maps.append(torch.nn.functional.interpolate(coarse[None, None].float(), size=(h, w),
                                                        mode="nearest")[0, 0].long())
        return img.to(device), torch.stack(maps).to(device)
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.15 + 0.25 * torch.rand(4, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], 1).round()
        masks = torch.zeros(4, h, w, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        labels = torch.randint(0, spec.get("things", spec["classes"]), (4,), generator=g).to(device)
        if spec["task"] == "pan":  # the panoptic Mask2Former's things: labels and masks only
            targets.append({"labels": labels, "masks": masks.to(device)})
            continue
        targets.append({"boxes": boxes.to(device), "labels": labels, "masks": masks.to(device)})
    return img.to(device), targets


def model_kwargs(name: str, batch: int, device: str, seed: int = 0) -> dict:
    """The model's inputs besides images and targets: for HTC++ a random semantic map at 1/8 of the image
    (``SegRescale(1/8)``; 255 = ignore on a tenth of the pixels), for the panoptic Mask2Former a blocky map of stuff
    classes at full size."""
    import torch

    spec = MODELS[name]
    g = torch.Generator().manual_seed(seed + 1)
    h, w = spec["size"]
    if spec["task"] == "pan":  # the panoptic semantic map at full size: blocks of stuff classes
        stuff = torch.randint(spec["things"], spec["classes"], (batch, 1, max(2, h // 64), max(2, w // 64)),
                              generator=g)
        return {"semantic_labels": torch.nn.functional.interpolate(stuff.float(), size=(h, w), mode="nearest")[:, 0]
                .long().to(device)}
    if spec["task"] != "htc":
        return {}
    sem = torch.randint(0, spec["semantic_classes"], (batch, h // 8, w // 8), generator=g)
    sem[torch.rand(sem.shape, generator=g) < 0.1] = 255
    return {"semantic_labels": sem.to(device)}


def _deepspeed_engine(model, opt, zero: int, dtype: str, batch: int):
    import deepspeed

    from vit_adapter_ds import runtime as rt

    rt.init_distributed(timeout_s=300)
    cfg = {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": zero}, "bf16": {"enabled": dtype == "bf16"},
           "fp16": {"enabled": dtype == "fp16", "initial_scale_power": 16}, "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    return engine


def one(name: str, mode: str, batch: int, iters: int, warmup: int, device: str) -> dict:
    """Run one configuration in this process and return its figures."""
    import torch

    import vit_adapter_ds.models.registry  # noqa: F401  (imported before the baseline is read)

    m = parse_mode(mode)
    cuda = device.startswith("cuda")
    base_rss = current_rss_mb()  # after the imports; the peak is counted from here
    reset_peak_rss()
    torch.manual_seed(0)
    model = build(name, m["with_cp"]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    img, target = make_batch(name, batch, device)
    kwargs = model_kwargs(name, batch, device)
    step_model = model
    if m["zero"] is not None:
        step_model = _deepspeed_engine(model, opt, m["zero"], m["dtype"], batch)
        img = img.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[m["dtype"]])
    amp = m["zero"] is None and m["dtype"] == "bf16"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(warmup + iters):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=amp):
            loss = step_model(img, target, **kwargs)["loss"]
        if m["zero"] is None:
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            step_model.backward(loss)
            step_model.step()
        if cuda:
            torch.cuda.synchronize()
        losses.append(float(loss.detach()))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    step_s = sorted(times)[len(times) // 2]
    return {"model": name, "mode": mode, "with_cp": m["with_cp"], "dtype": m["dtype"], "zero": m["zero"],
            "batch": batch, "size": list(MODELS[name]["size"]), "device": device, "step_s": step_s,
            "best_step_s": min(times), "images_per_s": batch / step_s, "steps": len(times), "peak_mb": round(peak),
            "gb_per_image": round(peak / 1024 / batch, 3), "baseline_rss_mb": None if cuda else round(base_rss),
            "extra_mb": None if cuda else round(peak - base_rss), "losses": losses,
            "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses))}


def _best(r: dict) -> float:
    return r.get("best_step_s", r["step_s"])


def _memory(r: dict) -> float:
    return r["peak_mb"] if r["extra_mb"] is None else r["extra_mb"]


def ratios(results: list[dict]) -> list[dict]:
    """Time (best step: the least disturbed by other jobs on a shared machine) and memory (CPU: above the import
    baseline) of each result against the first result of the same model."""
    ref, out = {}, []
    for r in results:
        base = ref.setdefault(r["model"], r)
        out.append({"model": r["model"], "mode": r["mode"], "vs": base["mode"],
                    "time_x": round(_best(r) / _best(base), 3),
                    "memory_x": round(_memory(r) / max(_memory(base), 1), 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", "--sizes", dest="models", nargs="+", default=["tiny", "small"], choices=list(MODELS))
    p.add_argument("--modes", nargs="+", default=["fp32", "fp32+cp", "bf16"],
                   help="[zero0-3:]fp32|bf16|fp16[+cp]; the first is the reference of the ratios")
    p.add_argument("--batch", type=int, default=None, help="default: the model's official per-GPU batch")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the remaining configurations once this many seconds have passed")
    p.add_argument("--timeout-s", type=float, default=None, help="wall-clock limit of each configuration")
    p.add_argument("--json", default=None, help="also write the results here (rewritten after every configuration)")
    p.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for mode in a.modes:
        try:
            parse_mode(mode)
        except ValueError as e:
            p.error(str(e))
    import torch
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a._one:
        name, mode = a._one
        r = one(name, mode, a.batch or MODELS[name]["batch"], a.iters, a.warmup, device)
        print("RESULT " + json.dumps(r), flush=True)
        from vit_adapter_ds import runtime as rt
        rt.close_distributed()
        return 0
    start = time.monotonic()
    results, skipped = [], []

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "iters": a.iters, "warmup": a.warmup, "results": results,
                           "ratios": ratios(results), "skipped": skipped}, f, indent=1)

    print(f"device {device}, median of {a.iters} steps after {a.warmup} warm-up, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'model':<12}{'mode':<16}{'batch':>6}{'step (s)':>10}{'img/s':>8}{'peak (MB)':>11}{'GB/img':>8}"
          f"{'extra (MB)':>12}")
    for name in a.models:
        spec = MODELS[name]
        if spec.get("gpu_only") and not device.startswith("cuda"):
            why = f"a GPU size ({spec['size'][0]}x{spec['size'][1]}); on the CPU use the reduced configuration"
            skipped.append({"model": name, "why": why})
            print(f"{name:<12}skipped: {why}", flush=True)
            continue
        for mode in a.modes:
            if a.budget_s is not None and time.monotonic() - start > a.budget_s:
                skipped.append({"model": name, "mode": mode, "why": f"time budget of {a.budget_s:.0f} s spent"})
                print(f"{name:<12}{mode:<16} skipped: time budget of {a.budget_s:.0f} s spent", flush=True)
                continue
            if parse_mode(mode)["zero"] is not None:
                try:
                    import deepspeed  # noqa: F401
                except Exception as e:  # ImportError, or a broken install raising anything on import
                    skipped.append({"model": name, "mode": mode, "why": f"deepspeed does not import: {e}"})
                    print(f"{name:<12}{mode:<16} skipped: deepspeed does not import ({e})", flush=True)
                    continue
            cmd = [sys.executable, os.path.abspath(__file__), "--_one", name, mode, "--iters", str(a.iters),
                   "--warmup", str(a.warmup), "--device", device]
            if a.batch:
                cmd += ["--batch", str(a.batch)]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=a.timeout_s)
            except subprocess.TimeoutExpired:
                skipped.append({"model": name, "mode": mode, "why": f"timed out after {a.timeout_s:.0f} s"})
                print(f"{name:<12}{mode:<16} timed out after {a.timeout_s:.0f} s", flush=True)
                continue
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                skipped.append({"model": name, "mode": mode, "why": "failed: " + out.stderr[-1500:]})
                print(f"{name:<12}{mode:<16} failed: {out.stderr[-1500:]}", flush=True)
                continue
            r = json.loads(line[0][7:])
            results.append(r)
            extra = "" if r["extra_mb"] is None else r["extra_mb"]
            print(f"{name:<12}{mode:<16}{r['batch']:>6}{r['step_s']:>10.3f}{r['images_per_s']:>8.2f}"
                  f"{r['peak_mb']:>11}{r['gb_per_image']:>8.2f}{extra:>12}", flush=True)
            save()
    for q in ratios(results):
        if q["mode"] != q["vs"]:
            print(f"{q['model']}: {q['mode']} vs {q['vs']}: time x{q['time_x']:.2f}, memory x{q['memory_x']:.2f}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
