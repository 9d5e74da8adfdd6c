"""Reading any checkpoint a user hands over into a state dict, and loading it into a model with a report.

:func:`read_state_dict` takes a file (:mod:`.reader`) or a DeepSpeed folder (:mod:`.deepspeed`); :func:`load_into`
loads a state dict or anything :func:`read_state_dict` reads into a model, through the model family's
``checkpoint_filter_fn``, and returns a :class:`LoadReport` (loaded / missing / unexpected / resized /
re-initialised), rendered in plain words by ``str()``. Above both readers, so neither imports the other.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .deepspeed import MODEL_STATES_RE, consolidate_deepspeed
from .reader import CheckpointError, extract_state_dict, read_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["read_state_dict", "LoadReport", "load_into"]


def read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The weights in any checkpoint a user can hand over (see the module docstring): a file, a DeepSpeed tag
    folder, a save folder with tags, or a work folder with ``checkpoints/``. DeepSpeed checkpoints give the
    consolidated fp32 weights (:func:`consolidate_deepspeed`); a single ``*_model_states.pt`` file of a ZeRO
    checkpoint is read as its whole folder. ``module.`` prefixes are removed."""
    path = Path(path)
    if path.is_dir():
        return consolidate_deepspeed(path)
    if path.is_file() and MODEL_STATES_RE.match(path.name) and any(path.parent.glob("*_optim_states.pt")):
        logger.info("%s is one file of a DeepSpeed ZeRO checkpoint; reading the whole folder %s", path, path.parent)
        return consolidate_deepspeed(path.parent)
    return extract_state_dict(read_checkpoint(path), str(path))


# Load report and loading into a model
# ----------------------------------------------------------------------------------------------------------------------

def _summarise(keys: list[str]) -> str:
    """'blocks.*.gamma1 x12, spm.* x39, level_embed' style summary of many keys."""
    counts: "OrderedDict[str, int]" = OrderedDict()
    for key in keys:
        pattern = re.sub(r"\.\d+(?=\.|$)", ".*", key)
        if not pattern.startswith("blocks.*"):
            head, dot, _ = pattern.partition(".")
            pattern = head + (".*" if dot else "")
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(p if n == 1 else f"{p} x{n}" for p, n in counts.items())


def _shape_groups(items) -> str:
    groups: "OrderedDict[tuple, int]" = OrderedDict()
    for key, before, after in items:
        group = (re.sub(r"\.\d+(?=\.)", ".*", key), tuple(before), tuple(after))
        groups[group] = groups.get(group, 0) + 1
    return "; ".join(f"{k} {a} -> {b}" + (f" x{n}" if n > 1 else "") for (k, a, b), n in groups.items())


@dataclass
class LoadReport:
    """What loading a checkpoint into a model did.

    ``loaded``: model tensors filled from the file; ``missing``: model tensors the file lacks (left at their
    initial values); ``unexpected``: file tensors the model does not have (ignored); ``resized``: (name, shape in
    the file, shape loaded) adapted by a filter; ``reinitialised``: (name, shape in the file, shape in the model)
    of shape mismatches left at the fresh initialisation; ``renamed`` (old, new) and ``dropped`` keys of the
    filter; ``kind``/``description``: what the checkpoint is; ``notes``: anything else worth saying."""
    source: str
    model: str = ""
    kind: str = ""
    description: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    reinitialised: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as JSON-ready lists (shapes as lists)."""
        return {"source": self.source, "model": self.model, "kind": self.kind, "loaded": list(self.loaded),
                "missing": list(self.missing), "unexpected": list(self.unexpected),
                "resized": [[k, list(a), list(b)] for k, a, b in self.resized],
                "reinitialised": [[k, list(a), list(b)] for k, a, b in self.reinitialised],
                "renamed": [list(r) for r in self.renamed], "dropped": list(self.dropped), "notes": list(self.notes)}

    def __str__(self) -> str:
        what = self.description or self.kind
        head = f"Loaded {self.source}" + (f" ({what})" if what else "") + (f" into {self.model}" if self.model else "")
        lines = [head + ":", f"  {len(self.loaded)} tensors loaded"]
        if self.resized:
            lines.append(f"  {len(self.resized)} resized: {_shape_groups(self.resized)}")
        if self.reinitialised:
            lines.append(f"  {len(self.reinitialised)} re-initialised (shape in the file -> shape in the model; the "
                         f"model keeps its fresh values): {_shape_groups(self.reinitialised)}")
        if self.renamed:
            lines.append(f"  {len(self.renamed)} renamed: " + ", ".join(f"{a} -> {b}" for a, b in self.renamed[:3])
                         + (" ..." if len(self.renamed) > 3 else ""))
        if self.dropped:
            lines.append(f"  {len(self.dropped)} dropped on purpose: {_summarise(self.dropped)}")
        if self.missing:
            lines.append(f"  {len(self.missing)} missing from the file (kept at their initial values): "
                         f"{_summarise(self.missing)}")
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} in the file but not in the model (ignored): "
                         f"{_summarise(self.unexpected)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _call_filter(filter_fn, state_dict, model, report):
    try:
        params = inspect.signature(filter_fn).parameters
        takes_report = len(params) >= 3 or "report" in params
    except (TypeError, ValueError):  # builtins without a signature
        takes_report = False
    out = filter_fn(state_dict, model, report) if takes_report else filter_fn(state_dict, model)
    if not isinstance(out, dict):
        raise TypeError(f"{getattr(filter_fn, '__name__', filter_fn)} returned {type(out).__name__}, not a state dict")
    return out


def _drop_ema_buffers(state_dict, report: LoadReport):
    """A checkpoint saved by an mmcv runner with mmdet's EMA hook (``custom_hooks=[ExpMomentumEMAHook]``, e.g. the
    released HTC++ Objects365 -> COCO files) holds the average as buffers ``ema_<name with . -> _>`` next to the
    weights: they are dropped (listed under ``dropped``) and the weights are loaded, as mmdet's
    ``load_checkpoint(strict=False)`` does (under an IterBasedRunner those weights are the trained ones)."""
    names = {"ema_" + k.replace(".", "_") for k in state_dict if not k.startswith("ema_")}
    ema = [k for k in state_dict if k.startswith("ema_") and "." not in k and k in names]
    if not ema:
        return state_dict
    report.dropped += ema
    report.notes.append(f"{len(ema)} ema_* buffers of mmdet's EMA hook dropped (the weights are loaded)")
    drop = set(ema)
    return OrderedDict((k, v) for k, v in state_dict.items() if k not in drop)


def load_into(model: nn.Module, state_dict_or_path, *, filter_fn=None, strict: bool = False,
              reinit_mismatched: bool = False, source: str | None = None) -> LoadReport:
    """Load a checkpoint (any kind :func:`read_state_dict` reads, or an already loaded dict / checkpoint dict) into
    ``model`` and return a :class:`LoadReport`.

    ``filter_fn(state_dict, model[, report])`` adapts a foreign checkpoint first (timm's ``checkpoint_filter_fn``
    convention; a third ``report`` argument, when accepted, receives what it renamed, resized or dropped).
    A tensor whose shape differs from the model's raises :class:`CheckpointError`, unless ``reinit_mismatched``:
    then it is skipped and the model keeps its fresh initialisation (e.g. a 171-class classifier into a 150-class
    model), listed under ``reinitialised``. ``strict``: any missing or unexpected key raises
    :class:`CheckpointError` after loading, with the report in the message.
    """
    if isinstance(state_dict_or_path, dict):
        source = source or "<state dict>"
        state_dict = extract_state_dict(state_dict_or_path, source)
    else:
        source = source or str(state_dict_or_path)
        state_dict = read_state_dict(state_dict_or_path)
    report = LoadReport(source=source, model=type(model).__name__)
    state_dict = _drop_ema_buffers(state_dict, report)
    if filter_fn is not None:
        state_dict = _call_filter(filter_fn, state_dict, model, report)

    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched and not reinit_mismatched:
        shown = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in mismatched[:8])
        raise CheckpointError(f"{source} does not fit {type(model).__name__}; shape mismatches: {shown}"
                              + (f" (and {len(mismatched) - 8} more)" if len(mismatched) > 8 else ""))
    if mismatched:
        skip = {k for k, _, _ in mismatched}
        state_dict = OrderedDict((k, v) for k, v in state_dict.items() if k not in skip)
        report.reinitialised = mismatched

    result = model.load_state_dict(state_dict, strict=False)
    report.missing = sorted(k for k in result.missing_keys if k not in {r[0] for r in report.reinitialised})
    report.unexpected = list(result.unexpected_keys)
    unexpected = set(report.unexpected)
    report.loaded = [k for k in state_dict if k not in unexpected]
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"strict loading failed:\n{report}")
    logger.info("%s", report)
    return report


# ----------------------------------------------------------------------------------------------------------------------
