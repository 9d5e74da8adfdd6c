"""DeepSpeed checkpoint folders: which tag a path designates (:func:`find_tag`, the one finder: ``--resume``,
exports and every reader use it), the fp32 weights of a ZeRO checkpoint merged without unpickling objects
(:func:`consolidate_deepspeed`), the safe-file check run before DeepSpeed unpickles a folder
(:func:`refuse_unsafe_files`) and universal conversion for another world size (:func:`convert_to_universal`).

Tag names, the ``COMPLETE`` marker and ``latest`` are those of :mod:`.layout`; files are read by :mod:`.reader`.
Collective steps (the conversion) use :mod:`vit_adapter_ds.runtime`; nothing else of the package is imported.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch

from .. import runtime as rt
from . import layout
from .reader import CheckpointError, extract_state_dict, read_checkpoint

MODEL_STATES_RE = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")
_OPTIM_STATES_RE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


class DamagedCheckpointError(CheckpointError, RuntimeError):
    """A complete-marked checkpoint whose files do not match its marker's file list (cut short, changed, missing,
    or files the save did not write)."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """No complete checkpoint where one was named (an interrupted save has no ``COMPLETE`` marker)."""


def warn(message: str) -> None:
    """The default ``report`` of the finders: a warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Finding the tag
# ----------------------------------------------------------------------------------------------------------------------

def is_tag_dir(path: Path) -> bool:
    """``path`` holds DeepSpeed model-states shards (``*_model_states.pt``)."""
    return path.is_dir() and any(MODEL_STATES_RE.match(p.name) for p in path.iterdir())


def find_tag(path, report=warn, *, complete_only: bool = False, label: str | None = None
             ) -> tuple[Path, dict | None]:
    """``(tag folder, its COMPLETE record or None)`` that ``path`` designates -- the one rule for ``--resume PATH``,
    exports and the reader:

    * a tag folder (a ``COMPLETE`` marker or ``*_model_states.pt`` shards): itself, if its files verify against its
      marker (:class:`DamagedCheckpointError` names the problems otherwise). Without a marker it is refused
      (:class:`NoCheckpointError`) when it is a save of this project's engine (``extra_rank*.pt``: an interrupted
      save) or when ``complete_only``; a foreign DeepSpeed tag is taken as it is;
    * a folder with tags, or a work folder with such a ``checkpoints/`` folder: the most recently saved complete tag
      that verifies (each damaged one is named through ``report`` and skipped: :func:`.layout.newest_intact`);
      without complete tags, and unless ``complete_only``, the tag named by DeepSpeed's ``latest`` file, which must
      be a folder inside that folder (``../x``, absolute or nested names and symbolic links are refused).

    ``label`` names the request in messages (default: the path)."""
    path = Path(path)
    label = label or str(path)
    if not path.exists():
        raise FileNotFoundError(f"{label}: checkpoint {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{label}: {path} is a file, not a DeepSpeed checkpoint folder")
    meta = layout.read_marker(path)
    if meta is not None or is_tag_dir(path):
        if meta is None and (complete_only or any(path.glob(layout.EXTRA_STATE_GLOB))):
            raise NoCheckpointError(f"{path} has no {layout.MARKER} marker: this save was interrupted and may miss "
                                    "shards; use an earlier complete checkpoint")
        problems = layout.verify(path, meta) if meta is not None else []
        if problems:
            raise DamagedCheckpointError(f"{path} is damaged: " + "; ".join(problems) + " (pass its checkpoints "
                                         "folder, or --resume auto, to fall back to the newest intact checkpoint)")
        return path, meta
    for root in (path, layout.checkpoint_root(path)):
        if layout.complete_tags(root):
            found = layout.newest_intact(root, report, label)
            if found is None:
                raise DamagedCheckpointError(f"every complete checkpoint in {root} is damaged (see the warnings "
                                             "above)")
            return found
        if complete_only:
            continue
        try:
            name = layout.read_latest(root)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        if name is not None:
            tag = root / name
            if tag.is_symlink():
                raise CheckpointError(f"{root / layout.LATEST} names {tag}, a symbolic link; refusing it")
            if is_tag_dir(tag):
                return find_tag(tag, report, label=label)
    what = (f"no complete checkpoint there: no iter_N tag with a {layout.MARKER} marker (an interrupted save has "
            "none)" if complete_only else "a folder without a DeepSpeed checkpoint: no *_model_states.pt files, no "
            f"complete iter_N tag ({layout.MARKER} marker) and no 'latest' file")
    raise NoCheckpointError(("" if label == str(path) else f"{label}: ") + f"{path} is {what}, neither there nor in "
                            "its checkpoints/ folder")


# ----------------------------------------------------------------------------------------------------------------------
# fp32 weights of a ZeRO checkpoint
# ----------------------------------------------------------------------------------------------------------------------

def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _shards(tag_dir: Path, pattern: re.Pattern) -> list[Path]:
    files = sorted((p for p in tag_dir.iterdir() if pattern.match(p.name)), key=lambda p: _natural(p.name))
    if any(pattern.match(p.name).group(2) != "00" for p in files):
        raise CheckpointError(f"{tag_dir} is a model-parallel DeepSpeed checkpoint (mp_rank > 00); only data-parallel "
                              "checkpoints can be consolidated here")
    return files


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def consolidate_deepspeed(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The full fp32 weights of a DeepSpeed checkpoint (any ZeRO stage; ``path`` as in :func:`find_tag`),
    keys as in the model's ``state_dict()``: the same tensors as DeepSpeed's
    ``get_fp32_state_dict_from_zero_checkpoint``, but every shard is read with ``weights_only=True``.

    ZeRO-1/2: the fp32 partitions of each parameter group are concatenated over the ranks and cut into the
    parameters in ``param_shapes`` order (with ``param_alignment_paddings`` when recorded); ZeRO-3: each parameter is
    split evenly over the ranks (the last part padded), so its parts are taken from every rank's flat fp32 vector
    and joined. Frozen parameters come from ``frozen_param_fragments``, buffers from the model states, tied
    parameters from ``shared_params``; floating-point values are returned in fp32. ZeRO-0 (no ZeRO shards): the model states' ``module`` weights in fp32.
    Unlike DeepSpeed's function, the model states' other entries are kept too (they are whole at every stage: e.g.
    BEiT's ``relative_position_index``, which the model verifies on loading, and a ZeRO-1 checkpoint's frozen
    parameters, for which DeepSpeed records no ``frozen_param_shapes``).
    """
    tag_dir, _ = find_tag(path)
    model_files = _shards(tag_dir, MODEL_STATES_RE)
    if not model_files:  # a complete-marked folder without DeepSpeed's shards
        raise CheckpointError(f"{tag_dir} holds no *_model_states.pt files: not a DeepSpeed checkpoint")
    optim_files = _shards(tag_dir, _OPTIM_STATES_RE)
    models = [read_checkpoint(f) for f in model_files]
    for f, m in zip(model_files, models):
        if not isinstance(m, dict) or "module" not in m:
            raise CheckpointError(f"{f} is not a DeepSpeed model-states file (no 'module' entry)")
    if not optim_files or "param_shapes" not in models[0] or models[0].get("param_shapes") is None:
        module = extract_state_dict(models[0]["module"], str(model_files[0]))
        return OrderedDict((k, _float(v)) for k, v in module.items())

    optim = []
    for f in optim_files:
        state = read_checkpoint(f)
        osd = state.get("optimizer_state_dict") if isinstance(state, dict) else None
        if not isinstance(osd, dict) or "zero_stage" not in osd:
            raise CheckpointError(f"{f} is not a ZeRO optimizer shard (no optimizer_state_dict.zero_stage)")
        optim.append(osd)
    stage = int(optim[0]["zero_stage"])
    world = optim[0]["partition_count"]
    world = max(world) if isinstance(world, (list, tuple)) else int(world)
    if world != len(optim_files):
        raise CheckpointError(f"{tag_dir}: the ZeRO-{stage} checkpoint was saved by {world} ranks but holds "
                              f"{len(optim_files)} optimizer shards (an interrupted or overwritten save)")
    first = models[0]
    buffer_names = set(first.get("buffer_names", ()))
    out = OrderedDict((k, _float(v)) for k, v in first["module"].items() if k in buffer_names)
    frozen = first.get("frozen_param_shapes") or {}
    if stage <= 2:
        for name in frozen:
            out[name] = _float(first["frozen_param_fragments"][name])
        _merge_zero12(out, first["param_shapes"], [o["single_partition_of_fp32_groups"] for o in optim], world,
                      optim[0].get("param_alignment_paddings"), tag_dir)
    elif stage == 3:
        if len(models) != world:
            raise CheckpointError(f"{tag_dir}: a ZeRO-3 checkpoint of {world} ranks needs {world} model-states files, "
                                  f"found {len(models)}")
        for name, shape in frozen.items():
            parts = torch.cat([m["frozen_param_fragments"][name].reshape(-1) for m in models])
            out[name] = _float(parts[:math.prod(shape)].view(shape))
        _merge_zero3(out, first["param_shapes"], [o["fp32_flat_groups"] for o in optim], world, tag_dir)
    else:
        raise CheckpointError(f"{tag_dir}: unknown ZeRO stage {stage}")
    for alias, target in (first.get("shared_params") or {}).items():
        if target in out:
            out[alias] = out[target]
    for name, value in first["module"].items():  # entries that are neither ZeRO parameters nor buffers: whole
        if name not in out and not (stage == 3 and value.numel() == 0):  # (ZeRO-3 placeholders of parameters)
            out[name] = _float(value)
    return out


def _merge_zero12(out: dict, param_shapes: list, flat_groups: list, world: int, paddings, tag_dir: Path) -> None:
    for g, shapes in enumerate(param_shapes):
        flat = torch.cat([rank_groups[g].reshape(-1) for rank_groups in flat_groups])
        offset = 0
        pads = paddings[g] if paddings is not None else None
        for i, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            if offset + numel > flat.numel():
                raise CheckpointError(f"{tag_dir}: parameter group {g} holds {flat.numel()} values, too few for "
                                      f"{name} {tuple(shape)} at offset {offset}")
            out[name] = flat.narrow(0, offset, numel).view(shape).clone()
            offset += numel + (pads[i] if pads is not None else 0)
        align = 2 * world  # DeepSpeed pads each group to a multiple of 2 * world size
        if math.ceil(offset / align) != math.ceil(flat.numel() / align):
            raise CheckpointError(f"{tag_dir}: parameter group {g} used {offset} of {flat.numel()} values; the "
                                  "shards do not match param_shapes")


def _merge_zero3(out: dict, param_shapes: list, flat_groups: list, world: int, tag_dir: Path) -> None:
    flats = [torch.cat([t.reshape(-1) for t in rank_groups]) for rank_groups in flat_groups]
    shapes = {k: v for group in param_shapes for k, v in group.items()}
    offset = 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        part = math.ceil(numel / world)
        if offset + part > flats[0].numel():
            raise CheckpointError(f"{tag_dir}: the fp32 shards are too short for {name} {tuple(shape)}")
        out[name] = torch.cat([f.narrow(0, offset, part) for f in flats])[:numel].view(shape).clone()
        offset += part
    if offset != flats[0].numel():
        raise CheckpointError(f"{tag_dir}: used {offset} of {flats[0].numel()} values per rank; the shards do not "
                              "match param_shapes")


# ----------------------------------------------------------------------------------------------------------------------
# Before DeepSpeed reads a folder; universal conversion for another world size
# ----------------------------------------------------------------------------------------------------------------------

def refuse_unsafe_files(folder: Path) -> None:
    """Read every ``*.pt`` file under ``folder`` with the safe reader (``torch.load(weights_only=True)``,
    memory-mapped: the pickles are parsed, the tensor data is not read); a file holding a pickled object raises
    :class:`~.reader.UnsafeCheckpointError` naming it. Run before DeepSpeed, which loads its
    files with ``weights_only=False``, or its converter reads the folder."""
    for p in sorted(Path(folder).rglob("*.pt")):
        if p.is_symlink():
            raise CheckpointError(f"{p} is a symbolic link; a checkpoint folder holds plain files only")
        read_checkpoint(p)


_ERROR_TYPES = {t.__name__: t for t in (FileNotFoundError, NotADirectoryError, RuntimeError, ValueError,
                                        CheckpointError, DamagedCheckpointError, NoCheckpointError, PermissionError,
                                        TimeoutError)}


def raise_everywhere(kind_and_message, extra_types=()) -> None:
    """Raise rank 0's error (its type name and message, as broadcast) on this rank: the builtin and checkpoint
    error types here and ``extra_types`` keep their type, other checkpoint refusals become :class:`CheckpointError`,
    any other type ``RuntimeError('<type>: <message>')``."""
    kind, message = kind_and_message
    types = dict(_ERROR_TYPES, **{t.__name__: t for t in extra_types})
    if kind in types:
        raise types[kind](message)
    if kind.endswith("CheckpointError"):
        raise CheckpointError(message)
    raise RuntimeError(f"{kind}: {message}")


def _universal_is_current(out: Path, tag_dir: Path) -> bool:
    meta = layout.read_marker(out)
    return meta is not None and meta.get("converted_from") == layout.marker_digest(tag_dir) \
        and not layout.verify(out, meta)


def _convert(tag_dir: Path, out: Path, zero_stage: int, source: str) -> None:
    """Rank 0's part of :func:`convert_to_universal`."""
    tmp = tag_dir.with_name(tag_dir.name + layout.UNIVERSAL_SUFFIX + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    refuse_unsafe_files(tag_dir)
    workers = str(max(1, min(8, os.cpu_count() or 1)))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp), "--num_extract_workers", workers, "--num_merge_workers", workers]
    if zero_stage < 3:
        cmd.append("--inject_missing_state")  # plain ZeRO-1/2 saves lack universal_checkpoint_info
    print(f"converting {tag_dir} to a universal checkpoint ({workers} workers) for a new world size",
          flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        msg = (f"universal checkpoint conversion failed ({' '.join(cmd)}):\n{res.stdout[-3000:]}\n"
               f"{res.stderr[-3000:]}")
        raise RuntimeError(msg)
    for f in tag_dir.glob(layout.EXTRA_STATE_GLOB):
        shutil.copy2(f, tmp / f.name)
    (tmp / "latest_universal").unlink(missing_ok=True)
    layout.fsync_tree(tmp)
    meta = {k: v for k, v in (layout.read_marker(tag_dir) or {}).items() if k != "files"}
    meta.update(converted_from=source, source_tag=tag_dir.name, files=layout.file_manifest(tmp))
    layout.atomic_write_text(tmp / layout.MARKER, json.dumps(meta, indent=1))
    os.replace(tmp, out)
    layout.fsync_path(out.parent)
    (tag_dir.parent / "latest_universal").unlink(missing_ok=True)


def convert_to_universal(tag_dir: Path, zero_stage: int, timeout_s: float = 4 * 3600) -> Path:
    """Convert ``tag_dir`` into ``<tag_dir>_universal`` (rank 0; parallel workers; atomic via a temporary folder),
    unless a conversion *of this very save* exists (its marker records the SHA-256 of ``tag_dir/COMPLETE``). The
    input's pickles pass the safe reader first, and so does the output before anything loads it. The other ranks
    wait for the result on the file system -- not in a collective with a short timeout -- up to ``timeout_s``, and
    fail with rank 0's error if the conversion fails."""
    out = tag_dir.with_name(tag_dir.name + layout.UNIVERSAL_SUFFIX)
    failed = tag_dir.with_name(tag_dir.name + layout.UNIVERSAL_SUFFIX + ".FAILED")
    source = layout.marker_digest(tag_dir)
    reuse = False
    if rt.is_main():
        reuse = _universal_is_current(out, tag_dir)
        if not reuse:  # cleared before anyone looks: no rank can mistake an old result for this one
            failed.unlink(missing_ok=True)
            shutil.rmtree(out, ignore_errors=True)
    reuse = rt.broadcast_object(reuse)
    if not reuse and rt.is_main():
        try:
            _convert(tag_dir, out, zero_stage, source)
        except BaseException as e:  # the other ranks wait on the file system: tell them
            layout.atomic_write_text(failed, f"{type(e).__name__}: {e}")
            raise
    elif not reuse:
        t0 = time.time()
        while (layout.read_marker(out) or {}).get("converted_from") != source:
            if failed.is_file():
                raise RuntimeError(f"rank 0 failed to convert {tag_dir}: {failed.read_text()[-2000:]}")
            if time.time() - t0 > timeout_s:
                raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to convert {tag_dir} to {out}")
            time.sleep(1.0)
    outcome = None
    if rt.is_main():
        try:
            refuse_unsafe_files(out)
            outcome = ("ok", None)
        except Exception as e:  # noqa: BLE001 - every rank must learn of it
            outcome = ("error", (type(e).__name__, str(e)))
    outcome = rt.broadcast_object(outcome)
    if outcome[0] == "error":
        raise_everywhere(outcome[1])
    return out
