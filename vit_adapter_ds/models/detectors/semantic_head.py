"""HTC's ``FusedSemanticHead`` (mmdet 2.x) for the HTC++ recipes: a semantic-segmentation branch on the FPN maps.

Each input level is bilinearly resized (``align_corners=True``) to the ``fusion_level`` map and passed through its
own 1x1 conv + ReLU (``lateral_convs``), the results are summed, then ``num_convs`` 3x3 conv + ReLU
(``convs``); ``conv_logits`` (1x1) gives the class logits and ``conv_embedding`` (1x1 + ReLU) the semantic feature
that HTC adds to the RoI features. The loss is cross entropy with ``ignore_index`` (255) divided by *all* label
pixels (mmdet ``CrossEntropyLoss`` without ``avg_non_ignore``), times ``loss_weight`` (0.2). Parameter names are the
official ones (``lateral_convs.i.conv``, ``convs.i.conv``, ``conv_embedding.conv``, ``conv_logits``); initialised as
mmcv ``ConvModule`` / the head's ``init_cfg`` (Kaiming normal, fan-out, bias 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config.keys import Fixed, Param, parse


class ConvReLU(nn.Module):
    """mmcv ``ConvModule`` without norm: ``relu(conv(x))``; the conv is ``.conv`` (official key names)."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)

    def forward(self, x):
        return F.relu(self.conv(x))


_SPEC = {
    "type": Fixed("FusedSemanticHead"),
    "num_ins": Param("num_ins", (int,)),
    "fusion_level": Param("fusion_level", (int,)),
    "num_convs": Param("num_convs", (int,), 4),
    "in_channels": Param("in_channels", (int,), 256),
    "conv_out_channels": Param("conv_out_channels", (int,), 256),
    "num_classes": Param("num_classes", (int,), 183),
    "conv_cfg": Fixed(None),
    "norm_cfg": Fixed(None),
    "init_cfg": Fixed(None, {"type": "Kaiming", "override": {"name": "conv_logits"}}),
    "loss_seg": {"type": Fixed("CrossEntropyLoss"), "ignore_index": Param("ignore_index", (int,), 255),
                 "loss_weight": Param("loss_weight", (float,), 0.2), "use_sigmoid": Fixed(False),
                 "reduction": Fixed("mean"), "avg_non_ignore": Fixed(False)},
}


class FusedSemanticHead(nn.Module):
    """``forward(feats)`` -> (logits (B, num_classes, h, w), semantic feature (B, C, h, w)) at the
    ``fusion_level`` resolution; :meth:`loss` (logits, labels (B, h, w))."""

    def __init__(self, num_ins: int = 5, fusion_level: int = 1, num_convs: int = 4, in_channels: int = 256,
                 conv_out_channels: int = 256, num_classes: int = 183, ignore_index: int = 255,
                 loss_weight: float = 0.2):
        super().__init__()
        if not 0 <= fusion_level < num_ins:
            raise ValueError(f"fusion_level {fusion_level} not in [0, num_ins={num_ins})")
        self.num_ins, self.fusion_level = num_ins, fusion_level
        self.ignore_index, self.loss_weight = ignore_index, float(loss_weight)
        self.lateral_convs = nn.ModuleList(ConvReLU(in_channels, in_channels, 1) for _ in range(num_ins))
        self.convs = nn.ModuleList(ConvReLU(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3)
                                   for i in range(num_convs))
        self.conv_embedding = ConvReLU(conv_out_channels, conv_out_channels, 1)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, feats):
        feats = list(feats)
        if len(feats) != self.num_ins:
            raise ValueError(f"FusedSemanticHead expects {self.num_ins} maps, got {len(feats)}")
        x = self.lateral_convs[self.fusion_level](feats[self.fusion_level])
        size = tuple(x.shape[-2:])
        for i, f in enumerate(feats):
            if i != self.fusion_level:
                x = x + self.lateral_convs[i](F.interpolate(f, size=size, mode="bilinear", align_corners=True))
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(x), self.conv_embedding(x)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 4:
            labels = labels.squeeze(1)
        loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=self.ignore_index, reduction="sum")
        return self.loss_weight * loss / max(1, labels.numel())

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model.roi_head.semantic_head") -> "FusedSemanticHead":
        p = parse(cfg, _SPEC, where)
        return cls(p["num_ins"], p["fusion_level"], p["num_convs"], p["in_channels"], p["conv_out_channels"],
                   p["num_classes"], p["ignore_index"], p["loss_weight"])
