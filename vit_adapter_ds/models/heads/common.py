"""Building blocks shared by the decode heads, with mmseg/mmcv semantics and state-dict key names.

* :class:`ConvModule`: mmcv ``ConvModule(norm_cfg=BN/SyncBN, act_cfg=ReLU)``: ``conv`` (no bias, since a norm
  follows) -> ``bn`` -> ReLU. Keys ``conv.weight``, ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.
  Init as mmcv: Kaiming-normal (fan_out, ReLU) conv weight, norm weight 1 / bias 0.
* :class:`BaseDecodeHead`: mmseg ``BaseDecodeHead``'s classifier part: ``cls_seg`` = ``Dropout2d(dropout_ratio)``
  then ``conv_seg`` (1x1 conv with bias, init normal std 0.01, bias 0). Losses live in the segmentor.
* :func:`norm_class` (from :mod:`vit_adapter_ds.models.norm`, the project's one SyncBN rule): ``'bn'`` ->
  ``nn.BatchNorm2d``; ``'syncbn'`` -> a BatchNorm2d that the engine converts to ``nn.SyncBatchNorm`` when several
  GPU ranks train under NCCL. Identical state-dict keys, so checkpoints move freely between them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import NORMS, norm_class  # noqa: F401  (re-exported)


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


# ------------------------------------------------------------------------------------ official config translation
def _int_seq(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(i, int) and not isinstance(i, bool)
                                                               for i in v)


LOSS_DECODE_KEYS = {"type", "use_sigmoid", "loss_weight", "avg_non_ignore", "class_weight", "reduction",
                    "loss_name", "use_mask"}


def loss_from_cfg(loss_cfg, where: str) -> dict:
    """mmseg ``loss_decode=dict(type='CrossEntropyLoss', ...)`` -> ``{'loss_weight', 'avg_non_ignore'}``; the
    options this project does not implement are accepted only at their neutral value."""
    from ...config.errors import ConfigError
    from ...config.keys import check_keys, take

    if loss_cfg is None:
        return {"loss_weight": 1.0, "avg_non_ignore": False}
    if isinstance(loss_cfg, (list, tuple)):
        if len(loss_cfg) != 1:
            raise ConfigError(f"recipe: {where} lists {len(loss_cfg)} losses; one CrossEntropyLoss is supported")
        loss_cfg, where = loss_cfg[0], f"{where}[0]"
    check_keys(loss_cfg, LOSS_DECODE_KEYS, where)
    take(loss_cfg, "type", str, where, default="CrossEntropyLoss", choices=("CrossEntropyLoss",))
    take(loss_cfg, "use_sigmoid", bool, where, default=False, choices=(False,))
    take(loss_cfg, "use_mask", bool, where, default=False, choices=(False,))
    take(loss_cfg, "class_weight", type(None), where, default=None)
    take(loss_cfg, "reduction", str, where, default="mean", choices=("mean",))
    take(loss_cfg, "loss_name", str, where, default="loss_ce")
    return {"loss_weight": take(loss_cfg, "loss_weight", float, where, default=1.0),
            "avg_non_ignore": take(loss_cfg, "avg_non_ignore", bool, where, default=False)}


def head_from_config(cls, cfg: dict, where: str, value_keys: dict, input_transform=None):
    """Build head class ``cls`` from an official mmseg head dict.

    ``value_keys`` maps each constructor keyword of ``cls`` to a checker ``f(value, where) -> value``. Common keys
    (``norm_cfg``, ``loss_decode``, ``ignore_index``, ``act_cfg``, ``conv_cfg``, ``init_cfg``, ``sampler``,
    ``input_transform``) are translated here. The loss settings and ``ignore_index`` end up as attributes of the
    head (``loss_weight``, ``avg_non_ignore``, ``ignore_index``), where the segmentor reads them."""
    from ...config.errors import ConfigError
    from ...config.keys import check_keys, take
    from ..norm import norm_from_cfg

    common = {"type", "norm_cfg", "loss_decode", "ignore_index", "act_cfg", "conv_cfg", "init_cfg", "sampler",
              "input_transform"}
    check_keys(cfg, set(value_keys) | common, where)
    kwargs = {k: check(cfg[k], f"{where}.{k}") for k, check in value_keys.items() if k in cfg}
    act = cfg.get("act_cfg")
    if act is not None and dict(act) != {"type": "ReLU"}:
        raise ConfigError(f"recipe: {where}.act_cfg={act!r} is not supported (ReLU only)")
    for key in ("conv_cfg", "init_cfg", "sampler"):
        if cfg.get(key) is not None:
            raise ConfigError(f"recipe: {where}.{key}={cfg[key]!r} is not supported (None only)")
    if cfg.get("input_transform", input_transform) != input_transform:
        raise ConfigError(f"recipe: {where}.input_transform={cfg['input_transform']!r} is not supported for "
                          f"{cls.__name__} (only {input_transform!r})")
    loss = loss_from_cfg(cfg.get("loss_decode"), f"{where}.loss_decode")
    ignore_index = take(cfg, "ignore_index", int, where, default=255)
    try:
        head = cls(norm=norm_from_cfg(cfg.get("norm_cfg"), f"{where}.norm_cfg"), **kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"recipe: {where}: {e}") from e
    head.loss_weight, head.avg_non_ignore, head.ignore_index = loss["loss_weight"], loss["avg_non_ignore"], \
        ignore_index
    return head


def check_int(v, where):
    from ...config.keys import check_type
    return check_type(v, int, where)


def check_float(v, where):
    from ...config.keys import check_type
    return check_type(v, float, where)


def check_bool(v, where):
    from ...config.keys import check_type
    return check_type(v, bool, where)


def check_ints(v, where):
    from ...config.errors import ConfigError
    if _int_seq(v):
        return list(v)
    raise ConfigError(f"recipe: {where} must be a list of ints, got {v!r}")
