"""One training step of a recipe measured on fake tensors (:mod:`.activations`): the recipe's model (built on the
meta device, no weights read), a synthetic batch of the recipe's training size, the task's own loss.

The training image size is the recipe's: the segmentation crop (``RandomCrop.crop_size``, else ``Pad.size``), the
detection crop of a large-scale-jitter pipeline, else the largest image its ``Resize`` can give (``img_scale``
(long, short) with ``keep_ratio``: long x short, padded to 32, the worst case of COCO's aspect ratios), also inside
``AutoAugment`` policies. ``--image-size`` overrides it.
"""
from __future__ import annotations

import math

import torch

from ..config.errors import ConfigError
from .activations import StepMeasure, measure_step


def _walk(steps):
    for s in steps or ():
        if isinstance(s, dict):
            yield s
            for v in s.values():
                if isinstance(v, (list, tuple)):
                    yield from _walk([x for x in v if isinstance(x, dict)])
                    for x in v:
                        if isinstance(x, (list, tuple)):
                            yield from _walk(x)


def _pairs(v):
    if v is None:
        return []
    if isinstance(v, (int, float)):
        return [(int(v), int(v))]
    if len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return [(int(v[0]), int(v[1]))]
    return [p for x in v for p in _pairs(x)]


def train_image_size(cfg) -> tuple[int, int]:
    """(H, W) of the largest training image of the recipe's ``train_pipeline`` (see the module docstring)."""
    steps = list(_walk(list(cfg.get("train_pipeline") or [])))
    crops = [p for s in steps if s.get("type") == "RandomCrop" for p in _pairs(s.get("crop_size"))]
    pads = [p for s in steps if s.get("type") == "Pad" for p in _pairs(s.get("size"))]
    if crops:  # (h, w)
        return max(crops[0], pads[0]) if pads else crops[0]
    if pads:
        return pads[0]
    scales = [(p, s.get("ratio_range")) for s in steps if s.get("type") == "Resize" for p in _pairs(s.get("img_scale"))]
    if not scales:
        raise ConfigError("plan: the recipe's train_pipeline has no RandomCrop, Pad size or Resize img_scale: give "
                          "--image-size H W")
    long_side = max(max(p) * (max(r) if r else 1) for p, r in scales)
    short_side = max(min(p) * (max(r) if r else 1) for p, r in scales)
    div = max([int(s.get("size_divisor") or 1) for s in steps if s.get("type") == "Pad"] or [1])
    return (int(math.ceil(short_side / div) * div), int(math.ceil(long_side / div) * div))


def set_checkpointing(model, enabled: bool) -> int:
    """Set every module's ``with_cp`` (backbone blocks, adapter injectors / extractors, extra attention, the
    Mask2Former FFNs) to ``enabled``; the number of modules changed."""
    n = 0
    for m in model.modules():
        if isinstance(getattr(m, "with_cp", None), bool):
            m.with_cp = bool(enabled)
            n += 1
    return n


def uses_checkpointing(model) -> bool:
    return any(getattr(m, "with_cp", False) is True for m in model.modules())


def segmentation_batch(batch_size, image_size, num_classes, segments_per_image):
    h, w = image_size

    def make(dtype):
        labels = torch.randint(0, max(1, min(segments_per_image, num_classes)), (batch_size, h, w))
        return {"img": torch.randn(batch_size, 3, h, w), "gt_semantic_seg": labels}
    return make


def batch_maker(task, batch_size, image_size, *, segments_per_image=10, boxes_per_image=10):
    """``make_batch(dtype)`` of the task's training batch layout (:mod:`.tasks`)."""
    if task.name == "semantic_segmentation":
        return segmentation_batch(batch_size, image_size, task.num_classes, segments_per_image)
    from .detection_inputs import detection_batch  # the detection tasks' batches and stand-ins

    return detection_batch(task, batch_size, image_size, boxes_per_image=boxes_per_image)


def measure_recipe(recipe, options=None, *, batch_size: int = 1, image_size=None, dtype: str = "fp32",
                   with_cp: bool | None = None, segments_per_image: int = 10, boxes_per_image: int = 10,
                   model=None) -> StepMeasure:
    """Measure one training step of ``recipe`` (name, path or loaded config; ``options``: ``--cfg-options``) on
    fake tensors. ``with_cp``: None keeps the recipe's activation checkpointing, True / False forces it on / off
    everywhere. ``model``: a meta-device model already built for the recipe (else built here)."""
    from ..tasks import load_and_validate, task_for

    if isinstance(recipe, (str, bytes)) or hasattr(recipe, "__fspath__"):
        cfg, task, meta = load_and_validate(str(recipe), options)
    else:
        cfg, task, meta = recipe, task_for(recipe), None
        meta = task.validate()
    if model is not None:
        meta = model
    if with_cp is not None:
        set_checkpointing(meta, with_cp)
    size = tuple(int(v) for v in (image_size or train_image_size(cfg)))
    make = batch_maker(task, batch_size, size, segments_per_image=segments_per_image, boxes_per_image=boxes_per_image)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)

    def forward_loss(m, batch):
        return task.forward_loss(m, batch, torch.device("cpu"), tdtype)["loss"]

    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    try:
        return measure_step(meta, make, forward_loss, batch_size=batch_size, image_size=size, dtype=dtype,
                            with_cp=uses_checkpointing(meta), segments_per_image=segments_per_image)
    except (DataDependentOutputException, DynamicOutputShapeException, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "subclass" not in str(e):  # .numpy() of a fake tensor; else a real error
            raise
        model_type = (cfg.get("model") or {}).get("type")
        what = getattr(e, "func", None) or str(e).splitlines()[0]
        raise ConfigError(f"plan: {model_type} has a part that needs real values ({what}) and no stand-in of "
                          "the same sizes yet (vit_adapter_ds/plan/standins.py), so its step cannot be measured "
                          "on fake tensors") from e
