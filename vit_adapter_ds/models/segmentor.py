"""Encoder-decoder segmentor (mmseg ``EncoderDecoder``): backbone [-> neck] -> decode head (+ auxiliary head),
losses and whole / sliding-window / multi-scale + flip inference.

The optional neck (mmseg ``model.neck``, e.g. Semantic FPN's ``FPN``) maps the backbone's maps to the maps both heads
read (``extract_feat`` = neck(backbone(img)), as mmseg); it is built with the official mmcv state-dict names
(``neck.lateral_convs.*``, ``neck.fpn_convs.*``), so released mmseg checkpoints load as they are.

Training (``model.train()``; ``model(img, gt_semantic_seg)``) returns a dict of scalar tensors::

    loss_ce   decode-head cross entropy (weight ``decode_weight`` = 1.0)
    loss_aux  auxiliary-head cross entropy times ``aux_weight`` (0.4), only with an auxiliary head
    loss      their sum (what the engine back-propagates)
    acc       pixel accuracy (%) of the decode head over labelled pixels, detached (a metric, not a loss)

mmseg semantics: the logits are resized bilinearly (``align_corners``) to the label size and the loss is computed in
float32. ``avg_non_ignore=False`` (default, mmseg <= 0.22 and mmseg 1.x default ``CrossEntropyLoss``, hence the
official ViT-Adapter recipes on mmseg 0.20.2) divides the summed loss by *all* label pixels, ignored ones included;
``avg_non_ignore=True`` divides by the non-ignored pixels only (PyTorch's ``F.cross_entropy(ignore_index=...)``).

Inference (mmseg 0.x ``inference`` / ``aug_test``) returns per-pixel class probabilities (softmax), see
:meth:`EncoderDecoder.predict` and :meth:`EncoderDecoder.aug_test`.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .heads.common import resize
from .registry import NECKS, SEGMENTORS, build_backbone, build_head
from .test_time_resize import KeepRatioResize, inference_size, rescale_size, scales_from_ratios  # noqa: F401


def cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255,
                  avg_non_ignore: bool = False) -> torch.Tensor:
    """Pixel cross entropy in float32. logits (N, C, H, W), label (N, H, W) int; mean over all pixels
    (mmseg default) or over non-ignored pixels (``avg_non_ignore``). All pixels ignored -> 0 (with a graph)."""
    loss = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="sum")
    denom = (label != ignore_index).sum() if avg_non_ignore else label.new_tensor(label.numel())
    return loss / denom.clamp(min=1).to(loss.dtype)


def pixel_accuracy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Top-1 accuracy in percent over non-ignored pixels (mmseg ``accuracy(..., ignore_index)``), detached."""
    with torch.no_grad():
        valid = label != ignore_index
        correct = (logits.argmax(1) == label) & valid
        return correct.sum().float() * 100.0 / valid.sum().clamp(min=1).float()


@SEGMENTORS.register()
class EncoderDecoder(nn.Module):
    """``backbone`` (image -> list of 4 NCHW maps) [+ ``neck`` (list of maps -> list, or dict, of maps)] +
    ``decode_head`` (+ optional ``auxiliary_head``).

    Attribute names are mmseg's (``backbone``, ``neck``, ``decode_head``, ``auxiliary_head``), so released
    whole-segmentor checkpoints load with ``load_state_dict``. ``test_cfg`` (mmseg style: ``mode`` 'whole' | 'slide',
    ``crop_size``, ``stride``) gives the defaults of :meth:`predict`.
    """

    task = "segmentation"  # the task that trains it (models.registry.task_of)

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, auxiliary_head: nn.Module | None = None, *,
                 neck: nn.Module | None = None, num_classes: int | None = None, aux_weight: float = 0.4,
                 decode_weight: float = 1.0, ignore_index: int = 255, align_corners: bool | None = None,
                 avg_non_ignore: bool = False, test_cfg: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        else:
            self.auxiliary_head = None
        head_classes = getattr(decode_head, "num_classes", None)
        self.num_classes = int(num_classes if num_classes is not None else head_classes)
        if head_classes is not None and int(head_classes) != self.num_classes:
            raise ValueError(f"num_classes={num_classes} but the decode head has {head_classes} classes")
        aux_classes = getattr(auxiliary_head, "num_classes", self.num_classes)
        if auxiliary_head is not None and int(aux_classes) != self.num_classes:
            raise ValueError(f"the auxiliary head has {aux_classes} classes, the decode head {self.num_classes}")
        self.aux_weight = float(aux_weight)
        self.decode_weight = float(decode_weight)
        self.ignore_index = int(ignore_index)
        self.align_corners = bool(getattr(decode_head, "align_corners", False) if align_corners is None
                                  else align_corners)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.test_cfg = dict(test_cfg or {"mode": "whole"})

    # ------------------------------------------------------------------ building from the official config
    MODEL_KEYS = ("type", "pretrained", "backbone", "neck", "decode_head", "auxiliary_head", "train_cfg", "test_cfg",
                  "init_cfg")
    TEST_CFG_KEYS = ("mode", "crop_size", "stride", "crop_batch")

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model") -> "EncoderDecoder":
        """From the official mmseg ``model=dict(type='EncoderDecoder', backbone=..., neck=..., decode_head=...,
        auxiliary_head=..., train_cfg=dict(), test_cfg=dict(mode='whole' | 'slide', crop_size, stride))``.
        Backbone, neck (:meth:`build_neck`) and heads come from the registries of
        :mod:`vit_adapter_ds.models.registry`; loss weights, ``avg_non_ignore`` and ``ignore_index`` from the heads'
        ``loss_decode`` / ``ignore_index``. Pretrained weights are not read here (see ``registry.build_model``)."""
        from ..config.errors import ConfigError
        from ..config.keys import check_keys, sub, take, take_pair

        check_keys(cfg, cls.MODEL_KEYS, where)
        if cfg.get("train_cfg"):
            raise ConfigError(f"recipe: {where}.train_cfg={cfg['train_cfg']!r}: EncoderDecoder takes no train_cfg")
        if cfg.get("init_cfg") is not None:
            raise ConfigError(f"recipe: {where}.init_cfg is not supported (use model.pretrained)")
        backbone = build_backbone(sub(cfg, "backbone", where, optional=False), f"{where}.backbone")
        neck = cls.build_neck(cfg.get("neck"), f"{where}.neck")
        decode_head = build_head(sub(cfg, "decode_head", where, optional=False), f"{where}.decode_head")
        acfg = cfg.get("auxiliary_head")
        if isinstance(acfg, (list, tuple)):
            raise ConfigError(f"recipe: {where}.auxiliary_head: a list of auxiliary heads is not supported")
        aux = build_head(sub(cfg, "auxiliary_head", where), f"{where}.auxiliary_head") if acfg else None
        if neck is not None:
            for key, head in (("decode_head", decode_head), ("auxiliary_head", aux)):
                _check_head_reads_neck(head, neck, f"{where}.{key}")
        test_cfg = sub(cfg, "test_cfg", where, cls.TEST_CFG_KEYS) or {"mode": "whole"}
        tw = f"{where}.test_cfg"
        mode = take(test_cfg, "mode", str, tw, default="whole", choices=("whole", "slide"))
        if mode == "slide":
            test_cfg["crop_size"] = take_pair(test_cfg, "crop_size", tw)
            test_cfg["stride"] = take_pair(test_cfg, "stride", tw)
        take(test_cfg, "crop_batch", int, tw, default=1)
        if aux is not None and aux.ignore_index != decode_head.ignore_index:
            raise ConfigError(f"recipe: {where}.auxiliary_head.ignore_index {aux.ignore_index} differs from "
                              f"{where}.decode_head.ignore_index {decode_head.ignore_index}")
        if aux is not None and aux.avg_non_ignore != decode_head.avg_non_ignore:
            raise ConfigError(f"recipe: {where}: avg_non_ignore differs between decode and auxiliary loss_decode")
        try:
            return cls(backbone, decode_head, aux, neck=neck, num_classes=decode_head.num_classes,
                       decode_weight=decode_head.loss_weight, aux_weight=aux.loss_weight if aux is not None else 0.4,
                       ignore_index=decode_head.ignore_index, align_corners=decode_head.align_corners,
                       avg_non_ignore=decode_head.avg_non_ignore, test_cfg=test_cfg)
        except ValueError as e:
            raise ConfigError(f"recipe: {where}: {e}") from e

    @staticmethod
    def build_neck(ncfg, where: str = "model.neck") -> nn.Module | None:
        """mmseg's ``model.neck`` (one dict, or None for no neck), built with the official mmcv state-dict names:
        the neck class must list ``'mmcv'`` in its ``key_layouts`` (:class:`~.detectors.fpn.FPN` does)."""
        from ..config.errors import ConfigError

        if ncfg is None:
            return None
        if isinstance(ncfg, (list, tuple)):
            raise ConfigError(f"recipe: {where}: a list of necks is not supported (mmseg's EncoderDecoder takes one)")
        neck_cls = NECKS.lookup(ncfg, where)
        if "mmcv" not in getattr(neck_cls, "key_layouts", ()):
            usable = sorted(n for n, c in NECKS.items() if "mmcv" in getattr(c, "key_layouts", ()))
            raise ConfigError(f"recipe: {where}.type={ncfg.get('type')!r} is not supported in a segmentor (it has no "
                              f"mmseg state-dict layout); segmentor necks: {usable}")
        return neck_cls.from_config(ncfg, where, key_layout="mmcv")

    # ------------------------------------------------------------------ training
    def extract_feat(self, img: torch.Tensor):
        """The maps the heads read: the backbone's list of maps, through the neck when there is one."""
        feats = self.backbone(img)
        if not isinstance(feats, (list, tuple)):
            raise TypeError(f"the backbone must return a list of feature maps, got {type(feats)}")
        if self.neck is not None:
            feats = self.neck(list(feats))
            if isinstance(feats, Mapping):  # the FPN names its levels (OrderedDict '0', '1', ...)
                feats = feats.values()
        return list(feats)

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> decode-head logits resized to (N, C, H, W)."""
        return resize(self.decode_head(self.extract_feat(img)), img.shape[2:], self.align_corners)

    @staticmethod
    def _label(gt: torch.Tensor) -> torch.Tensor:
        if gt.dim() == 4:
            if gt.shape[1] != 1:
                raise ValueError(f"gt_semantic_seg must be (N, H, W) or (N, 1, H, W), got {tuple(gt.shape)}")
            gt = gt[:, 0]
        if gt.dim() != 3:
            raise ValueError(f"gt_semantic_seg must be (N, H, W) or (N, 1, H, W), got {tuple(gt.shape)}")
        return gt.long()

    def _head_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = resize(logits.float(), label.shape[1:], self.align_corners)
        return cross_entropy(logits, label, self.ignore_index, self.avg_non_ignore), logits

    def forward_train(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor) -> dict[str, torch.Tensor]:
        label = self._label(gt_semantic_seg)
        feats = self.extract_feat(img)
        loss_ce, logits = self._head_loss(self.decode_head(feats), label)
        losses = {"loss_ce": self.decode_weight * loss_ce}
        total = losses["loss_ce"]
        if self.auxiliary_head is not None:
            loss_aux, _ = self._head_loss(self.auxiliary_head(feats), label)
            losses["loss_aux"] = self.aux_weight * loss_aux
            total = total + losses["loss_aux"]
        losses["loss"] = total
        losses["acc"] = pixel_accuracy(logits, label, self.ignore_index)
        return losses

    def forward(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor | None = None):
        """With labels: the loss dict (see the module docstring). Without: logits (N, C, H, W) at image size."""
        if gt_semantic_seg is not None:
            return self.forward_train(img, gt_semantic_seg)
        return self.encode_decode(img)

    # ------------------------------------------------------------------ inference
    def slide_logits(self, img: torch.Tensor, crop_size, stride, crop_batch: int = 1) -> torch.Tensor:
        """mmseg ``slide_inference`` (before softmax): overlapping ``crop_size`` windows every ``stride`` pixels, the
        last window of a row/column shifted back inside the image, logits summed and divided by the per-pixel
        window count. Images smaller than a crop are decoded at their own size. (N, 3, H, W) -> (N, C, H, W).
        ``crop_batch`` > 1 decodes that many windows per forward (all windows have the same size; same result up
        to float rounding in eval mode, faster on GPUs)."""
        h_stride, w_stride = _pair(stride)
        h_crop, w_crop = _pair(crop_size)
        n, _, h_img, w_img = img.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        boxes = []
        for hi in range(h_grids):
            for wi in range(w_grids):
                y1, x1 = hi * h_stride, wi * w_stride
                y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
                boxes.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
        preds = count = None
        step = max(1, int(crop_batch))
        for i in range(0, len(boxes), step):
            chunk = boxes[i:i + step]
            crops = torch.cat([img[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            logits = _at_least_fp32(self.encode_decode(crops)).split(n)
            for (y1, y2, x1, x2), logit in zip(chunk, logits):
                if preds is None:
                    preds = logit.new_zeros((n, logit.shape[1], h_img, w_img))
                    count = logit.new_zeros((n, 1, h_img, w_img))
                preds[:, :, y1:y2, x1:x2] += logit
                count[:, :, y1:y2, x1:x2] += 1
        if (count == 0).any():
            raise RuntimeError("sliding window left pixels uncovered (stride larger than crop_size?)")
        return preds / count

    def logits(self, img: torch.Tensor, mode: str | None = None, crop_size=None, stride=None) -> torch.Tensor:
        """Logits (N, C, H, W) at image size by 'whole' or 'slide' inference (defaults from ``test_cfg``, whose
        optional ``crop_batch`` sets how many sliding windows are decoded per forward)."""
        mode = mode or self.test_cfg.get("mode", "whole")
        if mode == "whole":
            return _at_least_fp32(self.encode_decode(img))
        if mode == "slide":
            crop_size = crop_size or self.test_cfg.get("crop_size")
            stride = stride or self.test_cfg.get("stride")
            if crop_size is None or stride is None:
                raise ValueError("slide inference needs crop_size and stride (arguments or test_cfg)")
            return self.slide_logits(img, crop_size, stride, int(self.test_cfg.get("crop_batch", 1)))
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")

    @torch.no_grad()
    def predict(self, img: torch.Tensor, mode: str | None = None, crop_size=None, stride=None, out_size=None,
                flip: bool = False) -> torch.Tensor:
        """mmseg 0.x ``inference``: class probabilities (N, C, h, w) = softmax of the logits resized bilinearly to
        ``out_size`` (default: the image size). With ``flip`` the image is flipped horizontally first and the
        result flipped back."""
        x = img.flip(3) if flip else img
        logit = self.logits(x, mode, crop_size, stride)
        if out_size is not None:
            logit = resize(logit, out_size, self.align_corners)
        prob = logit.softmax(dim=1)
        return prob.flip(3) if flip else prob

    @torch.no_grad()
    def predict_labels(self, img: torch.Tensor, **kwargs) -> torch.Tensor:
        """(N, H, W) int64 labels: argmax of :meth:`predict` (same keyword arguments)."""
        return self.predict(img, **kwargs).argmax(dim=1)

    @torch.no_grad()
    def aug_test(self, img: torch.Tensor, scales=(None,), flip: bool = True, size_divisor: int | None = None,
                 mode: str | None = None, crop_size=None, stride=None, out_size=None, resize_rule=None,
                 **view_options) -> torch.Tensor:
        """Multi-scale (+ flip) test, mmseg 0.x ``MultiScaleFlipAug`` + ``aug_test``: for every scale in ``scales``
        ((long, short) tuples, or None for the input size) the image is resized bilinearly to the size given by the
        test-time resize rule ``resize_rule`` (:mod:`vit_adapter_ds.models.test_time_resize`; default
        ``KeepRatioResize(size_divisor)``: ``Resize(keep_ratio=True)`` + ``ResizeToMultiple``), and each view (the
        resized image, and with ``flip`` its mirror) gives :meth:`view_probs`; returns the mean of these
        probability maps, (N, C, h, w). ``view_options`` go to :meth:`view_probs` (subclasses' test-time options)."""
        if resize_rule is None:
            resize_rule = KeepRatioResize(size_divisor)
        elif size_divisor is not None:
            raise ValueError("give either a resize rule or size_divisor, not both")
        h, w = img.shape[2:]
        out_size = tuple(out_size) if out_size is not None else (h, w)
        total, n = None, 0
        for scale in scales:
            x = resize(img, resize_rule(h, w, scale), align_corners=False)
            for f in ((False, True) if flip else (False,)):
                p = self.view_probs(x, f, mode, crop_size, stride, out_size, **view_options)
                total = p if total is None else total + p
                n += 1
        return total / n

    def view_probs(self, x: torch.Tensor, flip: bool, mode, crop_size, stride, out_size) -> torch.Tensor:
        """Probabilities of one test view at ``out_size``: :meth:`predict` of ``x`` (mirrored and back with
        ``flip``)."""
        return self.predict(x, mode, crop_size, stride, out_size=out_size, flip=flip)


def _check_head_reads_neck(head, neck, where: str) -> None:
    """A head behind a neck that declares ``out_channels`` and level ``names``: its ``in_index`` must name neck
    levels and its ``in_channels`` be the neck's width (else ConfigError naming ``where``; mmseg would fail in the
    first forward)."""
    from ..config.errors import ConfigError

    width, names = getattr(neck, "out_channels", None), getattr(neck, "names", None)
    if head is None or width is None or names is None:
        return
    index = head.in_index if isinstance(head.in_index, (list, tuple)) else [head.in_index]
    channels = head.in_channels if isinstance(head.in_channels, (list, tuple)) else [head.in_channels]
    if any(not -len(names) <= int(i) < len(names) for i in index):
        raise ConfigError(f"recipe: {where}.in_index={head.in_index!r}: the neck gives {len(names)} levels")
    if any(int(c) != int(width) for c in channels):
        raise ConfigError(f"recipe: {where}.in_channels={head.in_channels!r}: the neck's maps have {width} channels "
                          f"(neck.out_channels)")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)
