"""Panoptic segmentation (the official ``mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic`` recipe): the
panoptic Mask2Former detector (``model.type='Mask2Former'``, :mod:`~vit_adapter_ds.models.detectors.mask2former_panoptic`)
on COCO panoptic shards (``data.train.type='CocoPanopticDataset'`` or another catalog entry with ``task='panoptic'``;
``make_shards coco_panoptic`` / ``make_shards synthetic --layout coco_panoptic``), evaluated by PQ.

* ``data.train`` / ``data.val`` / ``data.test``: ``type``, ``shard_dir``, the official ``pipeline`` (train:
  ``LoadPanopticAnnotations(with_bbox, with_mask, with_seg)``, the AutoAugment Resize / RandomCrop policies,
  ``Pad(size_divisor=32)``, translated by :func:`~vit_adapter_ds.data.pipeline.train_ops_from_pipeline`; test:
  ``MultiScaleFlipAug`` single scale, no flip) and the detection loaders' own keys: the loaders are
  :class:`~vit_adapter_ds.data.panoptic_loader.PanopticTrainLoader` / ``PanopticValLoader`` (the detection loaders'
  resumable sampler, orientation groups and bad-sample rule).
* The loss: the detector's on the batch's ``targets`` (things) and ``semantic_seg`` (every segment's label, 255
  void); under gradient accumulation the mask / dice losses are normalised over the whole step
  (:meth:`~vit_adapter_ds.models.detectors.mask2former_panoptic.Mask2Former.step_loss_normaliser`).
* ``evaluation.metric``: ``'PQ'`` (:func:`~vit_adapter_ds.evaluation.panoptic.evaluate_panoptic`: ``PQ``, ``SQ``,
  ``RQ``, ``PQ_th``, ..., ``PQ_st``, ... in percent, plus per class) and, as the official recipe
  (``metric=['PQ', 'bbox', 'segm']``, evaluated with mmdet 2.25), ``'bbox'`` / ``'segm'``: the instance AP of the
  model's ``ins_results`` (``test_cfg.instance_on=True``) against ``data.<split>.ins_ann_file``, COCO's instances
  JSON (``annotations/instances_val2017.json``; a path, relative to the working directory as in mmdet), read when
  the evaluation starts (a missing file stops the run before its first step, not at its first evaluation).
  ``save_best='auto'`` means ``PQ``; ``bbox_mAP`` etc. may be named too.
* ``launch/predict.py``: the panoptic segments drawn over each image (:func:`~vit_adapter_ds.evaluation.visualize.
  draw_panoptic`); ``--save-json``: also COCO's panoptic prediction format, ``<stem>_panoptic.png`` (segment id =
  R + 256 G + 256^2 B) and ``<stem>.json`` with its ``segments_info``.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torchvision  # noqa: F401

from ..config.errors import ConfigError
from ..config.keys import signature_kwargs, to_plain
from ..config.schema import DET_METRICS, PAN_METRICS
from ..data.datasets import DETECTION_SUPPLIED
from .detection import ObjectDetection, _cli_section

# set by the engine / the model / the translated pipeline, never by the recipe's data.<split> (the detection rule)
SUPPLIED = DETECTION_SUPPLIED


def is_panoptic_recipe(cfg) -> bool:
    """Whether ``data.train.type`` names a catalog dataset of the panoptic task (``'CocoPanopticDataset'``)."""
    from ..data.catalog import get_dataset

    kind = ((cfg.get("data") or {}).get("train") or {}).get("type")
    try:
        return isinstance(kind, str) and get_dataset(kind).task == "panoptic"
    except KeyError:
        return False


def _section(data, split):
    from ..data.catalog import resolve_type

    section = data.get(split)
    if not isinstance(section, dict):
        raise ConfigError(f"recipe: data.{split} must be a dict with shard_dir and pipeline")
    resolve_type(section.get("type"), "panoptic", f"data.{split}")
    section = {k: v for k, v in section.items() if k != "ins_ann_file"}  # read by the 'bbox' / 'segm' evaluation
    for key in ("shard_dir", "pipeline"):
        if key not in section:
            raise ConfigError(f"recipe: data.{split}.{key} is required")
    return section


def train_loader_kwargs(data) -> dict:
    from ..data.detection import DetectionTrainLoader
    from ..data.pipeline import train_ops_from_pipeline

    section = _section(data, "train")
    kw = signature_kwargs(DetectionTrainLoader.__init__, section, "data.train", skip=("type", "pipeline"),
                          supplied=SUPPLIED)
    tr = train_ops_from_pipeline(section["pipeline"], "data.train.pipeline")
    if not any(op == "load_seg" for op, _ in tr["ops"]):
        raise ConfigError("recipe: data.train.pipeline must load the panoptic annotations: "
                          "LoadPanopticAnnotations(with_bbox=True, with_mask=True, with_seg=True)")
    return {**kw, "ops": tr["ops"], "mean": tr["mean"], "std": tr["std"]}


def val_loader_kwargs(data, split="val") -> dict:
    from ..data.detection import DetectionValLoader
    from ..data.pipeline import test_cfg_from_pipeline, tta_from_pipeline

    section = _section(data, split)
    kw = signature_kwargs(DetectionValLoader.__init__, section, f"data.{split}", skip=("type", "pipeline"),
                          supplied=SUPPLIED)
    where = f"data.{split}.pipeline"
    if tta_from_pipeline(section["pipeline"], where) is not None:
        raise ConfigError(f"recipe: {where}: test-time augmentation is not implemented for the panoptic task")
    te = test_cfg_from_pipeline(section["pipeline"], where)
    return {**kw, "scale": te["scale"], "mean": te["mean"], "std": te["std"]}


def instance_iou_types(cfg) -> tuple[str, ...]:
    """The instance metrics (``'bbox'`` / ``'segm'``) that ``evaluation.metric`` lists besides ``'PQ'``."""
    metric = (cfg.get("evaluation") or {}).get("metric", ["PQ"])
    metric = [metric] if isinstance(metric, str) else list(metric)
    return tuple(dict.fromkeys(m for m in metric if m in ("bbox", "segm")))


def ins_ann_file(cfg, split: str = "val"):
    """``data.<split>.ins_ann_file`` when the recipe evaluates ``'bbox'`` / ``'segm'`` (ConfigError naming the key
    when it is not set), else None."""
    if not instance_iou_types(cfg):
        return None
    section = ((cfg.get("data") or {}).get(split)) or {}
    path = section.get("ins_ann_file")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"recipe: evaluation.metric lists {list(instance_iou_types(cfg))}, the instance AP against "
                          f"COCO's instances JSON: set data.{split}.ins_ann_file (e.g. "
                          "'data/coco/annotations/instances_val2017.json'), or evaluate metric=['PQ'] only")
    return path


class PanopticSegmentation(ObjectDetection):
    """The detection task's model parts (build, checkpoints, layer decay), panoptic data and PQ (module doc)."""

    name = "panoptic_segmentation"
    best_metric = "PQ"
    eval_metrics = ("PQ", "bbox", "segm")
    best_metrics = PAN_METRICS + DET_METRICS
    epoch_runner = False
    cli_options = ("save_json", "image_format", "shards")
    image_options = cli_options

    def check_engine_sections(self, cfg) -> None:
        super().check_engine_sections(cfg)
        if (cfg.get("data") or {}).get("val") is not None:
            ins_ann_file(cfg, "val")

    def _instance_setup(self, split: str) -> dict:
        """``iou_types`` / ``ins_ann_file`` of the evaluation of ``split``, the file checked to exist."""
        import os

        path = ins_ann_file(self.cfg, split)
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"data.{split}.ins_ann_file={path!r}: no such file (COCO's instances JSON for "
                                    f"evaluation.metric {list(instance_iou_types(self.cfg))})")
        return {"iou_types": instance_iou_types(self.cfg), "ins_ann_file": path}

    def validate(self):
        """The detector on the meta device (must be a panoptic one: ``pan_results``), the loaders' arguments and
        the catalog's panoptic evaluator."""
        from ..evaluation.registry import recipe_evaluator

        model = self._build("meta")
        if not hasattr(model, "num_things_classes"):
            raise ConfigError(f"recipe: model.type={self._model_cfg().get('type')!r} is not a panoptic model; "
                              "the panoptic task trains model.type='Mask2Former'")
        if instance_iou_types(self.cfg) and not model.test_cfg.get("instance_on"):
            raise ConfigError(f"recipe: evaluation.metric lists {list(instance_iou_types(self.cfg))}, which scores the "
                              "model's instance results: set model.test_cfg.instance_on=True")
        self._num_classes = int(model.num_classes)
        data = to_plain(self.cfg.data)
        train_loader_kwargs(data)
        for split in ("val", "test"):
            if data.get(split) is not None:
                val_loader_kwargs(data, split)
        recipe_evaluator(data, "panoptic")
        return model

    def build_train_loader(self, rank: int, world_size: int, seed: int):
        from ..data.panoptic_loader import PanopticTrainLoader

        data = to_plain(self.cfg.data)
        return PanopticTrainLoader(batch_size=data["samples_per_gpu"], num_workers=data.get("workers_per_gpu", 0),
                                   seed=seed, rank=rank, world_size=world_size, num_classes=self.num_classes,
                                   **train_loader_kwargs(data))

    def build_val_loader(self, rank: int, world_size: int, split: str = "val"):
        from ..data.panoptic_loader import PanopticValLoader

        data = to_plain(self.cfg.data)
        if data.get(split) is None:
            return None
        self._instance_setup(split)  # a missing ins_ann_file stops the run now, not at its first evaluation
        return PanopticValLoader(rank=rank, world_size=world_size, num_workers=0, num_classes=self.num_classes,
                                 **val_loader_kwargs(data, split))

    def forward_loss(self, model, batch, device, dtype) -> dict:
        img = batch["img"].to(device, non_blocking=True)
        img = img.to(dtype) if img.is_floating_point() else img
        targets = [{k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in t.items()}
                   for t in batch["targets"]]
        return model(img, targets, semantic_labels=batch["semantic_seg"].to(device, non_blocking=True))

    def step_context(self, model, batches: list):
        """The mask / dice losses of every micro-step divided by the step's mean matched-mask count (all
        micro-batches, all ranks), as the official 16-rank step."""
        return model.step_loss_normaliser([(b["targets"], b["semantic_seg"]) for b in batches])

    def evaluate(self, model, val_loader, dtype, num_vis: int):
        """PQ over the validation shards (every image once over all ranks) by the catalog entry's evaluator."""
        import torch

        from ..evaluation.registry import recipe_evaluator

        evaluate = recipe_evaluator(to_plain(self.cfg.data), "panoptic")
        autocast = dtype if dtype in (torch.float16, torch.bfloat16) else None
        metrics = evaluate(model, val_loader, val_loader.categories, dtype=autocast, **self._instance_setup("val"))
        return {k: float(v) for k, v in metrics.items()}, []

    def foreign_options_hint(self, split: str) -> str:
        return (f"; a panoptic recipe's test scale comes from its data.{split}.pipeline and its kept segments from "
                "model.test_cfg.object_mask_thr")

    def evaluate_checkpoint(self, checkpoint, *, split="val", shards=None, num_workers=2, device="cpu", bf16=False,
                            rank=0, world_size=1, **_options):
        """PQ of ``checkpoint`` on the ``split`` shards with the recipe's test pipeline: ``(summary, record)``."""
        import torch

        from ..evaluation.registry import recipe_evaluator

        from .detection import format_coco_metrics

        evaluate = recipe_evaluator(to_plain(self.cfg.data), "panoptic", split)
        shard_dir = _cli_section(self.cfg, split, shards)["shard_dir"]
        instances = self._instance_setup(split)
        loader = self.build_val_loader(rank, world_size, split=split)
        loader.num_workers = num_workers
        model = self.build_eval_model(checkpoint, device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bool(bf16)):
            res = evaluate(model, loader, loader.categories, device=device, progress=rank == 0, **instances)
        res = {k: float(v) for k, v in res.items()}
        report = "  ".join(f"{k} {res[k]:.2f}" for k in PAN_METRICS)
        if instances["iou_types"]:
            report += "\n" + format_coco_metrics(res, instances["iou_types"])
        record = dict(res, checkpoint=str(checkpoint), shards=str(shard_dir), split=split)
        if instances["ins_ann_file"] is not None:
            record["ins_ann_file"] = instances["ins_ann_file"]
        return report, record

    def image_predictor(self, model, *, split="val", bf16=False, shards=None, save_json=False, image_format=None,
                        **_eval_options):
        """What predicts single images: the recipe's test scale and normalisation of ``data.<split>`` (no score
        threshold: the fusion head's ``object_mask_thr`` decides); categories from the manifest of ``shards`` /
        ``data.<split>.shard_dir`` when readable (:func:`panoptic_categories`)."""
        section = _cli_section(self.cfg, split, shards)
        kw = val_loader_kwargs(to_plain(self.cfg.data), split)
        test_tf = SimpleNamespace(scale=kw["scale"], mean=kw["mean"], std=kw["std"])  # what val_loader_item reads
        return PanopticImagePredictor(model, test_tf, panoptic_categories(section["shard_dir"], split, model),
                                      bf16=bf16, save_json=save_json, image_format=image_format)


class PanopticImagePredictor:
    """One image -> :class:`~vit_adapter_ds.tasks.results.PanopticResult`; draws the segments
    (:func:`~vit_adapter_ds.evaluation.visualize.draw_panoptic`: class colours, thing instances apart, names) as
    ``<stem>.<image_format>`` and, with ``save_json``, writes COCO's panoptic prediction format: ``<stem>_panoptic.png``
    and ``<stem>.json`` (``segments_info``: ``id``, ``category_id``, ``name``, ``isthing``, ``area``, ``bbox``)."""

    def __init__(self, model, test_tf, categories, *, bf16=False, save_json=False, image_format=None):
        self.model, self.test_tf, self.categories = model, test_tf, categories
        self.classes = [str(c["name"]) for c in categories]
        self.bf16, self.save_json, self.image_format = bool(bf16), bool(save_json), image_format or "png"

    def settings(self) -> dict:
        return {"scale": self.test_tf.scale, "mean": self.test_tf.mean, "std": self.test_tf.std}

    def predict(self, rgb):
        from .results import DetectionResult, PanopticResult
        from ..evaluation.panoptic import panoptic_segments
        from .detection import predict_rgb

        pred = predict_rgb(self.model, self.test_tf, rgb, self.bf16)
        pan = pred.get("pan_results")  # absent when the recipe's test_cfg has panoptic_on=False
        ids, segments = ((np.zeros(rgb.shape[:2], np.int32), []) if pan is None
                         else panoptic_segments(pan.cpu().numpy(), self.categories))
        ins = pred.get("ins_results")
        instances = None if ins is None else DetectionResult.from_prediction(ins, rgb.shape[:2])
        return PanopticResult(np.asarray(ids, dtype=np.int32), segments, instances)

    def draw(self, rgb, result):
        from ..evaluation.visualize import draw_panoptic

        return draw_panoptic(rgb, result.segment_ids, result.segments, self.categories)

    def outputs(self, out_dir, stem) -> list:
        from pathlib import Path

        out = [Path(out_dir) / f"{stem}.{self.image_format}"]
        if self.save_json:
            out += [Path(out_dir) / f"{stem}_panoptic.png", Path(out_dir) / f"{stem}.json"]
        return out

    def write(self, out_dir, stem, rgb, result, source=None) -> list:
        """Write :meth:`outputs` (each file complete or absent; the JSON last)."""
        import json

        from PIL import Image

        from ..data.panoptic import id2rgb
        from ..evaluation.visualize import save_image
        from ..utils.files import write_text_aside, written_aside

        paths = self.outputs(out_dir, stem)
        with written_aside(paths[0]) as tmp:
            save_image(tmp, self.draw(rgb, result))
        if self.save_json:
            with written_aside(paths[1]) as tmp:
                Image.fromarray(id2rgb(result.segment_ids)).save(tmp)
            h, w = rgb.shape[:2]
            write_text_aside(paths[2], json.dumps({"image": str(source if source is not None else stem),
                                                   "height": int(h), "width": int(w), "file_name": paths[1].name,
                                                   "segments_info": result.segments}))
        return paths

    def summary(self, result) -> str:
        return result.summary()


def panoptic_categories(shard_dir, split, model) -> list[dict]:
    """The categories (label order: ``id``, ``name``, ``isthing``) from the manifest of ``shard_dir`` when readable
    and of the model's size, else the model's labels as ``class <i>`` (things first)."""
    from ..data.manifest import ShardSetError, read_manifest

    n, things = int(model.num_classes), int(model.num_things_classes)
    try:
        cats = read_manifest(shard_dir, split).get("categories") or []
    except (ShardSetError, OSError, ValueError):
        cats = []
    if len(cats) == n and sum(bool(c.get("isthing")) for c in cats) == things:
        return [{"id": int(c["id"]), "name": str(c["name"]), "isthing": int(bool(c["isthing"]))} for c in cats]
    return [{"id": i + 1, "name": f"class {i}", "isthing": int(i < things)} for i in range(n)]
