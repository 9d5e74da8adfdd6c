"""The evaluators by name: a dataset catalog entry (``vit_adapter_ds.data.catalog``) names its evaluator
(``evaluator = 'miou'`` / ``'coco'``) since data may not import evaluation; the name is resolved here."""
from __future__ import annotations

import importlib

# name -> "module:function" (imported when asked for: pycocotools only for 'coco')
EVALUATORS = {
    "miou": "vit_adapter_ds.evaluation.evaluator:evaluate_from_cfg",  # mIoU over segmentation shards
    "coco": "vit_adapter_ds.evaluation.coco:evaluate_detector",       # COCO box / mask AP over detection shards
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
