"""The one reader of checkpoint files: every file or folder a user can hand over, read without running code.

Kinds understood (nothing is ever downloaded):

* ``torch.save`` files, zip or legacy format, whatever the suffix (``.pth``, ``.pt``, ``.pth.tar``, ``.bin``,
  ``.ckpt``);
* ``.safetensors`` files;
* JAX/Flax ``.npz`` ViT checkpoints (Google AugReg), converted to timm names by timm's own converter;
* a ``.zip`` release archive that wraps exactly one checkpoint file;
* DeepSpeed checkpoints, any ZeRO stage 0-3: a tag folder (``iter_N/`` with ``*_model_states.pt`` and
  ``*_optim_states.pt`` shards), a save folder with tags (the newest complete one: our ``COMPLETE`` marker, else
  DeepSpeed's ``latest`` file), or a work folder with such a ``checkpoints/`` folder. Those folders are found and
  their fp32 weights merged from the ZeRO shards by :mod:`.deepspeed`
  (:func:`~vit_adapter_ds.checkpoint.deepspeed.consolidate_deepspeed`), not by DeepSpeed's ``zero_to_fp32``, which
  unpickles the shards with ``weights_only=False``.

A state dict is found inside the checkpoint under mmcv's ``'state_dict'``, ``'model'`` (DeiT, BEiT) or
``'module'`` (DeepSpeed), or at the top level; a ``module.`` prefix (DDP) is removed.

**Safety.** Every pickle is read with ``torch.load(..., weights_only=True)``. Besides tensors and plain containers,
only data-only objects are allowed: numpy arrays, scalars and dtypes and ``argparse.Namespace`` (stored next to the
weights by training scripts), and DeepSpeed's ``ZeroStageEnum``, ``fragment_address``, ``LossScaler`` and
``DynamicLossScaler`` found in ZeRO optimizer shards, which are rebuilt as plain records of this module
(:class:`DeepSpeedRecord`; DeepSpeed need not be installed). A file holding anything else raises
:class:`UnsafeCheckpointError` naming the file and the refused global; there is no fallback to unsafe loading.

Reading any input (file or DeepSpeed folder) into a state dict and loading it into a model with a report are
:mod:`.loading`'s (``read_state_dict``, ``load_into``, ``LoadReport``), above this module and :mod:`.deepspeed`.

The engine's own per-rank resume state is saved in a form that loads with ``weights_only=True``:
:func:`rng_state_to_tensors` / :func:`rng_state_from_tensors`.

This module imports only torch and numpy (safetensors and timm when such files are read) and nothing of the package
outside :mod:`vit_adapter_ds.checkpoint`, so models and the engine can both use it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import random
import re
import shutil
import stat
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "DeepSpeedRecord", "read_checkpoint",
    "extract_state_dict", "to_mmcv", "rng_state_to_tensors",
    "rng_state_from_tensors", "square_grid_side",
]

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle holds an object that ``torch.load(weights_only=True)`` refuses.

    ``path`` is the file, ``global_name`` the refused global (e.g. ``'__main__.Payload'``)."""

    def __init__(self, path, global_name: str):
        self.path, self.global_name = str(path), global_name
        super().__init__(
            f"refusing to load {path}: it contains a pickled Python object ({global_name}), i.e. code that would run "
            "while loading. Only tensors, plain containers and numbers are accepted (torch.load(weights_only=True)). "
            "If you trust the file, re-save just its weights: "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)")

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return type(self), (self.path, self.global_name)


# ----------------------------------------------------------------------------------------------------------------------
# Safe torch.load
# ----------------------------------------------------------------------------------------------------------------------

class DeepSpeedRecord:
    """A data-only stand-in for a DeepSpeed object found in a ZeRO shard (its attributes, nothing else).

    ``qualified_name`` is the DeepSpeed class it replaces. Loss scalers and ``fragment_address`` are plain attribute
    bags in DeepSpeed too; here they cannot have methods that run."""

    qualified_name = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _enum_value(value):
    """Stand-in for an ``Enum`` class called with its value while unpickling (``ZeroStageEnum(2)`` -> ``2``)."""
    if not isinstance(value, (int, str)):
        raise pickle.UnpicklingError(f"unexpected enum value {value!r}")
    return value


_DEEPSPEED_RECORDS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                      "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                      "deepspeed.utils.tensor_fragment.fragment_address")
_DEEPSPEED_ENUMS = ("deepspeed.runtime.zero.config.ZeroStageEnum",)
_RECORD_CLASSES = {name: type(name.rsplit(".", 1)[1], (DeepSpeedRecord,), {"qualified_name": name})
                   for name in _DEEPSPEED_RECORDS}


def _data_only_globals() -> list:
    """The globals allowed next to tensors: numpy scalars, arrays and dtypes (mmcv's ``meta['hook_msgs']``, old RNG
    states), ``argparse.Namespace`` (unilm/DeiT ``args``) and stand-ins for DeepSpeed's plain-data shard objects.
    Old pickles name numpy's internals ``numpy.core.*``, new ones ``numpy._core.*``; both are allowed."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    allowed = [argparse.Namespace, np.ndarray, np.dtype, multiarray.scalar, multiarray._reconstruct,
               (multiarray.scalar, "numpy.core.multiarray.scalar"),
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    for name in dir(dtypes) if dtypes is not None else []:
        obj = getattr(dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            allowed.append(obj)
    allowed += [(cls, name) for name, cls in _RECORD_CLASSES.items()]
    allowed += [(_enum_value, name) for name in _DEEPSPEED_ENUMS]
    return allowed


_REFUSED = (re.compile(r"Unsupported global: GLOBAL ([\w.<>]+)"),
            re.compile(r"unsupported GLOBAL ([\w.<>]+) whose module"),
            re.compile(r"(?:Can only (?:build|create new object)|Trying to call reduce)[^\n]*?(?:got|function) "
                       r"<?(?:class )?'?([\w.<>]+)"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def _torch_load(path: Path):
    """``torch.load(path, map_location='cpu', weights_only=True)`` with the data-only globals; memory-mapped when the
    file is in the zip format, so that large unused entries are never read."""
    with torch.serialization.safe_globals(_data_only_globals()):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap can only be used" not in str(err):
                    raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-1.6) format
        except pickle.UnpicklingError as err:
            for pattern in _REFUSED:
                found = pattern.search(str(err))
                if found:
                    raise UnsafeCheckpointError(path, found.group(1)) from None
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from None
        except Exception as err:  # noqa: BLE001 - damaged files fail in many ways inside the unpickler
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (damaged, truncated or another "
                                  f"format): {type(err).__name__}: {_first_line(err)}") from None


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------

def _is_torch_zip(zf: zipfile.ZipFile) -> bool:
    return any(name.endswith("data.pkl") for name in zf.namelist())


def read_checkpoint(path: str | os.PathLike):
    """The object stored in a checkpoint *file* (usually a dict), read safely on the CPU.

    ``.safetensors`` -> ``safetensors.torch.load_file``; ``.npz`` (JAX AugReg ViT) -> a timm state dict; a ``.zip``
    archive wrapping exactly one checkpoint file is unpacked to a temporary folder first (bounded:
    :func:`_unpack_member`); everything else goes through ``torch.load(weights_only=True)`` with the data-only
    globals (see the module docstring). Only regular files are read (a symlink to one is fine): a device, FIFO or
    socket raises :class:`CheckpointError`. Use :func:`.loading.read_state_dict` for DeepSpeed folders.
    """
    path = Path(path)
    _require_regular_file(path)
    if path.name.endswith(".npz"):
        return _npz_to_timm_state_dict(path)
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file: {_first_line(err)}") from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if not _is_torch_zip(zf):
                return _read_release_archive(path, zf)
    return _torch_load(path)


def _require_regular_file(path: Path) -> None:
    """Refuse a path that is missing, a folder, or not a regular file once symlinks are resolved (a device such as
    ``/dev/zero``, a FIFO, a socket): reading one blocks or never ends."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; nothing is downloaded here, so copy the "
                                "pretrained or released file to that path first")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file (read_state_dict reads DeepSpeed "
                                "checkpoint folders)")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "no file")
        target = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise CheckpointError(f"refusing to read {path}{target}: it is {kind}, not a regular file, and could be "
                              "read without end")


# A sane cap on one checkpoint unpacked from a release archive (the largest released ViT-Adapter files are ~3 GB).
MAX_UNPACKED_BYTES = 64 << 30


def _read_release_archive(path: Path, zf: zipfile.ZipFile):
    """The checkpoint in a ``.zip`` release archive that wraps exactly one checkpoint file, unpacked (bounded) to a
    temporary folder and read by :func:`read_checkpoint`; an archive inside the archive is refused."""
    members = [m for m in zf.namelist() if m.endswith(CHECKPOINT_SUFFIXES) and not m.startswith("__MACOSX/")]
    if len(members) != 1:
        raise CheckpointError(f"{path} is a zip archive, not a torch checkpoint, and holds "
                              f"{len(members)} checkpoint files ({members or zf.namelist()[:10]}); "
                              "unzip it and pass the checkpoint file")
    tmp = tempfile.mkdtemp(prefix="ckpt_unzip_")
    try:
        inner = _unpack_member(zf, zf.getinfo(members[0]), path, Path(tmp))
        logger.info("unpacked %s from the release archive %s", members[0], path)
        if zipfile.is_zipfile(inner):
            with zipfile.ZipFile(inner) as inner_zf:
                if not _is_torch_zip(inner_zf):
                    raise CheckpointError(f"{path}: the member {members[0]} is itself an archive; unpack it by hand")
        return read_checkpoint(inner)  # memory-mapped pages stay valid after the file is removed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_member_name(name: str, archive: Path) -> None:
    """Refuse an absolute member name or one with ``..`` (zipfile's ``extract`` would sanitise it; a hostile
    archive is refused instead, and the member is written under its base name only)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise CheckpointError(f"refusing to unpack {archive}: the member name {name!r} is an absolute path or "
                              "climbs out with '..'")


def _check_member_size(info: zipfile.ZipInfo, archive: Path, dest: Path) -> None:
    """Refuse a member whose declared size exceeds :data:`MAX_UNPACKED_BYTES` or the free space at ``dest``."""
    free = shutil.disk_usage(dest).free
    for limit, what in ((MAX_UNPACKED_BYTES, "the cap MAX_UNPACKED_BYTES"), (free, f"the free space at {dest}")):
        if info.file_size > limit:
            raise CheckpointError(f"refusing to unpack {archive}: its member {info.filename} declares "
                                  f"{info.file_size} bytes, more than {what} ({limit} bytes)")


def _copy_bounded(src, dst, size: int, what: str) -> int:
    """Copy ``src`` to ``dst`` in blocks, stopping at ``size`` bytes: a stream with more than ``size`` bytes (a zip
    member that inflates beyond its declared size) raises :class:`CheckpointError` naming ``what``, after at most
    ``size`` bytes were written. Returns the bytes written."""
    written = 0
    while True:
        block = src.read(min(1 << 20, size - written + 1))
        if not block:
            return written
        if written + len(block) > size:
            raise CheckpointError(f"refusing {what}: it inflates beyond its declared {size} bytes (a zip bomb?)")
        dst.write(block)
        written += len(block)


def _unpack_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, dest: Path) -> Path:
    """Unpack one member of a release archive into the folder ``dest`` (flat, under its base name) after
    :func:`_check_member_name` and :func:`_check_member_size`, writing at most its declared size."""
    _check_member_name(info.filename, archive)
    _check_member_size(info, archive, dest)
    out = dest / PurePosixPath(info.filename).name
    what = f"the member {info.filename} of {archive}"
    try:
        with zf.open(info) as src, open(out, "wb") as dst:
            written = _copy_bounded(src, dst, info.file_size, what)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as err:
        raise CheckpointError(f"refusing {what}: it does not unpack ({_first_line(err)})") from None
    if written != info.file_size:
        raise CheckpointError(f"refusing {what}: it holds {written} bytes, its header declares {info.file_size}")
    return out


def square_grid_side(n: int) -> int | None:
    """The side of a square grid of ``n`` cells (e.g. position-embedding tokens), or None if ``n`` is no square."""
    side = math.isqrt(n)
    return side if side * side == n else None


def _npz_to_timm_state_dict(path: Path) -> "OrderedDict[str, torch.Tensor]":
    """A Google JAX/Flax ``.npz`` ViT checkpoint (AugReg) as a timm ``VisionTransformer`` state dict: the model is
    sized from the arrays' ``.npy`` headers (width, depth, heads, MLP, patch, position grid; no array is loaded for
    that: :func:`_npz_shapes`) and filled by timm's own converter."""
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    shapes = _npz_shapes(path)
    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        raise CheckpointError(f"{path} is a .npz file without 'embedding/kernel'; not a JAX ViT checkpoint")
    block = f"{prefix}Transformer/encoderblock_"
    depth = len({k[len(block):].split("/")[0] for k in shapes if k.startswith(block)})
    if depth == 0:
        raise CheckpointError(f"{path}: only JAX ViTs with per-block 'encoderblock_i' entries are supported")
    try:
        patch, _, in_chans, dim = shapes[f"{prefix}embedding/kernel"]
        heads = shapes[f"{block}0/MultiHeadDotProductAttention_1/query/kernel"][1]
        hidden = shapes[f"{block}0/MlpBlock_3/Dense_0/kernel"][1]
        tokens = shapes[f"{prefix}Transformer/posembed_input/pos_embedding"][1]
    except (KeyError, IndexError, ValueError) as err:
        raise CheckpointError(f"{path}: not a JAX ViT checkpoint (entry or shape {err} missing)") from None
    grid = square_grid_side(tokens - 1)
    if grid is None:
        raise CheckpointError(f"{path}: a position embedding of {tokens} tokens is not a class token plus a grid")
    num_classes = shapes[f"{prefix}head/kernel"][-1] if f"{prefix}head/kernel" in shapes else 0
    model = VisionTransformer(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
                              num_heads=heads, mlp_ratio=hidden / dim, qkv_bias=True, num_classes=num_classes)
    try:
        _load_weights(model, str(path))
    except (ValueError, KeyError, IndexError, RuntimeError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: the JAX arrays do not fill a ViT ({type(err).__name__}: "
                              f"{_first_line(err)})") from None
    logger.info("converted the JAX checkpoint %s to timm names (%d blocks, width %d, %dx%d grid)", path, depth, dim,
                grid, grid)
    return model.state_dict()


# Deflate inflates at most ~1032:1; a .npz declaring more array bytes than that over its size lies in its headers.
_MAX_NPZ_INFLATION = 1100


def _npz_shapes(path: Path) -> dict:
    """``{name: shape}`` of the arrays in a ``.npz`` file from their ``.npy`` headers only (no array data is read).
    Refused with :class:`CheckpointError`: an unreadable archive or header, an object (pickled) array, a header
    whose shape disagrees with its member's size, and more declared bytes than the file can inflate to."""
    shapes, total = {}, 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    shapes[info.filename[:-len(".npy")]] = _npy_member_shape(zf, info, path)
                    total += info.file_size
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as err:
        raise CheckpointError(f"{path} is not a readable .npz file: {_first_line(err)}") from None
    if total > _MAX_NPZ_INFLATION * max(path.stat().st_size, 1):
        raise CheckpointError(f"{path}: its arrays declare {total} bytes, more than a {path.stat().st_size}-byte "
                              "archive can hold")
    return shapes


def _npy_member_shape(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple:
    """The shape in the header of one ``.npy`` member, checked against the member's declared size."""
    fmt = np.lib.format
    with zf.open(info) as fp:
        version = fmt.read_magic(fp)
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in readers:
            raise CheckpointError(f"{path}: the array {info.filename} has .npy format version {version}; "
                                  "only 1.0 and 2.0 are read")
        shape, _, dtype = readers[version](fp)
        header_bytes = fp.tell()
    if dtype.hasobject:
        raise CheckpointError(f"{path}: the array {info.filename} holds Python objects (a pickle); refused")
    if header_bytes + math.prod(shape) * dtype.itemsize != info.file_size:
        raise CheckpointError(f"{path}: the header of {info.filename} declares {shape} {dtype}, which does not "
                              f"match its {info.file_size} bytes")
    return tuple(shape)


def extract_state_dict(checkpoint, source: str = "<checkpoint>") -> "OrderedDict[str, torch.Tensor]":
    """The tensors of a loaded checkpoint: its ``'state_dict'`` (mmcv), ``'model'`` (DeiT, BEiT) or ``'module'``
    (DeepSpeed) entry, or the dict itself; non-tensor entries are left out and a ``module.`` prefix on every key
    (DDP) is removed."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a dict of weights")
    for key in ("state_dict", "model", "module"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    state_dict = OrderedDict((k, v) for k, v in checkpoint.items() if isinstance(v, torch.Tensor))
    if not state_dict:
        raise CheckpointError(f"{source} has no tensors under 'state_dict', 'model', 'module' or at the top level "
                              f"(top-level keys: {list(checkpoint)[:10]})")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
    return state_dict


def to_mmcv(state_dict: dict, meta: dict | None = None) -> dict:
    """The official mmcv checkpoint format (what exports write; :func:`extract_state_dict` reads it back):
    ``{'meta': ..., 'state_dict': {backbone.*, decode_head.*, ...}}``."""
    return {"meta": dict(meta or {}), "state_dict": state_dict}


# ----------------------------------------------------------------------------------------------------------------------
# RNG states in a weights_only-loadable form
# ----------------------------------------------------------------------------------------------------------------------

def rng_state_to_tensors() -> dict:
    """The current python, numpy, torch (and CUDA) RNG states as tensors, ints, floats and strings only, so that a
    file holding them loads with ``torch.load(weights_only=True)`` (numpy's own state holds an ``ndarray``).
    :func:`rng_state_from_tensors` restores them exactly."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state_from_tensors(state: dict) -> None:
    """Restore RNG states saved by :func:`rng_state_to_tensors`; the engine's older form (``random.getstate()`` and
    ``np.random.get_state()`` tuples, read through the numpy allow-list of :func:`read_checkpoint`) is accepted too.
    CUDA states are restored only when CUDA is available."""
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    else:
        random.setstate(py)
    if isinstance(npy, dict):
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
    else:
        np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
