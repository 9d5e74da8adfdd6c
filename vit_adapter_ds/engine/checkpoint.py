"""Crash-safe DeepSpeed checkpoints, resume (also on a different world size), export and two-stage loading.

Layout under ``<work_dir>/checkpoints``::

    iter_<N>/                    DeepSpeed shards of one save (tag), plus
    iter_<N>/extra_rank<r>.pt    per-rank state: RNG states (python, numpy, torch, cuda) and the loader position
    iter_<N>/COMPLETE            JSON written by rank 0 after *every* rank finished the save (barrier)
    iter_<N>_universal/          universal-checkpoint conversion (only when resuming on another world size)
    latest                       name of the newest complete tag (written after COMPLETE)

``--resume auto`` picks the newest ``iter_<N>`` that has ``COMPLETE``; a save interrupted by a crash has no marker
and is never picked.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed as du

TAG_RE = re.compile(r"^iter_(\d+)$")
MARKER = "COMPLETE"


def checkpoint_root(work_dir) -> Path:
    return Path(work_dir) / "checkpoints"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_tags(root: Path) -> list[tuple[int, str, dict]]:
    """``[(iteration, tag, meta), ...]`` of complete checkpoints under ``root``, oldest first."""
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = TAG_RE.match(d.name)
        if m and (d / MARKER).is_file():
            try:
                meta = json.loads((d / MARKER).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            out.append((int(m.group(1)), d.name, meta))
    return sorted(out)


def save_checkpoint(engine, work_dir, iteration: int, loader_state, meta: dict, keep_last: int | None = None) -> Path:
    """Save a DeepSpeed checkpoint ``iter_<iteration>``; mark it complete only after every rank has written."""
    root = checkpoint_root(work_dir)
    tag = f"iter_{iteration}"
    tag_dir = root / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    if du.is_main() and (tag_dir / MARKER).exists():
        (tag_dir / MARKER).unlink()  # overwriting an old save of the same iteration: invalid until re-marked
    du.barrier()
    extra = {"iteration": iteration, "rng": rng_state(), "loader": loader_state, "rank": du.rank(),
             "world_size": du.world_size()}
    torch.save(extra, tag_dir / f"extra_rank{du.rank()}.pt")
    engine.save_checkpoint(str(root), tag=tag, client_state={"iteration": iteration}, save_latest=False)
    du.barrier()  # every rank has finished its files
    if du.is_main():
        info = dict(meta, iteration=iteration, world_size=du.world_size(), time=time.time())
        _atomic_write_text(tag_dir / MARKER, json.dumps(info, indent=1))
        _atomic_write_text(root / "latest", tag)
        if keep_last:
            _prune(root, keep_last)
    du.barrier()
    return tag_dir


def _prune(root: Path, keep_last: int) -> None:
    tags = complete_tags(root)
    if not tags:
        return
    newest = tags[-1][0]
    for it, tag, _ in tags[:-keep_last]:
        shutil.rmtree(root / tag, ignore_errors=True)
        shutil.rmtree(root / f"{tag}_universal", ignore_errors=True)
    for d in root.iterdir():  # leftovers of interrupted saves older than the newest complete one
        m = TAG_RE.match(d.name)
        if m and int(m.group(1)) < newest and not (d / MARKER).exists():
            shutil.rmtree(d, ignore_errors=True)


def find_resume(resume: str | None, work_dir) -> tuple[Path, dict] | None:
    """Resolve ``--resume``: ``auto`` -> newest complete checkpoint in ``work_dir`` (None if there is none);
    a path -> that tag directory, or the newest complete tag of a ``checkpoints`` directory."""
    if not resume:
        return None
    if resume == "auto":
        tags = complete_tags(checkpoint_root(work_dir))
        if not tags:
            return None
        _, tag, meta = tags[-1]
        return checkpoint_root(work_dir) / tag, meta
    p = Path(resume)
    if (p / MARKER).is_file():
        return p, json.loads((p / MARKER).read_text())
    for root in (p, p / "checkpoints"):
        tags = complete_tags(root)
        if tags:
            return root / tags[-1][1], tags[-1][2]
    if p.exists():
        raise FileNotFoundError(f"--resume {resume}: no complete checkpoint there (a tag directory needs a {MARKER} "
                                "marker; an interrupted save has none)")
    raise FileNotFoundError(f"--resume {resume}: no such file or directory")


def convert_to_universal(tag_dir: Path, zero_stage: int) -> Path:
    """Rank 0 converts ``tag_dir`` into ``<tag_dir>_universal`` (once; atomic via a temporary folder); all ranks wait."""
    out = tag_dir.with_name(tag_dir.name + "_universal")
    if du.is_main() and not (out / MARKER).is_file():
        tmp = tag_dir.with_name(tag_dir.name + "_universal.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
               "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"]
        if zero_stage < 3:
            cmd.append("--inject_missing_state")  # plain ZeRO-1/2 saves lack universal_checkpoint_info
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"universal checkpoint conversion failed ({' '.join(cmd)}):\n{res.stdout[-3000:]}\n"
                               f"{res.stderr[-3000:]}")
        for f in tag_dir.glob("extra_rank*.pt"):
            shutil.copy2(f, tmp / f.name)
        shutil.copy2(tag_dir / MARKER, tmp / MARKER)
        os.replace(tmp, out)
        stray = tag_dir.parent / "latest_universal"
        if stray.exists():
            stray.unlink()
    du.barrier()
    return out


def load_checkpoint(engine, tag_dir: Path) -> dict:
    """Load model, optimizer, scheduler and this rank's RNG states; return the extra state (iteration, loader)."""
    load_path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {tag_dir}")
    own = tag_dir / f"extra_rank{du.rank()}.pt"
    path = own if own.is_file() else tag_dir / "extra_rank0.pt"  # another world size: rank 0's position
    extra = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_state(extra["rng"])
    return extra


# ----------------------------------------------------------------------------------------------- export / load-from
def consolidated_state_dict(tag_dir) -> dict:
    """fp32 weights of a DeepSpeed tag directory (any ZeRO stage), keys as in the model's ``state_dict()``."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = Path(tag_dir)
    sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def to_mmcv(state_dict: dict, meta: dict | None = None) -> dict:
    """The official mmcv checkpoint format: ``{'meta': ..., 'state_dict': {backbone.*, decode_head.*, ...}}``."""
    return {"meta": dict(meta or {}), "state_dict": state_dict}


def read_weights(path) -> dict:
    """A state dict from: a DeepSpeed tag dir (or checkpoints dir), an mmcv ``{'state_dict'}`` / ``{'model'}`` file,
    a plain state-dict file or safetensors. ``module.`` prefixes are stripped."""
    p = Path(path)
    if p.is_dir():
        found = find_resume(str(p), p)
        if found is None:
            raise FileNotFoundError(f"{path}: no complete DeepSpeed checkpoint in this directory")
        sd = consolidated_state_dict(found[0])
    elif not p.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(p))
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # mmcv meta may hold objects the safe loader refuses; the user chose this file
            obj = torch.load(p, map_location="cpu", weights_only=False)
        sd = obj
        for key in ("state_dict", "model", "module"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_for_finetune(model: torch.nn.Module, path) -> dict:
    """Load a (stage-1) segmentor checkpoint into ``model``: tensors with matching names and shapes are copied;
    shape-mismatched ones (e.g. a 171-class classifier into a 150-class model) keep the fresh initialisation.

    Returns ``{'loaded': [...], 'reinitialised': [(name, ckpt_shape, model_shape)], 'unexpected': [...],
    'missing': [...]}`` and ``report['text']``, a plain-words summary."""
    sd = read_weights(path)
    own = model.state_dict()
    loaded, reinit, unexpected = [], [], []
    to_load = {}
    for k, v in sd.items():
        if k not in own:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            reinit.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            to_load[k] = v
            loaded.append(k)
    missing = sorted(k for k in own if k not in sd)
    model.load_state_dict(to_load, strict=False)
    text = (f"load_from {path}: loaded {len(loaded)} tensors; re-initialised {len(reinit)} (shape mismatch): "
            + (", ".join(f"{k} {a}->{b}" for k, a, b in reinit) or "none")
            + f"; unexpected {len(unexpected)}: {', '.join(unexpected[:20]) or 'none'}"
            + ("..." if len(unexpected) > 20 else "")
            + f"; missing {len(missing)}: {', '.join(missing[:20]) or 'none'}" + ("..." if len(missing) > 20 else ""))
    return {"loaded": loaded, "reinitialised": reinit, "unexpected": unexpected, "missing": missing, "text": text}
