"""Test-time resize rules of the mmseg 0.x / ViT-Adapter test pipelines, as image sizes (the one place for them).

``MultiScaleFlipAug(img_scale, img_ratios)`` turns one (long, short) scale and ratios into one scale per ratio
(:func:`scales_from_ratios`); each test image is then resized by one of two rules, chosen by the recipe:

* :class:`KeepRatioResize` -- ``Resize(keep_ratio=True)`` (mmcv ``rescale_size``: the largest size whose long edge
  fits ``max(scale)`` and short edge fits ``min(scale)``) followed by ``ResizeToMultiple(size_divisor)`` (each side
  rounded up to a multiple). The single-scale pipeline of every official config.
* :class:`SETRResize` -- ViT-Adapter's ``SETR_Resize(keep_ratio=True, crop_size, setr_multi_scale=True)``
  (``segmentation/mmseg_custom/datasets/pipelines/transform.py``) of the ``upernet_beit_adapter_large_640_*_ms``
  configs: the short side becomes ``min(scale)`` but at least ``crop_size[0]``, the long side follows the aspect
  ratio with no cap, and nothing is rounded to a multiple.

A rule is called as ``rule(h, w, scale) -> (new_h, new_w)``; ``scale`` None means "keep the input size" (and, for
:class:`KeepRatioResize`, only the ``ResizeToMultiple`` step). :func:`build_test_resize` makes a rule from a recipe
entry such as ``evaluation.ms_resize=dict(type='SETR_Resize', crop_size=(640, 640))``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Sequence

from ..utils.image_ops import rescale_size  # noqa: F401  (mmcv's keep-ratio rule, shared with detection)

TEST_RESIZE_TYPES = ("Resize", "SETR_Resize")


def resize_to_multiple(h: int, w: int, size_divisor: int | None) -> tuple[int, int]:
    """mmseg ``ResizeToMultiple(size_divisor)``: each side rounded *up* to a multiple (no-op for None / 0)."""
    if not size_divisor:
        return h, w
    return tuple(int(math.ceil(s / size_divisor)) * size_divisor for s in (h, w))


def inference_size(h: int, w: int, scale=None, size_divisor: int | None = None) -> tuple[int, int]:
    """Test-pipeline size of an (h, w) image: mmseg ``Resize(scale, keep_ratio=True)`` (skipped if ``scale`` is
    None) then ``ResizeToMultiple(size_divisor)``."""
    if scale is not None:
        h, w = rescale_size(h, w, scale)
    return resize_to_multiple(h, w, size_divisor)


def scales_from_ratios(img_scale, ratios: Sequence[float]) -> list[tuple[int, int]]:
    """mmseg ``MultiScaleFlipAug(img_scale, img_ratios)``: ``[(int(w * r), int(h * r)) for r in ratios]``."""
    if img_scale is None:
        raise ValueError("multi-scale ratios need a test img_scale (the test pipeline's MultiScaleFlipAug img_scale)")
    return [(int(img_scale[0] * r), int(img_scale[1] * r)) for r in ratios]


def setr_resize_size(h: int, w: int, scale, crop_size) -> tuple[int, int]:
    """ViT-Adapter ``SETR_Resize(keep_ratio=True, crop_size, setr_multi_scale=True)`` of an (h, w) image for a
    (long, short) ``scale``: short side ``max(min(scale), crop_size[0])``, long side by the aspect ratio, uncapped.

    Computed the way the official transform does (the float target it builds, then mmcv ``rescale_size``), so the
    rounding is the same."""
    new_short = max(min(scale), crop_size[0])
    target = (new_short * h / w, new_short) if h > w else (new_short, new_short * w / h)
    return rescale_size(h, w, target)


class KeepRatioResize:
    """``Resize(keep_ratio=True)`` then ``ResizeToMultiple(size_divisor)`` (the official single-scale pipeline)."""

    type = "Resize"

    def __init__(self, size_divisor: int | None = None):
        if size_divisor is not None and (not isinstance(size_divisor, int) or size_divisor < 0):
            raise ValueError(f"size_divisor must be a non-negative int or None, got {size_divisor!r}")
        self.size_divisor = size_divisor

    def __call__(self, h: int, w: int, scale) -> tuple[int, int]:
        return inference_size(h, w, scale, self.size_divisor)

    def __repr__(self) -> str:
        return f"KeepRatioResize(size_divisor={self.size_divisor})"


class SETRResize:
    """ViT-Adapter ``SETR_Resize(keep_ratio=True, crop_size=crop_size, setr_multi_scale=True)``: see
    :func:`setr_resize_size`. A scale of None keeps the input size."""

    type = "SETR_Resize"

    def __init__(self, crop_size):
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        if len(crop_size) != 2 or not all(isinstance(c, int) and c > 0 for c in crop_size):
            raise ValueError(f"SETR_Resize crop_size must be (h, w) positive ints, got {crop_size!r}")
        self.crop_size = tuple(crop_size)

    def __call__(self, h: int, w: int, scale) -> tuple[int, int]:
        if scale is None:
            return h, w
        return setr_resize_size(h, w, scale, self.crop_size)

    def __repr__(self) -> str:
        return f"SETRResize(crop_size={self.crop_size})"


def build_test_resize(cfg: Mapping | None, size_divisor: int | None = None):
    """A resize rule from a recipe entry: None or ``dict(type='Resize')`` -> :class:`KeepRatioResize`
    (``size_divisor`` from the argument: the test pipeline's ``ResizeToMultiple``);
    ``dict(type='SETR_Resize', crop_size=...)`` -> :class:`SETRResize`. Unknown types or keys raise ``ValueError``."""
    if cfg is None:
        return KeepRatioResize(size_divisor)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a test resize must be a dict with a 'type' ({' or '.join(TEST_RESIZE_TYPES)}), "
                         f"got {cfg!r}")
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    allowed = {"Resize": {"keep_ratio"}, "SETR_Resize": {"keep_ratio", "crop_size", "setr_multi_scale"}}
    if kind not in allowed:
        raise ValueError(f"test resize type {kind!r} is not supported; valid: {', '.join(TEST_RESIZE_TYPES)}")
    unknown = set(cfg) - allowed[kind]
    if unknown:
        raise ValueError(f"{kind}: unknown keys {sorted(unknown)}; valid: {sorted(allowed[kind])}")
    if cfg.get("keep_ratio", True) is not True:
        raise ValueError(f"{kind}: only keep_ratio=True is supported (the official test pipelines)")
    if kind == "Resize":
        return KeepRatioResize(size_divisor)
    if cfg.get("setr_multi_scale", True) is not True:
        raise ValueError("SETR_Resize: only setr_multi_scale=True is supported (without it, it is Resize)")
    if "crop_size" not in cfg:
        raise ValueError("SETR_Resize needs crop_size (the slide-inference crop, e.g. (640, 640))")
    return SETRResize(tuple(cfg["crop_size"]) if not isinstance(cfg["crop_size"], int) else cfg["crop_size"])


def select_test_resize(size_divisor: int | None = None, ms_resize: Mapping | None = None,
                       multi_scale: bool = False):
    """The rule a test uses: the recipe's multi-scale rule ``ms_resize`` (``evaluation.ms_resize``, as in the
    official ``_ms`` config's test pipeline) when testing several ratios/scales, else (and by default)
    ``Resize(keep_ratio=True)`` + ``ResizeToMultiple(size_divisor)``."""
    return build_test_resize(ms_resize if multi_scale else None, size_divisor)
