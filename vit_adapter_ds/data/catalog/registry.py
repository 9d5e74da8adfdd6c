"""The dataset catalog: one registered entry per dataset, the only table of datasets.

An entry is a :class:`Dataset` subclass registered with :func:`register_dataset`; it declares

* ``task``: ``'segmentation'`` or ``'detection'`` (which task's loaders read its shards);
* ``aliases``: the official recipe names of the dataset (``data.<split>.type='ADE20KDataset'``);
* ``classes`` / ``palette`` / ``ignore_index`` / ``label_map`` (a name in :data:`LABEL_MAPS`): the manifest's fields
  (``classes=None``: read from the source, e.g. a class file or the COCO categories; ``palette=None``: the one
  palette rule, :func:`~vit_adapter_ds.utils.vis.make_palette`);
* ``evaluator``: a name that the evaluation / task layers resolve (``'miou'``, ``'coco'``); data never imports them;
* ``layout``: the source folder layout, in words (``make_shards NAME --help`` shows it);
* the shard writer: :meth:`Dataset.samples` (the sample enumerator: ``[(key, {ext: path or bytes})]``),
  :meth:`Dataset.write` (one split -> its manifest) and, for the ``make_shards NAME`` sub-command,
  :meth:`Dataset.add_arguments` / :meth:`Dataset.run` (the defaults: ``--root``, ``--splits``, ``--skip-missing``).

``make_shards`` builds one sub-command per entry; recipes name an entry (or an alias) in ``data.<split>.type`` and
the task checks that the entry is one of its own (:func:`resolve_type`).
"""
from __future__ import annotations

import os

from ...config.errors import ConfigError
from .. import classes as C

# label lookup tables by name (the manifest's ``label_map_name``)
LABEL_MAPS = {
    "identity": C.identity_label_map,
    "reduce_zero_label": C.reduce_zero_label_map,
    "coco_stuff_164k": C.coco_stuff_label_map,
}

_REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}


class Dataset:
    """A catalog entry (subclass it and register it with :func:`register_dataset`)."""

    name = ""                       # set by register_dataset: make_shards sub-command, recipe ``type``
    task = "segmentation"
    aliases: tuple = ()
    classes: tuple | None = None
    palette: list | None = None
    ignore_index = 255
    label_map = "identity"
    evaluator = "miou"
    layout = ""
    splits = ("train", "val")

    # ------------------------------------------------------------------ the writer
    @classmethod
    def samples(cls, root, split, skip_missing=False, follow_symlinks=False):
        """``[(key, {ext: path or bytes})]`` of ``split`` under ``root``, sorted by key (source files checked with
        :func:`~vit_adapter_ds.data.sources.source_file`)."""
        raise NotImplementedError(f"dataset {cls.name!r} has no sample enumerator")

    @classmethod
    def meta(cls, split, source="", classes=None, label_map=None, palette=None):
        """The manifest fields of a segmentation split (:func:`~vit_adapter_ds.data.sources.seg_meta`)."""
        from ..sources import seg_meta

        name = label_map or cls.label_map
        return seg_meta(cls.name, split, classes if classes is not None else cls.classes, LABEL_MAPS[name](), name,
                        palette if palette is not None else cls.palette, source, cls.ignore_index)

    @classmethod
    def write(cls, root, out, split, **kw):
        """Write ``split`` of the dataset at ``root`` as shards in ``out``; returns the manifest."""
        from ..shard_writer import write_shards

        skip, follow = kw.pop("skip_missing", False), kw.pop("follow_symlinks", False)
        samples = cls.samples(root, split, skip, follow)
        return write_shards(samples, out, cls.meta(split, os.path.abspath(root)), **kw)

    # ------------------------------------------------------------------ make_shards NAME
    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--root", required=True, help=f"dataset folder ({cls.layout})" if cls.layout else None)
        parser.add_argument("--splits", nargs="+", default=list(cls.splits), choices=list(cls.splits))
        parser.add_argument("--skip-missing", action="store_true", help="leave out images without a mask")

    @classmethod
    def run(cls, args, kw) -> dict:
        """``make_shards NAME``: ``{split: manifest}`` (``kw``: the common writer options)."""
        return {s: cls.write(args.root, os.path.join(args.out, s), s, skip_missing=args.skip_missing, **kw)
                for s in args.splits}


def register_dataset(name: str):
    """Class decorator: register a :class:`Dataset` subclass as ``name`` (and its ``aliases``). Registering a name
    again replaces that entry; an alias that names another entry is an error."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise TypeError(f"register_dataset({name!r}) decorates a Dataset subclass, got {cls!r}")
        if cls.task not in ("segmentation", "detection", "panoptic"):
            raise ValueError(f"dataset {name!r}: task must be 'segmentation', 'detection' or 'panoptic', got "
                             f"{cls.task!r}")
        if cls.label_map not in LABEL_MAPS:
            raise ValueError(f"dataset {name!r}: label_map {cls.label_map!r} is not one of {sorted(LABEL_MAPS)}")
        for alias in cls.aliases:
            owner = _ALIASES.get(alias, name)
            if owner != name or (alias in _REGISTRY and alias != name):
                raise ValueError(f"dataset {name!r}: alias {alias!r} already names dataset {owner!r}")
        unregister_dataset(name)
        cls.name = name
        _REGISTRY[name] = cls
        _ALIASES.update({a: name for a in cls.aliases})
        return cls
    return deco


def unregister_dataset(name: str) -> None:
    """Remove an entry (tests that register a dataset of their own)."""
    cls = _REGISTRY.pop(name, None)
    for alias in getattr(cls, "aliases", ()):
        _ALIASES.pop(alias, None)


def datasets() -> dict:
    """``{name: entry}`` of every registered dataset."""
    return dict(_REGISTRY)


def get_dataset(name: str):
    """The entry registered as ``name`` or with the alias ``name``; KeyError naming the choices."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise KeyError(f"no dataset {name!r} in the catalog; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[key]


def resolve_type(kind, task: str, where: str):
    """The entry a recipe's ``data.<split>.type`` names for ``task`` (None when ``kind`` is None, the task's
    default); ConfigError when it names no entry, or one of another task."""
    if kind is None:
        return None
    try:
        entry = get_dataset(kind) if isinstance(kind, str) else None
    except KeyError:
        entry = None
    if entry is None or entry.task != task:
        mine = sorted(n for n, e in _REGISTRY.items() if e.task == task)
        mine += sorted(a for a, n in _ALIASES.items() if _REGISTRY[n].task == task)
        raise ConfigError(f"recipe: {where}.type={kind!r} is not supported by the {task} task; name a {task} "
                          f"dataset of the catalog ({', '.join(mine)}) or leave it out")
    return entry
