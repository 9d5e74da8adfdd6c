"""Find, read and check a shard set's ``manifest.json`` (format in ``shards/README.md``)."""
from __future__ import annotations

import hashlib
import json
import os

from .shard_writer import FORMAT, MANIFEST


class ShardSetError(RuntimeError):
    """A shard set that cannot be used at all (missing, unreadable, inconsistent with its manifest)."""


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


def read_manifest(shard_dir, split=None):
    """Load and check the manifest of a shard set.

    ``shard_dir`` is a split folder (with ``manifest.json``) or a folder with ``train/`` and ``val/`` split
    folders (``split`` picks one; default ``train``). Returns the manifest dict (``classes``, ``palette``,
    ``num_classes``, ``num_samples``, ``label_map``, ``task``, ``shards`` [{name, num_samples, bytes, sha256,
    samples: [[key, {ext: [offset, size]}], ...]}], ...) plus ``shard_dir``: the resolved folder.
    Raises :class:`ShardSetError` for anything inconsistent.
    """
    d = resolve_shard_dir(shard_dir, split)
    path = os.path.join(d, MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise ShardSetError(f"cannot read manifest {path}: {e}") from e
    if m.get("format") != FORMAT:
        raise ShardSetError(f"{path} is not a {FORMAT} manifest (format={m.get('format')!r})")
    shards = m.get("shards") or []
    if not shards:
        raise ShardSetError(f"{path} lists no shards")
    total = 0
    for s in shards:
        n = len(s.get("samples", []))
        if n != s.get("num_samples"):
            raise ShardSetError(f"{path}: shard {s.get('name')} lists {n} samples but num_samples="
                                f"{s.get('num_samples')}")
        total += n
    if total != m.get("num_samples"):
        raise ShardSetError(f"{path}: shards hold {total} samples but num_samples={m.get('num_samples')}")
    if total == 0:
        raise ShardSetError(f"{path}: the shard set is empty")
    lm = m.get("label_map")
    if lm is not None and len(lm) != 256:
        raise ShardSetError(f"{path}: label_map must have 256 entries, has {len(lm)}")
    m["shard_dir"] = d
    return m


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
