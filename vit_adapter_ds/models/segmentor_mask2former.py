"""Mask2Former segmentor (mmseg_custom ``EncoderDecoderMask2Former``): backbone -> :class:`Mask2FormerHead`.

It is an :class:`~vit_adapter_ds.models.segmentor.EncoderDecoder` whose decode head is a Mask2Former head:

* training (``model(img, gt_semantic_seg)``): the head's matching losses -- ``loss_cls``, ``loss_mask``,
  ``loss_dice`` for the final prediction and ``d{i}.loss_*`` for the ``num_layers`` earlier ones (mmdet names) --
  and ``loss``, their sum (mmseg's ``parse_losses`` sums every ``loss*`` term the same way); the trainer runs the
  micro-steps of an optimizer step inside ``step_loss_normaliser(labels of every micro-batch)``, which normalises
  the mask losses over the whole step as the official 16-rank step does;
* ``encode_decode(img)``: the (N, C, H, W) semantic score map ``sum_q softmax(cls)[:C] * sigmoid(mask)``
  resized bilinearly to the image; whole/slide inference, ``predict`` (which applies a softmax over the classes
  to these scores, as the official ``inference`` does) are EncoderDecoder's;
* ``aug_test(..., pad_short_side=896, pad_value=...)``: the official ``_ms`` test (``PadShortSide`` in the
  pipeline): every resized (and flipped) image is padded at the bottom/right to at least ``pad_short_side`` on both
  sides -- so every sliding window of the segmentation BEiT is exactly ``img_size`` square. The official
  ``_ms`` configs name :class:`EncoderDecoderMask2FormerAug`, whose slide inference cuts the padding off the score
  map before it is resized back; ``EncoderDecoderMask2Former`` (as the official class) and whole-image inference
  keep it in the map that is resized to the image.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config.errors import ConfigError
from ..config.keys import check_keys, take

from .heads.common import resize
from .heads.mask2former import Mask2FormerHead
from .registry import SEGMENTORS, build_backbone
from .segmentor import EncoderDecoder

MODEL_KEYS = {"type", "pretrained", "backbone", "decode_head", "neck", "auxiliary_head", "train_cfg", "test_cfg",
              "init_cfg"}
TEST_CFG_KEYS = {"mode", "crop_size", "stride", "crop_batch", "panoptic_on", "semantic_on", "instance_on",
                 "max_per_image", "iou_thr", "filter_low_score"}


@SEGMENTORS.register()
class EncoderDecoderMask2Former(EncoderDecoder):
    unpad_slide = False  # whether slide inference cuts the PadShortSide padding off (EncoderDecoderMask2FormerAug)

    """``backbone`` (image -> 4 maps) + ``decode_head`` (:class:`Mask2FormerHead`); see the module docstring."""

    def __init__(self, backbone: nn.Module, decode_head: Mask2FormerHead, *, test_cfg: dict | None = None):
        super().__init__(backbone, decode_head, None, num_classes=decode_head.num_classes,
                         ignore_index=decode_head.ignore_index, align_corners=decode_head.align_corners,
                         test_cfg=test_cfg)

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> semantic scores (N, C, H, W)."""
        return resize(self.decode_head.forward_test(self.extract_feat(img)), img.shape[2:], self.align_corners)

    def forward_train(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor) -> dict[str, torch.Tensor]:
        label = self._label(gt_semantic_seg)
        losses = self.decode_head.loss(self.extract_feat(img), label)
        losses["loss"] = sum(losses.values())
        return losses

    def step_loss_normaliser(self, gt_semantic_segs):
        """A context for the micro-steps of one optimizer step, given the (N, H, W) labels of every micro-batch of
        the step on this rank: inside it every :meth:`forward_train` normalises the mask and dice losses by the mean
        matched-mask count over all micro-batches of the step on all ranks (the official 16-rank normalisation under
        gradient accumulation, see :mod:`.heads.mask2former.criterion`). Collective: every rank calls it once per
        step, before the step's first forward."""
        from .heads.mask2former.criterion import step_num_masks

        head = self.decode_head
        local = sum(head.num_matched_masks(self._label(g)) for g in gt_semantic_segs)
        device = next(self.parameters()).device
        return head.criterion.use_num_masks(step_num_masks(local, len(gt_semantic_segs), device))

    def view_probs(self, x: torch.Tensor, flip: bool, mode, crop_size, stride, out_size,
                   pad_short_side: int | None = None, pad_value=0.0) -> torch.Tensor:
        """One view of :meth:`aug_test` (``aug_test(..., pad_short_side=896, pad_value=...)`` gives the official
        ``_ms`` test). Without ``pad_short_side``: EncoderDecoder's. With it: flip, pad bottom/right with
        ``pad_value`` to ``max(side, pad_short_side)``, whole/slide scores, crop the padding off, resize to
        ``out_size``, softmax, flip back.

        ``pad_value`` is in the normalised image space: ``0.0`` where the official pipeline pads after
        ``Normalize`` (BEiTv2 ADE20K ``_ms``), :func:`black_pad_value` (``-mean / std`` per channel) where it pads
        before (BEiT ``_ms`` configs). The padding is cut off the scores only by :class:`EncoderDecoderMask2FormerAug`
        in slide mode, as the official classes do (every official ``_ms`` config slides with the Aug class);
        otherwise the padded score map is resized to ``out_size``."""
        if pad_short_side is None:
            return super().view_probs(x, flip, mode, crop_size, stride, out_size)
        sh, sw = x.shape[2:]
        xf = pad_bottom_right(x.flip(3) if flip else x, max(sh, pad_short_side), max(sw, pad_short_side), pad_value)
        scores = self.logits(xf, mode, crop_size, stride)
        if self.unpad_slide and (mode or self.test_cfg.get("mode", "whole")) == "slide":
            scores = scores[:, :, :sh, :sw]
        prob = resize(scores, out_size, self.align_corners).softmax(dim=1)
        return prob.flip(3) if flip else prob

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model", backbone: nn.Module | None = None
                    ) -> "EncoderDecoderMask2Former":
        """Build from the official ``model=dict(type='EncoderDecoderMask2Former', backbone=..., decode_head=...,
        train_cfg=..., test_cfg=...)``. ``model.train_cfg`` goes to the head (as the official segmentor does);
        ``pretrained`` is left to ``registry.build_model``. Every key is validated (:class:`ConfigError` names the
        dotted path)."""
        check_keys(cfg, MODEL_KEYS, where)
        if cfg.get("type", cls.__name__) != cls.__name__:
            raise ConfigError(f"recipe: {where}.type={cfg['type']!r}: this builds {cls.__name__}")
        for k in ("neck", "auxiliary_head", "init_cfg"):
            if cfg.get(k) is not None:
                raise ConfigError(f"recipe: {where}.{k}={cfg[k]!r} is not supported by the Mask2Former segmentor "
                                  "(only None)")
        test_cfg = dict(cfg.get("test_cfg") or {})
        check_keys(test_cfg, TEST_CFG_KEYS, f"{where}.test_cfg")
        mode = take(test_cfg, "mode", str, f"{where}.test_cfg", default="whole", choices=("whole", "slide"))
        semantic_cfg = {"mode": mode}
        for k in ("crop_size", "stride"):
            if k in test_cfg:
                semantic_cfg[k] = tuple(take(test_cfg, k, (tuple, list), f"{where}.test_cfg"))
        if "crop_batch" in test_cfg:
            semantic_cfg["crop_batch"] = take(test_cfg, "crop_batch", int, f"{where}.test_cfg")
        if mode == "slide" and not ("crop_size" in semantic_cfg and "stride" in semantic_cfg):
            raise ConfigError(f"recipe: {where}.test_cfg: mode='slide' needs crop_size and stride")
        # panoptic/instance switches of the mmdet head: the official segmentation head only does semantic
        # inference and never reads them
        for k, t in (("panoptic_on", bool), ("semantic_on", bool), ("instance_on", bool), ("max_per_image", int),
                     ("iou_thr", float), ("filter_low_score", bool)):
            take(test_cfg, k, t, f"{where}.test_cfg", default=None)
        head_cfg = dict(cfg.get("decode_head") or {})
        if not head_cfg:
            raise ConfigError(f"recipe: {where}.decode_head is required")
        if cfg.get("train_cfg") is not None:
            head_cfg["train_cfg"] = cfg["train_cfg"]
        decode_head = Mask2FormerHead.from_config(head_cfg, f"{where}.decode_head")
        if backbone is None:
            backbone = _build_backbone(cfg, where)
        return cls(backbone, decode_head, test_cfg=semantic_cfg)


@SEGMENTORS.register()
class EncoderDecoderMask2FormerAug(EncoderDecoderMask2Former):
    """The official ``mmseg_custom`` ``EncoderDecoderMask2FormerAug`` (named by the official ``_ms`` configs): the
    Mask2Former segmentor whose slide inference cuts the ``PadShortSide`` padding off the score map (the padded
    image's ``img_shape`` crop) before resizing it to the image. Same parameters and checkpoints as
    :class:`EncoderDecoderMask2Former`."""

    unpad_slide = True


def black_pad_value(mean, std) -> list[float]:
    """The normalised value of a black (0) pixel per channel, ``-mean / std`` (padding before ``Normalize``)."""
    return [-float(m) / float(s) for m, s in zip(mean, std)]


def pad_bottom_right(img: torch.Tensor, height: int, width: int, value=0.0) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, height, width) with the image at the top left (mmcv ``impad``); ``value`` a number or
    one per channel."""
    n, c, h, w = img.shape
    if height < h or width < w:
        raise ValueError(f"cannot pad {h}x{w} to {height}x{width}")
    if (height, width) == (h, w):
        return img
    fill = torch.as_tensor(value, dtype=img.dtype, device=img.device)
    if fill.dim() == 1 and fill.numel() not in (1, c):
        raise ValueError(f"pad_value needs 1 or {c} entries, got {fill.numel()}")
    out = fill.reshape(1, -1, 1, 1).expand(n, c, height, width).clone()
    out[:, :, :h, :w] = img
    return out


def _build_backbone(cfg: dict, where: str) -> nn.Module:
    """The backbone through the model table (``registry.build_backbone``: ``BACKBONES[type].from_config``).
    Pretrained weights (``model.pretrained``) are not read here; ``registry.build_model`` loads them afterwards."""
    bcfg = dict(cfg.get("backbone") or {})
    if not bcfg:
        raise ConfigError(f"recipe: {where}.backbone is required")
    return build_backbone(bcfg, f"{where}.backbone")
