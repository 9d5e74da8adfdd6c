"""The one SyncBN rule of the project, for backbones and heads alike.

Official configs ask for ``SyncBN`` (heads' ``norm_cfg``, the adapter's SPM). A model is always *built* with
BatchNorm layers, so it constructs and runs anywhere (CPU, one GPU, the meta device): ``norm='syncbn'`` gives a
:class:`DistributedBatchNorm2d`, an ``nn.BatchNorm2d`` subclass with the same state-dict keys that marks the layer
as "synchronise when training on several GPUs". The engine calls :func:`convert_sync_batchnorm` once, after the
process group exists: with an NCCL group of more than one rank, exactly those layers become ``nn.SyncBatchNorm``;
on CPU/gloo (where ``nn.SyncBatchNorm`` cannot train) and single-rank runs they stay BatchNorm. ``norm='bn'``
layers are never converted.

Normalisation statistics stay in float32 under every precision (as torch autocast keeps them): DeepSpeed's bf16 /
fp16 modes cast the whole module, buffers included, and running statistics kept in bf16 lose the small momentum
updates. :func:`keep_norm_stats_fp32` (called by the engine after ``deepspeed.initialize``) casts the statistics
of the project's :class:`BatchNorm2d` layers back to float32, and their forward then normalises in float32 and
returns the input's dtype. In float32 the layer is exactly ``nn.BatchNorm2d``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NORMS = ("bn", "syncbn")


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose statistics may stay float32 while parameters and inputs are bf16/fp16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.running_mean
        if stats is None or (x.dtype == stats.dtype and (self.weight is None or self.weight.dtype == stats.dtype)):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or not self.track_running_stats
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = F.batch_norm(x.float(), self.running_mean if not self.training or self.track_running_stats else None,
                           self.running_var if not self.training or self.track_running_stats else None,
                           weight, bias, use_batch_stats, momentum, self.eps)
        return out.to(x.dtype)


class DistributedBatchNorm2d(BatchNorm2d):
    """:class:`BatchNorm2d` that :func:`convert_sync_batchnorm` turns into ``nn.SyncBatchNorm`` under NCCL."""


def norm_class(norm: str = "bn") -> type[nn.BatchNorm2d]:
    """The 2-d norm layer class for ``norm`` ('bn' | 'syncbn'); see the module docstring."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return DistributedBatchNorm2d if norm == "syncbn" else BatchNorm2d


def keep_norm_stats_fp32(module: nn.Module) -> int:
    """Cast the running statistics of every :class:`BatchNorm2d` in ``module`` to float32 (after a whole-module
    bf16/fp16 cast); returns how many layers were touched."""
    n = 0
    for m in module.modules():
        if isinstance(m, BatchNorm2d) and m.running_mean is not None and m.running_mean.dtype != torch.float32:
            m.running_mean = m.running_mean.float()
            m.running_var = m.running_var.float()
            n += 1
    return n


def norm_from_cfg(norm_cfg: dict | None, where: str = "norm_cfg") -> str:
    """mmcv ``norm_cfg`` (``dict(type='SyncBN' | 'MMSyncBN' | 'BN', requires_grad=True)``) -> 'syncbn' | 'bn'."""
    from ..config.errors import ConfigError
    from ..config.keys import check_keys

    if norm_cfg is None:
        return "bn"
    check_keys(norm_cfg, {"type", "requires_grad"}, where)
    kind = norm_cfg.get("type", "BN")
    if norm_cfg.get("requires_grad", True) is not True:
        raise ConfigError(f"recipe: {where}.requires_grad=False (frozen norms) is not supported")
    if kind in ("BN", "BN2d"):
        return "bn"
    if kind in ("SyncBN", "MMSyncBN"):  # MMSyncBN: mmcv.ops.SyncBatchNorm (same statistics, keys 'bn')
        return "syncbn"
    raise ConfigError(f"recipe: {where}.type={kind!r} is not supported; choose 'SyncBN', 'MMSyncBN' or 'BN'")


def sync_batchnorm_wanted() -> bool:
    """True where SyncBN can and should train: an initialised NCCL process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 \
        and dist.get_backend() == "nccl"


def convert_sync_batchnorm(module: nn.Module, force: bool | None = None) -> nn.Module:
    """Replace every :class:`DistributedBatchNorm2d` of ``module`` by ``nn.SyncBatchNorm`` (same state) when
    :func:`sync_batchnorm_wanted` (or ``force``); returns the (possibly new) module."""
    if not (sync_batchnorm_wanted() if force is None else force):
        return module
    if isinstance(module, DistributedBatchNorm2d):
        out = nn.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        with torch.no_grad():
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, force)
        if new is not child:
            setattr(module, name, new)
    return module
