"""Write samples into tar shards of bounded size, atomically, with a manifest (format: ``shards/README.md``).

A sample is ``(key, {ext: path_or_bytes})``; each file becomes the tar member ``{key}.{ext}`` holding the
original bytes (nothing is decoded or re-encoded). Samples are assigned to shards in the given order, a new shard
starting when ``max_samples`` or ``max_bytes`` would be exceeded, so the assignment is deterministic. Shards are
written in parallel (a process pool over shards), each to ``NAME.tar.tmp``, flushed and fsync'ed, scanned for
its member offsets and checksummed, then renamed to ``NAME.tar``. The manifest is written last, also via a
temporary file and a rename; an existing manifest is removed first. So a killed writer leaves either no manifest
(the loader refuses the directory) or a complete, consistent set; a writer that fails (an unreadable source, a
refused one) removes its ``.tar.tmp`` files. Only regular files are read as sources (:func:`_read`).
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import stat
import tarfile

from tqdm import tqdm

MANIFEST = "manifest.json"
FORMAT = "vit-adapter-ds-shards"
VERSION = 1
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_TAR_BLOCK = 512


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via ``path.tmp`` + fsync + rename."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _size_of(src):
    return len(src) if isinstance(src, (bytes, bytearray)) else os.path.getsize(src)


def _read(src):
    """The bytes of ``src`` (bytes, or the path of a regular file: a device such as ``/dev/zero``, a FIFO or a
    socket is refused, not read without end; at most the size the file had when opened is read)."""
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO without a writer must not block here
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"{src} is not a regular file (a folder, device, FIFO or socket); refused")
    with os.fdopen(fd, "rb") as f:
        return f.read(st.st_size)


def check_key(key):
    """Keys become tar member prefixes: no dots (the extension starts at the first dot), no spaces."""
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid sample key {key!r}: use letters, digits, '_', '-' only (no dots)")
    return key


def plan_shards(samples, max_samples=1000, max_bytes=256 << 20):
    """Split ``samples`` (in order) into lists for shards of at most ``max_samples`` samples and about
    ``max_bytes`` bytes (a single sample larger than ``max_bytes`` gets its own shard)."""
    if max_samples < 1:
        raise ValueError("max_samples must be >= 1")
    shards, cur, cur_bytes = [], [], 0
    for key, files in samples:
        size = sum(_TAR_BLOCK * 2 + _size_of(src) for src in files.values())
        if cur and (len(cur) >= max_samples or cur_bytes + size > max_bytes):
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((key, files))
        cur_bytes += size
    if cur:
        shards.append(cur)
    return shards


def _write_one(args):
    """Write one shard; return its manifest entry. Runs in a worker process. On any error its ``.tar.tmp`` is
    removed."""
    out_dir, name, samples = args
    tmp = os.path.join(out_dir, name) + ".tmp"
    try:
        return _write_tar(tmp, name, samples)
    finally:
        _remove_if_present(tmp)  # renamed to the shard on success


def _remove_if_present(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _write_tar(tmp, name, samples):
    """Write ``samples`` into ``tmp``, index and checksum it, rename it to the shard ``name``; return the entry."""
    final = tmp[:-len(".tmp")]
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for key, files in samples:
                for ext in sorted(files):
                    data = _read(files[ext])
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    info.mode = 0o444
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
        f.flush()
        os.fsync(f.fileno())
    # member index: data offsets and sizes, read back from the written file
    index = {}
    with tarfile.open(tmp, mode="r:") as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            index.setdefault(key, {})[ext] = [m.offset_data, m.size]
    entries = []
    for key, files in samples:
        got = index.get(key, {})
        if sorted(got) != sorted(files):
            raise RuntimeError(f"shard {name}: member index of {key!r} is {sorted(got)}, expected {sorted(files)}")
        entries.append([key, got])
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    nbytes = os.path.getsize(tmp)
    os.replace(tmp, final)
    return {"name": name, "num_samples": len(samples), "bytes": nbytes, "sha256": h.hexdigest(),
            "samples": entries}


def _run_jobs(jobs, num_workers, bar):
    """``{name: manifest entry}`` of the shards written by :func:`_write_one` (a process pool if ``num_workers``
    > 1); the first error stops the pool and is raised."""
    results = {}
    if num_workers <= 1 or len(jobs) == 1:
        for job in jobs:
            r = _write_one(job)
            results[r["name"]] = r
            bar.update(r["num_samples"])
        return results
    with mp.get_context("fork").Pool(num_workers) as pool:
        for r in pool.imap_unordered(_write_one, jobs):
            results[r["name"]] = r
            bar.update(r["num_samples"])
    return results


def write_shards(samples, out_dir, meta, *, max_samples=1000, max_bytes=256 << 20, num_workers=None,
                 prefix="shard", progress=True):
    """Write ``samples`` (list of ``(key, {ext: path or bytes})``) as shards + manifest into ``out_dir``.

    ``meta`` is merged into the manifest (dataset, split, task, classes, palette, label_map, ...). Returns the
    manifest dict (plus ``shard_dir``). Keys must be unique.
    """
    samples = list(samples)
    if not samples:
        raise ValueError(f"no samples to write into {out_dir}")
    seen = set()
    for key, files in samples:
        check_key(key)
        if key in seen:
            raise ValueError(f"duplicate sample key {key!r}")
        seen.add(key)
        if not files:
            raise ValueError(f"sample {key!r} has no files")
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # from here on the directory is "incomplete" until the new manifest lands
        _fsync_dir(out_dir)
    plan = plan_shards(samples, max_samples, max_bytes)
    names = [f"{prefix}-{i:06d}.tar" for i in range(len(plan))]
    for fn in os.listdir(out_dir):  # stale shards/temporaries of an earlier run
        if fn.endswith(".tar.tmp") or (fn.endswith(".tar") and fn.startswith(prefix + "-") and fn not in names):
            os.remove(os.path.join(out_dir, fn))
    jobs = [(out_dir, n, s) for n, s in zip(names, plan)]
    if num_workers is None:
        num_workers = min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=len(samples), unit="sample", desc=f"writing {os.path.basename(out_dir) or out_dir}",
               disable=not progress)
    try:
        results = _run_jobs(jobs, num_workers, bar)
    finally:  # workers stopped by a failing one leave their temporaries
        bar.close()
        for n in names:
            _remove_if_present(os.path.join(out_dir, n + ".tmp"))
    shards = [results[n] for n in names]
    manifest = {"format": FORMAT, "version": VERSION, **meta,
                "num_samples": sum(s["num_samples"] for s in shards), "shards": shards}
    _fsync_dir(out_dir)
    atomic_write_bytes(manifest_path, json.dumps(manifest, separators=(",", ":")).encode())
    manifest["shard_dir"] = out_dir  # as read_manifest returns it (not stored in the file)
    return manifest
