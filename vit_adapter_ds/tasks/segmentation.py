"""Semantic segmentation (UperNet / Mask2Former segmentors): the segmentor, the shard loaders, mIoU evaluation, and
checkpoint evaluation / mask prediction for ``launch/eval.py`` / ``launch/predict.py``."""
from __future__ import annotations

import numpy as np
import timm  # noqa: F401  (timm/torchvision before any DeepSpeed module construction, see the DeepSpeed notes)
import torchvision  # noqa: F401

from ..config.errors import ConfigError
from ..config.keys import to_plain
from ..config.schema import METRICS
from .base import Task

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # mmseg/ViT-Adapter multi-scale test ratios (ADE20K UperNet)


class SemanticSegmentation(Task):
    name = "semantic_segmentation"
    best_metric = "mIoU"
    eval_metrics = ("mIoU", "mDice")
    best_metrics = METRICS
    # test settings (mode, crop_size, stride: default the recipe's test_cfg), multi-scale / flip test, overlays
    cli_options = ("mode", "crop_size", "stride", "aug_test", "ratios", "flip", "overlay")
    image_options = (*cli_options, "probabilities")

    def __init__(self, cfg):
        super().__init__(cfg)
        self._num_classes = None

    def _model_cfg(self) -> dict:
        return to_plain(self.cfg.model)

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Build the model on the meta device (every model key checked by its table entry) and check the loader
        arguments; returns the meta model (the engine checks its optimizer groups on it)."""
        from ..data.datasets import dataset_class
        from ..evaluation.registry import recipe_evaluator
        from ..models.registry import build_model

        model = build_model(self._model_cfg(), device="meta")
        self._num_classes = int(model.num_classes)
        data = to_plain(self.cfg.data)
        dataset_class(data, "train").check_config(data, to_plain(self.cfg.get("evaluation") or {}))
        recipe_evaluator(data, "segmentation")
        return model

    # ------------------------------------------------------------------ parts
    @property
    def num_classes(self) -> int:
        """The segmentor's number of classes (what its head predicts, whatever the head calls it)."""
        if self._num_classes is None:
            from ..models.registry import build_model
            self._num_classes = int(build_model(self._model_cfg(), device="meta").num_classes)
        return self._num_classes

    def build_model(self, load_pretrained: bool = True):
        from ..models.registry import build_model
        return build_model(self._model_cfg(), load_pretrained=load_pretrained)

    def build_train_loader(self, rank: int, world_size: int, seed: int):
        from ..data.datasets import dataset_class
        data = to_plain(self.cfg.data)
        return dataset_class(data, "train").train_loader(data, rank=rank, world_size=world_size, seed=seed,
                                                         num_classes=self.num_classes)

    def build_val_loader(self, rank: int, world_size: int):
        from ..data.datasets import dataset_class
        data = to_plain(self.cfg.data)
        if data.get("val") is None:
            return None
        return dataset_class(data, "val").val_loader(data, rank=rank, world_size=world_size,
                                                     num_classes=self.num_classes)

    def forward_loss(self, model, batch, device, dtype) -> dict:
        img = batch["img"].to(device, non_blocking=True)
        img = img.to(dtype) if img.is_floating_point() else img
        return model(img, batch["gt_semantic_seg"].to(device, non_blocking=True))

    def step_context(self, model, batches: list):
        """The segmentor's context for one optimizer step over these batches' labels, if it has one (Mask2Former:
        the mask losses are normalised over every micro-batch of the step, as the official 16-rank step)."""
        hook = getattr(model, "step_loss_normaliser", None)
        return super().step_context(model, batches) if hook is None else hook([b["gt_semantic_seg"] for b in batches])

    def evaluate(self, model, val_loader, dtype, num_vis: int):
        """mIoU over the validation shards (every sample once over all ranks, per-class areas all-reduced) with the
        recipe's test pipeline, by the evaluator that the dataset's catalog entry names (``'miou'``:
        :func:`~vit_adapter_ds.evaluation.evaluator.evaluate_from_cfg`)."""
        from ..evaluation.registry import recipe_evaluator
        evaluate = recipe_evaluator(to_plain(self.cfg.data), "segmentation")
        return evaluate(model, val_loader, self.cfg, dtype=dtype, num_vis=num_vis, num_classes=self.num_classes)

    # ------------------------------------------------------------------ launch/eval.py, launch/predict.py
    def _split_settings(self, split="val") -> dict:
        """``data.<split>``'s test settings and mean / std (its official test pipeline)."""
        from ..data.datasets import SegmentationShards

        return SegmentationShards.test_settings(to_plain(self.cfg.get("data") or {}),
                                                to_plain(self.cfg.get("evaluation") or {}), split)

    def _test_settings(self, mode=None, crop_size=None, stride=None, split="val") -> dict:
        tc = dict(self.cfg.model.get("test_cfg") or {})
        st = self._split_settings(split)
        return dict(mode=mode or tc.get("mode"), crop_size=crop_size or tc.get("crop_size"),
                    stride=stride or tc.get("stride"), img_scale=st["img_scale"], size_divisor=st["size_divisor"],
                    ms_resize=st["ms_resize"], pad_short_side=st["pad_short_side"])

    @staticmethod
    def _aug(aug_test=False, ratios=None, flip=False) -> dict:
        ratios = list(MS_RATIOS) if aug_test and not ratios else ratios
        out = {"flip": bool(flip or aug_test)}
        if ratios:
            out["ratios"] = ratios
        return out

    def _recipe_aug(self, split="val", aug_test=False, ratios=None, flip=None) -> dict:
        """The test-time augmentation of ``data.<split>``'s pipeline (an official ``_ms`` recipe's
        ``MultiScaleFlipAug`` ratios / flip) unless overridden: ``aug_test`` / ``ratios`` replace its ratios,
        ``flip`` (None: the pipeline's) its flipping. The one rule of checkpoint evaluation and image prediction."""
        st = self._split_settings(split)
        if not (aug_test or ratios) and st["img_ratios"]:
            ratios = list(st["img_ratios"])
        return self._aug(aug_test, ratios, bool(st["flip"]) if flip is None else flip)

    def _norm(self, split="val") -> tuple[tuple, tuple]:
        st = self._split_settings(split)
        return tuple(st["mean"]), tuple(st["std"])

    def evaluate_checkpoint(self, checkpoint, *, split="val", shards=None, num_workers=2, device="cpu", bf16=False,
                            rank=0, world_size=1, mode=None, crop_size=None, stride=None, aug_test=False,
                            ratios=None, flip=False, overlay=False) -> tuple[str, dict]:
        """Dataset mIoU of ``checkpoint`` on the ``split`` shards (``shards`` or ``data.<split>.shard_dir``) with the
        recipe's test settings (or the given ones) and the multi-scale / flip test asked for: ``(the per-class table
        and summary, the --out record)``."""
        import torch

        from ..data import build_val_loader
        from ..evaluation.evaluator import evaluate
        from ..evaluation.miou import format_table

        shard_dir = shards or ((self.cfg.get("data") or {}).get(split) or {}).get("shard_dir")
        if not shard_dir:
            raise ConfigError(f"no --shards and no data.{split}.shard_dir in the recipe")
        model = self.build_eval_model(checkpoint, device)
        num_classes = int(model.num_classes)
        mean, std = self._norm(split)
        loader = build_val_loader(shard_dir, rank=rank, world_size=world_size, num_workers=num_workers, mean=mean,
                                  std=std, num_classes=num_classes)
        dtype = None
        if bf16:
            model = model.to(torch.bfloat16)
            dtype = torch.bfloat16
        names = loader.manifest.get("classes")
        settings = self._test_settings(mode, crop_size, stride, split)
        # the recipe's test pipeline is the default, as in the in-run evaluation; --flip adds flipping
        aug = self._recipe_aug(split, aug_test, ratios, True if flip else None)
        res = evaluate(model, loader, num_classes, **settings, aug=aug,
                       class_names=names if names is not None and len(names) == num_classes else None,
                       device=device, dtype=dtype, progress=rank == 0, mean=mean, std=std)
        report = (format_table(res) + "\n" + f"{res['num_images']} images; aAcc {res['aAcc']:.4f} "
                  f"mIoU {res['mIoU']:.4f} mAcc {res['mAcc']:.4f} mDice {res['mDice']:.4f}")
        record = {k: res[k] for k in ("aAcc", "mIoU", "mAcc", "mDice", "num_images")}
        record["per_class"] = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                               for row in res["per_class"]]  # NaN (class absent) -> null: strict JSON
        record.update(checkpoint=str(checkpoint), shards=str(shard_dir), aug=aug, **settings)
        return report, record

    def image_predictor(self, model, *, split="val", bf16=False, mode=None, crop_size=None, stride=None,
                        aug_test=False, ratios=None, flip=None, overlay=False, probabilities=False, **_unused):
        """What predicts single images (``launch/predict.py``, ``launch/demo.py``, :mod:`vit_adapter_ds.apis`): the
        recipe's test settings of ``data.<split>`` -- whole image or sliding window (``model.test_cfg``), its test
        scale, and the multi-scale ratios / flip of its test pipeline (an official ``_ms`` recipe's
        ``MultiScaleFlipAug``), as mmseg's ``inference_segmentor`` runs ``cfg.data.test.pipeline`` -- each
        overridable: ``mode`` / ``crop_size`` / ``stride``; ``ratios`` (``[1.0]``: single scale), ``aug_test`` (the
        standard ratios + flip), ``flip`` (None: the pipeline's)."""
        import torch

        from ..models.test_time_resize import scales_from_ratios, select_test_resize

        if bf16:  # the segmentor in bf16 (softmax / argmax in fp32), as launch/eval.py --bf16
            model = model.to(torch.bfloat16)
        st = self._test_settings(mode, crop_size, stride, split)
        aug = self._recipe_aug(split, aug_test, ratios, flip)
        multi = bool(aug.get("ratios"))  # the multi-scale resize rule whenever ratios are given, as the evaluator
        scales = scales_from_ratios(st["img_scale"], aug["ratios"]) if aug.get("ratios") else [st["img_scale"]]
        names, palette = segmentation_classes(self.cfg, split, int(model.num_classes))
        mean, std = self._norm(split)
        return SegmentationImagePredictor(
            model, mean=mean, std=std, scales=scales, flip=aug["flip"],
            resize_rule=select_test_resize(st["size_divisor"], st["ms_resize"], multi_scale=multi),
            mode=st["mode"], crop_size=st["crop_size"], stride=st["stride"], classes=names, palette=palette,
            bf16=bf16, overlay=overlay, probabilities=probabilities)


def segmentation_classes(cfg, split: str, num_classes: int) -> tuple[list, list]:
    """``(class names, palette)`` of a segmentation recipe's dataset: the manifest of ``data.<split>.shard_dir``
    when it is readable and has ``num_classes`` classes, else the catalog entry of ``data.<split>.type`` (or of
    ``data.train.type``) when its class list has that length, else ``class <i>`` and the default palette."""
    from ..data.catalog import get_dataset
    from ..data.manifest import ShardSetError, read_manifest
    from ..utils.vis import make_palette

    data = to_plain(cfg.get("data") or {})
    section = data.get(split) or data.get("val") or {}

    def sources():
        if section.get("shard_dir"):
            try:
                m = read_manifest(section["shard_dir"], split)
            except (ShardSetError, OSError, ValueError):
                m = {}
            yield m.get("classes"), m.get("palette")
        for kind in (section.get("type"), (data.get("train") or {}).get("type")):
            try:
                entry = get_dataset(kind) if isinstance(kind, str) else None
            except KeyError:
                entry = None
            if entry is not None:
                yield entry.classes, entry.palette

    for names, pal in sources():
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names], pal if pal is not None and len(pal) >= num_classes else \
                make_palette(num_classes)
    return [f"class {i}" for i in range(num_classes)], make_palette(num_classes)


class SegmentationImagePredictor:
    """One image -> :class:`~vit_adapter_ds.tasks.results.SegmentationResult` with fixed test settings (see
    :meth:`SemanticSegmentation.image_predictor`); draws and writes results: ``<stem>.png``, an indexed PNG whose
    values are the class ids (the machine-readable result) and, with ``overlay``, ``<stem>_overlay.png``."""

    def __init__(self, model, *, mean, std, scales, flip, resize_rule, mode, crop_size, stride, classes, palette,
                 bf16=False, overlay=False, probabilities=False):
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)
        self.scales, self.flip, self.resize_rule = list(scales), bool(flip), resize_rule
        self.mode, self.crop_size, self.stride = mode, crop_size, stride
        self.classes, self.palette = list(classes), palette
        self.bf16, self.overlay, self.probabilities = bool(bf16), bool(overlay), bool(probabilities)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def settings(self) -> dict:
        """The test settings in use (what a user asks "how was this predicted")."""
        return {"mode": self.mode, "crop_size": self.crop_size, "stride": self.stride, "scales": self.scales,
                "flip": self.flip, "mean": self.mean, "std": self.std}

    def predict(self, rgb, probabilities: bool | None = None):
        import torch

        from .results import SegmentationResult

        device = next(self.model.parameters()).device
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float()
        x = ((x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1))[None]
        x = x.to(device, torch.bfloat16 if self.bf16 else torch.float32)
        with torch.no_grad():
            prob = self.model.aug_test(x, scales=self.scales, flip=self.flip, resize_rule=self.resize_rule,
                                       mode=self.mode, crop_size=self.crop_size, stride=self.stride)
        want = self.probabilities if probabilities is None else probabilities
        return SegmentationResult(prob.argmax(1)[0].cpu().numpy().astype(np.int64),
                                  prob[0].float().cpu().numpy() if want else None)

    def draw(self, rgb, result, alpha: float = 0.5):
        from ..evaluation.visualize import overlay

        return overlay(rgb, result.label_map, self.num_classes, self.palette, alpha)

    def outputs(self, out_dir, stem) -> list:
        from pathlib import Path

        out = [Path(out_dir) / f"{stem}.png"]
        return out + [Path(out_dir) / f"{stem}_overlay.png"] if self.overlay else out

    def write(self, out_dir, stem, rgb, result, source=None) -> list:
        """Write :meth:`outputs` (each file complete or absent: written aside, then renamed)."""
        from ..evaluation.visualize import save_mask_png, save_rgb_png
        from ..utils.files import written_aside

        paths = self.outputs(out_dir, stem)
        with written_aside(paths[0]) as tmp:
            save_mask_png(tmp, result.label_map, self.num_classes, self.palette)
        if self.overlay:
            with written_aside(paths[1]) as tmp:
                save_rgb_png(tmp, self.draw(rgb, result))
        return paths

    def summary(self, result) -> str:
        return result.summary(self.classes)
