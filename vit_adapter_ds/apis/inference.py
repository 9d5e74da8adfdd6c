"""The Python inference API, in the style of ``mmseg.apis`` / ``mmdet.apis`` (and of a Hugging Face pipeline)::

    from vit_adapter_ds.apis import init_model, inference_model

    model = init_model("upernet_deit_adapter_tiny_512_160k_ade20k", "work_dirs/run")   # recipe + checkpoint
    result = inference_model(model, "street.jpg")       # a SegmentationResult: result.label_map (H, W)
    picture = model.draw("street.jpg", result)          # (H, W, 3) uint8: the classes over the image

:class:`Predictor` (what :func:`init_model` returns) holds the recipe's task, the model with the checkpoint loaded
strictly, and the task's single-image predictor (``Task.image_predictor``: the same code as ``launch/predict.py``
and ``launch/demo.py``). Its defaults are the recipe's test-time settings of ``data.<split>``: for segmentation the
whole-image or sliding-window mode of ``model.test_cfg``, the test scale, and an ``_ms`` recipe's multi-scale ratios
and flip; for detection the test pipeline's scale (and HTC++'s test-time augmentation); each can be overridden with
the keyword options of the task (segmentation: ``mode``, ``crop_size``, ``stride``, ``ratios``, ``flip``,
``aug_test``, ``probabilities``; detection and panoptic: ``score_thr`` for drawing, ``shards`` for class names).

Inputs: one image or a list of them, each a path, a ``PIL.Image`` or an (H, W, 3) uint8 RGB array of any size
(:func:`~vit_adapter_ds.data.user_images.load_rgb`); results are at each image's own size
(:mod:`~vit_adapter_ds.tasks.results`). Checkpoints: whatever the safe reader takes -- a run's folder (its newest
complete checkpoint), a DeepSpeed tag folder, an export of ``launch/export.py``, a released official ``.pth`` (mmseg
/ mmdet key layouts) -- loaded strictly: a checkpoint of another recipe is refused with the keys that do not fit.

Errors: :class:`~vit_adapter_ds.data.user_images.ImageError` for an input that is not a readable image,
:class:`InferenceError` for an image the device has no memory for, ``CheckpointError`` / ``ConfigError`` for the
checkpoint and the recipe, ``TypeError`` for an option the recipe's task does not take.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..data.user_images import describe, load_rgb


class InferenceError(RuntimeError):
    """Inference that cannot run on this input here (e.g. not enough memory); the message says what to change."""


def _out_of_memory(err: BaseException) -> bool:
    """CUDA's / Python's out-of-memory errors, or the CPU allocator's ``RuntimeError``."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """A model of a recipe with its checkpoint, ready to run on images (see the module docstring).

    ``config``: a recipe name (``launch/train.py --config``) or a ``.py`` file (None: the built-in synthetic
    quickstart recipe); ``checkpoint``: see the module docstring (None: the recipe's model with random weights, for
    trying the API; a warning says so); ``device``: ``'cpu'``, ``'cuda'``, ``'cuda:1'``... (default: the first GPU if
    any); ``cfg_options``: recipe overrides (``["model.test_cfg.mode=slide"]`` or a dict); ``split``: whose test
    pipeline and class names apply; ``bf16``: bfloat16 inference; ``options``: the task's test-time options.
    """

    def __init__(self, config=None, checkpoint=None, *, device=None, cfg_options=None, split: str = "val",
                 bf16: bool = False, **options):
        from ..config import load_recipe
        from ..tasks import task_for

        self.cfg = load_recipe(config, cfg_options)
        self.task = task_for(self.cfg)
        allowed = tuple(getattr(self.task, "image_options", self.task.cli_options))
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"{', '.join(unknown)}: not an option of the {self.task.name} task "
                            f"(its options: {', '.join(allowed) or 'none'})")
        self.device = torch.device(device) if device is not None else _default_device()
        if checkpoint is None:
            warnings.warn("no checkpoint given: the model has random weights (give a run folder, an export or a "
                          "released checkpoint)", stacklevel=2)
            model = self.task.build_model(load_pretrained=False).to(self.device).eval()
        else:
            model = self.task.build_eval_model(checkpoint, self.device)
        self.model = model
        self.checkpoint = checkpoint
        self.image_predictor = self.task.image_predictor(model, split=split, bf16=bf16, **options)

    # ------------------------------------------------------------------ what it is
    @property
    def task_name(self) -> str:
        return self.task.name

    @property
    def classes(self) -> list[str]:
        """The class names, in label order (the recipe's dataset; ``class <i>`` where unknown)."""
        return list(self.image_predictor.classes)

    @property
    def palette(self):
        """One RGB colour per class, as drawn."""
        from ..utils.vis import as_colours

        pal = getattr(self.image_predictor, "palette", None)  # None: the default palette rule, as drawn
        return as_colours(pal, len(self.classes))[:len(self.classes)].tolist()

    def settings(self) -> dict:
        """The test-time settings in use."""
        return self.image_predictor.settings()

    def __repr__(self) -> str:
        return (f"Predictor({self.cfg.filename if hasattr(self.cfg, 'filename') else ''!s}, task={self.task.name}, "
                f"checkpoint={self.checkpoint!s}, device={self.device}, {len(self.classes)} classes)")

    # ------------------------------------------------------------------ running it
    def predict_one(self, image, **kw):
        """The result of one image (path, PIL image or array)."""
        rgb = load_rgb(image)
        try:
            return self.image_predictor.predict(rgb, **kw)
        except Exception as err:
            if not _out_of_memory(err):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            h, w = rgb.shape[:2]
            raise InferenceError(
                f"{describe(image)}: {w} x {h} pixels need more memory than {self.device} has for this model "
                f"({type(err).__name__}); resize the image, or use the sliding window "
                f"(cfg_options=['model.test_cfg.mode=slide'] for a segmentor)") from None

    def __call__(self, images, **kw):
        """One result for one image, a list of results for a list (or tuple) of images. ``kw``: per-call options
        of the task's predictor (segmentation: ``probabilities=True``)."""
        if isinstance(images, (list, tuple)):
            return [self.predict_one(im, **kw) for im in images]
        return self.predict_one(images, **kw)

    def draw(self, image, result=None, **kw) -> np.ndarray:
        """(H, W, 3) uint8 picture of ``result`` over ``image`` (predicted here when ``result`` is None): segment
        colours blended over the image, or boxes / names / scores / masks (``score_thr=`` overrides the threshold)."""
        rgb = load_rgb(image)
        if result is None:
            result = self.predict_one(rgb)
        return self.image_predictor.draw(rgb, result, **kw)

    def legend(self, result) -> list[dict]:
        """The classes present in ``result``, most pixels / detections first: ``{'id', 'name', 'color', 'count'}``."""
        from ..tasks.results import DetectionResult, PanopticResult, SegmentationResult

        colours = self.palette
        if isinstance(result, SegmentationResult):
            ids, counts = np.unique(result.label_map, return_counts=True)
        elif isinstance(result, DetectionResult):
            keep = result.scores >= getattr(self.image_predictor, "score_thr", 0.0)
            ids, counts = np.unique(result.labels[keep], return_counts=True)
        elif isinstance(result, PanopticResult):
            by_cat = {}
            for s in result.segments:
                by_cat[s["category_id"]] = by_cat.get(s["category_id"], 0) + int(s["area"])
            cats = {int(c["id"]): i for i, c in enumerate(self.image_predictor.categories)}
            ids = np.array([cats[c] for c in by_cat], dtype=np.int64)
            counts = np.array(list(by_cat.values()), dtype=np.int64)
        else:
            raise TypeError(f"not a result of this API: {type(result).__name__}")
        order = np.argsort(-counts, kind="stable")
        out = []
        for i in order:
            k = int(ids[i])
            if 0 <= k < len(self.classes):
                out.append({"id": k, "name": self.classes[k], "count": int(counts[i]),
                            "color": [int(c) for c in colours[k]]})
        return out


def init_model(config=None, checkpoint=None, device=None, **kwargs) -> Predictor:
    """:class:`Predictor` (mmseg / mmdet ``init_model`` / ``init_detector``)."""
    return Predictor(config, checkpoint, device=device, **kwargs)


def inference_model(model: Predictor, images, **kw):
    """The result(s) of ``images`` (mmseg ``inference_model`` / mmdet ``inference_detector``): ``model(images)``."""
    return model(images, **kw)


def draw_result(model: Predictor, image, result=None, **kw) -> np.ndarray:
    """The picture of ``result`` over ``image`` (``model.draw``)."""
    return model.draw(image, result, **kw)
