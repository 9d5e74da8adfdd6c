#!/usr/bin/env python
"""The capacity planner's prediction (vit_adapter_ds/plan) of ``torch.cuda.max_memory_allocated`` for each
training-step configuration ``benchmarks/gpu_all.py`` measures with ``benchmarks/train_step.py``, computed on the
CPU (fake tensors) and kept in ``benchmarks/planned_train_step.json``, so the first lent GPU prints prediction and
measurement side by side (gpu_all's train_step table, "planned GB") and calibrates the planner.

What a configuration holds at its peak, as the planner counts it (one process, no data parallelism):

* bare PyTorch (``fp32``, ``bf16`` = autocast): fp32 weights + fp32 gradients + AdamW's two fp32 states
  (16 bytes per trainable parameter, ZeRO-0 fp32 in plan/states.py) + the step's peak of activations, measured in
  the mode's dtype (autocast keeps fp32 weights but computes most activations in bf16: the planner casts the whole
  model, so autocast's fp32 copies of some activations are not counted);
* ``zeroN:dtype``: plan/states.py for stage N on 1 rank with DeepSpeed's defaults + the activations.

The activations are measured at the benchmark's own batch, size, targets (4 boxes per detection image, a dozen
classes per label map) and checkpointing (train_step.py's ``+cp`` sets every ``with_cp``, as ``set_checkpointing``).
Models without planner stand-ins (ATSS, GFL, Sparse R-CNN) are listed as skipped.

    python benchmarks/plan_train_step.py            # rewrites benchmarks/planned_train_step.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "planned_train_step.json"


def planned(model: str, mode: str, cache: dict) -> dict:
    """``{'planned_mb', 'states_mb', 'activations_mb'}`` of one configuration (``cache``: measured steps)."""
    from train_step import MODELS, parse_mode

    from vit_adapter_ds.plan.states import count_params, model_state_bytes
    from vit_adapter_ds.plan.step import measure_recipe
    from vit_adapter_ds.tasks import load_and_validate

    spec, m = MODELS[model], parse_mode(mode)
    dtype = m["dtype"]
    key = (model, dtype, m["with_cp"])
    if key not in cache:
        _, _, meta = load_and_validate(spec["recipe"])
        r = measure_recipe(spec["recipe"], batch_size=spec["batch"], image_size=spec["size"], dtype=dtype,
                           with_cp=m["with_cp"], model=meta, segments_per_image=12, boxes_per_image=4)
        cache[key] = (r.peak, count_params(meta), r.stand_ins)
    peak, counts, notes = cache[key]
    if m["zero"] is None:
        states = model_state_bytes(counts, stage=0, dtype="fp32", world_size=1)["total"]
    else:
        states = model_state_bytes(counts, stage=m["zero"], dtype=dtype, world_size=1)["total"]
    return {"planned_mb": round((states + peak) / 2**20), "states_mb": round(states / 2**20),
            "activations_mb": round(peak / 2**20), "stand_ins": notes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--models", nargs="*", help="only these models (default: every GPU configuration of gpu_all); "
                   "the other models' rows of --out are kept")
    a = p.parse_args(argv)
    from vit_adapter_ds.config import ConfigError

    rows, skipped, cache, t0 = [], [], {}, time.time()
    from gpu_all import TRAIN_STEP_GROUPS  # the configurations gpu_all.py measures

    for models, modes in TRAIN_STEP_GROUPS:
        for model in models:
            if a.models and model not in a.models:
                continue
            for mode in modes:
                t = time.time()
                try:
                    r = planned(model, mode, cache)
                except ConfigError as e:
                    skipped.append({"model": model, "mode": mode, "why": str(e)})
                    print(f"{model:<10}{mode:<16} skipped: {e}", flush=True)
                    continue
                rows.append({"model": model, "mode": mode, **r})
                print(f"{model:<10}{mode:<16}{r['planned_mb']:>9} MB (states {r['states_mb']}, activations "
                      f"{r['activations_mb']}) {time.time() - t:.0f} s", flush=True)
    if a.models and Path(a.out).is_file():  # only these models were redone: keep the others' rows
        old = json.loads(Path(a.out).read_text())
        rows = [r for r in old["results"] if r["model"] not in a.models] + rows
        skipped = [r for r in old["skipped"] if r["model"] not in a.models] + skipped
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    Path(a.out).write_text(json.dumps({"date": datetime.date.today().isoformat(), "commit": commit,
                                       "machine": platform.processor() or platform.machine(),
                                       "seconds": round(time.time() - t0), "results": rows, "skipped": skipped},
                                      indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


def load(path=OUT) -> dict:
    """``{(model, mode): row}`` of the recorded predictions (empty when the file is missing)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {(r["model"], r["mode"]): r for r in data.get("results", [])}


if __name__ == "__main__":
    sys.exit(main())
