"""Feature pyramid network of the official Mask R-CNN configs, on torchvision's ``FeaturePyramidNetwork``.

Official neck: ``dict(type='FPN', in_channels=[D] * 4, out_channels=256, num_outs=5)`` (mmdet 2.x). With
``add_extra_convs=False`` (the default there) mmdet adds the fifth level as ``max_pool2d(P5, kernel 1, stride 2)``,
which is torchvision's ``LastLevelMaxPool``; the top-down path is nearest-neighbour upsampling to the size of the
finer map in both. Convolutions are initialised as mmdet's FPN (Xavier uniform, bias 0).

State-dict names are torchvision's (``inner_blocks.i.0`` = mmdet ``lateral_convs.i.conv``,
``layer_blocks.i.0`` = ``fpn_convs.i.conv``); :mod:`.keymap` translates.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, parse
from ..registry import NECKS

_FPN_SPEC = {
    "type": Fixed("FPN"),
    "in_channels": Param("in_channels", (list, tuple)),
    "out_channels": Param("out_channels", (int,)),
    "num_outs": Param("num_outs", (int,)),
    "start_level": Fixed(0),
    "end_level": Fixed(-1),
    "add_extra_convs": Fixed(False),
    "relu_before_extra_convs": Fixed(False),
    "no_norm_on_lateral": Fixed(False),
    "conv_cfg": Fixed(None),
    "norm_cfg": Fixed(None),
    "act_cfg": Fixed(None),
    "upsample_cfg": Fixed({"mode": "nearest"}),
    "init_cfg": Fixed(None, {"type": "Xavier", "layer": "Conv2d", "distribution": "uniform"}),
}


@NECKS.register()
class FPN(nn.Module):
    """mmdet ``FPN(in_channels, out_channels, num_outs)`` without extra convs.

    ``forward(feats)``: a list of ``len(in_channels)`` maps (strides 4, 8, 16, 32 for the adapter) -> an
    ``OrderedDict`` ``{'0': P2, '1': P3, '2': P4, '3': P5[, 'pool': P6]}`` of ``out_channels`` maps;
    ``num_outs`` is ``len(in_channels)`` (no extra level) or ``len(in_channels) + 1`` (the max-pool level).
    """

    def __init__(self, in_channels, out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if num_outs not in (len(in_channels), len(in_channels) + 1):
            raise ValueError(f"num_outs must be {len(in_channels)} or {len(in_channels) + 1} (one max-pool level, "
                             f"mmdet add_extra_convs=False), got {num_outs}")
        self.in_channels, self.out_channels, self.num_outs = in_channels, int(out_channels), int(num_outs)
        extra = LastLevelMaxPool() if num_outs > len(in_channels) else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        for m in self.fpn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def names(self) -> list[str]:
        base = [str(i) for i in range(len(self.in_channels))]
        return base + (["pool"] if self.num_outs > len(self.in_channels) else [])

    def forward(self, feats) -> "OrderedDict[str, torch.Tensor]":
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(feats)}")
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.neck") -> "FPN":
        """Build from the official ``neck=dict(type='FPN', ...)``; unknown keys or unsupported values raise
        ConfigError naming ``where.<key>``."""
        p = parse(cfg, _FPN_SPEC, where)
        n = len(p["in_channels"])
        if p["num_outs"] not in (n, n + 1):
            raise ConfigError(f"recipe: {where}.num_outs={p['num_outs']}: only {n} or {n + 1} (one max-pool level, "
                              "add_extra_convs=False) are supported")
        return cls(p["in_channels"], p["out_channels"], p["num_outs"])
