"""The dataset table: ``data.train.type`` / ``data.val.type`` -> the class that builds its loaders from a recipe.

Each entry owns the translation of its official-style config keys (``img_norm_cfg`` -> mean/std, the pipeline
arguments) and refuses unknown or ill-typed keys; the engine supplies batch size, workers, seed, rank, world size
and the number of classes. Adding a dataset format is one class with ``train_loader`` / ``val_loader`` /
``check_config`` plus one line in ``DATASETS``.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config.errors import ConfigError
from ..config.keys import check_keys, signature_kwargs
from .loader import TrainLoader, ValLoader
from .transforms import IMAGENET_MEAN, IMAGENET_STD

ENGINE_SUPPLIED = ("batch_size", "num_workers", "seed", "rank", "world_size", "num_classes")


def mean_std(section: Mapping, where: str) -> dict:
    """mmcv ``img_norm_cfg=dict(mean, std, to_rgb=True)`` -> ``{'mean', 'std'}`` (ImageNet's when absent)."""
    norm = section.get("img_norm_cfg")
    if norm is None:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    check_keys(norm, {"mean", "std", "to_rgb"}, f"{where}.img_norm_cfg")
    if norm.get("to_rgb", True) is not True:
        raise ConfigError(f"recipe: {where}.img_norm_cfg.to_rgb=False is not supported (images are decoded as RGB)")
    for key in ("mean", "std"):
        v = norm.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            raise ConfigError(f"recipe: {where}.img_norm_cfg.{key} must be 3 numbers, got {v!r}")
    return {"mean": tuple(float(x) for x in norm["mean"]), "std": tuple(float(x) for x in norm["std"])}


class SegmentationShards:
    """Semantic-segmentation shards (``make_shards {ade20k,cocostuff,custom,synthetic}``): the resumable
    :class:`~vit_adapter_ds.data.loader.TrainLoader` and the exact :class:`~vit_adapter_ds.data.loader.ValLoader`."""

    TRANSLATED = ("type", "img_norm_cfg")

    @classmethod
    def _kwargs(cls, fn, section, where):
        kw = signature_kwargs(fn, section, where, skip=cls.TRANSLATED, supplied=ENGINE_SUPPLIED + ("mean", "std"))
        if "shard_dir" not in kw:
            raise ConfigError(f"recipe: {where}.shard_dir is required")
        return {**kw, **mean_std(section, where)}

    @classmethod
    def check_config(cls, data: Mapping) -> None:
        cls._kwargs(TrainLoader.__init__, data["train"], "data.train")
        if data.get("val") is not None:
            cls._kwargs(ValLoader.__init__, data["val"], "data.val")

    @classmethod
    def train_loader(cls, data: Mapping, *, rank: int, world_size: int, seed: int, num_classes: int) -> TrainLoader:
        kw = cls._kwargs(TrainLoader.__init__, data["train"], "data.train")
        return TrainLoader(batch_size=data["samples_per_gpu"], num_workers=data.get("workers_per_gpu", 0),
                           seed=seed, rank=rank, world_size=world_size, num_classes=num_classes, **kw)

    @classmethod
    def val_loader(cls, data: Mapping, *, rank: int, world_size: int, num_classes: int) -> ValLoader | None:
        if data.get("val") is None:
            return None
        kw = cls._kwargs(ValLoader.__init__, data["val"], "data.val")
        return ValLoader(rank=rank, world_size=world_size, num_workers=0, num_classes=num_classes, **kw)


DATASETS = {"SegmentationShards": SegmentationShards}
DEFAULT_DATASET = "SegmentationShards"


def dataset_class(data: Mapping, split: str = "train"):
    section = data.get(split) or {}
    kind = section.get("type", DEFAULT_DATASET)
    if kind not in DATASETS:
        raise ConfigError(f"recipe: data.{split}.type={kind!r} is not supported; choose one of {sorted(DATASETS)}")
    return DATASETS[kind]
