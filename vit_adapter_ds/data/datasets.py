"""The loaders of a recipe's ``data`` section, one class per shard format: :class:`SegmentationShards` (every
semantic-segmentation catalog entry) and :class:`DetectionShards` (the COCO-instance entries). The task picks its
class; the catalog entry that ``data.<split>.type`` names (:mod:`.catalog`) gives classes, palette and evaluator.

Each class translates the official-style keys of a split (its official ``pipeline``, through :mod:`.pipeline`) and
refuses unknown or ill-typed keys; the engine supplies batch size, workers, seed, rank, world size and the number of
classes.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config.errors import ConfigError
from ..config.keys import signature_kwargs
from .catalog import resolve_type
from .loader import TrainLoader, ValLoader
from .pipeline import SEG_PIPELINE_KWARGS, seg_test_settings_from_pipeline, seg_train_kwargs_from_pipeline

ENGINE_SUPPLIED = ("batch_size", "num_workers", "seed", "rank", "world_size", "num_classes")


class SegmentationShards:
    """Semantic-segmentation shards (``make_shards <any segmentation entry of the catalog>``): the resumable
    :class:`~vit_adapter_ds.data.loader.TrainLoader` and the exact :class:`~vit_adapter_ds.data.loader.ValLoader`.

    A recipe describes them as the official configs do: ``data.train.pipeline`` is mmseg's train pipeline
    (:func:`~.pipeline.seg_train_kwargs_from_pipeline` gives the crop, scale, ratio range, ``cat_max_ratio``,
    photometric distortion and normalisation), ``data.val`` / ``data.test.pipeline`` its test pipeline
    (:func:`~.pipeline.seg_test_settings_from_pipeline`: the test scale, ratios, flip, ``ResizeToMultiple``,
    ``PadShortSide``, normalisation). Besides ``type`` and ``pipeline`` a section holds the shard folder and the
    loaders' own options (``ignore_index``, ``max_bad_fraction``, ``shuffle``, ...)."""

    TRANSLATED = ("type", "pipeline")

    @staticmethod
    def _refuse_pipeline_keys(section: Mapping, where: str, train: bool) -> None:
        """The loader arguments a pipeline gives are not keys of a data section (one recipe dialect)."""
        given = [k for k in (*SEG_PIPELINE_KWARGS, "img_norm_cfg") if k in section]
        if given:
            step = ("mmseg's train pipeline (Resize(img_scale, ratio_range), RandomCrop(crop_size, cat_max_ratio), "
                    "PhotoMetricDistortion, Normalize(**img_norm_cfg), ...)" if train else
                    "mmseg's test pipeline (MultiScaleFlipAug(img_scale, ...), Normalize(**img_norm_cfg), ...)")
            raise ConfigError(f"recipe: {where} sets {given}: these come from {where}.pipeline, {step}, as in the "
                              "official configs (see vit_adapter_ds/recipes/_base_/datasets/ade20k.py)")
        if section.get("pipeline") is None:
            kind = "train_pipeline" if train else "test_pipeline"
            raise ConfigError(f"recipe: {where}.pipeline is required: the official {kind} (see "
                              "vit_adapter_ds/recipes/_base_/datasets/ade20k.py)")

    @classmethod
    def _kwargs(cls, fn, section, where):
        train = fn is TrainLoader.__init__
        cls._refuse_pipeline_keys(section, where, train)
        kw = signature_kwargs(fn, section, where, skip=cls.TRANSLATED, supplied=ENGINE_SUPPLIED)
        if "shard_dir" not in kw:
            raise ConfigError(f"recipe: {where}.shard_dir is required")
        ignore = kw.get("ignore_index", 255)
        if not train:
            te = seg_test_settings_from_pipeline(section["pipeline"], f"{where}.pipeline", ignore)
            return {**kw, "mean": te["mean"], "std": te["std"]}
        return {**kw, **seg_train_kwargs_from_pipeline(section["pipeline"], f"{where}.pipeline", ignore)}

    @classmethod
    def check_config(cls, data: Mapping, evaluation: Mapping | None = None) -> None:
        cls._kwargs(TrainLoader.__init__, data["train"], "data.train")
        for split in ("val", "test"):
            if data.get(split) is not None:
                cls._kwargs(ValLoader.__init__, data[split], f"data.{split}")
                cls.test_settings(data, evaluation, split)

    @classmethod
    def test_settings(cls, data: Mapping, evaluation: Mapping | None = None, split: str = "val") -> dict:
        """What the evaluation of ``data.<split>`` (``data.val`` when the recipe has no such split) uses, from its
        official test pipeline: ``img_scale``, ``size_divisor``, ``img_ratios``, ``flip``, ``ms_resize``,
        ``pad_short_side`` and ``mean`` / ``std``. ``evaluation.ms_resize`` (the resize rule of a multi-scale test
        asked for on the command line) applies when the pipeline has no ``SETR_Resize`` of its own."""
        ev = dict(evaluation or {})
        section = data.get(split) or data.get("val") or {}
        where = f"data.{split}" if data.get(split) is not None else "data.val"
        cls._refuse_pipeline_keys(section, where, train=False)
        out = seg_test_settings_from_pipeline(section["pipeline"], f"{where}.pipeline",
                                              section.get("ignore_index", 255))
        if out["ms_resize"] is not None and ev.get("ms_resize") is not None:
            raise ConfigError(f"recipe: evaluation sets ['ms_resize'] and {where}.pipeline gives it (SETR_Resize); "
                              "set it in one place (the test pipeline)")
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
