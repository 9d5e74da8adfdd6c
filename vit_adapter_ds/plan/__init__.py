"""The capacity planner (``launch/plan.py``): will a recipe fit on a cluster, with which micro-batch, ZeRO stage
and activation checkpointing, and how fast will it run.

* :mod:`.activations` measures one training step on fake tensors (no memory): bytes saved for backward, peak
  bytes alive, FLOPs; :mod:`.standins` replaces the parts that need real values by stand-ins of the same sizes.
* :mod:`.step` runs the recipe's own model and loss at its training size.
* :mod:`.states` gives the model states per rank (weights, gradients, Adam, master weights, ZeRO buffers).
* :mod:`.estimate` combines them for a cluster: memory per rank, time, communication, recommendation, sweep.
"""
from __future__ import annotations

from .estimate import Cluster, Measured, recommend, sweep

__all__ = ["Cluster", "Measured", "measure", "recommend", "sweep"]


def ds_dtype(ds_config: dict | None) -> str:
    """The training dtype a DeepSpeed config asks for: ``bf16`` / ``fp16`` when enabled, else ``fp32``."""
    ds = ds_config or {}
    if (ds.get("bf16") or {}).get("enabled") in (True, "auto"):
        return "bf16"
    if (ds.get("fp16") or {}).get("enabled") in (True, "auto"):
        return "fp16"
    return "fp32"


def measure(recipe, options=None, *, dtype: str = "fp32", image_size=None, checkpointing=(False, True),
            segments_per_image: int = 10, boxes_per_image: int = 10, progress=None) -> Measured:
    """Measure ``recipe``'s training step per image on fake tensors, for each ``checkpointing`` setting (``None``:
    the recipe's own), and count its parameters. The step runs on 2 images (BatchNorm, as in UperNet's pyramid
    pooling, needs more than one value per channel; SyncBN in a real run gets them from the other ranks) and is
    halved. ``progress(text)`` is called before each run."""
    from ..tasks import load_and_validate
    from .states import count_params
    from .step import measure_recipe, train_image_size, uses_checkpointing

    cfg, task, meta = load_and_validate(str(recipe), options)
    counts = count_params(meta)
    size = tuple(int(v) for v in (image_size or train_image_size(cfg)))
    peak, saved, flops, notes = {}, {}, {}, []
    for cp in checkpointing:
        cp_now = uses_checkpointing(meta) if cp is None else bool(cp)
        if progress:
            progress(f"measuring a step of 2 images of {size[0]}x{size[1]}, {dtype}, checkpointing {'on' if cp_now else 'off'} "
                     "(fake tensors)")
        _, _, model = load_and_validate(str(recipe), options)
        r = measure_recipe(cfg, batch_size=2, image_size=size, dtype=dtype, with_cp=cp, model=model,
                           segments_per_image=segments_per_image, boxes_per_image=boxes_per_image)
        peak[r.with_cp], saved[r.with_cp], flops[r.with_cp] = r.peak / 2, r.saved / 2, r.flops / 2
        notes += [n for n in r.stand_ins if n not in notes]
    return Measured(counts=counts, dtype=dtype, image_size=size, peak=peak, saved=saved, flops=flops,
                    stand_ins=notes)
