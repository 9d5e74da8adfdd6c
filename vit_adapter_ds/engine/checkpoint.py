"""Crash-safe DeepSpeed checkpoints: what a checkpoint holds, saving, finding, pruning, universal conversion, loading.

Layout under ``<work_dir>/checkpoints``::

    iter_<N>/                    DeepSpeed shards of one save (tag): model, optimizer, the client LR scheduler, plus
    iter_<N>/extra_rank<r>.pt    this project's per-rank state (:class:`TrainState`): iteration, loader position, RNG
                                 states, and (rank 0) every module buffer -- plain tensors, ints and strings only, so
                                 it loads with ``torch.load(weights_only=True)``
    iter_<N>/COMPLETE            JSON written by rank 0 after *every* rank finished the save and fsynced its files
    iter_<N>_universal/          universal-checkpoint conversion (only when resuming on another world size)
    latest                       name of the newest complete tag (written after COMPLETE)
    best.json                    ``save_best``: the metric, its value and the tag of the best evaluation

``--resume auto`` picks the newest ``iter_<N>`` that has ``COMPLETE``; a save interrupted by a crash has no marker
and is never picked. ``COMPLETE`` also lists every file of the save with its size and CRC-32 (computed by rank 0
after all ranks fsynced their files); before anything is loaded, rank 0 checks the chosen tag against that list
(:func:`verify`) -- a file cut short, missing or changed is reported by name and the next older complete tag is
used -- and broadcasts the choice, so every rank resumes from the same tag. DeepSpeed's universal load restores
parameters and optimizer state but not the module's buffers (BatchNorm statistics), so :func:`load` always restores every buffer from the saved :class:`TrainState`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import runtime as rt
from ..checkpoint_io import rng_state_from_tensors as set_rng_state
from ..checkpoint_io import rng_state_to_tensors as rng_state

TAG_RE = re.compile(r"^iter_(\d+)$")
MARKER = "COMPLETE"
BEST = "best.json"


def checkpoint_root(work_dir) -> Path:
    return Path(work_dir) / "checkpoints"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            _fsync_file(p)
    _fsync_file(root)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- the saved state
@dataclass
class TrainState:
    """Everything a checkpoint holds besides DeepSpeed's model/optimizer/scheduler shards, in one place."""

    iteration: int
    loader: dict | None = None
    rng: dict = field(default_factory=rng_state)
    buffers: dict | None = None          # name -> tensor, every module buffer (saved by rank 0)
    rank: int = 0
    world_size: int = 1

    def to_dict(self) -> dict:
        return {"iteration": self.iteration, "loader": self.loader, "rng": self.rng, "buffers": self.buffers,
                "rank": self.rank, "world_size": self.world_size}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(iteration=int(d["iteration"]), loader=d.get("loader"), rng=d["rng"], buffers=d.get("buffers"),
                   rank=int(d.get("rank", 0)), world_size=int(d.get("world_size", 1)))


def module_buffers(module: torch.nn.Module) -> dict:
    return {name: buf.detach().cpu().clone() for name, buf in module.named_buffers()}


def restore_buffers(module: torch.nn.Module, buffers: dict) -> None:
    """Copy saved buffers into ``module`` (same names; dtype and device of the module's own buffers)."""
    own = dict(module.named_buffers())
    missing = sorted(set(own) - set(buffers))
    if missing:
        raise RuntimeError(f"checkpoint has no saved value for buffers {missing[:8]}")
    with torch.no_grad():
        for name, buf in own.items():
            saved = buffers[name]
            if tuple(saved.shape) != tuple(buf.shape):
                raise RuntimeError(f"buffer {name}: checkpoint shape {tuple(saved.shape)} != model {tuple(buf.shape)}")
            buf.copy_(saved.to(device=buf.device, dtype=buf.dtype))


def _crc32(path: Path, chunk: int = 1 << 22) -> str:
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return f"{crc & 0xFFFFFFFF:08x}"
            crc = zlib.crc32(b, crc)


def _checksums_enabled() -> bool:
    """CRC-32s cost one read of the checkpoint at save and at resume (about 1 GB/s); ``VIT_ADAPTER_DS_CKPT_CRC=0``
    keeps only the sizes."""
    return os.environ.get("VIT_ADAPTER_DS_CKPT_CRC", "1") != "0"


def file_manifest(tag_dir: Path, checksum: bool | None = None) -> dict:
    """``{relative path: {"bytes": size, "crc32": hex}}`` of every file of a save except the marker (no ``crc32``
    when checksums are off)."""
    checksum = _checksums_enabled() if checksum is None else checksum
    out = {}
    for p in sorted(Path(tag_dir).rglob("*")):
        if p.is_file() and p.name not in (MARKER, MARKER + ".tmp"):
            entry = {"bytes": p.stat().st_size}
            if checksum:
                entry["crc32"] = _crc32(p)
            out[p.relative_to(tag_dir).as_posix()] = entry
    return out


def verify(tag_dir: Path, meta: dict, checksum: bool | None = None) -> list[str]:
    """Problems of a complete-marked save against the file list in its marker (empty list: intact). Markers
    written before file lists existed carry none and verify as intact."""
    checksum = _checksums_enabled() if checksum is None else checksum
    problems = []
    for name, want in sorted((meta.get("files") or {}).items()):
        p = Path(tag_dir) / name
        if not p.is_file():
            problems.append(f"{p}: missing")
            continue
        size = p.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{p}: {size} bytes, the save wrote {want['bytes']} (cut short or overwritten)")
        elif checksum and want.get("crc32") and _crc32(p) != want["crc32"]:
            problems.append(f"{p}: CRC-32 {_crc32(p)}, the save wrote {want['crc32']} (corrupted)")
    return problems


# ----------------------------------------------------------------------------------------------- finding
def complete_tags(root: Path) -> list[tuple[int, str, dict]]:
    """``[(iteration, tag, meta), ...]`` of complete checkpoints under ``root``, oldest first."""
    out = []
    root = Path(root)
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


def _newest_intact(root: Path, label: str, report) -> tuple[Path, dict] | None:
    for _, tag, meta in reversed(complete_tags(root)):
        problems = verify(root / tag, meta)
        if not problems:
            return root / tag, meta
        report(f"{label}: checkpoint {root / tag} is damaged, not resuming from it: " + "; ".join(problems)
               + " -- trying the previous complete checkpoint")
    return None


def _print_err(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def find_resume(resume: str | None, work_dir, report=_print_err) -> tuple[Path, dict] | None:
    """Resolve ``--resume``: ``auto`` -> newest complete and intact (:func:`verify`) checkpoint in ``work_dir``
    (None if there is none); a path -> that tag directory (which must be intact), or the newest complete and intact
    tag of a ``checkpoints`` (or work) directory. Damaged tags are reported through ``report`` and skipped.

    Reads the file system: call it on one rank and broadcast (:func:`find_resume_everywhere`)."""
    if not resume:
        return None
    if resume == "auto":
        return _newest_intact(checkpoint_root(work_dir), "--resume auto", report)
    p = Path(resume)
    if (p / MARKER).is_file():
        meta = json.loads((p / MARKER).read_text())
        problems = verify(p, meta)
        if problems:
            raise RuntimeError(f"--resume {resume}: the checkpoint is damaged: " + "; ".join(problems)
                               + " (pass its checkpoints directory or --resume auto to fall back to an older one)")
        return p, meta
    for root in (p, p / "checkpoints"):
        if complete_tags(root):
            found = _newest_intact(root, f"--resume {resume}", report)
            if found is None:
                raise RuntimeError(f"--resume {resume}: every complete checkpoint in {root} is damaged (see above)")
            return found
    if p.exists():
        raise FileNotFoundError(f"--resume {resume}: no complete checkpoint there (a tag directory needs a {MARKER} "
                                "marker; an interrupted save has none)")
    raise FileNotFoundError(f"--resume {resume}: no such file or directory")


def find_resume_everywhere(resume: str | None, work_dir) -> tuple[Path, dict] | None:
    """:func:`find_resume` decided by rank 0 and broadcast, so every rank loads the same tag (or raises the same
    error)."""
    if rt.world_size() == 1:
        return find_resume(resume, work_dir)
    result = None
    if rt.is_main():
        try:
            result = ("ok", find_resume(resume, work_dir))
        except (OSError, RuntimeError, ValueError) as e:
            result = ("error", (type(e).__name__, str(e)))
    kind, value = rt.broadcast_object(result)
    if kind == "error":
        raise (FileNotFoundError if value[0] == "FileNotFoundError" else RuntimeError)(value[1])
    return value


# ----------------------------------------------------------------------------------------------- saving / pruning
class CheckpointManager:
    """Saves, prunes and finds the checkpoints of one work dir (``keep_last``: -1 or None keeps all, mmcv's
    ``max_keep_ckpts``; the tag of the best evaluation under ``save_best`` is never pruned)."""

    def __init__(self, work_dir, keep_last: int | None = None, meta: dict | None = None):
        self.root = checkpoint_root(work_dir)
        self.keep_last = None if keep_last in (None, -1) else int(keep_last)
        self.meta = dict(meta or {})

    def save(self, engine, state: TrainState) -> Path:
        """Save a DeepSpeed checkpoint ``iter_<iteration>`` plus every rank's :class:`TrainState`; mark it complete
        only after every rank has written and fsynced its files. Call on every rank."""
        tag = f"iter_{state.iteration}"
        tag_dir = self.root / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        if rt.is_main() and (tag_dir / MARKER).exists():
            (tag_dir / MARKER).unlink()  # overwriting an old save of the same iteration: invalid until re-marked
        rt.barrier()
        torch.save(state.to_dict(), tag_dir / f"extra_rank{state.rank}.pt")
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"iteration": state.iteration},
                               save_latest=False)
        for p in tag_dir.rglob("*"):  # this rank's files are on disk before anyone marks the tag complete
            if p.is_file() and os.access(p, os.W_OK):
                try:
                    _fsync_file(p)
                except OSError:
                    pass
        rt.barrier()  # every rank has finished its files
        if rt.is_main():
            _fsync_tree(tag_dir)
            info = dict(self.meta, iteration=state.iteration, world_size=state.world_size, time=time.time(),
                        files=file_manifest(tag_dir))
            _atomic_write_text(tag_dir / MARKER, json.dumps(info, indent=1))
            _atomic_write_text(self.root / "latest", tag)
            self.prune()
        rt.barrier()
        return tag_dir

    def best(self) -> dict | None:
        try:
            return json.loads((self.root / BEST).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def update_best(self, metric: str, value: float, iteration: int, rule: str = "greater") -> bool:
        """Record ``value`` of ``metric`` at ``iteration`` if it beats the saved best (rank 0 writes); True if it
        does, on every rank (the caller then saves ``iter_<iteration>`` if it does not exist yet)."""
        old = self.best()
        better = old is None or old.get("metric") != metric or (
            value > old["value"] if rule == "greater" else value < old["value"])
        if better and rt.is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.root / BEST, json.dumps(
                {"metric": metric, "value": value, "iteration": iteration, "tag": f"iter_{iteration}"}, indent=1))
        return better

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete tags (and the best one); remove older leftovers of interrupted
        saves."""
        tags = complete_tags(self.root)
        if not tags:
            return
        newest = tags[-1][0]
        best = (self.best() or {}).get("tag")
        if self.keep_last is not None:
            for _, tag, _ in tags[:-self.keep_last]:
                if tag != best:
                    shutil.rmtree(self.root / tag, ignore_errors=True)
                    shutil.rmtree(self.root / f"{tag}_universal", ignore_errors=True)
        for d in self.root.iterdir():
            m = TAG_RE.match(d.name)
            if m and int(m.group(1)) < newest and not (d / MARKER).exists():
                shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- loading
def convert_to_universal(tag_dir: Path, zero_stage: int, timeout_s: float = 4 * 3600) -> Path:
    """Convert ``tag_dir`` into ``<tag_dir>_universal`` once (rank 0; parallel workers; atomic via a temporary
    folder). The other ranks wait for the result on the file system -- not in a collective with a short timeout --
    up to ``timeout_s``, and fail with rank 0's error if the conversion fails."""
    out = tag_dir.with_name(tag_dir.name + "_universal")
    failed = tag_dir.with_name(tag_dir.name + "_universal.FAILED")
    if rt.is_main() and not (out / MARKER).is_file():
        failed.unlink(missing_ok=True)
        tmp = tag_dir.with_name(tag_dir.name + "_universal.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
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
            _atomic_write_text(failed, msg)
            raise RuntimeError(msg)
        for f in tag_dir.glob("extra_rank*.pt"):
            shutil.copy2(f, tmp / f.name)
        _fsync_tree(tmp)
        shutil.copy2(tag_dir / MARKER, tmp / MARKER)
        os.replace(tmp, out)
        stray = tag_dir.parent / "latest_universal"
        if stray.exists():
            stray.unlink()
    elif not rt.is_main():
        t0 = time.time()
        while not (out / MARKER).is_file():
            if failed.is_file():
                raise RuntimeError(f"rank 0 failed to convert {tag_dir}: {failed.read_text()[-2000:]}")
            if time.time() - t0 > timeout_s:
                raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to convert {tag_dir} to {out}")
            time.sleep(1.0)
    rt.barrier()
    return out


def read_train_state(tag_dir: Path, rank: int) -> tuple[TrainState, dict | None]:
    """This rank's :class:`TrainState` (rank 0's on another world size) and rank 0's saved buffers."""
    own = tag_dir / f"extra_rank{rank}.pt"
    path = own if own.is_file() else tag_dir / "extra_rank0.pt"
    state = TrainState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    buffers = state.buffers
    if buffers is None:
        buffers = torch.load(tag_dir / "extra_rank0.pt", map_location="cpu", weights_only=True).get("buffers")
    return state, buffers


def load(engine, tag_dir: Path) -> TrainState:
    """Load model, optimizer and scheduler (DeepSpeed), then this rank's RNG states and every module buffer;
    return the :class:`TrainState` (iteration, loader position)."""
    load_path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {tag_dir}")
    state, buffers = read_train_state(tag_dir, rt.rank())
    if buffers is not None:
        restore_buffers(engine.module, buffers)
    set_rng_state(state.rng)
    return state


# ----------------------------------------------------------------------------------------------- export / load-from
def to_mmcv(state_dict: dict, meta: dict | None = None) -> dict:
    """The official mmcv checkpoint format: ``{'meta': ..., 'state_dict': {backbone.*, decode_head.*, ...}}``."""
    return {"meta": dict(meta or {}), "state_dict": state_dict}
