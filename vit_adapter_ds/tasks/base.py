"""What a task supplies to the engine and to the command lines (torchtitan's ``TrainSpec`` idea): nothing else of a
task is known outside it.

A task subclasses :class:`Task` and is built from a recipe (``Task(cfg)``). Required (abstract: a subclass that
leaves one out cannot be instantiated, and the ``TypeError`` names it):

* ``validate() -> meta model``: raise ``ConfigError`` for anything wrong in ``cfg.model`` / ``cfg.data``, before any
  process group or worker starts (builds the model on the meta device and returns it).
* ``build_model(load_pretrained=True) -> nn.Module``: in train mode, ``forward_loss(model, batch)`` returns a dict of
  scalar tensors with the total under ``'loss'``.
* ``build_train_loader(rank, world_size, seed)``: an infinite iterator with ``state_dict()`` / ``load_state_dict()``.
* ``build_val_loader(rank, world_size)``: an iterable (or None), each sample once over all ranks.
* ``forward_loss(model, batch, device, dtype) -> dict``: moves the batch to the device and runs the model.
* ``evaluate(model, val_loader, dtype, num_vis) -> (metrics: dict[str, float], images: list[HxWx3 uint8])``, called
  on every rank.
* ``name`` and ``best_metric`` (class attributes): the task's name and the metric ``evaluation.save_best='auto'``
  means.

What the engine sections may say depends on the task (class attributes, checked by ``check_engine_sections`` when
the task is made from a recipe, ``tasks.task_for``): ``eval_metrics`` (what ``evaluation.metric`` may list),
``best_metrics`` (what ``evaluation.save_best`` may name besides ``'auto'``) -- empty: not checked -- and
``epoch_runner`` (whether ``runner.type='EpochBasedRunner'`` is supported, converted to iterations by the task).

Optional hooks, with defaults here:

* ``param_groups(model) -> list[dict] | None``: optimizer groups (``lr_scale``, ``group_name`` optional); the default
  None means the engine's groups for the recipe (layer decay, ``engine/optim.py``).
* ``checkpoint_filter(state_dict, model, report=None) -> state_dict``: adapts a foreign checkpoint given to
  ``--load-from`` (e.g. the official mmdet key layout of released detection checkpoints) before it is loaded; the
  default keeps it as it is.
* ``build_eval_model(checkpoint, device)``: the model (no pretrained file read) with ``checkpoint`` loaded strictly
  through :mod:`vit_adapter_ds.checkpoint.reader` and ``checkpoint_filter``, in eval mode.
* ``step_context(model, batches) -> context manager``: entered around the micro-steps of one optimizer step, with
  this rank's ``gradient_accumulation_steps`` batches of the step (read before its first forward, in order), on
  every rank; for losses normalised over the whole step (Mask2Former's mask count). The default does nothing.

Evaluation, prediction and export (``launch/eval.py``, ``launch/predict.py``, ``launch/export.py``):

* ``cli_options`` (class attribute): the keyword options of ``evaluate_checkpoint`` / ``predict_images`` only this
  task understands (the command line refuses another task's); ``foreign_options_hint(split)`` adds to that refusal.
* ``evaluate_checkpoint(checkpoint, *, split, shards, num_workers, device, bf16, rank, world_size, **options) ->
  (report, record)``: every rank evaluates its share; rank 0 prints ``report`` and writes ``record`` (JSON).
* ``image_predictor(model, *, split, bf16, **options)``: what predicts, draws and writes single images (the one
  home of per-image inference: ``launch/predict.py``, ``launch/demo.py`` and :mod:`vit_adapter_ds.apis` use it);
  ``predict_images(checkpoint, paths, out_dir, *, split, device, bf16, **options)`` (default here, over
  ``image_predictor``) writes a prediction per image of ``paths`` (this rank's share), one line per image.
* ``key_layout(model_type)`` / ``official_state_dict(state_dict, model_type)`` (class methods: export has no recipe,
  only a model type): the name of the official key layout a checkpoint of this model type is exported in (None:
  this package's keys are the official ones), and the conversion to it (default: none). Both raise ``KeyError`` /
  ``ValueError`` for keys that fit no layout.
"""
from __future__ import annotations

import abc
import contextlib

from ..config.errors import ConfigError


class Task(abc.ABC):
    name: str = ""
    best_metric: str = ""
    cli_options: tuple = ()  # keyword options of evaluate_checkpoint / predict_images only this task understands
    image_options: tuple = ()  # keyword options of image_predictor (the Python API refuses others)
    eval_metrics: tuple = ()  # what evaluation.metric may list (empty: not checked)
    best_metrics: tuple = ()  # what evaluation.save_best may name besides 'auto' (empty: not checked)
    epoch_runner: bool = False  # runner.type='EpochBasedRunner' supported

    def __init__(self, cfg):
        self.cfg = cfg

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        abstract = any(getattr(getattr(cls, n, None), "__isabstractmethod__", False) for n in dir(cls))
        if not abstract:  # a concrete task names itself and its best metric
            missing = [a for a in ("name", "best_metric") if not getattr(cls, a, "")]
            if missing:
                raise TypeError(f"task {cls.__name__} must set the class attribute(s) {', '.join(missing)}")

    def check_engine_sections(self, cfg) -> None:
        """``ConfigError`` for engine-section values this task cannot honour: an ``evaluation.metric`` /
        ``save_best`` that is not one of its metrics, an epoch-based runner it does not support."""
        words = self.name.replace("_", " ")
        ev = cfg.get("evaluation") or {}
        metric = ev.get("metric", [])
        if self.eval_metrics:
            for m in [metric] if isinstance(metric, str) else metric:
                if m not in self.eval_metrics:
                    raise ConfigError(f"recipe: evaluation.metric={metric!r}: this {words} recipe evaluates "
                                      f"{' / '.join(repr(n) for n in self.eval_metrics)}")
        if self.best_metrics and ev.get("save_best") not in (None, "auto", *self.best_metrics):
            raise ConfigError(f"recipe: evaluation.save_best={ev['save_best']!r} is not a metric of this task "
                              f"({words}); choose 'auto' or one of {list(self.best_metrics)}")
        if (cfg.get("runner") or {}).get("type") == "EpochBasedRunner" and not self.epoch_runner:
            raise ConfigError(f"recipe: runner.type='EpochBasedRunner' is not supported by the {words} task; use "
                              "runner=dict(type='IterBasedRunner', max_iters=N)")

    # ------------------------------------------------------------------ required
    @abc.abstractmethod
    def validate(self):
        """Check the recipe (``ConfigError``) and return the model built on the meta device."""

    @abc.abstractmethod
    def build_model(self, load_pretrained: bool = True):
        """The model, in train mode."""

    @abc.abstractmethod
    def build_train_loader(self, rank: int, world_size: int, seed: int):
        """An infinite, resumable iterator of training batches."""

    @abc.abstractmethod
    def build_val_loader(self, rank: int, world_size: int):
        """The validation batches (each sample once over all ranks), or None."""

    @abc.abstractmethod
    def forward_loss(self, model, batch, device, dtype) -> dict:
        """The model's losses on ``batch`` (total under ``'loss'``)."""

    @abc.abstractmethod
    def evaluate(self, model, val_loader, dtype, num_vis: int) -> tuple[dict, list]:
        """``(metrics, pictures)`` over the validation loader, on every rank."""

    # ------------------------------------------------------------------ optional hooks
    def param_groups(self, model):
        """Optimizer parameter groups, or None (the default): the engine's groups for the recipe (layer decay)."""
        return None

    def checkpoint_filter(self, state_dict: dict, model, report=None) -> dict:
        """A foreign checkpoint's state dict (``--load-from``, ``--checkpoint``) adapted to ``model``; the default
        keeps it as it is."""
        return state_dict

    def step_context(self, model, batches: list):
        """A context manager around the micro-steps of one optimizer step, given this rank's batches of the step
        (all of them, before the first forward; called on every rank). The default does nothing."""
        return contextlib.nullcontext()

    def build_eval_model(self, checkpoint, device="cpu"):
        """The model (no pretrained file read) with ``checkpoint`` loaded strictly through the one safe reader
        (:mod:`vit_adapter_ds.checkpoint.reader`: any checkpoint kind, never unpickling objects), in eval mode."""
        from ..checkpoint.loading import load_into

        model = self.build_model(load_pretrained=False)
        load_into(model, checkpoint, strict=True, filter_fn=self.checkpoint_filter)
        return model.to(device).eval()

    # ------------------------------------------------------------------ evaluation, prediction, export
    def foreign_options_hint(self, split: str) -> str:
        """Appended to the refusal of another task's command-line options."""
        return ""

    def evaluate_checkpoint(self, checkpoint, *, split="val", shards=None, num_workers=2, device="cpu",
                            bf16=False, rank=0, world_size=1, **options) -> tuple[str, dict]:
        """``(report, record)`` of ``checkpoint`` on the ``split`` shards (``launch/eval.py``)."""
        raise NotImplementedError(f"the {self.name} task has no checkpoint evaluation")

    def image_predictor(self, model, *, split="val", bf16=False, **options):
        """What predicts single images with the recipe's test settings of ``data.<split>`` (``options``: this
        task's ``cli_options``, overriding them): an object with ``predict(rgb) -> result``, ``draw(rgb, result) ->
        rgb``, ``outputs(out_dir, stem)`` / ``write(out_dir, stem, rgb, result, source)`` (the files of one image,
        each complete or absent), ``summary(result)``, ``classes`` and ``settings()``. ``rgb``: (H, W, 3) uint8
        (:func:`vit_adapter_ds.data.user_images.load_rgb`); results: :mod:`vit_adapter_ds.tasks.results`."""
        raise NotImplementedError(f"the {self.name} task has no image prediction")

    def predict_images(self, checkpoint, paths, out_dir, *, split="val", device="cpu", bf16=False, **options):
        """Write the prediction files of each image of ``paths`` (:meth:`image_predictor`); yields one line per
        image (``launch/predict.py``). An unreadable image raises
        :class:`~vit_adapter_ds.data.user_images.ImageError`."""
        from pathlib import Path

        from ..data.user_images import load_rgb

        if type(self).image_predictor is Task.image_predictor:  # before reading any checkpoint
            raise NotImplementedError(f"the {self.name} task has no image prediction")
        predictor = self.image_predictor(self.build_eval_model(checkpoint, device), split=split, bf16=bf16,
                                         **options)
        for path in map(Path, paths):
            rgb = load_rgb(path)
            result = predictor.predict(rgb)
            written = predictor.write(out_dir, path.stem, rgb, result, source=path)
            yield f"{path} -> {written[0]} ({predictor.summary(result)})"

    @classmethod
    def key_layout(cls, model_type: str | None):
        """The official key layout an exported checkpoint of ``model_type`` uses, None when it is this package's."""
        return None

    @classmethod
    def official_state_dict(cls, state_dict: dict, model_type: str | None) -> dict:
        """``state_dict`` in the official key layout of ``model_type`` (default: this package's keys are it)."""
        return state_dict
