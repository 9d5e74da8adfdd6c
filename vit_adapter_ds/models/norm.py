"""The one SyncBN rule of the project, for backbones and heads alike.

Official configs ask for ``SyncBN`` (heads' ``norm_cfg``, the adapter's SPM). A model is always *built* with
BatchNorm layers, so it constructs and runs anywhere (CPU, one GPU, the meta device): ``norm='syncbn'`` gives a
:class:`DistributedBatchNorm2d`, an ``nn.BatchNorm2d`` subclass with the same state-dict keys that marks the layer
as "synchronise when training on several GPUs". The engine calls :func:`convert_sync_batchnorm` once, after the
process group exists: with an NCCL group of more than one rank, exactly those layers become ``nn.SyncBatchNorm``;
on CPU/gloo (where ``nn.SyncBatchNorm`` cannot train) and single-rank runs they stay BatchNorm. ``norm='bn'``
layers are never converted.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

NORMS = ("bn", "syncbn")


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that :func:`convert_sync_batchnorm` turns into ``nn.SyncBatchNorm`` under NCCL."""


def norm_class(norm: str = "bn") -> type[nn.BatchNorm2d]:
    """The 2-d norm layer class for ``norm`` ('bn' | 'syncbn'); see the module docstring."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return DistributedBatchNorm2d if norm == "syncbn" else nn.BatchNorm2d


def norm_from_cfg(norm_cfg: dict | None, where: str = "norm_cfg") -> str:
    """mmcv ``norm_cfg`` (``dict(type='SyncBN' | 'BN', requires_grad=True)``) -> 'syncbn' | 'bn'."""
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
    if kind == "SyncBN":
        return "syncbn"
    raise ConfigError(f"recipe: {where}.type={kind!r} is not supported; choose 'SyncBN' or 'BN'")


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
