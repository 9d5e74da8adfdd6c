"""The dataset catalog (see :mod:`.registry`): one registered entry per dataset, one file per dataset.

Adding a dataset: a module with a :class:`Dataset` subclass decorated ``@register_dataset("name")`` (task, classes,
palette, ignore index, label map, evaluator name, layout and its ``samples`` enumerator / ``write``); import it
(the built-in ones below are imported here). ``python -m vit_adapter_ds.data.make_shards name`` then writes its
shards and a recipe's ``data.train.type='name'`` (or one of its ``aliases``) reads them.
"""
from .registry import (LABEL_MAPS, Dataset, datasets, get_dataset, register_dataset, resolve_type,
                       unregister_dataset)
from . import ade20k, coco, cocostuff, custom, synthetic  # noqa: E402,F401  (the built-in entries register)
from . import cityscapes, mapillary  # noqa: E402,F401
from . import pascal_context  # noqa: E402,F401
from . import coco_stuff10k  # noqa: E402,F401
from . import chase_db1  # noqa: E402,F401
from . import potsdam  # noqa: E402,F401
from . import objects365  # noqa: E402,F401
from . import coco_panoptic  # noqa: E402,F401

__all__ = ["LABEL_MAPS", "Dataset", "datasets", "get_dataset", "register_dataset", "resolve_type",
           "unregister_dataset"]
