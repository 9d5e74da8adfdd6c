"""Tasks: what the engine trains. One file per task, each a bundle of parts (see :mod:`.base`).

``task_for(cfg)`` picks the task from the recipe's model type; ``load_and_validate(recipe, options)`` loads a
recipe and validates all of it (engine sections, then the task's model / data / evaluation), raising
``ConfigError`` before any process group or worker starts.
"""
from __future__ import annotations

from ..config import ConfigError, load_recipe
from .segmentation import SemanticSegmentation

# model.type -> task class
TASKS = {"EncoderDecoder": SemanticSegmentation, "EncoderDecoderMask2Former": SemanticSegmentation}


def task_for(cfg):
    kind = (cfg.get("model") or {}).get("type", "EncoderDecoder")
    if kind not in TASKS:
        raise ConfigError(f"recipe: model.type={kind!r} is not supported; choose one of {sorted(TASKS)}")
    return TASKS[kind](cfg)


def load_and_validate(recipe=None, options=None):
    """``(cfg, task)`` for a recipe name or path plus ``--cfg-options``, everything validated."""
    cfg = load_recipe(recipe, options)
    task = task_for(cfg)
    task.validate()
    return cfg, task


__all__ = ["TASKS", "SemanticSegmentation", "task_for", "load_and_validate"]
