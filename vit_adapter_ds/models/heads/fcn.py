"""FCN head (mmseg ``FCNHead``), the auxiliary head of the official UperNet recipes (on ``in_index=2``, stride 16).

Keys: ``convs.{i}.{conv,bn}.*``, ``conv_cat.{conv,bn}.*`` (only with ``concat_input``), ``conv_seg.{weight,bias}``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import HEADS
from .common import BaseDecodeHead, ConvModule, check_bool, check_float, check_int, head_from_config


@HEADS.register()
class FCNHead(BaseDecodeHead):
    """``num_convs`` ConvModules (kernel ``kernel_size``, 'same' padding, dilation), optional concat with the input
    and a fusing ConvModule, then Dropout2d + ``conv_seg``.

    ``forward(inputs)``: the backbone's list of maps; uses ``inputs[in_index]`` (N, in_channels, H, W) ->
    (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 768, channels: int = 256, *, num_classes: int, in_index: int = 2,
                 num_convs: int = 1, kernel_size: int = 3, dilation: int = 1, concat_input: bool = False,
                 dropout_ratio: float = 0.1, align_corners: bool = False, norm: str = "bn"):
        if not isinstance(in_channels, int) or not isinstance(in_index, int):
            raise ValueError(f"FCNHead takes one input map: int in_channels and in_index, got {in_channels!r}, "
                             f"{in_index!r}")
        if num_convs < 0 or (num_convs == 0 and in_channels != channels):
            raise ValueError(f"num_convs must be >= 0 (0 needs in_channels == channels), got {num_convs}")
        super().__init__(in_channels, channels, num_classes=num_classes, in_index=in_index,
                         dropout_ratio=dropout_ratio, align_corners=align_corners, norm=norm)
        self.concat_input = concat_input
        pad = (kernel_size // 2) * dilation
        convs = [ConvModule(in_channels if i == 0 else channels, channels, kernel_size, padding=pad, dilation=dilation,
                            norm=norm) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        if concat_input:
            self.conv_cat = ConvModule(in_channels + channels, channels, kernel_size, padding=kernel_size // 2,
                                       norm=norm)

    def forward(self, inputs) -> torch.Tensor:
        x = self._select(inputs)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.auxiliary_head") -> "FCNHead":
        """From the official mmseg ``FCNHead`` dict (one input map)."""
        return head_from_config(cls, cfg, where, {
            "in_channels": check_int, "channels": check_int, "num_classes": check_int, "in_index": check_int,
            "num_convs": check_int, "kernel_size": check_int, "dilation": check_int, "concat_input": check_bool,
            "dropout_ratio": check_float, "align_corners": check_bool})
