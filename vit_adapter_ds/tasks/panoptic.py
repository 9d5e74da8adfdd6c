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
  ``RQ``, ``PQ_th``, ..., ``PQ_st``, ... in percent, plus per class); ``save_best='auto'`` means ``PQ``. The
  official recipe also lists ``'bbox'`` / ``'segm'`` (instance AP of the ``ins_results`` against
  ``data.val.ins_ann_file``, COCO's instances JSON): that file is not in the shards, so those metrics are refused
  (set ``evaluation.metric=['PQ']``) rather than dropped silently; ``ins_ann_file`` itself is accepted and not read.
"""
from __future__ import annotations

import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torchvision  # noqa: F401

from ..config.errors import ConfigError
from ..config.keys import signature_kwargs, to_plain
from ..config.schema import PAN_METRICS
from ..data.datasets import DETECTION_SUPPLIED
from .detection import ObjectDetection

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
    section = {k: v for k, v in section.items() if k != "ins_ann_file"}  # read for 'bbox' / 'segm' only (refused)
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


class PanopticSegmentation(ObjectDetection):
    """The detection task's model parts (build, checkpoints, layer decay), panoptic data and PQ (module doc)."""

    name = "panoptic_segmentation"
    best_metric = "PQ"
    eval_metrics = ("PQ",)
    best_metrics = PAN_METRICS
    epoch_runner = False
    cli_options = ()

    def check_engine_sections(self, cfg) -> None:
        metric = (cfg.get("evaluation") or {}).get("metric", [])
        bad = [m for m in ([metric] if isinstance(metric, str) else metric) if m in ("bbox", "segm")]
        if bad:
            raise ConfigError(f"recipe: evaluation.metric={metric!r}: {bad} (instance AP against "
                              "data.val.ins_ann_file, COCO's instances JSON) is not supported by the panoptic task: "
                              "the shards hold the panoptic annotations only; use evaluation.metric=['PQ']")
        super().check_engine_sections(cfg)

    def validate(self):
        """The detector on the meta device (must be a panoptic one: ``pan_results``), the loaders' arguments and
        the catalog's panoptic evaluator."""
        from ..evaluation.registry import recipe_evaluator

        model = self._build("meta")
        if not hasattr(model, "num_things_classes"):
            raise ConfigError(f"recipe: model.type={self._model_cfg().get('type')!r} is not a panoptic model; "
                              "the panoptic task trains model.type='Mask2Former'")
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
        metrics = evaluate(model, val_loader, val_loader.categories, dtype=autocast)
        return {k: float(v) for k, v in metrics.items()}, []

    def foreign_options_hint(self, split: str) -> str:
        return f"; a panoptic recipe's test scale comes from its data.{split}.pipeline"

    def evaluate_checkpoint(self, checkpoint, *, split="val", shards=None, num_workers=2, device="cpu", bf16=False,
                            rank=0, world_size=1, **_options):
        """PQ of ``checkpoint`` on the ``split`` shards with the recipe's test pipeline: ``(summary, record)``."""
        import torch

        from ..evaluation.registry import recipe_evaluator
        from .detection import _cli_section

        evaluate = recipe_evaluator(to_plain(self.cfg.data), "panoptic", split)
        shard_dir = _cli_section(self.cfg, split, shards)["shard_dir"]
        loader = self.build_val_loader(rank, world_size, split=split)
        loader.num_workers = num_workers
        model = self.build_eval_model(checkpoint, device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bool(bf16)):
            res = evaluate(model, loader, loader.categories, device=device, progress=rank == 0)
        res = {k: float(v) for k, v in res.items()}
        report = "  ".join(f"{k} {res[k]:.2f}" for k in PAN_METRICS)
        record = dict(res, checkpoint=str(checkpoint), shards=str(shard_dir), split=split)
        return report, record

    def predict_images(self, checkpoint, paths, out_dir, **options):
        raise NotImplementedError("the panoptic task has no image prediction (launch/predict.py) yet")
