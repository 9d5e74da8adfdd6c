"""Feature pyramid network of the official Mask R-CNN configs and of Semantic FPN (mmseg ``FPN``, the same module
as mmdet's; ``num_outs=4``, mmseg ``_base_/models/fpn_r50.py``), on torchvision's ``FeaturePyramidNetwork``.

Official neck: ``dict(type='FPN', in_channels=[D] * 4, out_channels=256, num_outs=5)`` (mmdet 2.x). With
``add_extra_convs=False`` (the default there) mmdet adds the fifth level as ``max_pool2d(P5, kernel 1, stride 2)``,
which is torchvision's ``LastLevelMaxPool``; the top-down path is nearest-neighbour upsampling to the size of the
finer map in both. Convolutions are initialised as mmdet's FPN (Xavier uniform, bias 0).

The one-stage configs (ATSS, GFL) use ``start_level=1, add_extra_convs='on_output', num_outs=5``: the finest input
is left out and the extra levels are 3x3 stride-2 convolutions (padding 1), the first on the last FPN output, each
next on the previous extra level, no ReLU between (``relu_before_extra_convs=False``; torchvision's
``LastLevelP6P7`` puts one there, so :class:`ExtraConvs` is used instead).

State-dict names are torchvision's (``inner_blocks.i.0`` = mmdet ``lateral_convs.i.conv``,
``layer_blocks.i.0`` = ``fpn_convs.i.conv``, ``extra_blocks.convs.j`` = ``fpn_convs.{n + j}.conv`` for ``n`` used
inputs); :mod:`.keymap` translates. With ``key_layout='mmcv'`` (the segmentor's neck, ``EncoderDecoder.build_neck``)
the same convolutions are held under mmcv's names instead, ``lateral_convs.i.conv`` and ``fpn_convs.{i, n + j}.conv``
(a ``ConvModule`` without norm and activation: weight and bias), so released mmseg ``neck.*`` tensors load as they
are; the forward is then mmdet's / mmseg's ``FPN.forward``, which gives torchvision's values bit for bit (tested).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, parse
from ..norm import norm_class, norm_from_cfg
from ..registry import NECKS


def group_norm_groups(norm_cfg, where: str) -> int | str | None:
    """The FPN's ``norm_cfg``: None, or mmcv's ``dict(type='GN', num_groups=G)`` (the HTC++ Objects365 -> COCO
    recipes: ``ConvModule`` conv without bias -> GroupNorm, keys ``lateral_convs.i.gn`` / ``fpn_convs.i.gn``) -> G,
    or ``dict(type='BN' | 'SyncBN' | 'MMSyncBN')`` (the upgraded Mask R-CNN recipes: conv without bias ->
    BatchNorm, keys ``lateral_convs.i.bn`` / ``fpn_convs.i.bn``) -> 'bn' / 'syncbn' (:mod:`~..norm`'s rule)."""
    if norm_cfg is None:
        return None
    if isinstance(norm_cfg, dict) and norm_cfg.get("type") in ("BN", "BN2d", "SyncBN", "MMSyncBN"):
        return norm_from_cfg(norm_cfg, f"{where}.norm_cfg")
    if not isinstance(norm_cfg, dict) or norm_cfg.get("type") != "GN" or set(norm_cfg) - {"type", "num_groups",
                                                                                          "requires_grad"}:
        raise ConfigError(f"recipe: {where}.norm_cfg={norm_cfg!r}: only dict(type='GN', num_groups=G) or "
                          "dict(type='BN' | 'SyncBN' | 'MMSyncBN') is supported in the FPN")
    groups = norm_cfg.get("num_groups")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or norm_cfg.get("requires_grad",
                                                                                             True) is not True:
        raise ConfigError(f"recipe: {where}.norm_cfg needs a positive int num_groups (and trainable norms)")
    return groups

_FPN_SPEC = {
    "type": Fixed("FPN"),
    "in_channels": Param("in_channels", (list, tuple)),
    "out_channels": Param("out_channels", (int,)),
    "num_outs": Param("num_outs", (int,)),
    "start_level": Param("start_level", (int,), 0, minimum=0),
    "end_level": Fixed(-1),
    "add_extra_convs": Param("add_extra_convs", (bool, str), False, choices=(False, "on_output")),
    "relu_before_extra_convs": Fixed(False),
    "no_norm_on_lateral": Fixed(False),
    "conv_cfg": Fixed(None),
    "norm_cfg": Param("norm_cfg", (dict, type(None)), None),  # None or GN: group_norm_groups
    "act_cfg": Fixed(None),
    "upsample_cfg": Fixed({"mode": "nearest"}),
    "init_cfg": Fixed(None, {"type": "Xavier", "layer": "Conv2d", "distribution": "uniform"}),
}


class ExtraConvs(ExtraFPNBlock):
    """mmdet FPN's ``add_extra_convs='on_output'`` levels: ``num`` 3x3 stride-2 convolutions (padding 1), the first
    on the last FPN output, each next on the previous one, no activation between; levels named ``extra{j}``."""

    def __init__(self, channels: int, num: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(num))

    def forward(self, results, x, names):
        results, names = list(results), list(names)
        for j, conv in enumerate(self.convs):
            results.append(conv(results[-1]))
            names.append(f"extra{j}")
        return results, names


class ConvOnly(nn.Module):
    """mmcv ``ConvModule(norm_cfg=None, act_cfg=None)``: just ``conv`` (with bias), under mmcv's key name."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@NECKS.register()
class FPN(nn.Module):
    """mmdet ``FPN(in_channels, out_channels, num_outs, start_level, add_extra_convs)`` (``add_extra_convs`` False
    or ``'on_output'``).

    ``forward(feats)``: a list of ``len(in_channels)`` maps (strides 4, 8, 16, 32 for the adapter) -> an
    ``OrderedDict`` of ``out_channels`` maps: ``{'0': P2, '1': P3, '2': P4, '3': P5[, 'pool': P6]}`` (the inputs
    from ``start_level`` on are numbered from 0); without extra convs ``num_outs`` is the number of used inputs ``n``
    or ``n + 1`` (the max-pool level), with ``'on_output'`` at least ``n`` (levels ``extra0``, ``extra1``, ...).
    ``key_layout``: the state-dict names, ``'torchvision'`` (default) or ``'mmcv'`` (module docstring).
    """

    key_layouts = ("torchvision", "mmcv")

    def __init__(self, in_channels, out_channels: int = 256, num_outs: int = 5, start_level: int = 0,
                 add_extra_convs=False, key_layout: str = "torchvision", norm_groups: int | None = None):
        super().__init__()
        norm_layer = None if norm_groups is None else norm_class(norm_groups) if isinstance(norm_groups, str) \
            else partial(nn.GroupNorm, int(norm_groups))  # 'bn' / 'syncbn': BatchNorm (group_norm_groups)
        if norm_layer is not None and key_layout != "torchvision":
            raise ValueError("norm_groups (GN) is implemented for the torchvision key layout only")
        if key_layout not in self.key_layouts:
            raise ValueError(f"key_layout must be one of {self.key_layouts}, got {key_layout!r}")
        self.key_layout = key_layout
        self.all_in_channels = [int(c) for c in in_channels]
        self.start_level = int(start_level)
        in_channels = self.all_in_channels[self.start_level:]
        if not in_channels:
            raise ValueError(f"start_level={start_level} leaves no input of {len(self.all_in_channels)}")
        if add_extra_convs not in (False, "on_output"):
            raise ValueError(f"add_extra_convs must be False or 'on_output', got {add_extra_convs!r}")
        if add_extra_convs and num_outs < len(in_channels):
            raise ValueError(f"num_outs must be >= {len(in_channels)} (the used inputs), got {num_outs}")
        if not add_extra_convs and num_outs not in (len(in_channels), len(in_channels) + 1):
            raise ValueError(f"num_outs must be {len(in_channels)} or {len(in_channels) + 1} (one max-pool level, "
                             f"mmdet add_extra_convs=False), got {num_outs}")
        self.in_channels, self.out_channels, self.num_outs = in_channels, int(out_channels), int(num_outs)
        self.add_extra_convs = add_extra_convs
        if key_layout == "mmcv":
            n_extra = num_outs - len(in_channels) if add_extra_convs else 0
            self.lateral_convs = nn.ModuleList(ConvOnly(nn.Conv2d(c, self.out_channels, 1)) for c in in_channels)
            self.fpn_convs = nn.ModuleList(
                [ConvOnly(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)) for _ in in_channels]
                + [ConvOnly(nn.Conv2d(self.out_channels, self.out_channels, 3, stride=2, padding=1))
                   for _ in range(n_extra)])
        else:
            if add_extra_convs:
                extra = ExtraConvs(self.out_channels, num_outs - len(in_channels)) if num_outs > len(in_channels) \
                    else None
            else:
                extra = LastLevelMaxPool() if num_outs > len(in_channels) else None
            self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra, norm_layer=norm_layer)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:  # no bias before a GroupNorm
                    nn.init.zeros_(m.bias)

    @property
    def names(self) -> list[str]:
        base = [str(i) for i in range(len(self.in_channels))]
        extra = self.num_outs - len(self.in_channels)
        if self.add_extra_convs:
            return base + [f"extra{j}" for j in range(extra)]
        return base + (["pool"] if extra else [])

    def forward(self, feats) -> "OrderedDict[str, torch.Tensor]":
        if len(feats) != len(self.all_in_channels):
            raise ValueError(f"FPN expects {len(self.all_in_channels)} feature maps, got {len(feats)}")
        if self.key_layout == "torchvision":
            return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats[self.start_level:])))
        # mmdet / mmseg FPN.forward: laterals, top-down sums (nearest upsampling), 3x3 convs, then the extra levels
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[self.start_level:])]
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n)]
        for conv in self.fpn_convs[n:]:  # add_extra_convs='on_output': each on the previous level, no ReLU
            outs.append(conv(outs[-1]))
        if not self.add_extra_convs and self.num_outs > n:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return OrderedDict(zip(self.names, outs))

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.neck", key_layout: str = "torchvision") -> "FPN":
        """Build from the official ``neck=dict(type='FPN', ...)`` with the state-dict names of ``key_layout`` (the
        segmentor asks for ``'mmcv'``); unknown keys or unsupported values raise ConfigError naming
        ``where.<key>``."""
        p = parse(cfg, _FPN_SPEC, where)
        n = len(p["in_channels"]) - p["start_level"]
        if n < 1:
            raise ConfigError(f"recipe: {where}.start_level={p['start_level']} leaves none of the "
                              f"{len(p['in_channels'])} in_channels")
        if p["add_extra_convs"] and p["num_outs"] < n:
            raise ConfigError(f"recipe: {where}.num_outs={p['num_outs']} must be >= {n}, the inputs from start_level")
        if not p["add_extra_convs"] and p["num_outs"] not in (n, n + 1):
            raise ConfigError(f"recipe: {where}.num_outs={p['num_outs']}: only {n} or {n + 1} (one max-pool level, "
                              "add_extra_convs=False) are supported")
        return cls(p["in_channels"], p["out_channels"], p["num_outs"], p["start_level"], p["add_extra_convs"],
                   key_layout=key_layout, norm_groups=group_norm_groups(p["norm_cfg"], where))
