"""The checkpoint layout, defined once: tag names, the ``COMPLETE`` marker and its file list, ``latest``, the
universal-conversion and partial-save folders, verification, and which tag is "newest".

Layout under ``<work_dir>/checkpoints``::

    iter_<N>/                 one save (tag): DeepSpeed shards + this project's ``extra_rank<r>.pt``
    iter_<N>/COMPLETE         JSON: run identity, iteration, world size, save time and every file's size / CRC-32
    iter_<N>.partial/         a save in progress (renamed to ``iter_<N>`` once complete; a crash leaves it behind)
    iter_<N>.replaced/        an older save of the same iteration while the new one is swapped in (moments)
    iter_<N>_universal/       universal-checkpoint conversion of ``iter_<N>`` (tied to it by its marker's hash)
    latest                    name of the most recently completed tag (a bare name inside this folder)
    best.json                 ``save_best``: metric, value and tag of the best evaluation

"Newest" is the most recently *saved* complete tag (the marker's ``time``, then the iteration): a work dir that
still holds an older run's ``iter_1000`` does not outrank the current run's ``iter_100``.

Only the standard library is used here, so every reader and writer of checkpoints can share it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path

TAG_RE = re.compile(r"^iter_(\d+)$")
TAG_GLOB = "iter_*"
EXTRA_STATE_GLOB = "extra_rank*.pt"
MARKER = "COMPLETE"
LATEST = "latest"
BEST = "best.json"
PARTIAL_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"
UNIVERSAL_SUFFIX = "_universal"
MAX_MARKER_BYTES = 64 << 20  # a marker lists files; 64 MiB is far beyond any real save


def tag_name(iteration: int) -> str:
    return f"iter_{int(iteration)}"


def extra_state_name(rank: int) -> str:
    """This project's own file of ``rank`` in a tag: iteration, loader position, RNG states (rank 0: every buffer)."""
    return f"extra_rank{int(rank)}.pt"


def checkpoint_root(work_dir) -> Path:
    return Path(work_dir) / "checkpoints"


# ----------------------------------------------------------------------------------------------- durable writes
def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames and new entries in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for p in sorted(Path(root).rglob("*")):
        if not p.is_symlink() and (p.is_file() or p.is_dir()):
            fsync_path(p)
    fsync_path(root)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` durably: temporary file, fsync, rename, fsync of the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


# ----------------------------------------------------------------------------------------------- the marker
def crc32_file(path: Path, chunk: int = 1 << 22) -> str:
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return f"{crc & 0xFFFFFFFF:08x}"
            crc = zlib.crc32(b, crc)


def checksums_enabled() -> bool:
    """CRC-32s cost one read of the checkpoint at save and at resume (about 1 GB/s); ``VIT_ADAPTER_DS_CKPT_CRC=0``
    keeps only the sizes."""
    return os.environ.get("VIT_ADAPTER_DS_CKPT_CRC", "1") != "0"


def file_manifest(tag_dir: Path, checksum: bool | None = None) -> dict:
    """``{relative path: {"bytes": size, "crc32": hex}}`` of every file of a save except the marker (no ``crc32``
    when checksums are off)."""
    checksum = checksums_enabled() if checksum is None else checksum
    out = {}
    for p in sorted(Path(tag_dir).rglob("*")):
        if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}."):
            entry = {"bytes": p.stat().st_size}
            if checksum:
                entry["crc32"] = crc32_file(p)
            out[p.relative_to(tag_dir).as_posix()] = entry
    return out


def read_marker(tag_dir: Path) -> dict | None:
    """The JSON record of ``tag_dir/COMPLETE``; None when there is none or it is not a readable record."""
    path = Path(tag_dir) / MARKER
    try:
        if not path.is_file() or path.stat().st_size > MAX_MARKER_BYTES:
            return None
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def marker_digest(tag_dir: Path) -> str:
    """SHA-256 of the marker's bytes: what a derived folder (universal conversion) was made from."""
    return hashlib.sha256((Path(tag_dir) / MARKER).read_bytes()).hexdigest()


def verify(tag_dir: Path, meta: dict, checksum: bool | None = None) -> list[str]:
    """Problems of a complete-marked save against the file list in its marker (empty list: intact): files missing,
    cut short, changed, and files the save did not write (left over from an earlier save, or planted). Markers
    written before file lists existed carry none and verify as intact."""
    checksum = checksums_enabled() if checksum is None else checksum
    tag_dir = Path(tag_dir)
    files = meta.get("files")
    if not isinstance(files, dict):
        return []
    problems = []
    for name, want in sorted(files.items()):
        p = tag_dir / name
        if not _inside(tag_dir, p):
            problems.append(f"{tag_dir}/{MARKER}: lists {name!r}, which is outside the checkpoint folder")
            continue
        if p.is_symlink() or not p.is_file():
            problems.append(f"{p}: missing" if not p.exists() else f"{p}: not a regular file")
            continue
        size = p.stat().st_size
        if size != want.get("bytes"):
            problems.append(f"{p}: {size} bytes, the save wrote {want.get('bytes')} (cut short or overwritten)")
        elif checksum and want.get("crc32") and crc32_file(p) != want["crc32"]:
            problems.append(f"{p}: CRC-32 {crc32_file(p)}, the save wrote {want['crc32']} (corrupted)")
    for p in sorted(tag_dir.rglob("*")):
        rel = p.relative_to(tag_dir).as_posix()
        if (p.is_file() or p.is_symlink()) and p.name != MARKER and rel not in files:
            problems.append(f"{p}: not written by this save (a leftover or a planted file)")
    return problems


def _inside(root: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- finding
def complete_tags(root: Path) -> list[tuple[int, str, dict]]:
    """``[(iteration, tag, meta), ...]`` of complete-marked tags under ``root``, oldest save first (marker
    ``time``, then iteration). Symlinked tag folders are not tags."""
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = TAG_RE.match(d.name)
        if not m or d.is_symlink() or not d.is_dir():
            continue
        meta = read_marker(d)
        if meta is not None:
            out.append((int(m.group(1)), d.name, meta))
    return sorted(out, key=lambda t: (_save_time(t[2]), t[0]))


def _save_time(meta: dict) -> float:
    try:
        return float(meta.get("time", 0.0))
    except (TypeError, ValueError):
        return 0.0


def newest_intact(root: Path, report, label: str = "checkpoint") -> tuple[Path, dict] | None:
    """The most recently saved complete tag under ``root`` that :func:`verify` finds intact; each damaged tag on the
    way is named through ``report(message)``. None when there is none."""
    root = Path(root)
    for _, tag, meta in reversed(complete_tags(root)):
        problems = verify(root / tag, meta)
        if not problems:
            return root / tag, meta
        report(f"{label}: checkpoint {root / tag} is damaged, skipping it: " + "; ".join(problems)
               + " -- trying the previous complete checkpoint")
    return None


def read_latest(root: Path) -> str | None:
    """The tag named by ``root/latest`` (DeepSpeed's file, and ours); None when there is none. A name that is not a
    bare folder name inside ``root`` (``../x``, an absolute path, a nested path) raises ``ValueError``."""
    path = Path(root) / LATEST
    if not path.is_file():
        return None
    if path.stat().st_size > 4096:
        raise ValueError(f"{path}: {path.stat().st_size} bytes; a 'latest' file holds one tag name")
    name = path.read_text(errors="replace").strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name != Path(name).name:
        raise ValueError(f"{path} names {name!r}, which is not a checkpoint folder inside {root}; refusing it")
    return name
