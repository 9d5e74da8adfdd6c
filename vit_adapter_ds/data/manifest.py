"""Find, read and check a shard set's ``manifest.json`` (format in ``shards/README.md``)."""
from __future__ import annotations

import hashlib
import json
import os
import re

from . import remote
from .errors import ShardSetError  # noqa: F401  (raised here; defined apart so remote.py need not import us)
from .shard_writer import _TAR_BLOCK, FORMAT, MANIFEST


def resolve_shard_dir(shard_dir, split=None):
    """``shard_dir`` itself if it holds a manifest, else ``shard_dir/split`` (``split`` default ``'train'``)."""
    if shard_dir is None or str(shard_dir) == "":
        raise ShardSetError("no shard directory given")
    shard_dir = os.fspath(shard_dir)
    if not os.path.isdir(shard_dir):
        raise ShardSetError(f"shard directory not found or not a directory: {shard_dir}")
    if os.path.isfile(os.path.join(shard_dir, MANIFEST)) and split is None:
        return shard_dir
    sub = os.path.join(shard_dir, split or "train")
    if os.path.isfile(os.path.join(sub, MANIFEST)):
        return sub
    if os.path.isfile(os.path.join(shard_dir, MANIFEST)):
        return shard_dir
    raise ShardSetError(
        f"no {MANIFEST} in {shard_dir} or {sub}: not a shard set, or its writer did not finish "
        f"(the manifest is written last). Write shards with `python -m vit_adapter_ds.data.make_shards ...`")


SUPPORTED_VERSIONS = (1,)
_SHA256_CHARS = frozenset("0123456789abcdef")
# Bounds on what a manifest may declare, so that the reader's per-sample tables (decode.ShardReader: samples x
# member types x (offset, size), and the keys) stay proportional to the data: every tar member costs at least one
# 512-byte header in its shard; the writers use a handful of member types (jpg, png, seg.png, json) and keys made
# of file stems (at most 255 characters of letters, digits, '_', '-').
MAX_MEMBER_TYPES = 16
MAX_KEY_CHARS = 255
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]{1,%d}$" % MAX_KEY_CHARS)
_EXT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(m, path="manifest.json"):
    """Check a parsed manifest against the schema of ``shards/README.md``; raise :class:`ShardSetError` naming
    ``path`` and the offending field.

    Required: ``format`` (``"vit-adapter-ds-shards"``), integer ``version`` (one of :data:`SUPPORTED_VERSIONS`:
    a newer, unknown version is refused rather than misread), integer ``num_classes`` >= 1, integer
    ``num_samples`` equal to the shards' sum (>= 1), and a non-empty list ``shards`` of objects with a file
    ``name`` (no folders), integer ``num_samples``, ``bytes`` and a hex ``sha256``, and ``samples``:
    ``[[key, {ext: [offset, size]}], ...]`` with string keys, non-negative integer offsets and sizes that lie
    inside the shard's ``bytes``. Bounded, so that :class:`.decode.ShardReader`'s tables stay proportional to the
    data: keys of at most :data:`MAX_KEY_CHARS` letters, digits, ``_``, ``-``; at most :data:`MAX_MEMBER_TYPES`
    member types; at most ``bytes / 512`` members per shard. Optional, type-checked when present: ``task``, ``split``, ``dataset`` (strings),
    ``classes`` (strings, as many as ``num_classes``), ``label_map`` (null or 256 integers in [0, 255]),
    ``ignore_index`` (integer), ``semantic_seg`` (detection sets with semantic maps: an object with integer
    ``num_classes`` >= 1 and ``ignore_index``).
    """
    def fail(field, msg):
        raise ShardSetError(f"{path}: field '{field}' {msg}")

    if not isinstance(m, dict):
        raise ShardSetError(f"{path}: a manifest must be a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise ShardSetError(f"{path} is not a {FORMAT} manifest (field 'format' is {m.get('format')!r})")
    if "version" not in m:
        fail("version", "is missing")
    if not _is_int(m["version"]) or m["version"] not in SUPPORTED_VERSIONS:
        fail("version", f"is {m['version']!r}: this reader supports version(s) {list(SUPPORTED_VERSIONS)} "
                        "(written by a newer vit-adapter-ds? rewrite the shards or update)")
    for key in ("num_classes", "num_samples"):
        if key not in m:
            fail(key, "is missing")
        if not _is_int(m[key]) or m[key] < 1:
            fail(key, f"must be a positive integer, got {m[key]!r}")
    for key in ("task", "split", "dataset"):
        if m.get(key) is not None and not isinstance(m[key], str):
            fail(key, f"must be a string, got {m[key]!r}")
    if "classes" in m:
        cl = m["classes"]
        if not isinstance(cl, list) or not all(isinstance(c, str) for c in cl):
            fail("classes", "must be a list of strings")
        if len(cl) != m["num_classes"]:
            fail("classes", f"has {len(cl)} names but num_classes={m['num_classes']}")
    lm = m.get("label_map")
    if lm is not None:
        if not isinstance(lm, list) or len(lm) != 256:
            fail("label_map", f"must be null or a list of 256 entries, has "
                              f"{len(lm) if isinstance(lm, list) else type(lm).__name__}")
        if not all(_is_int(v) and 0 <= v <= 255 for v in lm):
            fail("label_map", "entries must be integers in [0, 255]")
    if "ignore_index" in m and not _is_int(m["ignore_index"]):
        fail("ignore_index", f"must be an integer, got {m['ignore_index']!r}")
    sem = m.get("semantic_seg")
    if sem is not None and not (isinstance(sem, dict) and _is_int(sem.get("num_classes")) and
                                sem["num_classes"] >= 1 and _is_int(sem.get("ignore_index"))):
        fail("semantic_seg", f"must be an object with integer num_classes >= 1 and ignore_index, got {sem!r:.80}")
    shards = m.get("shards")
    if not isinstance(shards, list):
        fail("shards", f"must be a list, got {type(shards).__name__}")
    if not shards:
        raise ShardSetError(f"{path} lists no shards (field 'shards' is empty)")
    total, exts = 0, set()
    for i, s in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(s, dict):
            fail(where, f"must be an object, got {type(s).__name__}")
        name = s.get("name")
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            fail(f"{where}.name", f"must be a shard file name (no folders), got {name!r}")
        where = f"shards[{i}] ({name})"
        for key in ("num_samples", "bytes"):
            if not _is_int(s.get(key)) or s[key] < 0:
                fail(f"{where}.{key}", f"must be a non-negative integer, got {s.get(key)!r}")
        sha = s.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or not _SHA256_CHARS.issuperset(sha):
            fail(f"{where}.sha256", f"must be 64 lower-case hex digits, got {sha!r}")
        samples = s.get("samples")
        if not isinstance(samples, list):
            fail(f"{where}.samples", "is missing or not a list")
        if len(samples) != s["num_samples"]:
            raise ShardSetError(f"{path}: shard {name} lists {len(samples)} samples but num_samples="
                                f"{s['num_samples']}")
        _check_samples(samples, s["bytes"], where, fail, exts)
        total += len(samples)
    if total != m["num_samples"]:
        raise ShardSetError(f"{path}: shards hold {total} samples but num_samples={m['num_samples']}")
    if len(exts) > MAX_MEMBER_TYPES:
        fail("shards[*].samples", f"name {len(exts)} member types (e.g. {sorted(exts)[:5]}), more than "
                                  f"{MAX_MEMBER_TYPES}: refused before sizing a samples x types table")


def _check_samples(samples, size, where, fail, exts):
    """Check a shard's ``samples`` entries ``[key, {ext: [offset, size]}]`` against its ``size`` bytes (member
    ranges inside the shard, at least a 512-byte tar header per member); add their member types to ``exts``."""
    members = 0
    for j, entry in enumerate(samples):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and entry[0]
                and isinstance(entry[1], dict) and entry[1]):
            fail(f"{where}.samples[{j}]", f"must be [key, {{ext: [offset, size]}}], got {entry!r:.80}")
        if not _KEY_RE.match(entry[0]):
            fail(f"{where}.samples[{j}][0]", f"must be a key of at most {MAX_KEY_CHARS} letters, digits, '_' or "
                                            f"'-', got {entry[0]!r:.80}")
        for ext, loc in entry[1].items():
            if not _EXT_RE.match(ext):
                fail(f"{where}.samples[{j}][1]", f"has a member type that is no file extension: {ext!r:.80}")
            if not (isinstance(loc, list) and len(loc) == 2 and _is_int(loc[0]) and _is_int(loc[1])
                    and loc[0] >= 0 and loc[1] >= 0 and loc[0] + loc[1] <= size):
                fail(f"{where}.samples[{j}][1][{ext!r}]", f"must be [offset, size], non-negative integers "
                                                        f"inside the shard's {size} bytes, got {loc!r}")
            exts.add(ext)
        members += len(entry[1])
    if members * _TAR_BLOCK > size:
        fail(f"{where}.samples", f"lists {members} tar members, more than its {size} bytes can hold (a 512-byte "
                                 "header each)")


def read_manifest(shard_dir, split=None):
    """Load and check the manifest of a shard set.

    ``shard_dir`` is a split folder (with ``manifest.json``) or a folder with ``train/`` and ``val/`` split
    folders (``split`` picks one; default ``train``). Returns the manifest dict (``classes``, ``palette``,
    ``num_classes``, ``num_samples``, ``label_map``, ``task``, ``shards`` [{name, num_samples, bytes, sha256,
    samples: [[key, {ext: [offset, size]}], ...]}], ...) plus ``shard_dir``: the resolved folder.
    Raises :class:`ShardSetError` for anything inconsistent (see :func:`check_manifest`).
    """
    if remote.is_remote(shard_dir):  # s3:// gs:// https://...: ranged reads through fsspec (data/remote.py)
        d, m = remote.load_manifest(shard_dir, split, MANIFEST)
        check_manifest(m, remote.redact_url(remote.join(d, MANIFEST)))  # the path is named in its errors
        return dict(m, shard_dir=d)
    d = resolve_shard_dir(shard_dir, split)
    path = os.path.join(d, MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise ShardSetError(f"cannot read manifest {path}: {e}") from e
    check_manifest(m, path)
    m["shard_dir"] = d
    return m


def split_dirs(shard_dir):
    """The shard-set folders at ``shard_dir``: itself if it holds a manifest, else its sub-folders that do
    (``train``, ``val``, ...; sorted). Raises :class:`ShardSetError` if there are none."""
    shard_dir = os.fspath(shard_dir)
    if os.path.isfile(os.path.join(shard_dir, MANIFEST)):
        return [shard_dir]
    if not os.path.isdir(shard_dir):
        raise ShardSetError(f"shard directory not found or not a directory: {shard_dir}")
    subs = [os.path.join(shard_dir, n) for n in sorted(os.listdir(shard_dir))
            if os.path.isfile(os.path.join(shard_dir, n, MANIFEST))]
    if not subs:
        raise ShardSetError(f"no {MANIFEST} in {shard_dir} or any of its sub-folders: not a shard set")
    return subs


def verify_shards(shard_dir, manifest, mode="size"):
    """Check the shard files against the manifest; raise :class:`ShardSetError` on the first problem.

    ``mode``: ``'none'`` (nothing), ``'exists'`` (files exist and are readable), ``'size'`` (+ byte size equals
    the manifest's), ``'sha256'`` (+ full checksum; reads every byte).
    """
    if mode not in ("none", "exists", "size", "sha256"):
        raise ValueError(f"verify mode must be none/exists/size/sha256, got {mode!r}")
    if mode == "none":
        return
    d = manifest.get("shard_dir", shard_dir)
    if remote.is_remote(d):
        return remote.verify_shards(d, manifest, mode)
    for s in manifest["shards"]:
        p = os.path.join(d, s["name"])
        if not os.path.isfile(p) or not os.access(p, os.R_OK):
            raise ShardSetError(f"shard {p} listed in the manifest is missing or unreadable")
        if mode in ("size", "sha256"):
            size = os.path.getsize(p)
            if size != s["bytes"]:
                raise ShardSetError(f"shard {p} has {size} bytes, the manifest says {s['bytes']}: truncated or "
                                    "replaced; rewrite the shards (or load with verify='none' to skip the "
                                    "unreadable samples)")
        if mode == "sha256":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != s["sha256"]:
                raise ShardSetError(f"shard {p}: sha256 {h.hexdigest()} does not match the manifest's "
                                    f"{s['sha256']}")
