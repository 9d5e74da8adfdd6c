"""The dataset table: ``data.train.type`` / ``data.val.type`` -> the class that builds its loaders from a recipe.

Each entry owns the translation of its official-style config keys (``img_norm_cfg`` -> mean/std, the pipeline
arguments) and refuses unknown or ill-typed keys; the engine supplies batch size, workers, seed, rank, world size
and the number of classes. Adding a dataset format is one class with ``train_loader`` / ``val_loader`` /
``check_config`` plus one line in ``DATASETS``.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config.errors import ConfigError
from ..config.keys import signature_kwargs
from .catalog import resolve_type
from .loader import TrainLoader, ValLoader
from .pipeline import (SEG_PIPELINE_KWARGS, SEG_TEST_KEYS, norm_cfg, seg_test_settings_from_pipeline,
                       seg_train_kwargs_from_pipeline)
from .transforms import IMAGENET_MEAN, IMAGENET_STD

ENGINE_SUPPLIED = ("batch_size", "num_workers", "seed", "rank", "world_size", "num_classes")


def mean_std(section: Mapping, where: str) -> dict:
    """mmcv ``img_norm_cfg=dict(mean, std, to_rgb=True)`` -> ``{'mean', 'std'}`` (ImageNet's when absent), read as
    the pipelines' ``Normalize`` is (:func:`~.pipeline.norm_cfg`)."""
    norm = section.get("img_norm_cfg")
    if norm is None:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if not isinstance(norm, Mapping):
        raise ConfigError(f"recipe: {where}.img_norm_cfg must be a dict(mean, std, to_rgb=True), got {norm!r}")
    mean, std = norm_cfg(norm, f"{where}.img_norm_cfg")
    return {"mean": mean, "std": std}


class SegmentationShards:
    """Semantic-segmentation shards (``make_shards {ade20k,cocostuff,custom,synthetic}``): the resumable
    :class:`~vit_adapter_ds.data.loader.TrainLoader` and the exact :class:`~vit_adapter_ds.data.loader.ValLoader`."""

    TRANSLATED = ("type", "img_norm_cfg", "pipeline")

    @classmethod
    def _kwargs(cls, fn, section, where):
        kw = signature_kwargs(fn, section, where, skip=cls.TRANSLATED, supplied=ENGINE_SUPPLIED + ("mean", "std"))
        if "shard_dir" not in kw:
            raise ConfigError(f"recipe: {where}.shard_dir is required")
        if section.get("pipeline") is None:
            return {**kw, **mean_std(section, where)}
        # the official mmseg train / test pipeline instead of the flat arguments (data/pipeline.py translates it)
        if fn is not TrainLoader.__init__:
            if "img_norm_cfg" in section:
                raise ConfigError(f"recipe: {where} sets ['img_norm_cfg'] and a pipeline whose Normalize gives it; "
                                  "set it in one place")
            te = seg_test_settings_from_pipeline(section["pipeline"], f"{where}.pipeline",
                                                 kw.get("ignore_index", 255))
            return {**kw, "mean": te["mean"], "std": te["std"]}
        both = [k for k in SEG_PIPELINE_KWARGS if k in section]
        if both:
            raise ConfigError(f"recipe: {where} sets {both} and a pipeline that gives them; set them in one place")
        return {**kw, **seg_train_kwargs_from_pipeline(section["pipeline"], f"{where}.pipeline",
                                                       kw.get("ignore_index", 255))}

    @classmethod
    def check_config(cls, data: Mapping, evaluation: Mapping | None = None) -> None:
        cls._kwargs(TrainLoader.__init__, data["train"], "data.train")
        for split in ("val", "test"):
            if data.get(split) is not None:
                cls._kwargs(ValLoader.__init__, data[split], f"data.{split}")
                cls.test_settings(data, evaluation, split)

    @classmethod
    def test_settings(cls, data: Mapping, evaluation: Mapping | None = None, split: str = "val") -> dict:
        """What the evaluation of ``data.<split>`` uses: ``img_scale``, ``size_divisor``, ``img_ratios``, ``flip``,
        ``ms_resize``, ``pad_short_side`` and ``mean`` / ``std``. A flat recipe gives them in ``evaluation`` (and
        ``img_norm_cfg``); a recipe with the official test pipeline in ``data.<split>.pipeline`` gives them there
        (:func:`~.pipeline.seg_test_settings_from_pipeline`), and ``evaluation`` may then add only ``ms_resize`` (the
        rule of multi-scale tests asked for on the command line) when the pipeline has no ``SETR_Resize``."""
        ev = dict(evaluation or {})
        section = data.get(split) or data.get("val") or {}
        where = f"data.{split}" if data.get(split) is not None else "data.val"
        if section.get("pipeline") is None:
            ratios = ev.get("img_ratios")
            return {"img_scale": ev.get("img_scale"), "size_divisor": ev.get("size_divisor", 32),
                    "img_ratios": None if ratios is None else list(ratios), "flip": bool(ev.get("flip", False)),
                    "ms_resize": ev.get("ms_resize"), "pad_short_side": ev.get("pad_short_side"),
                    **mean_std(section, where)}
        out = seg_test_settings_from_pipeline(section["pipeline"], f"{where}.pipeline",
                                              section.get("ignore_index", 255))
        both = [k for k in SEG_TEST_KEYS + (("ms_resize",) if out["ms_resize"] else ()) if k in ev]
        if both:
            raise ConfigError(f"recipe: evaluation sets {both} and {where}.pipeline gives them; set them in one place "
                              "(the test pipeline)")
        if out["ms_resize"] is None and ev.get("ms_resize") is not None:
            out["ms_resize"] = ev["ms_resize"]
        return out

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


# set by the engine / the model / the translated pipeline, never by a detection recipe's data.<split> dict
DETECTION_SUPPLIED = ENGINE_SUPPLIED + ("mean", "std", "ops", "transform_kw", "scale")


class DetectionShards:
    """COCO instance shards (the detection entries of the catalog, ``make_shards coco`` / ``synthetic --layout
    coco``): :class:`~vit_adapter_ds.data.detection.DetectionTrainLoader` / ``DetectionValLoader`` keyword arguments
    from ``data.<split>``: ``shard_dir``, the official ``pipeline`` and the loaders' own keys."""

    @staticmethod
    def section(data: Mapping, split: str) -> dict:
        section = data.get(split)
        if not isinstance(section, dict):
            raise ConfigError(f"recipe: data.{split} must be a dict with shard_dir and pipeline")
        resolve_type(section.get("type"), "detection", f"data.{split}")
        for key in ("shard_dir", "pipeline"):
            if key not in section:
                raise ConfigError(f"recipe: data.{split}.{key} is required")
        return section

    @classmethod
    def train_kwargs(cls, data: Mapping) -> dict:
        """``DetectionTrainLoader`` keyword arguments (without the engine's) from ``data.train``."""
        from .detection import DetectionTrainLoader
        from .pipeline import train_ops_from_pipeline

        section = cls.section(data, "train")
        kw = signature_kwargs(DetectionTrainLoader.__init__, section, "data.train", skip=("type", "pipeline"),
                              supplied=DETECTION_SUPPLIED)
        tr = train_ops_from_pipeline(section["pipeline"], "data.train.pipeline")
        return {**kw, "ops": tr["ops"], "mean": tr["mean"], "std": tr["std"]}

    @classmethod
    def val_kwargs(cls, data: Mapping, split: str = "val") -> dict:
        """``DetectionValLoader`` keyword arguments (without the engine's) from ``data.<split>``; with test-time
        augmentation (:func:`~.pipeline.tta_from_pipeline`) the loader keeps the original size (``scale=None``)."""
        from .detection import DetectionValLoader
        from .pipeline import test_cfg_from_pipeline, tta_from_pipeline

        section = cls.section(data, split)
        kw = signature_kwargs(DetectionValLoader.__init__, section, f"data.{split}", skip=("type", "pipeline"),
                              supplied=DETECTION_SUPPLIED)
        where = f"data.{split}.pipeline"
        pipeline = section["pipeline"]
        aug = tta_from_pipeline(pipeline, where)
        if aug is not None:  # the single-scale translation checks the transforms and gives mean / std
            pipeline = [pipeline[0], {**pipeline[1], "img_scale": aug["scales"][0], "flip": False}]
        te = test_cfg_from_pipeline(pipeline, where)
        return {**kw, "scale": None if aug is not None else te["scale"], "mean": te["mean"], "std": te["std"]}


LOADER_NAMES = {"SegmentationShards": SegmentationShards}  # the loader's own name, accepted as data.<split>.type


def dataset_class(data: Mapping, split: str = "train"):
    """The segmentation loader class for ``data.<split>`` (its ``type``: absent, ``'SegmentationShards'`` or a
    segmentation dataset of the catalog)."""
    section = data.get(split) or {}
    kind = section.get("type")
    if kind not in LOADER_NAMES:
        resolve_type(kind, "segmentation", f"data.{split}")
    return SegmentationShards
