"""One training step of a recipe measured on fake tensors (:mod:`.activations`): the recipe's model (built on the
meta device, no weights read), a synthetic batch of the recipe's training size, the task's own loss.

The training image size is the recipe's: the largest image its ``train_pipeline`` can give, its steps followed in
order over every ``AutoAugment`` policy: a keep-ratio ``Resize`` gives at most short x long of its ``img_scale``
(x the top of ``ratio_range``; the worst case of COCO's aspect ratios), a ``RandomCrop`` caps that (the
segmentation crop; the large-scale-jitter crop), a later ``Resize`` sets it again (the DETR-style policy: resize,
crop 384-600, resize to at most 800 x 1333), ``Pad`` rounds it up (``size_divisor``) or to ``size``.
``--image-size`` overrides it.
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


def _paths(pipeline):
    """Every sequence of steps a training image can go through: each ``AutoAugment`` policy is one branch."""
    paths = [[]]
    for s in pipeline or ():
        if not isinstance(s, dict):
            continue
        if s.get("type") == "AutoAugment":
            branches = [b for pol in s.get("policies") or () for b in _paths(list(pol))]
            paths = [p + b for p in paths for b in branches] or paths
        else:
            paths = [p + [s] for p in paths]
    return paths


def _path_size(steps):
    """(short, long) bound of the image after ``steps`` (None before any step sets a size): a keep-ratio ``Resize``
    to ``img_scale`` x the largest ``ratio_range`` gives at most its short x long side (the image whose aspect equals
    the scale's), a ``RandomCrop`` caps it (``absolute_range``: both sides up to the range's top), ``Pad`` grows it to
    ``size`` / the next multiple of ``size_divisor``."""
    size = None
    for s in steps:
        kind = s.get("type")
        if kind == "Resize":
            pairs = _pairs(s.get("img_scale"))
            if pairs:
                r = max(s.get("ratio_range") or (1,))
                size = (max(min(p) for p in pairs) * r, max(max(p) for p in pairs) * r)
        elif kind == "RandomCrop" and s.get("crop_size") is not None:
            h, w = _pairs(s.get("crop_size"))[0]
            if s.get("crop_type", "absolute") == "absolute_range":
                h = w = max(h, w)
            elif s.get("crop_type", "absolute") != "absolute":  # relative crops only shrink the image
                continue
            size = (h, w) if size is None else (min(size[0], h), min(size[1], w))
        elif kind == "Pad" and size is not None:
            if s.get("size") is not None:
                ph, pw = _pairs(s.get("size"))[0]
                size = (max(size[0], ph), max(size[1], pw))
            div = int(s.get("size_divisor") or 1)
            size = tuple(math.ceil(v / div) * div for v in size)
        elif kind == "Pad" and s.get("size") is not None:
            size = _pairs(s.get("size"))[0]
    return None if size is None else (int(math.ceil(size[0])), int(math.ceil(size[1])))


def train_image_size(cfg) -> tuple[int, int]:
    """(H, W) of the largest training image of the recipe's ``train_pipeline`` (see the module docstring): over
    every ``AutoAugment`` branch, the steps followed in order (:func:`_path_size`), the largest by area."""
    sizes = [z for z in map(_path_size, _paths(list(cfg.get("train_pipeline") or []))) if z is not None]
    if not sizes:
        raise ConfigError("plan: the recipe's train_pipeline has no RandomCrop, Pad size or Resize img_scale: give "
                          "--image-size H W")
    return max(sizes, key=lambda z: (z[0] * z[1], z))


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
