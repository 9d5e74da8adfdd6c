"""The no-FPN neck of the official ``mask_rcnn/no_fpn`` config: ``ChannelMapperWithPooling`` (ViT-Adapter's
``detection/mmdet_custom/models/necks/channel_mapper.py``, a variant of mmdet 2.x ``ChannelMapper``).

Official neck: ``dict(type='ChannelMapperWithPooling', in_channels=[D] * 4, out_channels=256, num_outs=5)``. Each
input map goes through its own ``ConvModule(in_channels[i], out_channels, kernel_size, padding=(kernel_size - 1)
// 2)``, a convolution with bias followed by ReLU (``act_cfg=dict(type='ReLU')``, no norm); there is no top-down
path. Each level beyond ``len(in_channels)`` is ``max_pool2d(kernel 2, stride 2)`` of the previous *output* (mmdet's
``ChannelMapper`` uses a stride-2 3x3 ConvModule of the last *input* instead). Convolutions are initialised as the
official ``init_cfg`` (Xavier uniform, bias 0); the default ``kernel_size`` is 1 (mmdet's ``ChannelMapper``: 3).

``forward(feats)`` returns an ``OrderedDict`` ``{'0': C2', '1': C3', ..., str(num_outs - 1): ...}`` (the interface
of :class:`~.fpn.FPN` that :class:`~.mask_rcnn.MaskRCNN` reads through ``names`` and ``out_channels``).
State-dict names are the official ones (``convs.i.conv.{weight,bias}``; the pooling levels have no parameters).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, parse
from ..registry import NECKS


def _act(value, where):
    if value is None or (isinstance(value, dict) and dict(value) in ({"type": "ReLU"},
                                                                       {"type": "ReLU", "inplace": True})):
        return value
    raise ConfigError(f"recipe: {where}={value!r} is not supported here; only dict(type='ReLU') (the official value) "
                      "or None")


_SPEC = {
    "type": Fixed("ChannelMapperWithPooling"),
    "in_channels": Param("in_channels", (list, tuple)),
    "out_channels": Param("out_channels", (int,), minimum=1),
    "kernel_size": Param("kernel_size", (int,), 1, minimum=1),
    "conv_cfg": Fixed(None),
    "norm_cfg": Fixed(None),
    "act_cfg": Param("act_cfg", default={"type": "ReLU"}, check=_act),
    "num_outs": Param("num_outs", (int, type(None)), None),
    "init_cfg": Fixed(None, {"type": "Xavier", "layer": "Conv2d", "distribution": "uniform"}),
}


class _ConvAct(nn.Module):
    """mmcv ``ConvModule`` without norm: ``conv`` (bias) then ReLU (or nothing with ``act_cfg=None``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)
        self.relu = bool(relu)

    def forward(self, x):
        x = self.conv(x)
        return torch.relu(x) if self.relu else x


@NECKS.register()
class ChannelMapperWithPooling(nn.Module):
    """Official ``ChannelMapperWithPooling(in_channels, out_channels, kernel_size=1, act_cfg=dict(type='ReLU'),
    num_outs=None)``: a ``kernel_size`` conv + ReLU per input level, then ``num_outs - len(in_channels)`` max-pool
    (2, stride 2) levels, each of the previous output. ``num_outs=None`` means ``len(in_channels)``."""

    def __init__(self, in_channels, out_channels: int = 256, num_outs: int | None = None, kernel_size: int = 1,
                 relu: bool = True):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        num_outs = len(in_channels) if num_outs is None else int(num_outs)
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs must be at least len(in_channels)={len(in_channels)}, got {num_outs}")
        self.in_channels, self.out_channels, self.num_outs = in_channels, int(out_channels), num_outs
        self.kernel_size = int(kernel_size)
        self.convs = nn.ModuleList(_ConvAct(c, self.out_channels, self.kernel_size, relu) for c in in_channels)
        self.extra_convs = nn.ModuleList(nn.MaxPool2d(kernel_size=2, stride=2)
                                         for _ in range(num_outs - len(in_channels)))
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def names(self) -> list[str]:
        return [str(i) for i in range(self.num_outs)]

    def forward(self, feats) -> "OrderedDict[str, torch.Tensor]":
        if len(feats) != len(self.convs):
            raise ValueError(f"ChannelMapperWithPooling expects {len(self.convs)} feature maps, got {len(feats)}")
        outs = [conv(f) for conv, f in zip(self.convs, feats)]
        for pool in self.extra_convs:
            outs.append(pool(outs[-1]))
        return OrderedDict(zip(self.names, outs))

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.neck") -> "ChannelMapperWithPooling":
        """Build from the official ``neck=dict(type='ChannelMapperWithPooling', ...)``; unknown keys or unsupported
        values raise ConfigError naming ``where.<key>``."""
        p = parse(cfg, _SPEC, where)
        chans = p["in_channels"]
        if not chans or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in chans):
            raise ConfigError(f"recipe: {where}.in_channels must be a non-empty list of positive ints, got {chans!r}")
        n = len(chans)
        if p["num_outs"] is not None and p["num_outs"] < n:
            raise ConfigError(f"recipe: {where}.num_outs={p['num_outs']} must be at least len(in_channels)={n} "
                              "(the official class would still give one map per input)")
        return cls(chans, p["out_channels"], p["num_outs"], p["kernel_size"], relu=p["act_cfg"] is not None)
