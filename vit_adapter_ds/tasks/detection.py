"""Object detection / instance segmentation (Mask R-CNN, HTC++, Cascade Mask R-CNN; box-only ATSS, GFL): the
detector, the COCO instance shard loaders, COCO AP.

The recipe's sections are the official mmdet ones:

* ``model``: ``type`` one of :data:`~vit_adapter_ds.models.detectors.DETECTORS` (``'MaskRCNN'``,
  ``'HybridTaskCascade'``, ``'HybridTaskCascadeAug'``, ``'CascadeRCNN'``, ``'ATSS'``, ``'GFL'``, ...) and its official
  keys (the class's
  ``from_config`` checks every key); the backbone's ``pretrained`` file is loaded into ``model.backbone`` by
  :meth:`ObjectDetection.build_model`. An HTC with a semantic head needs a train pipeline with the semantic maps
  (``LoadAnnotations(with_seg=True)`` / ``SegRescale``): :meth:`ObjectDetection.forward_loss` passes the batch's
  ``semantic_seg`` to the model.
* ``data.train`` / ``data.val`` (``data.test`` is ``launch/eval.py``'s): ``shard_dir`` (written by
  ``make_shards coco`` or ``make_shards synthetic --layout coco``), the official ``pipeline`` (translated by
  :func:`~vit_adapter_ds.data.pipeline.train_ops_from_pipeline` / ``test_cfg_from_pipeline``, which refuse
  steps they do not implement), optionally ``type='CocoDataset'`` and the loaders' own keyword arguments
  (:class:`~vit_adapter_ds.data.detection.DetectionTrainLoader` / ``DetectionValLoader``: ``max_bad_fraction``,
  ``shuffle``, ``filter_empty_gt``, ...). Batch size, workers, seed, ranks and the number of classes come from the
  engine and the model. A test pipeline whose ``MultiScaleFlipAug`` has several ``img_scale`` or ``flip=True``
  (the HTC++ ``_ms`` recipes) is evaluated with the official test-time augmentation
  (:class:`~vit_adapter_ds.models.detectors.htc_aug.HybridTaskCascadeAug`, ``model.type='HybridTaskCascadeAug'``):
  the val loader then delivers each image at its original size and the augmentations are made from it
  (:func:`tta_from_pipeline`).
* ``evaluation.metric``: ``'bbox'`` and / or ``'segm'`` (``'bbox'`` only for a box-only detector, whose class says
  ``with_mask = False``: ATSS, GFL; its train pipeline need not collect ``gt_masks``) (COCO AP through pycocotools, every image once over all
  ranks); the metrics are ``bbox_mAP``, ``bbox_mAP_50``, ..., ``segm_mAP``, ...; ``save_best='auto'`` means
  ``bbox_mAP``.

The engine trains by iteration (one iteration = one optimizer step). An epoch-based recipe (the official 3x:
``runner=dict(type='EpochBasedRunner', max_epochs=36)``, ``lr_config.step=[27, 33]`` in epochs, checkpoints and
evaluation every epoch) is rewritten in iterations by :meth:`ObjectDetection.validate` once the train shards are
readable (:func:`epochs_to_iterations`)::

    iterations per epoch L = ceil(len_per_epoch / accumulation)
    len_per_epoch = sum over the two orientation groups of ceil(n_g / (WORLD_SIZE * samples_per_gpu))
                    (the train loader's epoch, mmdet's DistributedGroupSampler; n_g trainable images of group g)
    accumulation  = global_batch_size / (WORLD_SIZE * samples_per_gpu)           (1 when global_batch_size is None)
    max_iters = max_epochs * L;   lr_config.step, checkpoint_config.interval, evaluation.interval (default 1): x L

``warmup_iters`` stays in iterations (mmcv warms up by iteration in both runners). The converted values are those in
the work dir's ``config.py``; the conversion is recorded under ``_epoch_conversion``.
"""
from __future__ import annotations

import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torchvision  # noqa: F401

from ..config.errors import ConfigError
from ..config.keys import to_plain
from ..config.schema import DET_METRICS
from ..data.datasets import DetectionShards
from ..data.pipeline import collects_masks, has_semantic_maps, tta_from_pipeline  # noqa: F401  (here and tests)
from .base import Task

DEFAULT_SCORE_THR = 0.3  # launch/predict.py draws the detections scoring at least this
# The recipe dialect (data.<split> -> loader keyword arguments; data.<split>.type: absent or a detection dataset of
# the catalog, e.g. 'CocoDataset') and the official-pipeline translator live in data/ (datasets.py, pipeline.py).
train_loader_kwargs = DetectionShards.train_kwargs
val_loader_kwargs = DetectionShards.val_kwargs


def test_settings(data: dict, split: str = "val"):
    """What a val loader carries for testing, from ``data.<split>``'s pipeline: ``scale`` (None with test-time
    augmentation: original size), ``mean``, ``std`` and ``test_aug`` (:func:`tta_from_pipeline`); enough for
    :func:`val_loader_item` and :meth:`ObjectDetection.predictor` on images that are not in shards."""
    from types import SimpleNamespace

    kw = val_loader_kwargs(data, split)
    return SimpleNamespace(scale=kw["scale"], mean=kw["mean"], std=kw["std"],
                           test_aug=tta_from_pipeline(data[split]["pipeline"], f"data.{split}.pipeline"))


def iou_types(cfg) -> tuple[str, ...]:
    """``evaluation.metric`` as COCO iou types (default both)."""
    metric = (cfg.get("evaluation") or {}).get("metric", ["bbox", "segm"])
    metric = [metric] if isinstance(metric, str) else list(metric)
    bad = [m for m in metric if m not in ("bbox", "segm")]
    if bad or not metric:
        raise ConfigError(f"recipe: evaluation.metric={metric!r}: the detection task evaluates 'bbox' and / or "
                          "'segm'")
    return tuple(dict.fromkeys(metric))


def epochs_to_iterations(cfg, iters_per_epoch: int) -> None:
    """Rewrite an ``EpochBasedRunner`` recipe (mmengine ``Config`` or dict, in place) in iterations: ``runner``,
    epoch-based ``lr_config.step`` (``by_epoch`` absent or True, mmcv's default; a by-epoch ``CosineAnnealing`` is
    recorded as ``_epoch_conversion['lr_by_epoch']``, its progress stays the epoch), ``checkpoint_config.interval``
    (same rule) and ``evaluation.interval`` (mmdet's default: every epoch) times ``iters_per_epoch``."""
    L = int(iters_per_epoch)
    if L < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    epochs = int(cfg["runner"]["max_epochs"])
    cfg["runner"] = {"type": "IterBasedRunner", "max_iters": epochs * L}
    lc = cfg["lr_config"]
    lr_by_epoch = False
    if lc.get("by_epoch", True):
        if "step" in lc:
            step = lc["step"]
            lc["step"] = int(step) * L if isinstance(step, int) else [int(v) * L for v in step]
        lr_by_epoch = lc.get("policy") == "CosineAnnealing"  # the epoch's rate (engine/schedule.py)
        lc["by_epoch"] = False
    ck = cfg.get("checkpoint_config")
    if ck is not None and ck.get("by_epoch", True):
        if "interval" in ck:
            ck["interval"] = int(ck["interval"]) * L
        ck["by_epoch"] = False
    ev = cfg.get("evaluation")
    if ev is not None:
        ev["interval"] = int(ev.get("interval", 1)) * L
    cfg["_epoch_conversion"] = {"max_epochs": epochs, "iters_per_epoch": L, **({"lr_by_epoch": True} if lr_by_epoch
                                                                                else {})}


class ObjectDetection(Task):
    name = "object_detection"
    best_metric = "bbox_mAP"
    eval_metrics = ("bbox", "segm")
    best_metrics = DET_METRICS
    epoch_runner = True  # converted to iterations with the loader's epoch length (schedule_kwargs)
    # COCO result files (format only: no AP); predict: score threshold, JSON next to the pictures, picture format,
    # the shards whose manifest names the classes
    cli_options = ("out_json", "format_only", "score_thr", "save_json", "image_format", "shards")
    image_options = ("score_thr", "save_json", "image_format", "shards")

    def __init__(self, cfg):
        super().__init__(cfg)
        self._num_classes = None

    def _model_cfg(self) -> dict:
        return to_plain(self.cfg.model)

    def _detector_class(self):
        from ..models.detectors import DETECTORS

        kind = self._model_cfg().get("type")
        if kind not in DETECTORS:
            raise ConfigError(f"recipe: model.type={kind!r} is not a detector; choose one of {sorted(DETECTORS)}")
        return DETECTORS[kind]

    def _build(self, device=None):
        import torch

        cls = self._detector_class()
        if device is None:
            return cls.from_config(self._model_cfg(), "model")
        with torch.device(device):
            return cls.from_config(self._model_cfg(), "model")

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Build the detector on the meta device (every model key checked), translate the pipelines and check the
        loader arguments and ``evaluation.metric`` (and that the dataset's catalog entry names a detection
        evaluator); returns the meta model."""
        from ..evaluation.registry import recipe_evaluator

        model = self._build("meta")
        self._num_classes = int(model.num_classes)
        data = to_plain(self.cfg.data)
        train_loader_kwargs(data)
        if _semantic_head(model) is not None and not has_semantic_maps(data["train"]["pipeline"]):
            raise ConfigError("recipe: model.roi_head.semantic_head needs the semantic maps in training: "
                              "data.train.pipeline must have LoadAnnotations(with_seg=True) and SegRescale")
        for split in ("val", "test"):
            if data.get(split) is not None:
                val_loader_kwargs(data, split)
                aug = tta_from_pipeline(data[split]["pipeline"], f"data.{split}.pipeline")
                if aug is not None and not hasattr(model, "aug_test"):
                    raise ConfigError(f"recipe: data.{split}.pipeline asks for test-time augmentation "
                                      f"({len(aug['scales'])} scales, flip={aug['flip']}), which needs "
                                      f"model.type='HybridTaskCascadeAug' (got {self._model_cfg().get('type')!r})")
                if aug is not None and len(model.aug_cfg["scale_ranges"]) < len(aug["scales"]):
                    raise ConfigError(f"recipe: model.test_cfg.aug.scale_ranges has "
                                      f"{len(model.aug_cfg['scale_ranges'])} entries for the "
                                      f"{len(aug['scales'])} scales of data.{split}.pipeline")
        box_only = not getattr(model, "with_mask", True)  # ATSS, GFL, ...: class attribute with_mask = False
        if box_only and "segm" in iou_types(self.cfg):
            raise ConfigError(f"recipe: evaluation.metric asks for 'segm', but model.type="
                              f"{self._model_cfg().get('type')!r} predicts boxes only: use metric=['bbox']")
        if not box_only and not collects_masks(data["train"]["pipeline"]):
            raise ConfigError(f"recipe: model.type={self._model_cfg().get('type')!r} predicts masks and trains on "
                              "them: data.train.pipeline's Collect must have gt_masks")
        recipe_evaluator(data, "detection")
        if self.cfg["runner"].get("type") == "EpochBasedRunner":
            self._convert_epochs(data)
        return model

    def _convert_epochs(self, data: dict) -> None:
        """:func:`epochs_to_iterations` with this run's iterations per epoch (module docstring); left as it is
        (validation only) when local train shards are not there. Remote shard sets (``s3://``, ``gs://``,
        ``https://``) are always read: their manifest gives the epoch length."""
        import math
        import os
        from pathlib import Path

        from ..data.remote import is_remote

        shard_dir = str(data["train"]["shard_dir"])
        if not is_remote(shard_dir) and not Path(shard_dir).exists():
            return
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_step = world * int(data["samples_per_gpu"])
        gbs = self.cfg.get("global_batch_size")
        if gbs is not None and gbs % per_step:
            raise ConfigError(f"recipe: global_batch_size {gbs} is not a multiple of {world} ranks x "
                              f"data.samples_per_gpu {data['samples_per_gpu']}")
        accumulation = gbs // per_step if gbs is not None else 1
        from ..data.manifest import ShardSetError

        try:
            loader = self.build_train_loader(rank=0, world_size=world, seed=0)
        except ShardSetError as e:
            raise ConfigError(f"recipe: data.train: {e}") from e
        epochs_to_iterations(self.cfg, math.ceil(loader.len_per_epoch / accumulation))

    # ------------------------------------------------------------------ parts
    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = int(self._build("meta").num_classes)
        return self._num_classes

    def build_model(self, load_pretrained: bool = True):
        """The detector; with ``load_pretrained`` its backbone loads the recipe's ``pretrained`` file (report kept as
        ``model.pretrained_report``)."""
        model = self._build()
        model.pretrained_report = None
        if load_pretrained and getattr(model, "pretrained", None):
            from ..models.factory import load_pretrained as load_backbone_weights
            model.pretrained_report = load_backbone_weights(model.backbone, model.pretrained)
        return model

    def checkpoint_filter(self, state_dict, model, report=None):
        """``--load-from`` / ``--checkpoint`` of a released detection checkpoint: the official mmdet key layout is
        converted (:func:`~vit_adapter_ds.models.detectors.keymap.mmdet_checkpoint_filter`)."""
        from ..models.detectors.keymap import mmdet_checkpoint_filter

        return mmdet_checkpoint_filter(state_dict, model, report)

    def build_eval_model(self, checkpoint, device="cpu"):
        """The detector (no pretrained backbone file is read) with ``checkpoint`` loaded strictly (any kind the
        checkpoint reader reads; official mmdet keys converted by :meth:`checkpoint_filter`), in eval mode; a
        checkpoint of another recipe is refused naming the keys that do not fit."""
        from ..checkpoint.reader import CheckpointError
        from ..checkpoint.loading import load_into

        model = self.build_model(load_pretrained=False)
        what = f"--checkpoint {checkpoint} does not match the recipe's {type(model).__name__}"
        try:
            report = load_into(model, checkpoint, filter_fn=self.checkpoint_filter)
        except CheckpointError as e:  # shape mismatches, unreadable files, unknown official keys
            raise CheckpointError(f"{what}: {e}") from e
        if report.missing or report.unexpected:
            raise CheckpointError(f"{what} (written for another recipe or model size?): "
                                  f"{_some(report.missing)} missing from the file; "
                                  f"{_some(report.unexpected)} in the file but not in the model")
        return model.to(device).eval()

    def build_train_loader(self, rank: int, world_size: int, seed: int):
        from ..data.detection import DetectionTrainLoader

        data = to_plain(self.cfg.data)
        loader = DetectionTrainLoader(batch_size=data["samples_per_gpu"], num_workers=data.get("workers_per_gpu", 0),
                                      seed=seed, rank=rank, world_size=world_size, num_classes=self.num_classes,
                                      **train_loader_kwargs(data))
        maps = getattr(loader, "semantic_classes", None)  # the shards' semantic label values are < maps
        if maps is not None:
            head = _semantic_head(self._build("meta"))
            if head is not None and maps > head.conv_logits.out_channels:
                raise ConfigError(f"recipe: model.roi_head.semantic_head.num_classes={head.conv_logits.out_channels}"
                                  f" is less than the {maps} semantic classes of the shards in "
                                  f"{data['train']['shard_dir']}")
        return loader

    def build_val_loader(self, rank: int, world_size: int, split: str = "val"):
        from ..data.detection import DetectionValLoader

        data = to_plain(self.cfg.data)
        if data.get(split) is None:
            return None
        loader = DetectionValLoader(rank=rank, world_size=world_size, num_workers=0, num_classes=self.num_classes,
                                    **val_loader_kwargs(data, split))
        loader.test_aug = test_settings(data, split).test_aug  # read by predictor / evaluate
        return loader

    def forward_loss(self, model, batch, device, dtype) -> dict:
        """Runs the detector on the batch; an HTC gets the batch's ``semantic_seg`` (None without it: a model with a
        semantic head then raises)."""
        img = batch["img"].to(device, non_blocking=True)
        img = img.to(dtype) if img.is_floating_point() else img
        targets = [{k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in t.items()}
                   for t in batch["targets"]]
        sem = batch.get("semantic_seg")
        if self._model_cfg().get("type") == "MaskRCNN" or sem is None:  # box-only detectors take no semantic maps
            return model(img, targets)
        return model(img, targets, semantic_labels=sem.to(device, non_blocking=True))

    @staticmethod
    def predictor(model, val_loader):
        """What predicts the val images: ``model`` itself, or for a loader with test-time augmentation
        (``val_loader.test_aug``, set by :meth:`build_val_loader`) an
        :class:`~vit_adapter_ds.models.detectors.htc_aug.AugTestPredictor` around it."""
        aug = getattr(val_loader, "test_aug", None)
        if aug is None:
            return model
        from ..models.detectors.htc_aug import AugTestPredictor

        return AugTestPredictor(model, aug["scales"], aug["flip"], val_loader.mean, val_loader.std)

    def evaluate(self, model, val_loader, dtype, num_vis: int):
        """COCO AP (``evaluation.metric``) over the validation shards, every image once over all ranks (with the
        recipe's test-time augmentation when its test pipeline asks for it, :meth:`predictor`); plus ``num_vis``
        pictures of this rank's first validation images with the predictions drawn."""
        import torch

        from ..evaluation.registry import recipe_evaluator

        evaluate_detector = recipe_evaluator(to_plain(self.cfg.data), "detection")  # the catalog entry's ('coco')
        autocast = dtype if dtype in (torch.float16, torch.bfloat16) else None
        predictor = self.predictor(model, val_loader)
        metrics = evaluate_detector(predictor, val_loader, val_loader.categories, dtype=autocast,
                                    iou_types=iou_types(self.cfg))
        metrics = {k: float(v) for k, v in metrics.items()}
        return metrics, self._pictures(predictor, val_loader, autocast, num_vis) if num_vis else []

    # ------------------------------------------------------------------ launch/eval.py, predict.py, export.py
    def foreign_options_hint(self, split: str) -> str:
        return (f"; a detection recipe's test scales and flip come from its data.{split}.pipeline (the *_ms recipes "
                "test with TTA)")

    def evaluate_checkpoint(self, checkpoint, *, split="val", shards=None, num_workers=2, device="cpu", bf16=False,
                            rank=0, world_size=1, out_json=None, format_only=False, **_predict_options):
        """COCO AP (``evaluation.metric``) of ``checkpoint`` on the ``split`` shards with the recipe's test pipeline
        (and its test-time augmentation); ``out_json``: also the COCO result files ``<out_json>.<iou>.json``
        (``format_only``: those only, no AP). ``(the AP table and counts, the --out record)``."""
        import torch

        from ..data.manifest import ShardSetError
        from ..evaluation.registry import recipe_evaluator
        from ..utils.redact import redact_url

        if format_only and not out_json:
            raise ConfigError("--format-only needs --out-json (where the COCO result files go)")
        iou = iou_types(self.cfg)
        evaluate_detector = recipe_evaluator(to_plain(self.cfg.data), "detection", split)
        shard_dir = _cli_section(self.cfg, split, shards)["shard_dir"]
        try:
            loader = self.build_val_loader(rank, world_size, split=split)
        except ShardSetError as e:
            raise ShardSetError(f"data.{split}.shard_dir={redact_url(shard_dir)}: {e}") from e
        loader.num_workers = num_workers
        model = self.predictor(self.build_eval_model(checkpoint, device), loader)  # the recipe's TTA, if any
        res = evaluate_detector(model, loader, loader.categories, device=device, iou_types=iou, progress=rank == 0,
                                dtype=torch.bfloat16 if bf16 else None, results_prefix=out_json,
                                format_only=format_only)
        n_total = int(loader.manifest["num_samples"])
        lines = [] if format_only else [format_coco_metrics(res, iou)]
        lines.append(f"{res['num_images']} of {n_total} images evaluated" + (
            f" ({n_total - res['num_images']} bad samples skipped)" if res["num_images"] != n_total else ""))
        lines += [f"{t} results (COCO format) -> {path}" for t, path in (res.get("results_files") or {}).items()]
        record = {k: v for k, v in res.items() if k != "results_files"}
        record.update(checkpoint=str(checkpoint), shards=str(shard_dir), split=split, iou_types=list(iou),
                      results_files=res.get("results_files"))
        return "\n".join(lines), record

    def image_predictor(self, model, *, split="val", bf16=False, shards=None, score_thr=None, save_json=False,
                        image_format=None, **_eval_options):
        """What predicts single images (``launch/predict.py``, ``launch/demo.py``, :mod:`vit_adapter_ds.apis`) with
        the recipe's test pipeline of ``data.<split>`` (scale, normalisation, test-time augmentation); class names,
        COCO ids and colours from the manifest of ``shards`` / ``data.<split>.shard_dir`` when readable. Drawing and
        JSON keep the detections scoring at least ``score_thr`` (default 0.3)."""
        section = _cli_section(self.cfg, split, shards)
        test_tf = test_settings(to_plain(self.cfg.data), split)  # the recipe's test scale, normalisation and TTA
        names, cat_ids, palette = class_info(section["shard_dir"], split, int(model.num_classes))
        return DetectionImagePredictor(self.predictor(model, test_tf), test_tf, int(model.num_classes), names,
                                       cat_ids, palette, score_thr=score_thr, bf16=bf16, save_json=save_json,
                                       image_format=image_format)

    @classmethod
    def key_layout(cls, model_type):
        """``'MaskRCNN'`` / ``'HybridTaskCascade'`` / ``'CascadeRCNN'`` / ``'SingleStageDetector'`` (ATSS, GFL) /
        ``'SparseRCNN'``: the official mmdet layout a detector type exports to (``HybridTaskCascadeAug`` maps like
        ``HybridTaskCascade``); None for a type that is no detector."""
        from ..models.detectors import DETECTORS, CascadeRCNN, HybridTaskCascade, MaskRCNN, SparseRCNN
        from ..models.detectors.single_stage import SingleStageDetector

        det = DETECTORS.get(model_type)
        if det is None:
            return None
        if issubclass(det, SparseRCNN):
            return "SparseRCNN"
        if issubclass(det, SingleStageDetector):
            return "SingleStageDetector"
        if issubclass(det, CascadeRCNN):
            return "CascadeRCNN"
        if issubclass(det, HybridTaskCascade):  # HybridTaskCascadeAug too
            return "HybridTaskCascade"
        if issubclass(det, MaskRCNN):
            return "MaskRCNN"
        return None

    @classmethod
    def official_state_dict(cls, state_dict, model_type):
        """This package's detector keys -> the official mmdet ones
        (:func:`~vit_adapter_ds.models.detectors.keymap.to_official`; ``KeyError`` for keys that fit no layout)."""
        if cls.key_layout(model_type) is None:
            return state_dict
        from ..models.detectors.keymap import to_official

        return to_official(state_dict, model_type)

    @staticmethod
    def _pictures(model, val_loader, autocast, num_vis: int) -> list:
        import torch

        from ..data.detection import decode_det_sample
        from ..evaluation.visualize import draw_detections

        device = next(model.parameters()).device
        names = [str(c.get("name", k)) for k, c in enumerate(getattr(val_loader, "categories", None) or [])] or None
        pictures = []
        was_training = model.training
        model.eval()
        try:
            for i in val_loader.indices[:num_vis]:
                img, _, _ = decode_det_sample(val_loader.reader.read_global(int(i)), val_loader.cat2label)
                img = img.as_subclass(torch.Tensor)
                x = val_loader_item(val_loader, img)
                with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    pred = model.predict(x["img"].to(device), [x["img_shape"]], [tuple(img.shape[-2:])])[0]
                pred = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                        for k, v in pred.items()}
                pictures.append(draw_detections(img.to(torch.uint8).contiguous(), pred, class_names=names))
        finally:
            model.train(was_training)
        return pictures


def _semantic_head(model):
    roi = getattr(model, "roi_head", None)
    return getattr(roi, "semantic_head", None)


def predict_rgb(model, test_tf, rgb, bf16: bool = False) -> dict:
    """``model.predict`` of one (H, W, 3) uint8 image through the test transform ``test_tf`` (what a val loader
    carries: scale, mean, std), with bf16 autocast when asked; the prediction at the image's size."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    img = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    x = val_loader_item(test_tf, img)
    autocast = torch.bfloat16 if bf16 else None
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return model.predict(x["img"].to(device), [x["img_shape"]], [tuple(img.shape[-2:])])[0]


def val_loader_item(val_loader, img):
    """The val loader's test transform of one uint8 CHW image: ``{'img': (1, 3, H, W), 'img_shape'}``."""
    from ..data import det_transforms as T

    x = T.test_transform(img, val_loader.scale) if val_loader.scale is not None else img
    return {"img": T.pad_batch([T.normalize(x, val_loader.mean, val_loader.std)], 32),
            "img_shape": tuple(int(v) for v in x.shape[-2:])}


def _some(keys, n: int = 4) -> str:
    keys = list(keys)
    if not keys:
        return "no keys"
    shown = ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} ({shown})"


def _cli_section(cfg, split: str, shards=None) -> dict:
    """``data.<split>`` (with ``shard_dir`` replaced by ``shards`` when given); a clear error when it is absent."""
    data = cfg.get("data") or {}
    if data.get(split) is None:
        other = "test" if split == "val" else "val"
        hint = f" (it has data.{other}: --split {other})" if data.get(other) is not None else ""
        raise ConfigError(f"the recipe has no data.{split} (its shard_dir and test pipeline){hint}")
    if shards:
        data[split]["shard_dir"] = str(shards)
    return data[split]


def format_coco_metrics(metrics: dict, iou_types) -> str:
    """The AP table: one row per iou type, the columns of :data:`~vit_adapter_ds.evaluation.coco.METRIC_NAMES`."""
    from ..evaluation.coco import METRIC_NAMES

    lines = ["       " + " ".join(f"{n:>7}" for n in METRIC_NAMES)]
    for t in iou_types:
        lines.append(f"{t:<6} " + " ".join(f"{metrics[f'{t}_{n}']:7.4f}" for n in METRIC_NAMES))
    return "\n".join(lines)


def class_info(shard_dir, split: str, num_classes: int):
    """``(names, category ids, palette)`` from the manifest of ``shard_dir`` when it is readable and has
    ``num_classes`` categories, else ``(None, None, None)`` (labels are drawn as class indices)."""
    from ..data.manifest import ShardSetError, read_manifest

    try:
        m = read_manifest(shard_dir, split)
    except (ShardSetError, OSError, ValueError):
        return None, None, None
    cats = m.get("categories") or []
    if len(cats) != num_classes:
        return None, None, None
    palette = m.get("palette")
    return ([str(c["name"]) for c in cats], [int(c["id"]) for c in cats],
            palette if palette is not None and len(palette) >= num_classes else None)


def detections_json(pred: dict, score_thr: float, names=None, cat_ids=None) -> list[dict]:
    """The detections scoring ``>= score_thr`` as dicts: ``bbox`` [x, y, w, h] (COCO), ``score``, ``label`` (class
    index), ``category_id`` / ``name`` (when known) and ``segmentation`` (COCO RLE, when the model predicts masks)."""
    import torch

    from ..evaluation.coco import encode_mask

    out = []
    for k in torch.nonzero(pred["scores"] >= score_thr).flatten().tolist():
        x1, y1, x2, y2 = (float(v) for v in pred["boxes"][k])
        label = int(pred["labels"][k])
        d = {"bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(pred["scores"][k]), "label": label}
        if cat_ids is not None:
            d["category_id"], d["name"] = cat_ids[label], names[label]
        if pred.get("masks") is not None:
            d["segmentation"] = encode_mask(pred["masks"][k].numpy())
        out.append(d)
    return out


class DetectionImagePredictor:
    """One image -> :class:`~vit_adapter_ds.tasks.results.DetectionResult` (every detection the model keeps) with the
    recipe's test pipeline; draws and writes the detections scoring at least ``score_thr``: ``<stem>.<image_format>``
    (the image with boxes, names, scores and masks drawn) and, with ``save_json``, ``<stem>.json``
    (:func:`detections_json`)."""

    def __init__(self, model, test_tf, num_classes, names=None, cat_ids=None, palette=None, *, score_thr=None,
                 bf16=False, save_json=False, image_format=None):
        self.model, self.test_tf, self.names, self.cat_ids, self.palette = model, test_tf, names, cat_ids, palette
        self.classes = list(names) if names is not None else [f"class {i}" for i in range(num_classes)]
        self.score_thr = DEFAULT_SCORE_THR if score_thr is None else float(score_thr)
        self.bf16, self.save_json, self.image_format = bool(bf16), bool(save_json), image_format or "png"

    def settings(self) -> dict:
        return {"scale": self.test_tf.scale, "test_aug": self.test_tf.test_aug, "mean": self.test_tf.mean,
                "std": self.test_tf.std, "score_thr": self.score_thr}

    def predict(self, rgb):
        from .results import DetectionResult

        return DetectionResult.from_prediction(predict_rgb(self.model, self.test_tf, rgb, self.bf16), rgb.shape[:2])

    def draw(self, rgb, result, score_thr: float | None = None):
        from ..evaluation.visualize import draw_detections

        thr = self.score_thr if score_thr is None else float(score_thr)
        return draw_detections(rgb, result.as_tensors(), thr, self.names, self.palette)

    def to_json(self, result, score_thr: float | None = None) -> list[dict]:
        """The detections scoring at least the threshold as COCO-style dicts (:func:`detections_json`)."""
        return detections_json(result.as_tensors(), self.score_thr if score_thr is None else float(score_thr),
                               self.names, self.cat_ids)

    def outputs(self, out_dir, stem) -> list:
        from pathlib import Path

        out = [Path(out_dir) / f"{stem}.{self.image_format}"]
        return out + [Path(out_dir) / f"{stem}.json"] if self.save_json else out

    def write(self, out_dir, stem, rgb, result, source=None) -> list:
        """Write :meth:`outputs` (each file complete or absent)."""
        import json

        from ..evaluation.visualize import save_image
        from ..utils.files import write_text_aside, written_aside

        paths = self.outputs(out_dir, stem)
        with written_aside(paths[0]) as tmp:
            save_image(tmp, self.draw(rgb, result))
        if self.save_json:
            h, w = rgb.shape[:2]
            write_text_aside(paths[1], json.dumps({"image": str(source if source is not None else stem),
                                                   "height": int(h), "width": int(w), "score_thr": self.score_thr,
                                                   "detections": self.to_json(result)}))
        return paths

    def summary(self, result) -> str:
        return result.summary(self.score_thr)
