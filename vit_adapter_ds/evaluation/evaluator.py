"""Dataset evaluation of a segmentor: the mmseg test pipeline, inference, exact distributed mIoU.

For every validation sample (original-size normalised image and label, as the val loader yields them) the test
pipeline of the recipes is applied: ``Resize(img_scale, keep_ratio=True)`` then ``ResizeToMultiple(size_divisor)``
(or, for multi-scale testing, one resize per ``img_scale * ratio`` by the recipe's multi-scale rule, e.g. the
official ``SETR_Resize``; see :mod:`vit_adapter_ds.models.test_time_resize`), whole or sliding-window inference,
logits resized back to the label size, softmax (averaged over scales/flips) and argmax. Per-class areas are
accumulated per rank and summed over ranks, so the distributed result equals a single-process evaluation.

Difference from mmseg: the image is resized after normalisation (the loader normalises at the original size), in
float, where mmcv resizes the uint8 image with OpenCV before normalising; bilinear resizing is linear, so this only
removes mmcv's rounding to 8 bits (sub-grey-level differences).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..models.test_time_resize import scales_from_ratios, select_test_resize
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .miou import IoUAccumulator


def _denormalize(img: torch.Tensor, mean, std) -> np.ndarray:
    x = img.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def evaluate(model, loader: Iterable, num_classes: int, *, mode: str | None = None, crop_size=None, stride=None,
             img_scale=None, size_divisor: int | None = 32, ms_resize: dict | None = None,
             aug: dict | None = None, ignore_index: int = 255,
             class_names: Sequence[str] | None = None, device=None, dtype: torch.dtype | None = None,
             num_vis: int = 0, palette=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, pad_short_side: dict | None = None,
             progress: bool = False) -> dict:
    """Evaluate ``model`` (an :class:`~vit_adapter_ds.models.segmentor.EncoderDecoder`) on ``loader``.

    ``loader`` yields ``{'img': (B, 3, H, W) float, 'gt_semantic_seg': (B, H, W) int, ...}`` (B images of one
    size; the val loader gives B=1 at the original size). ``mode``/``crop_size``/``stride``: 'whole' | 'slide'
    (default: the model's ``test_cfg``). ``img_scale``: the (long, short) test scale (None: no resize);
    ``size_divisor``: ResizeToMultiple. ``aug``: multi-scale/flip test, ``dict(ratios=[0.5, 0.75, ...],
    flip=True)`` (ratios of ``img_scale``) or ``dict(scales=[(w, h), ...], flip=...)``; None = single scale, no flip.
    ``ms_resize``: the resize rule of multi-scale tests (``evaluation.ms_resize``, e.g.
    ``dict(type='SETR_Resize', crop_size=(640, 640))``); None = the single-scale rule.
    ``pad_short_side``: the official Mask2Former ``_ms`` ``PadShortSide`` (from the test pipeline,
    ``dict(size=896, before_normalize=True)``: pad bottom/right to at least ``size`` with black pixels, or with
    zeros of the normalised image when ``before_normalize=False``), passed to the model's ``aug_test``.
    ``dtype``: cast the images (bf16/fp16 models); ``num_vis``: keep that many (image | label | prediction)
    visualisations (uint8 (H, 3W, 3)) of this rank under ``'vis'``.

    Returns :func:`~vit_adapter_ds.evaluation.miou.summarize`'s dict (``aAcc``, ``mIoU``, ``mAcc``, ``IoU``,
    ``Acc``, ``per_class``), plus ``num_images`` (all ranks) and ``vis``. Call it on every rank when distributed.
    """
    from .visualize import colorize

    if not hasattr(model, "aug_test"):
        raise TypeError(f"{type(model).__name__} has no aug_test(); evaluate() needs an EncoderDecoder")
    aug = dict(aug or {})
    unknown = set(aug) - {"ratios", "scales", "flip"}
    if unknown:
        raise ValueError(f"aug: unknown keys {sorted(unknown)} (ratios, scales, flip)")
    if "ratios" in aug and "scales" in aug:
        raise ValueError("aug: give ratios or scales, not both")
    if "ratios" in aug:
        if img_scale is None:
            raise ValueError("aug ratios need img_scale")
        scales = scales_from_ratios(img_scale, aug["ratios"])
    else:
        scales = list(aug.get("scales") or [img_scale])
    flip = bool(aug.get("flip", False))
    multi_scale = bool(aug.get("ratios") or aug.get("scales"))
    resize_rule = select_test_resize(size_divisor, ms_resize, multi_scale)
    pad_kw = {}
    if pad_short_side:
        from ..models.segmentor_mask2former import black_pad_value
        pad_kw = {"pad_short_side": int(pad_short_side["size"]),
                  "pad_value": black_pad_value(mean, std) if pad_short_side.get("before_normalize", True)
                  else 0.0}
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    acc = IoUAccumulator(num_classes, ignore_index)
    vis = []
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc="eval", leave=False)
    for batch in it:
        img = batch["img"].to(device)
        if dtype is not None:
            img = img.to(dtype)
        gt = batch["gt_semantic_seg"]
        gt = gt[:, 0] if gt.dim() == 4 else gt
        prob = model.aug_test(img, scales=scales, flip=flip, resize_rule=resize_rule, mode=mode,
                              crop_size=crop_size, stride=stride, out_size=tuple(gt.shape[-2:]), **pad_kw)
        pred = prob.argmax(dim=1).cpu()
        for p, g, im in zip(pred, gt, batch["img"]):
            acc.update(p, g)
            if len(vis) < num_vis:
                vis.append(np.concatenate([_denormalize(im, mean, std), colorize(g, num_classes, palette),
                                           colorize(p, num_classes, palette)], axis=1))
    model.train(was_training)
    acc.all_reduce()
    out = acc.summarize(class_names)
    out["num_images"] = acc.num_images
    out["vis"] = vis
    return out


def _cfg_get(obj, key, default=None):
    if obj is None:
        return default
    return obj.get(key, default) if hasattr(obj, "get") else getattr(obj, key, default)


def evaluate_from_cfg(model, val_loader, cfg, dtype=None, num_vis: int = 0, num_classes: int | None = None):
    """The engine's ``evaluate(model, val_loader, cfg, dtype, num_vis) -> (metrics, vis)`` hook for a recipe:
    test mode/crop/stride from ``cfg.model.test_cfg``; scale, divisor, ``img_ratios``/``flip``/``ms_resize``/
    ``pad_short_side`` and mean/std from the official test pipeline in ``data.val.pipeline``
    (:meth:`~vit_adapter_ds.data.datasets.SegmentationShards.test_settings`; ``evaluation.ms_resize`` may add the
    resize rule of a multi-scale test);
    class names from the loader's manifest. ``metrics``: ``{'aAcc', 'mIoU', 'mAcc', 'mDice'}`` floats."""
    from ..config.keys import to_plain
    from ..data.datasets import SegmentationShards

    model_cfg = _cfg_get(cfg, "model")
    test_cfg = _cfg_get(model_cfg, "test_cfg") or {}
    st = SegmentationShards.test_settings(to_plain(_cfg_get(cfg, "data") or {}),
                                          to_plain(_cfg_get(cfg, "evaluation") or {}), "val")
    num_classes = int(num_classes if num_classes is not None else model.num_classes)
    aug = dict(ratios=list(st["img_ratios"]), flip=st["flip"]) if st["img_ratios"] else dict(flip=st["flip"])
    manifest = getattr(val_loader, "manifest", None) or {}
    names = manifest.get("classes")
    names = names if names is not None and len(names) == num_classes else None
    res = evaluate(model, val_loader, num_classes, mode=_cfg_get(test_cfg, "mode"),
                   crop_size=_cfg_get(test_cfg, "crop_size"), stride=_cfg_get(test_cfg, "stride"),
                   img_scale=st["img_scale"], size_divisor=st["size_divisor"], ms_resize=st["ms_resize"], aug=aug,
                   class_names=names, dtype=dtype, num_vis=num_vis, palette=manifest.get("palette"),
                   mean=st["mean"], std=st["std"], pad_short_side=st["pad_short_side"])
    return {k: res[k] for k in ("aAcc", "mIoU", "mAcc", "mDice")}, res["vis"]
