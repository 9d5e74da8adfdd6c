"""R-CNN heads of the official HTC++ configs in the mmdet layout (class order and key names as in the released
checkpoints: background is the *last* class logit, ``reg_class_agnostic=True`` regresses 4 deltas).

* :class:`Shared4Conv1FCBBoxHead`: 4 shared 3x3 conv + ReLU (``shared_convs.i.conv``), flatten, 1 FC + ReLU
  (``shared_fcs.0``), ``fc_cls`` (``num_classes + 1``) and ``fc_reg`` (4, class-agnostic). Init as mmdet: convs
  Kaiming normal (fan-out), shared FC Xavier uniform, ``fc_cls`` normal 0.01, ``fc_reg`` normal 0.001, bias 0.
  With ``norm`` (the Objects365 recipes' ``norm_cfg=dict(type='SyncBN')``) each conv is mmcv's ``ConvModule``
  conv (no bias) -> BN / SyncBN -> ReLU (``shared_convs.i.conv`` / ``.bn``).
* :class:`HTCMaskHead`: mmdet ``FCNMaskHead`` (4 conv + ReLU, 2x deconv + ReLU, 1x1 ``conv_logits`` with
  ``num_classes`` channels) plus the mask information flow: with ``with_conv_res`` the previous stage's mask
  feature goes through ``conv_res`` (1x1 + ReLU) and is added to the RoI feature before the convs;
  ``forward(x, res_feat)`` returns (logits, feature) as mmdet's with ``return_logits`` / ``return_feat``.

The cascade RoI head that drives them (``HybridTaskCascadeRoIHead``) is not implemented yet (see the package
docstring).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..heads.common import ConvModule
from .semantic_head import ConvReLU


def _kaiming(m):
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(m.bias)


class Shared4Conv1FCBBoxHead(nn.Module):
    """``forward(rois_feats (N, C, 7, 7))`` -> (cls_score (N, num_classes + 1), bbox_pred (N, 4) or
    (N, 4 num_classes))."""

    def __init__(self, in_channels: int = 256, conv_out_channels: int = 256, fc_out_channels: int = 1024,
                 roi_feat_size: int = 7, num_classes: int = 80, reg_class_agnostic: bool = True, num_convs: int = 4,
                 norm: str | None = None):
        super().__init__()
        self.num_classes, self.reg_class_agnostic = int(num_classes), bool(reg_class_agnostic)
        if norm is None:
            self.shared_convs = nn.ModuleList(ConvReLU(in_channels if i == 0 else conv_out_channels,
                                                       conv_out_channels, 3) for i in range(num_convs))
        else:  # initialised by ConvModule (Kaiming normal fan-out, norm weight 1, bias 0)
            self.shared_convs = nn.ModuleList(ConvModule(in_channels if i == 0 else conv_out_channels,
                                                         conv_out_channels, 3, padding=1, norm=norm)
                                              for i in range(num_convs))
        cin = (conv_out_channels if num_convs else in_channels) * roi_feat_size ** 2
        self.shared_fcs = nn.ModuleList([nn.Linear(cin, fc_out_channels)])
        self.fc_cls = nn.Linear(fc_out_channels, self.num_classes + 1)
        self.fc_reg = nn.Linear(fc_out_channels, 4 if self.reg_class_agnostic else 4 * self.num_classes)
        for c in self.shared_convs if norm is None else ():
            _kaiming(c.conv)
        nn.init.xavier_uniform_(self.shared_fcs[0].weight)
        nn.init.zeros_(self.shared_fcs[0].bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x):
        for conv in self.shared_convs:
            x = conv(x)
        x = F.relu(self.shared_fcs[0](x.flatten(1)))
        return self.fc_cls(x), self.fc_reg(x)


class HTCMaskHead(nn.Module):
    """``forward(x, res_feat=None, return_logits=True, return_feat=True)`` -> logits (N, num_classes, 2S, 2S)
    and / or the last conv feature (N, C, S, S) (a tuple when both)."""

    def __init__(self, with_conv_res: bool = True, num_convs: int = 4, in_channels: int = 256,
                 conv_out_channels: int = 256, num_classes: int = 80):
        super().__init__()
        self.with_conv_res = bool(with_conv_res)
        self.convs = nn.ModuleList(ConvReLU(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3)
                                   for i in range(num_convs))
        self.upsample = nn.ConvTranspose2d(conv_out_channels, conv_out_channels, 2, 2)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1)
        for m in (*[c.conv for c in self.convs], self.upsample, self.conv_logits):
            _kaiming(m)
        if self.with_conv_res:
            self.conv_res = ConvReLU(conv_out_channels, conv_out_channels, 1)
            _kaiming(self.conv_res.conv)

    def forward(self, x, res_feat=None, return_logits: bool = True, return_feat: bool = True):
        if res_feat is not None:
            if not self.with_conv_res:
                raise ValueError("this HTCMaskHead has no conv_res (with_conv_res=False) for a previous feature")
            x = x + self.conv_res(res_feat)
        for conv in self.convs:
            x = conv(x)
        feat = x
        outs = []
        if return_logits:
            outs.append(self.conv_logits(F.relu(self.upsample(feat))))
        if return_feat:
            outs.append(feat)
        return tuple(outs) if len(outs) > 1 else outs[0]


def mask_information_flow(heads, x):
    """HTC's test-time mask flow over the stages: stage ``i`` gets the feature of stage ``i - 1``; returns the
    per-stage logits (mmdet ``HybridTaskCascadeRoIHead.simple_test``'s ``aug_masks`` before the sigmoid)."""
    logits, feat = [], None
    for head in heads:
        lg, feat = head(x, feat)
        logits.append(lg)
    return logits


__all__ = ["Shared4Conv1FCBBoxHead", "HTCMaskHead", "mask_information_flow"]
