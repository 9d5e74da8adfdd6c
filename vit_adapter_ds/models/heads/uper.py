"""UPerNet decode head (mmseg ``UPerHead`` + ``PPM``), the head of the official ViT-Adapter UperNet recipes.

Key names match mmseg 0.x/1.x exactly, so the ``decode_head.*`` tensors of released checkpoints load strictly::

    psp_modules.{i}.1.{conv,bn}.*    pyramid pooling: AdaptiveAvgPool2d(scale) -> 1x1 ConvModule, i over pool_scales
    bottleneck.{conv,bn}.*           3x3 ConvModule on [top map, upsampled pooled maps]
    lateral_convs.{i}.{conv,bn}.*    1x1 ConvModule per level except the top one
    fpn_convs.{i}.{conv,bn}.*        3x3 ConvModule per level except the top one
    fpn_bottleneck.{conv,bn}.*       3x3 ConvModule on the concatenation of all levels at the finest resolution
    conv_seg.{weight,bias}           1x1 classifier (after Dropout2d)
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import HEADS
from .common import (BaseDecodeHead, ConvModule, check_bool, check_float, check_int, check_ints, head_from_config,
                     resize)


class PPM(nn.ModuleList):
    """Pyramid pooling: for each scale s, AdaptiveAvgPool2d(s) -> ConvModule 1x1, upsampled bilinearly back to the
    input size. (N, in, H, W) -> list of (N, channels, H, W)."""

    def __init__(self, pool_scales, in_channels: int, channels: int, norm: str = "bn", align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        for scale in pool_scales:
            self.append(nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(in_channels, channels, 1, norm=norm)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(m(x), x.shape[2:], self.align_corners) for m in self]


@HEADS.register()
class UPerHead(BaseDecodeHead):
    """UPerNet head over the 4 backbone maps (strides 4/8/16/32).

    ``forward(inputs)``: list of 4 (N, in_channels[i], H_i, W_i) maps -> (N, num_classes, H_0, W_0) logits (stride 4).
    Top-down FPN: laterals (top level = PPM + bottleneck), coarse-to-fine ``lateral[i-1] += up(lateral[i])``,
    3x3 fpn convs (not on the top level), all upsampled to the finest size, concatenated, ``fpn_bottleneck``,
    Dropout2d, ``conv_seg``.
    """

    def __init__(self, in_channels=(768, 768, 768, 768), channels: int = 512, *, num_classes: int,
                 pool_scales=(1, 2, 3, 6), in_index=(0, 1, 2, 3), dropout_ratio: float = 0.1,
                 align_corners: bool = False, norm: str = "bn"):
        in_channels, in_index = list(in_channels), list(in_index)
        if len(in_channels) != len(in_index) or len(in_channels) < 2:
            raise ValueError(f"UPerHead needs matching in_channels/in_index lists of >= 2 levels, got {in_channels} "
                             f"and {in_index}")
        super().__init__(in_channels, channels, num_classes=num_classes, in_index=in_index,
                         dropout_ratio=dropout_ratio, align_corners=align_corners, norm=norm)
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = PPM(self.pool_scales, in_channels[-1], self.channels, norm, self.align_corners)
        self.bottleneck = ConvModule(in_channels[-1] + len(self.pool_scales) * self.channels, self.channels, 3,
                                     padding=1, norm=norm)
        self.lateral_convs = nn.ModuleList(ConvModule(c, self.channels, 1, norm=norm, inplace=False)
                                           for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(self.channels, self.channels, 3, padding=1, norm=norm, inplace=False)
                                       for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * self.channels, self.channels, 3, padding=1, norm=norm)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward_features(self, inputs) -> torch.Tensor:
        """The (N, channels, H_0, W_0) features before dropout and ``conv_seg``."""
        inputs = self._select(inputs)
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size, self.align_corners) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs) -> torch.Tensor:
        return self.cls_seg(self.forward_features(inputs))

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.decode_head") -> "UPerHead":
        """From the official mmseg ``UPerHead`` dict (``input_transform='multiple_select'``)."""
        return head_from_config(cls, cfg, where, {
            "in_channels": check_ints, "channels": check_int, "num_classes": check_int, "pool_scales": check_ints,
            "in_index": check_ints, "dropout_ratio": check_float, "align_corners": check_bool},
            input_transform="multiple_select")
