"""Building blocks shared by the decode heads, with mmseg/mmcv semantics and state-dict key names.

* :class:`ConvModule`: mmcv ``ConvModule(norm_cfg=BN/SyncBN, act_cfg=ReLU)``: ``conv`` (no bias, since a norm
  follows) -> ``bn`` -> ReLU. Keys ``conv.weight``, ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.
  Init as mmcv: Kaiming-normal (fan_out, ReLU) conv weight, norm weight 1 / bias 0.
* :class:`BaseDecodeHead`: mmseg ``BaseDecodeHead``'s classifier part: ``cls_seg`` = ``Dropout2d(dropout_ratio)``
  then ``conv_seg`` (1x1 conv with bias, init normal std 0.01, bias 0). Losses live in the segmentor.
* :func:`norm_class`: ``'bn'`` -> ``nn.BatchNorm2d``; ``'syncbn'`` -> ``nn.SyncBatchNorm`` only when a
  process group with a GPU backend (NCCL) is initialised, else ``nn.BatchNorm2d`` (gloo/CPU cannot run SyncBN
  in training). Both have identical state-dict keys, so checkpoints move freely between them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NORMS = ("bn", "syncbn")


def norm_class(norm: str = "bn") -> type[nn.Module]:
    """The 2-d norm layer class for ``norm`` ('bn' | 'syncbn'); see the module docstring for the SyncBN rule."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "syncbn" and dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return nn.SyncBatchNorm
    return nn.BatchNorm2d


def resize(x: torch.Tensor, size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size`` = (h, w) (mmseg ``resize(..., mode='bilinear')``); identity if already there."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class ConvModule(nn.Module):
    """conv(bias=False) -> BatchNorm -> ReLU, mmcv key names (``conv``, ``bn``). (N, in, H, W) -> (N, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, dilation: int = 1,
                 norm: str = "bn", inplace: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = norm_class(norm)(out_channels)
        self.activate = nn.ReLU(inplace=inplace)
        nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.bn.weight, 1.0)
        nn.init.constant_(self.bn.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class BaseDecodeHead(nn.Module):
    """Common head state: input selection (``in_index``), the classifier ``conv_seg`` and its dropout.

    Subclasses implement ``forward(inputs: list[Tensor]) -> (N, num_classes, h, w)`` logits at the resolution of
    their finest input. ``align_corners`` is used by every bilinear resize of the head (and by the segmentor
    for the loss / output resize, as in mmseg).
    """

    def __init__(self, in_channels, channels: int, *, num_classes: int, in_index=-1, dropout_ratio: float = 0.1,
                 align_corners: bool = False, norm: str = "bn"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_channels = in_channels
        self.in_index = in_index
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.dropout_ratio = float(dropout_ratio)
        self.align_corners = bool(align_corners)
        self.norm = norm
        self.conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(self.dropout_ratio) if self.dropout_ratio > 0 else None
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.constant_(self.conv_seg.bias, 0.0)

    def _select(self, inputs):
        """mmseg ``_transform_inputs``: a list ``in_index`` selects several maps ('multiple_select'), an int one."""
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"{type(self).__name__} expects the backbone's list of feature maps, got {type(inputs)}")
        if isinstance(self.in_index, (list, tuple)):
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Dropout2d (train mode only) then the 1x1 classifier: (N, channels, h, w) -> (N, num_classes, h, w)."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def extra_repr(self) -> str:
        return f"in_index={self.in_index}, num_classes={self.num_classes}, align_corners={self.align_corners}"
