"""Tasks: what the engine trains. One file per task, each a bundle of parts (see :mod:`.base`).

``task_for(cfg)`` picks the task from the recipe's model type (``task_class(model_type)``: the class, for a model type
without a recipe, e.g. ``launch/export.py`` reading a run record); ``load_and_validate(recipe, options)`` loads a
recipe and validates it (engine sections, then the task's model on the meta device and its loader arguments),
raising ``ConfigError`` before any process group or worker starts. Tasks import no engine code.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config import ConfigError, load_recipe
from ..config.keys import to_plain
from .base import Task
from .detection import ObjectDetection
from .panoptic import PanopticSegmentation, is_panoptic_recipe
from .segmentation import SemanticSegmentation

# the ``task`` class attribute of a registered segmentor / detector (models.registry.task_of) -> the task class; a
# detector recipe on a panoptic dataset (``data.train.type``, tasks/panoptic.py) is the panoptic task's
BY_MODEL_TASK = {"segmentation": SemanticSegmentation, "detection": ObjectDetection, "panoptic": PanopticSegmentation}


class _ModelTypeTasks(Mapping):
    """model.type -> task class, read from the model registries (``SEGMENTORS``, ``DETECTORS``) at each use, so a
    newly registered segmentor or detector is trained by its task without an entry here."""

    def _table(self) -> dict:
        from ..models.registry import model_types, task_of

        return {t: BY_MODEL_TASK[task_of(t)] for t in model_types() if task_of(t) in BY_MODEL_TASK}

    def __getitem__(self, model_type):
        return self._table()[model_type]

    def __iter__(self):
        return iter(self._table())

    def __len__(self):
        return len(self._table())

    def __repr__(self):
        return f"TASKS({self._table()!r})"


TASKS: Mapping[str, type] = _ModelTypeTasks()  # model.type -> task class


def task_class(model_type):
    """The task class that trains ``model_type`` (a recipe's ``model.type``); ``ConfigError`` for an unknown one."""
    from ..models.registry import task_of

    cls = BY_MODEL_TASK.get(task_of(model_type))
    if cls is None:
        raise ConfigError(f"recipe: model.type={model_type!r} is not supported; choose one of {sorted(TASKS)}")
    return cls


def task_for(cfg):
    """The task of a loaded recipe (by its model type), its engine sections checked against what the task supports
    (``Task.check_engine_sections``)."""
    cls = task_class((cfg.get("model") or {}).get("type", "EncoderDecoder"))
    if cls is ObjectDetection and is_panoptic_recipe(cfg):
        cls = PanopticSegmentation
    task = cls(cfg)
    task.check_engine_sections(to_plain(cfg))
    return task


def load_and_validate(recipe=None, options=None):
    """``(cfg, task, meta_model)`` for a recipe name or path plus ``--cfg-options``: engine sections and the task's
    model / data validated (the engine checks the optimizer groups and schedule on ``meta_model``)."""
    cfg = load_recipe(recipe, options)
    task = task_for(cfg)
    return cfg, task, task.validate()


__all__ = ["TASKS", "ObjectDetection", "PanopticSegmentation", "SemanticSegmentation", "Task", "task_class", "task_for", "load_and_validate"]
