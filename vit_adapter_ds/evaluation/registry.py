"""The evaluators by name: a dataset catalog entry (``vit_adapter_ds.data.catalog``) names its evaluator
(``evaluator = 'miou'`` / ``'coco'``) since data may not import evaluation; the name is resolved here."""
from __future__ import annotations

import importlib

# name -> "module:function" (imported when asked for: pycocotools only for 'coco')
EVALUATORS = {
    "miou": "vit_adapter_ds.evaluation.evaluator:evaluate_from_cfg",  # mIoU over segmentation shards
    "coco": "vit_adapter_ds.evaluation.coco:evaluate_detector",       # COCO box / mask AP over detection shards
    "coco_panoptic": "vit_adapter_ds.evaluation.panoptic:evaluate_panoptic",  # PQ / SQ / RQ (panopticapi's)
}


def evaluator(name: str):
    """The evaluation function registered as ``name``; KeyError naming the choices."""
    if name not in EVALUATORS:
        raise KeyError(f"no evaluator {name!r}; known: {sorted(EVALUATORS)}")
    module, fn = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def dataset_evaluator(dataset: str):
    """The evaluation function of a catalog dataset (its name or an alias)."""
    from ..data.catalog import get_dataset

    return evaluator(get_dataset(dataset).evaluator)


# the task whose loaders and models an evaluator's calling convention fits (the task calls it)
EVALUATOR_TASKS = {"miou": "segmentation", "coco": "detection", "coco_panoptic": "panoptic"}


def recipe_evaluator(data, task: str, split: str = "val"):
    """The evaluation function of the dataset a recipe evaluates for ``task`` (``'segmentation'`` /
    ``'detection'``): the catalog entry that ``data.<split>.type`` (else ``data.train.type``) names; a recipe that
    names none (or only the loader, ``'SegmentationShards'``) gets the one evaluator the task's catalog entries
    share. ConfigError when the type names no dataset of the task, when that choice is ambiguous, or when the
    entry's evaluator is not one of the task's."""
    from ..config.errors import ConfigError
    from ..data.catalog import datasets, resolve_type
    from ..data.datasets import LOADER_NAMES

    name, where = None, None
    for s in (split, "train"):
        section = data.get(s) if hasattr(data, "get") else None
        kind = section.get("type") if hasattr(section, "get") else None
        if kind is not None and kind not in LOADER_NAMES:
            name, where = resolve_type(kind, task, f"data.{s}").evaluator, f"data.{s}.type={kind!r}"
            break
    if name is None:
        names = sorted({e.evaluator for e in datasets().values() if e.task == task})
        if len(names) != 1:
            raise ConfigError(f"recipe: the {task} datasets of the catalog are evaluated by {names}; name the dataset "
                              f"in data.{split}.type")
        name, where = names[0], f"the {task} datasets of the catalog"
    if name not in EVALUATORS or EVALUATOR_TASKS.get(name) != task:
        raise ConfigError(f"recipe: {where} is evaluated by {name!r}, not an evaluator of the {task} task "
                          f"({sorted(n for n, t in EVALUATOR_TASKS.items() if t == task)})")
    return evaluator(name)
