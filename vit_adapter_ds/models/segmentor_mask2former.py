"""Mask2Former segmentor (mmseg_custom ``EncoderDecoderMask2Former``): backbone -> :class:`Mask2FormerHead`.

It is an :class:`~vit_adapter_ds.models.segmentor.EncoderDecoder` whose decode head is a Mask2Former head:

* training (``model(img, gt_semantic_seg)``): the head's matching losses -- ``loss_cls``, ``loss_mask``,
  ``loss_dice`` for the final prediction and ``d{i}.loss_*`` for the ``num_layers`` earlier ones (mmdet names) --
  and ``loss``, their sum (mmseg's ``parse_losses`` sums every ``loss*`` term the same way);
* ``encode_decode(img)``: the (N, C, H, W) semantic score map ``sum_q softmax(cls)[:C] * sigmoid(mask)``
  resized bilinearly to the image; whole/slide inference, ``predict`` (which applies a softmax over the classes
  to these scores, as the official ``inference`` does) and ``aug_test`` are EncoderDecoder's.
"""
from __future__ import annotations

import torch
from torch import nn

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import check_keys, take

from .heads.common import resize
from .heads.mask2former import Mask2FormerHead
from .segmentor import EncoderDecoder

MODEL_KEYS = {"type", "pretrained", "backbone", "decode_head", "neck", "auxiliary_head", "train_cfg", "test_cfg",
              "init_cfg"}
TEST_CFG_KEYS = {"mode", "crop_size", "stride", "crop_batch", "panoptic_on", "semantic_on", "instance_on",
                 "max_per_image", "iou_thr", "filter_low_score"}


class EncoderDecoderMask2Former(EncoderDecoder):
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

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model", backbone: nn.Module | None = None
                    ) -> "EncoderDecoderMask2Former":
        """Build from the official ``model=dict(type='EncoderDecoderMask2Former', backbone=..., decode_head=...,
        train_cfg=..., test_cfg=...)``. ``model.train_cfg`` goes to the head (as the official segmentor does),
        ``pretrained`` to the backbone. Every key is validated (:class:`ConfigError` names the dotted path)."""
        check_keys(cfg, MODEL_KEYS, where)
        if cfg.get("type", "EncoderDecoderMask2Former") != "EncoderDecoderMask2Former":
            raise ConfigError(f"recipe: {where}.type={cfg['type']!r}: this builds EncoderDecoderMask2Former")
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


def _build_backbone(cfg: dict, where: str) -> nn.Module:
    """The backbone through the model table (``BACKBONES[type].from_config``) when it exists, else by calling the
    class with the official keyword arguments."""
    bcfg = dict(cfg.get("backbone") or {})
    if not bcfg:
        raise ConfigError(f"recipe: {where}.backbone is required")
    if cfg.get("pretrained") and not bcfg.get("pretrained"):
        bcfg["pretrained"] = cfg["pretrained"]
    try:
        from .registry import BACKBONES
    except ImportError:
        BACKBONES = None
    kind = bcfg.get("type")
    if BACKBONES is not None:
        if kind not in BACKBONES:
            raise ConfigError(f"recipe: {where}.backbone.type={kind!r}; choose one of {sorted(BACKBONES)}")
        return BACKBONES[kind].from_config(bcfg, f"{where}.backbone")
    from . import backbones
    if kind not in ("ViTAdapter", "BEiTAdapter"):
        raise ConfigError(f"recipe: {where}.backbone.type={kind!r}; choose ViTAdapter or BEiTAdapter")
    bcfg.pop("type")
    bcfg.pop("_delete_", None)
    try:
        return getattr(backbones, kind)(**bcfg)
    except TypeError as e:
        raise ConfigError(f"recipe: {where}.backbone: {e}") from e
