"""Semantic FPN decode head (mmseg ``FPNHead``, Kirillov et al. 2019, "Panoptic Feature Pyramid Networks"), the head
of the Semantic FPN recipes (``recipes/fpn_deit_adapter_*_512_80k_ade20k.py``) behind the FPN neck.

Per input level ``i`` (stride ``s_i``) a scale head of ``max(1, log2(s_i / s_0))`` 3x3 ConvModules (conv -> BN ->
ReLU, ``channels`` wide), each followed by a x2 bilinear upsampling when ``s_i != s_0``, brings the level to the
finest resolution; the scale heads' outputs are summed (each resized bilinearly to the finest map first, a no-op for
power-of-two sizes), then Dropout2d + ``conv_seg``. The same in mmseg 0.x (``mmseg/models/decode_heads/fpn_head.py``,
the official ViT-Adapter code's mmseg 0.20.2) and 1.x.

Keys are mmseg's: ``scale_heads.{i}.{j}.{conv,bn}.*`` where ``j`` counts the upsampling modules too (they hold no
tensors), e.g. ``scale_heads.3.{0,2,4}.conv.weight`` for the stride-32 level, and ``conv_seg.{weight,bias}``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import HEADS
from .common import BaseDecodeHead, ConvModule, check_bool, check_float, check_int, check_ints, head_from_config, resize


class Upsample(nn.Module):
    """mmseg ``Upsample(scale_factor, mode='bilinear')``: to ``int(h * scale_factor) x int(w * scale_factor)``."""

    def __init__(self, scale_factor: float = 2.0, align_corners: bool = False):
        super().__init__()
        self.scale_factor = float(scale_factor)
        self.align_corners = bool(align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(t * self.scale_factor) for t in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, align_corners={self.align_corners}"


@HEADS.register()
class FPNHead(BaseDecodeHead):
    """Semantic FPN head over the neck's maps (strides ``feature_strides``, the first the finest).

    ``forward(inputs)``: the list of neck maps; ``inputs[in_index[i]]`` is (N, in_channels[i], H_i, W_i) ->
    (N, num_classes, H_0, W_0) logits.
    """

    def __init__(self, in_channels=(256, 256, 256, 256), channels: int = 128, *, num_classes: int,
                 feature_strides=(4, 8, 16, 32), in_index=(0, 1, 2, 3), dropout_ratio: float = 0.1,
                 align_corners: bool = False, norm: str = "bn"):
        in_channels, in_index, feature_strides = list(in_channels), list(in_index), [int(s) for s in feature_strides]
        if not (len(in_channels) == len(in_index) == len(feature_strides)) or not in_channels:
            raise ValueError(f"FPNHead needs in_channels, in_index and feature_strides of one length, got "
                             f"{in_channels}, {in_index} and {feature_strides}")
        if min(feature_strides) != feature_strides[0] or feature_strides[0] < 1:
            raise ValueError(f"feature_strides must start with the smallest (positive) stride, got {feature_strides}")
        super().__init__(in_channels, channels, num_classes=num_classes, in_index=in_index,
                         dropout_ratio=dropout_ratio, align_corners=align_corners, norm=norm)
        self.feature_strides = feature_strides
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers = []
            for k in range(length):
                layers.append(ConvModule(in_channels[i] if k == 0 else self.channels, self.channels, 3, padding=1,
                                         norm=norm))
                if stride != feature_strides[0]:
                    layers.append(Upsample(2, self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward_features(self, inputs) -> torch.Tensor:
        """The (N, channels, H_0, W_0) sum of the scale heads, before dropout and ``conv_seg``."""
        x = self._select(inputs)
        out = self.scale_heads[0](x[0])
        for i in range(1, len(self.feature_strides)):
            out = out + resize(self.scale_heads[i](x[i]), out.shape[2:], self.align_corners)
        return out

    def forward(self, inputs) -> torch.Tensor:
        return self.cls_seg(self.forward_features(inputs))

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.decode_head") -> "FPNHead":
        """From the official mmseg ``FPNHead`` dict (``input_transform='multiple_select'``)."""
        return head_from_config(cls, cfg, where, {
            "in_channels": check_ints, "channels": check_int, "num_classes": check_int, "in_index": check_ints,
            "feature_strides": check_ints, "dropout_ratio": check_float, "align_corners": check_bool},
            input_transform="multiple_select")
