"""HTC++ test-time augmentation: the official ``HybridTaskCascadeAug`` (``detection/mmdet_custom/models/detectors/
htc_aug.py`` of ViT-Adapter, ``aug_test_vote``) on torchvision ops.

The test pipeline's ``MultiScaleFlipAug(img_scale=[s_0, ..., s_{n-1}], flip=True)`` gives the augmentations in
mmdet's order (scale-major, then no flip / horizontal flip). For each augmentation ``a`` of scale index ``k``:

1. the original uint8 image is resized keep-ratio to ``s_k`` (mmcv ``rescale_size``; ``scale_factor`` =
   ``(new_w / w, new_h / h)``), flipped if ``a`` flips, normalised and padded to 32;
2. its own RPN proposals (``test_cfg.rpn``) and the cascade (stage-averaged class logits, softmax; boxes decoded
   by the last stage and clipped to the resized image) give boxes (N, 4) and class probabilities (N, C + 1),
   *without* NMS (mmdet ``get_bboxes(cfg=None)``);
3. the boxes are mapped back to the original image (mmdet ``bbox_mapping_back``: un-flip within the resized
   width, then ``/ scale_factor``) and only those whose original-image area falls in one of
   ``test_cfg.aug.scale_ranges[k]`` are kept (``remove_boxes``: ``'s'`` area <= 32^2, ``'m'`` 32^2 < area <= 96^2,
   ``'l'`` area > 96^2, ``'m-'`` / ``'m+'`` split ``'m'`` at 64^2, ``'l-'`` 96^2 < area < 512^2, ``'l+'``
   area > 512^2).

The kept boxes and probabilities of all augmentations are concatenated (no averaging: this is the official
"vote"; mmdet's own ``merge_aug_bboxes`` averages the same RoIs over augmentations instead) and go through
mmdet ``multiclass_nms`` with ``test_cfg.aug`` (``score_thr`` 0.001, linear soft-NMS IoU 0.5 within each class,
``max_per_img`` 1000): the detections, in original-image pixels.

Masks (mmdet ``merge_aug_masks``): the detections are mapped into every augmentation's frame (``bbox_mapping``:
``* scale_factor``, then flip), every stage's mask logits there (mask information flow, + the augmentation's
semantic feature) go through a sigmoid, flipped-augmentation masks are flipped back along x, and all
(stages x augmentations) are averaged; the detection's class channel is pasted into the original image at the
detection box and binarised at ``mask_thr_binary``.

Differences from the official code: the scale range of an augmentation is looked up by its scale index (the
official ``scale_ranges[i // 2]`` is the same only with ``flip=True``, which every official TTA config uses).
"""
from __future__ import annotations

import torch
from torch import nn

from ...config.errors import ConfigError
from ..registry import DETECTORS
from .htc import HybridTaskCascade, multiclass_nms

SCALE_RANGES = ("s", "m", "m-", "m+", "l", "l-", "l+")


def aug_test_cfg(cfg: dict, where: str = "model.test_cfg.aug") -> dict:
    """Check the official ``test_cfg.aug`` dict -> ``{'score_thr', 'nms_type', 'nms_iou', 'max_per_img',
    'scale_ranges'}``."""
    from ...config.keys import Fixed, Param, parse

    spec = {"score_thr": Param("score_thr", (float,), 0.001),
            "nms": {"type": Param("nms_type", (str,), "soft_nms"), "iou_threshold": Param("nms_iou", (float,), 0.5),
                    "min_score": Fixed(1e-3), "method": Fixed("linear")},
            "max_per_img": Param("max_per_img", (int,), 1000),
            "scale_ranges": Param("scale_ranges", (list,))}
    p = parse(cfg, spec, where)
    if p["nms_type"] not in ("soft_nms", "nms"):
        raise ConfigError(f"recipe: {where}.nms.type={p['nms_type']!r}: only 'soft_nms' or 'nms'")
    ranges = []
    for i, r in enumerate(p["scale_ranges"]):
        if not isinstance(r, (list, tuple)) or not r or any(x not in SCALE_RANGES for x in r):
            raise ConfigError(f"recipe: {where}.scale_ranges[{i}]={r!r}: a non-empty list of {list(SCALE_RANGES)}")
        ranges.append(tuple(r))
    p["scale_ranges"] = tuple(ranges)
    return p


# ---------------------------------------------------------------------------------------------- box mapping
def bbox_flip(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Horizontal flip of x1y1x2y2 boxes in an image ``width`` wide (mmdet ``bbox_flip``)."""
    out = boxes.clone()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def bbox_mapping(boxes, img_shape, scale_factor, flip: bool) -> torch.Tensor:
    """Original-image boxes -> an augmentation's frame: ``* scale_factor`` (w, h), then flipped within the resized
    width ``img_shape[1]`` (mmdet ``bbox_mapping``)."""
    out = boxes * boxes.new_tensor([scale_factor[0], scale_factor[1]] * 2)
    return bbox_flip(out, img_shape[1]) if flip else out


def bbox_mapping_back(boxes, img_shape, scale_factor, flip: bool) -> torch.Tensor:
    """An augmentation's boxes -> the original image: un-flipped, then ``/ scale_factor`` (mmdet
    ``bbox_mapping_back``)."""
    out = bbox_flip(boxes, img_shape[1]) if flip else boxes
    return out / out.new_tensor([scale_factor[0], scale_factor[1]] * 2)


def in_scale_ranges(boxes: torch.Tensor, ranges) -> torch.Tensor:
    """Indices of the boxes whose area lies in one of ``ranges`` (official ``remove_boxes``, see the module
    docstring)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s2, m2, l2 = 32.0 ** 2, 96.0 ** 2, 512.0 ** 2
    tests = {"s": area <= s2, "m": (area > s2) & (area <= m2), "m-": (area > s2) & (area <= 64.0 ** 2),
             "m+": (area > 64.0 ** 2) & (area <= m2), "l": area > m2, "l-": (area > m2) & (area < l2),
             "l+": area > l2}
    flag = area < 0
    for r in ranges:
        flag = flag | tests[r]
    return torch.nonzero(flag).squeeze(1)


def merge_aug_masks(aug_masks, flips) -> torch.Tensor:
    """mmdet ``merge_aug_masks`` (no weights): (K, C, M, M) mask probabilities of each augmentation, the flipped
    ones flipped back along x, averaged."""
    return torch.stack([m.flip(-1) if f else m for m, f in zip(aug_masks, flips)]).mean(0)


def merge_aug_detections(aug_boxes, aug_probs, aug_metas, scale_ranges, score_thr, nms_iou, max_per_img,
                         nms_type="soft_nms"):
    """Steps 3 and the merge of the module docstring: per augmentation boxes (N_a, 4) in its frame and
    probabilities (N_a, C + 1), ``aug_metas`` ``(img_shape, scale_factor, flip, scale_index)`` ->
    (boxes (K, 4) in original pixels, labels (K,), scores (K,))."""
    boxes, probs = [], []
    for b, p, (shape, sf, flip, k) in zip(aug_boxes, aug_probs, aug_metas):
        back = bbox_mapping_back(b, shape, sf, flip)
        keep = in_scale_ranges(back, scale_ranges[k])
        boxes.append(back[keep])
        probs.append(p[keep])
    return multiclass_nms(torch.cat(boxes), torch.cat(probs), score_thr, nms_iou, max_per_img, nms_type)


# ---------------------------------------------------------------------------------------------- detector
@DETECTORS.register()
class HybridTaskCascadeAug(HybridTaskCascade):
    """:class:`~.htc.HybridTaskCascade` (same training) whose test-time augmentation is the official
    ``HybridTaskCascadeAug``'s (module docstring): :meth:`aug_test`. ``aug_cfg`` is :func:`aug_test_cfg`'s."""

    def __init__(self, backbone, necks, rpn, roi_head, aug_cfg: dict):
        super().__init__(backbone, necks, rpn, roi_head)
        self.aug_cfg = dict(aug_cfg)

    @classmethod
    def _from_parts(cls, backbone, necks, rpn, roi_head, aug, where: str) -> "HybridTaskCascadeAug":
        if aug is None:
            raise ConfigError(f"recipe: {where}.test_cfg.aug is required for type='HybridTaskCascadeAug'")
        return cls(backbone, necks, rpn, roi_head, aug_test_cfg(aug, f"{where}.test_cfg.aug"))

    @torch.no_grad()
    def aug_test(self, image: torch.Tensor, scales, flip: bool, mean, std) -> dict:
        """One original uint8 RGB image (3, H, W), the test pipeline's ``img_scale`` list (``(long, short)``
        each), ``flip`` and the Normalize mean / std -> ``boxes`` (K, 4), ``labels`` (K,), ``scores`` (K,) and
        ``masks`` (K, H, W) bool, in original pixels."""
        from torchvision.models.detection.image_list import ImageList

        from ...utils import image_ops as T

        if len(self.aug_cfg["scale_ranges"]) < len(scales):
            raise ValueError(f"test_cfg.aug.scale_ranges has {len(self.aug_cfg['scale_ranges'])} entries for "
                             f"{len(scales)} test scales")
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        H, W = (int(v) for v in image.shape[-2:])
        roi = self.roi_head
        aug_boxes, aug_probs, metas, kept = [], [], [], []
        for k, scale in enumerate(scales):
            resized = T.resize_keep_ratio(image, scale)
            h, w = (int(v) for v in resized.shape[-2:])
            sf = (w / W, h / H)
            for f in ((False, True) if flip else (False,)):
                x = resized.flip(-1) if f else resized
                x = T.pad_batch([T.normalize(x, mean, std)], 32).to(device, dtype)
                feats = self.extract_feat(x)
                proposals, _ = self.rpn(ImageList(x, [(h, w)]), feats)
                semantic = roi.semantic_feature(feats)
                b, p = roi.cascade_boxes(feats, proposals, [(h, w)], semantic)[0]
                aug_boxes.append(b.float())
                aug_probs.append(p.float())
                metas.append(((h, w), sf, f, k))
                kept.append((feats, semantic))
        c = self.aug_cfg
        boxes, labels, scores = merge_aug_detections(aug_boxes, aug_probs, metas, c["scale_ranges"], c["score_thr"],
                                                     c["nms_iou"], c["max_per_img"], c["nms_type"])
        if len(boxes):
            masks = [roi.mask_probs(feats, [bbox_mapping(boxes, shape, sf, f)], semantic)[0].float()
                     for (feats, semantic), (shape, sf, f, _) in zip(kept, metas)]
            merged = merge_aug_masks(masks, [m[2] for m in metas])
            probs = merged[torch.arange(len(labels), device=merged.device), labels]
        else:
            probs = boxes.new_zeros(0, roi.mask_size, roi.mask_size)
        from .mask_rcnn import paste_masks

        return {"boxes": boxes, "labels": labels, "scores": scores,
                "masks": paste_masks(probs, boxes, H, W, roi.mask_thr_binary)}


class AugTestPredictor(nn.Module):
    """Wraps a :class:`HybridTaskCascadeAug` so that ``predict(images, image_sizes, ori_shapes)`` (the interface of
    :func:`~vit_adapter_ds.evaluation.coco.evaluate_detector`) runs :meth:`HybridTaskCascadeAug.aug_test`.
    ``images`` are val-loader images at their original size (``scale=None``), normalised with ``mean`` / ``std``
    and padded; the uint8 image is recovered exactly (``round(x * std + mean)``) and cut to ``image_sizes``."""

    def __init__(self, detector: HybridTaskCascadeAug, scales, flip: bool, mean, std):
        super().__init__()
        if not hasattr(detector, "aug_test"):
            raise TypeError(f"{type(detector).__name__} has no aug_test (multi-scale / flip testing needs "
                            "model.type='HybridTaskCascadeAug')")
        self.detector = detector
        self.train(detector.training)  # a new module is in training mode: keep the detector's (eval restores it)
        self.scales, self.flip = [tuple(s) for s in scales], bool(flip)
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def predict(self, images, image_sizes=None, ori_shapes=None):
        out = []
        mean = torch.tensor(self.mean, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(3, 1, 1)
        for i, x in enumerate(images):
            h, w = image_sizes[i] if image_sizes is not None else x.shape[-2:]
            if ori_shapes is not None and tuple(ori_shapes[i]) != (int(h), int(w)):
                raise ValueError(f"aug test expects val images at their original size, got {tuple(image_sizes[i])} "
                                 f"for an original {tuple(ori_shapes[i])} (val loader scale=None)")
            img = (x[:, :int(h), :int(w)].float() * std + mean).round().clamp(0, 255).to(torch.uint8).cpu()
            out.append(self.detector.aug_test(img, self.scales, self.flip, self.mean, self.std))
        return out
