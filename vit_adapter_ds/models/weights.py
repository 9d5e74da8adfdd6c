"""Pretrained and released weights from local files (spec §6). Nothing is ever downloaded.

Three kinds of files are understood, recognised by their keys:

* **timm ViTs** (DeiT, AugReg, DINOv2 converted or not) for ``ViTAdapter``: names are copied as they are, like the
  official ``my_load_checkpoint``; ``pos_embed`` keeps its class-token slot and must cover the model's patch grid
  (it is resized at run time from ``pretrain_size``, never at load time). ``cls_token``/``norm``/``head``/
  ``dist_token``/``head_dist``/``mask_token`` are reported as unexpected and ignored; ``gamma1``/``gamma2`` are
  missing and stay 1. timm's newer ``ls1.gamma``/``ls2.gamma`` become ``gamma1``/``gamma2`` and a 14x14 patch
  kernel (DINOv2) is resized bilinearly to the model's, as the official ``convert_14to16.py`` does.
* **BEiT / BEiTv2** (microsoft/unilm) for ``BEiTAdapter``, with the official ``mmcv_custom/checkpoint.py`` rules: a
  shared ``rel_pos_bias`` table is copied to every block, ``relative_position_index`` keys are dropped, and tables of
  another size are resampled per head on BEiT's geometric-progression grid with a bicubic spline
  (:func:`resize_rel_pos_table`); the segmentation model keeps the 3 class-token rows, the detection model drops them.
* **Released ViT-Adapter segmentors/detectors** (mmcv ``{'meta', 'state_dict', 'optimizer'}``, keys ``backbone.*``,
  ``decode_head.*``, ...): :func:`split_segmentor_state_dict` separates the parts; :func:`load_pretrained` loads the
  ``backbone.`` part. A state dict saved from our own backbones is loaded the same way.

Every file is read with ``torch.load(weights_only=True)`` (plus numpy scalars/arrays and ``argparse.Namespace``,
which training scripts store next to the weights and which cannot run code); a file holding any other pickled object
is refused. ``.pth.tar`` files are ordinary ``torch.save`` files; a ``.zip`` release archive that wraps one
checkpoint file is unpacked to a temporary folder; ``.safetensors`` files are read with ``safetensors``; JAX ``.npz``
ViT checkpoints (AugReg) are converted to timm names with timm's own converter.

The functions follow timm's ``checkpoint_filter_fn(state_dict, model)`` style and fill a :class:`LoadReport`,
which ``str()`` renders in plain words.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import RectBivariateSpline
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "LoadReport", "read_checkpoint", "load_checkpoint_file",
    "detect_checkpoint_kind", "split_segmentor_state_dict", "geometric_source_coordinates", "resize_rel_pos_table",
    "vit_checkpoint_filter_fn", "beit_checkpoint_filter_fn", "load_pretrained",
]

_CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")
NUM_CLS_ROWS = 3  # BEiT's cls->token, token->cls and cls->cls entries at the end of a relative-position table


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle holds objects that ``weights_only`` loading refuses."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------------

def _data_only_globals() -> list:
    """Objects that training scripts store next to the weights and that cannot execute code: numpy scalars, arrays
    and dtypes (mmcv's ``meta['hook_msgs']['best_score']``) and ``argparse.Namespace`` (unilm/DeiT ``args``). Old
    pickles name numpy's internals ``numpy.core.*``, new ones ``numpy._core.*``; both names are allowed."""
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
    return allowed


def _torch_load(path: Path):
    """``torch.load(..., map_location='cpu', weights_only=True)``; memory-mapped when the file is in the zip format,
    so that large unused entries (e.g. 79 MB ``relative_position_index`` per block) are never read."""
    with torch.serialization.safe_globals(_data_only_globals()):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap can only be used" not in str(err):
                    raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-1.6) format
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if found:
                raise UnsafeCheckpointError(
                    f"refusing to load {path}: it contains a pickled Python object ({found.group(1)}), i.e. code "
                    "that would run while loading. Only tensors and plain containers are accepted "
                    "(torch.load(weights_only=True)). If you trust the file, re-save just its weights: "
                    "torch.save(torch.load(path, weights_only=False)['state_dict'], new_path)") from None
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(err)}") from None
        except Exception as err:  # noqa: BLE001 - damaged files fail in many ways inside the unpickler
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (damaged, truncated or another "
                                  f"format): {type(err).__name__}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def _is_torch_zip(zf: zipfile.ZipFile) -> bool:
    return any(name.endswith("data.pkl") for name in zf.namelist())


def read_checkpoint(path: str | os.PathLike):
    """The raw object stored in a checkpoint file (usually a dict), read safely on the CPU.

    ``.safetensors`` → ``safetensors.torch.load_file``; ``.npz`` (JAX AugReg ViT) → timm state dict; a ``.zip``
    archive wrapping exactly one checkpoint file (how some ViT-Adapter releases are shipped) is unpacked to a
    temporary folder first; everything else (``.pth``, ``.pth.tar``, ``.pt``, ...) goes through
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist; nothing is downloaded here, so copy the "
                                "pretrained or released file to that path first")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file")
    if path.name.endswith(".npz"):
        return _npz_to_timm_state_dict(path)
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if not _is_torch_zip(zf):
                members = [m for m in zf.namelist() if m.endswith(_CHECKPOINT_SUFFIXES)
                           and not m.startswith("__MACOSX/")]
                if len(members) != 1:
                    raise CheckpointError(f"{path} is a zip archive, not a torch checkpoint, and holds "
                                          f"{len(members)} checkpoint files ({members or zf.namelist()[:10]}); "
                                          "unzip it and pass the checkpoint file")
                tmp = tempfile.mkdtemp(prefix="ckpt_unzip_")
                try:
                    inner = Path(zf.extract(members[0], tmp))
                    logger.info("unpacked %s from the release archive %s", members[0], path)
                    return _torch_load(inner)  # memory-mapped pages stay valid after the file is removed
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return _torch_load(path)


def _npz_to_timm_state_dict(path: Path) -> "OrderedDict[str, torch.Tensor]":
    """A Google JAX/Flax ``.npz`` ViT checkpoint (AugReg) as a timm ``VisionTransformer`` state dict: the model is
    sized from the file (width, depth, heads, MLP, patch, position grid) and filled by timm's own converter."""
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    with np.load(path, allow_pickle=False) as npz:
        shapes = {k: npz[k].shape for k in npz.files}
    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in shapes), None)
    if prefix is None:
        raise CheckpointError(f"{path} is a .npz file without 'embedding/kernel'; not a JAX ViT checkpoint")
    block = f"{prefix}Transformer/encoderblock_"
    depth = len({k[len(block):].split("/")[0] for k in shapes if k.startswith(block)})
    if depth == 0:
        raise CheckpointError(f"{path}: only JAX ViTs with per-block 'encoderblock_i' entries are supported")
    patch, _, in_chans, dim = shapes[f"{prefix}embedding/kernel"]
    heads = shapes[f"{block}0/MultiHeadDotProductAttention_1/query/kernel"][1]
    hidden = shapes[f"{block}0/MlpBlock_3/Dense_0/kernel"][1]
    tokens = shapes[f"{prefix}Transformer/posembed_input/pos_embedding"][1]
    grid = _grid_side(tokens - 1)
    if grid is None:
        raise CheckpointError(f"{path}: a position embedding of {tokens} tokens is not a class token plus a grid")
    num_classes = shapes[f"{prefix}head/kernel"][-1] if f"{prefix}head/kernel" in shapes else 0
    model = VisionTransformer(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
                              num_heads=heads, mlp_ratio=hidden / dim, qkv_bias=True, num_classes=num_classes)
    _load_weights(model, str(path))
    logger.info("converted the JAX checkpoint %s to timm names (%d blocks, width %d, %dx%d grid)", path, depth, dim,
                grid, grid)
    return model.state_dict()


def _pick_state_dict(checkpoint, source: str) -> dict:
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


def load_checkpoint_file(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The state dict in a checkpoint file: the raw dict, or its ``'state_dict'`` (mmcv), ``'model'`` (DeiT, BEiT)
    or ``'module'`` (DeepSpeed) entry; a ``module.`` prefix (DDP) is stripped and non-tensor entries are left out."""
    return _pick_state_dict(read_checkpoint(path), str(path))


# ----------------------------------------------------------------------------------------------------------------------
# Recognising checkpoints
# ----------------------------------------------------------------------------------------------------------------------

def split_segmentor_state_dict(state_dict: dict) -> dict[str, "OrderedDict[str, torch.Tensor]"]:
    """Split a whole-model state dict (mmseg/mmdet ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``,
    ``neck.*``, ...) by its first name component: ``{'backbone': {...}, 'decode_head': {...}, ...}`` with the prefix
    removed. A full checkpoint dict (with ``'state_dict'``) is accepted too."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    parts: dict[str, OrderedDict] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if not rest:
            raise CheckpointError(f"key {key!r} has no '<part>.' prefix; this is not a whole-segmentor state dict")
        parts.setdefault(head, OrderedDict())[rest] = value
    return parts


def _is_beit(keys) -> bool:
    return any(k.endswith(("attn.q_bias", "attn.relative_position_bias_table")) or k.startswith("rel_pos_bias.")
               or re.search(r"\.gamma_[12]$", k) for k in keys)


def _is_adapter(keys) -> bool:
    return any(k.startswith(("spm.", "interactions.")) or k == "level_embed" for k in keys)


def detect_checkpoint_kind(state_dict: dict) -> str:
    """'segmentor' (``backbone.*`` keys), 'vit-adapter'/'beit-adapter' (our own or the released backbone format),
    'beit' (unilm BEiT/BEiTv2) or 'vit' (timm DeiT/AugReg/DINOv2)."""
    keys = list(state_dict)
    if any(k.startswith("backbone.") for k in keys):
        return "segmentor"
    if _is_beit(keys):
        return "beit-adapter" if _is_adapter(keys) else "beit"
    if any(re.match(r"blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys):
        return "vit-adapter" if _is_adapter(keys) else "vit"
    raise CheckpointError("unrecognised checkpoint: expected timm ViT keys (blocks.0.attn.qkv.weight, pos_embed), "
                          "BEiT keys (blocks.0.attn.q_bias, relative_position_bias_table) or a released segmentor "
                          f"(backbone.*); first keys are {keys[:8]}")


_KIND_WORDS = {"vit": "a timm ViT checkpoint (DeiT/AugReg/DINOv2 style)", "beit": "a BEiT/BEiTv2 checkpoint",
               "vit-adapter": "a ViT-Adapter backbone", "beit-adapter": "a BEiT-Adapter backbone"}


def _check_family(kind: str, model: nn.Module, source: str) -> None:
    from .backbones import BEiTAdapter, ViTAdapter

    beit_file = kind.startswith("beit")
    if isinstance(model, BEiTAdapter) and not beit_file:
        raise CheckpointError(
            f"{source} is {_KIND_WORDS[kind]} (qkv biases, absolute pos_embed, no relative position tables), but the "
            "model is a BEiTAdapter, which needs BEiT weights (q_bias/v_bias, relative_position_bias_table, "
            "gamma_1/gamma_2); build a ViTAdapter for this file or pass a BEiT checkpoint")
    if isinstance(model, ViTAdapter) and beit_file:
        raise CheckpointError(
            f"{source} is {_KIND_WORDS[kind]} (q_bias/v_bias, relative position tables), but the model is a "
            "ViTAdapter, which needs timm ViT weights (DeiT/AugReg); build a BEiTAdapter for this file")
    if not isinstance(model, (BEiTAdapter, ViTAdapter)):
        raise TypeError(f"load_pretrained expects a ViTAdapter or BEiTAdapter, got {type(model).__name__}")


# ----------------------------------------------------------------------------------------------------------------------
# Report
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


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: the file, its kind, which tensors were loaded, which model tensors were
    missing from the file (left at their initial values), which file tensors the model does not have (ignored),
    which were resized (name, shape in the file, shape loaded), and any other notes."""
    source: str
    kind: str = ""
    model: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"Loaded {self.source} ({_KIND_WORDS.get(self.kind, self.kind)}) into {self.model}:",
                 f"  {len(self.loaded)} tensors loaded"]
        if self.resized:
            groups: "OrderedDict[tuple, int]" = OrderedDict()
            for key, before, after in self.resized:
                group = (re.sub(r"\.\d+(?=\.)", ".*", key), tuple(before), tuple(after))
                groups[group] = groups.get(group, 0) + 1
            shown = "; ".join(f"{k} {a} -> {b}" + (f" x{n}" if n > 1 else "") for (k, a, b), n in groups.items())
            lines.append(f"  {len(self.resized)} resized: {shown}")
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


# ----------------------------------------------------------------------------------------------------------------------
# BEiT relative position tables
# ----------------------------------------------------------------------------------------------------------------------

def _geometric_ratio(src_size: int, dst_size: int) -> float:
    """Bisection in [1.01, 1.5] for q with 1 + q + ... + q^(src_size//2 - 1) ~ dst_size // 2 (BEiT's rule; the
    last midpoint is used, as in the official code)."""
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            right = q
        else:
            left = q
    return q


def geometric_source_coordinates(src_size: int, dst_size: int) -> np.ndarray:
    """Where BEiT places the ``src_size`` relative offsets of a source table when resampling it to ``dst_size``:
    0 and +-(1, 1+q, 1+q+q^2, ...) (float64, ascending). The target offsets are the integers
    ``-(dst_size//2) .. dst_size//2``, so the centre and the +-1 offsets are always copied exactly."""
    if src_size % 2 != 1:
        raise ValueError(f"a relative-position table side is 2*window-1, i.e. odd; got {src_size}")
    q = _geometric_ratio(src_size, dst_size)
    dis = np.cumsum(q ** np.arange(src_size // 2, dtype=np.float64))
    return np.concatenate([-dis[::-1], [0.0], dis])


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n and side % 2 == 1 else None


def resize_rel_pos_table(table: torch.Tensor, dst_size: int, src_extra: int = NUM_CLS_ROWS,
                         dst_extra: int = NUM_CLS_ROWS) -> torch.Tensor:
    """Resample a BEiT relative-position bias table to a ``dst_size x dst_size`` offset grid.

    Args:
        table: (src_size**2 + src_extra, heads); row ``dy*src_size + dx`` holds the bias of offset (dy, dx), then
            ``src_extra`` class-token rows (3 or 0).
        dst_size: side of the target offset grid (2*window-1: 27 at 224, 79 at 640, 111 at 896).
        src_extra / dst_extra: class-token rows in the source / target. The segmentation BEiT keeps the 3 rows
            (``dst_extra=3``); the detection BEiT has none (``dst_extra=0``: they are dropped).

    Returns (dst_size**2 + dst_extra, heads) in the table's dtype. Equal sizes give an exact copy. Otherwise each
    head is fitted with an interpolating bicubic spline (``RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)``, i.e.
    what the official ``scipy.interpolate.interp2d(x, y, z, kind='cubic')`` computed on a rectangular grid, with
    z rows along y) at :func:`geometric_source_coordinates` and evaluated on the integer grid; points beyond the
    outermost source offset take the edge value (FITPACK clamps, as interp2d did). As in the official code the
    values are taken in float32 (``.float().numpy()``) and fitted in float64.
    """
    if table.ndim != 2:
        raise ValueError(f"expected a (positions, heads) table, got shape {tuple(table.shape)}")
    if dst_extra not in (0, NUM_CLS_ROWS) or src_extra not in (0, NUM_CLS_ROWS):
        raise ValueError("class-token rows are either 3 (segmentation BEiT) or 0 (detection BEiT)")
    if dst_extra and not src_extra:
        raise CheckpointError("the source table has no class-token rows but the model needs them (segmentation "
                              "BEiT); this checkpoint comes from a detection BEiT and cannot provide them")
    src_size = _square_side(table.shape[0] - src_extra)
    if src_size is None:
        raise CheckpointError(f"a relative-position table with {table.shape[0]} rows is not (2w-1)^2 + {src_extra}")
    grid, extra = table[:table.shape[0] - src_extra], table[table.shape[0] - src_extra:]
    if src_size != dst_size and src_size < 5:
        raise CheckpointError(f"a {src_size}x{src_size} relative-position table is too small for cubic resampling "
                              "(it needs at least 5x5 offsets, i.e. a window of 3 patches)")
    if src_size == dst_size:
        resized = grid.clone()
    else:
        coords = geometric_source_coordinates(src_size, dst_size)
        half = dst_size // 2.0
        targets = np.arange(-half, half + 0.1, 1.0)
        z = grid.detach().float().cpu().numpy().astype(np.float64).reshape(src_size, src_size, -1)
        heads = [RectBivariateSpline(coords, coords, z[:, :, h], kx=3, ky=3, s=0)(targets, targets).reshape(-1)
                 for h in range(z.shape[2])]
        resized = torch.from_numpy(np.stack(heads, axis=1)).to(table.dtype)
    if dst_extra:
        resized = torch.cat([resized, extra.to(resized.dtype)], dim=0)
    return resized


# ----------------------------------------------------------------------------------------------------------------------
# Filters (timm style: state_dict, model -> state_dict)
# ----------------------------------------------------------------------------------------------------------------------

def _grid_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def vit_checkpoint_filter_fn(state_dict: dict, model: nn.Module, report: LoadReport | None = None) -> OrderedDict:
    """Adapt a timm ViT (DeiT/AugReg/DINOv2) state dict to a ``ViTAdapter`` (official ``my_load_checkpoint``
    semantics: names are kept, no interpolation of ``pos_embed``). Only trivial mappings are made:
    ``blocks.i.ls1.gamma``/``ls2.gamma`` -> ``gamma1``/``gamma2``; a patch kernel of another size (DINOv2's 14x14)
    resized bilinearly; the distillation-token slot of a DeiT-distilled ``pos_embed`` removed; a ``pos_embed``
    without a class-token slot given a zero one (unused by ViT-Adapter). A ``pos_embed`` covering another patch grid
    raises: set ``img_size`` and ``pretrain_size`` to the checkpoint's resolution."""
    report = report if report is not None else LoadReport("<state dict>")
    out = OrderedDict()
    for key, value in state_dict.items():
        new = re.sub(r"\.ls([12])\.gamma$", r".gamma\1", key)
        if new != key:
            report.renamed.append((key, new))
        out[new] = value

    weight = out.get("patch_embed.proj.weight")
    target = model.patch_embed.proj.weight
    if weight is not None and weight.shape[:2] == target.shape[:2] and weight.shape[2:] != target.shape[2:]:
        out["patch_embed.proj.weight"] = F.interpolate(weight.float(), size=tuple(target.shape[2:]), mode="bilinear",
                                                       align_corners=False).to(weight.dtype)
        report.resized.append(("patch_embed.proj.weight", tuple(weight.shape), tuple(target.shape)))
        report.notes.append("the patch kernel was resized bilinearly (as the official convert_14to16.py does)")

    pos = out.get("pos_embed")
    if pos is not None:
        n_model = model.pos_embed.shape[1]  # grid**2 + 1 (cls slot)
        n = pos.shape[1]
        if n == n_model + 1 and "dist_token" in out:
            out["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
            report.resized.append(("pos_embed", tuple(pos.shape), tuple(out["pos_embed"].shape)))
            report.notes.append("removed the distillation-token slot of pos_embed (DeiT distilled)")
        elif n == n_model - 1 and _grid_side(n) is not None:
            out["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
            report.resized.append(("pos_embed", tuple(pos.shape), tuple(out["pos_embed"].shape)))
            report.notes.append("pos_embed had no class-token slot; a zero slot was added (ViT-Adapter never uses it)")
        n = out["pos_embed"].shape[1]
        if n != n_model:
            patch = model.patch_embed.patch_size[0]
            side = _grid_side(n - 1)
            model_side = _grid_side(n_model - 1)
            size = f"{side}x{side} patch grid (img_size {side * patch})" if side else f"{n - 1} patches"
            raise CheckpointError(
                f"the checkpoint's pos_embed covers a {size} but the model's covers {model_side}x{model_side} "
                f"(img_size {model_side * patch}). Position embeddings are not interpolated at load time (official "
                f"behaviour); build the model with img_size={side * patch if side else '?'} and "
                f"pretrain_size={side * patch if side else '?'}; they are resized at run time to the input")
    return out


def _block_index(key: str) -> int | None:
    found = re.match(r"blocks\.(\d+)\.", key)
    return int(found.group(1)) if found else None


def beit_checkpoint_filter_fn(state_dict: dict, model: nn.Module, report: LoadReport | None = None,
                              keep_index: bool = False) -> OrderedDict:
    """Adapt a BEiT/BEiTv2 state dict to a ``BEiTAdapter`` (official ``mmcv_custom/checkpoint.py`` rules, spec §6):
    the shared ``rel_pos_bias.relative_position_bias_table`` is copied to every block; every
    ``relative_position_index`` is dropped (the model computes its own), except with ``keep_index`` where the index
    of a table that passes unchanged is kept so that the model verifies it (released/own checkpoints); tables of
    another size are resampled with :func:`resize_rel_pos_table` (3 class-token rows kept for the segmentation
    model, dropped for the detection one); ``pos_embed``, if both have one, is resized bicubically."""
    report = report if report is not None else LoadReport("<state dict>")
    out = OrderedDict(state_dict)
    shared = out.pop("rel_pos_bias.relative_position_bias_table", None)
    if "rel_pos_bias.relative_position_index" in out:
        out.pop("rel_pos_bias.relative_position_index")
        report.dropped.append("rel_pos_bias.relative_position_index")
    if shared is not None:
        for i in range(len(model.blocks)):
            out[f"blocks.{i}.attn.relative_position_bias_table"] = shared.clone()
        report.notes.append(f"the shared relative position table was copied to each of the {len(model.blocks)} "
                            "blocks")

    unchanged_tables = set()
    for key in [k for k in out if k.endswith("attn.relative_position_bias_table")]:
        i = _block_index(key)
        if i is None or i >= len(model.blocks) or model.blocks[i].attn.relative_position_bias_table is None:
            continue  # reported as unexpected (or a depth mismatch) later
        attn = model.blocks[i].attn
        src = out[key]
        dst_shape = tuple(attn.relative_position_bias_table.shape)
        if src.shape[1] != dst_shape[1]:
            raise CheckpointError(f"{key} has {src.shape[1]} heads but the model has {dst_shape[1]}")
        wh, ww = attn.window_size
        if wh != ww:
            raise CheckpointError(f"non-square relative-position windows ({wh}x{ww}) cannot be resampled")
        dst_extra = NUM_CLS_ROWS if attn.with_cls else 0
        src_extra = NUM_CLS_ROWS if _square_side(src.shape[0] - NUM_CLS_ROWS) else 0
        if tuple(src.shape) == dst_shape and src_extra == dst_extra:
            unchanged_tables.add(key)
            continue
        new = resize_rel_pos_table(src, 2 * wh - 1, src_extra=src_extra, dst_extra=dst_extra)
        out[key] = new
        report.resized.append((key, tuple(src.shape), tuple(new.shape)))
    if report.resized and any(k.endswith("relative_position_bias_table") for k, _, _ in report.resized):
        report.notes.append("relative position tables were resampled on BEiT's geometric grid (bicubic spline)"
                            + ("; the 3 class-token rows were dropped (detection BEiT)"
                               if getattr(model, "task", "") == "detection" else ""))

    for key in [k for k in out if k.endswith("relative_position_index")]:
        table_key = key[: -len("relative_position_index")] + "relative_position_bias_table"
        if keep_index and table_key in unchanged_tables:
            continue
        out.pop(key)
        report.dropped.append(key)

    pos = out.get("pos_embed")
    if pos is not None and getattr(model, "pos_embed", None) is not None:
        num_patches = model.patch_embed.num_patches
        extra = model.pos_embed.shape[1] - num_patches
        if extra == 0 and _grid_side(pos.shape[1] - 1) and not _grid_side(pos.shape[1]):
            pos = pos[:, 1:]  # the checkpoint has a cls slot, the detection model does not
        src_side, dst_side = _grid_side(pos.shape[1] - extra), _grid_side(num_patches)
        if src_side is None:
            raise CheckpointError(f"pos_embed with {pos.shape[1]} tokens is not a square grid (+{extra})")
        if src_side != dst_side:
            tokens = pos[:, extra:].reshape(1, src_side, src_side, -1).permute(0, 3, 1, 2).float()
            tokens = F.interpolate(tokens, size=(dst_side, dst_side), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :extra], tokens.permute(0, 2, 3, 1).flatten(1, 2).to(pos.dtype)], dim=1)
        if pos.shape != out["pos_embed"].shape:
            report.resized.append(("pos_embed", tuple(out["pos_embed"].shape), tuple(pos.shape)))
        out["pos_embed"] = pos
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Loading into a model
# ----------------------------------------------------------------------------------------------------------------------

def _check_shapes(state_dict: dict, model: nn.Module, source: str) -> None:
    """Clear errors for a checkpoint of another width or depth, and for any remaining shape mismatch (the official
    loader raises on those too)."""
    target = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is not None and weight.shape[0] != model.patch_embed.proj.weight.shape[0]:
        raise CheckpointError(f"{source} has embed_dim {weight.shape[0]} but the model has "
                              f"{model.patch_embed.proj.weight.shape[0]}; build the matching model size")
    depth = 1 + max((i for i in map(_block_index, state_dict) if i is not None), default=-1)
    if depth and depth != len(model.blocks):
        raise CheckpointError(f"{source} has {depth} transformer blocks but the model has {len(model.blocks)}; "
                              "build the matching model size")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in state_dict.items()
           if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise CheckpointError(f"{source} does not fit the model; shape mismatches: " + "; ".join(bad[:8])
                              + (f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""))


def load_pretrained(model: nn.Module, checkpoint: str | os.PathLike | dict, strict: bool = False) -> LoadReport:
    """Load a pretrained (timm ViT, BEiT/BEiTv2) or released (ViT-Adapter segmentor/detector, or our own backbone)
    checkpoint into a ``ViTAdapter``/``BEiTAdapter`` and return (and log) a :class:`LoadReport`.

    ``checkpoint`` is a file path or an already loaded state dict. The kind is recognised from the keys
    (:func:`detect_checkpoint_kind`); a released segmentor contributes its ``backbone.`` part. Loading is
    ``strict=False`` (pretrained backbones have no adapter weights); with ``strict=True`` any missing or unexpected
    key raises. A file of the wrong family (ViT weights for a BEiTAdapter or the reverse), of another width or
    depth, or with an incompatible ``pos_embed`` raises :class:`CheckpointError` naming the problem.
    """
    if isinstance(checkpoint, dict):
        source, state_dict = "<state dict>", _pick_state_dict(checkpoint, "<state dict>")
    else:
        source, state_dict = str(checkpoint), load_checkpoint_file(checkpoint)
    report = LoadReport(source=source, model=type(model).__name__)
    kind = detect_checkpoint_kind(state_dict)
    if kind == "segmentor":
        parts = split_segmentor_state_dict(state_dict)
        ignored = {name: len(part) for name, part in parts.items() if name != "backbone"}
        state_dict = parts["backbone"]
        if ignored:
            report.notes.append("released whole-model checkpoint: loaded its backbone part; ignored "
                                + ", ".join(f"{name} ({n} tensors)" for name, n in ignored.items()))
        kind = detect_checkpoint_kind(state_dict)
        if kind == "segmentor":
            raise CheckpointError(f"{source}: nested 'backbone.backbone.' keys; not a segmentor checkpoint")
    report.kind = kind
    _check_family(kind, model, source)
    if kind.startswith("beit"):
        state_dict = beit_checkpoint_filter_fn(state_dict, model, report, keep_index=kind == "beit-adapter")
    else:
        state_dict = vit_checkpoint_filter_fn(state_dict, model, report)
    _check_shapes(state_dict, model, source)

    result = model.load_state_dict(state_dict, strict=False)
    report.missing = [k for k in result.missing_keys]
    report.unexpected = list(result.unexpected_keys)
    unexpected = set(report.unexpected)
    report.loaded = [k for k in state_dict if k not in unexpected]
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"strict loading failed:\n{report}")
    logger.info("%s", report)
    return report
