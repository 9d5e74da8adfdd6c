"""Tasks: what the engine trains. One file per task, each a bundle of parts (see :mod:`.base`).

``task_for(cfg)`` picks the task from the recipe's model type; ``load_and_validate(recipe, options)`` loads a
recipe and validates it (engine sections, then the task's model on the meta device and its loader arguments),
raising ``ConfigError`` before any process group or worker starts. Tasks import no engine code.
"""
from __future__ import annotations

from ..config import ConfigError, load_recipe
from .detection import ObjectDetection
from .segmentation import SemanticSegmentation

# model.type -> task class
TASKS = {"EncoderDecoder": SemanticSegmentation, "EncoderDecoderMask2Former": SemanticSegmentation,
         "MaskRCNN": ObjectDetection, "HybridTaskCascade": ObjectDetection, "HybridTaskCascadeAug": ObjectDetection}


def task_for(cfg):
    kind = (cfg.get("model") or {}).get("type", "EncoderDecoder")
    if kind not in TASKS:
        raise ConfigError(f"recipe: model.type={kind!r} is not supported; choose one of {sorted(TASKS)}")
    return TASKS[kind](cfg)


def load_and_validate(recipe=None, options=None):
    """``(cfg, task, meta_model)`` for a recipe name or path plus ``--cfg-options``: engine sections and the task's
    model / data validated (the engine checks the optimizer groups and schedule on ``meta_model``)."""
    cfg = load_recipe(recipe, options)
    task = task_for(cfg)
    return cfg, task, task.validate()


__all__ = ["TASKS", "ObjectDetection", "SemanticSegmentation", "task_for", "load_and_validate"]
