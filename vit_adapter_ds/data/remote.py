"""Shard sets on object stores and web servers: ``s3://``, ``gs://``, ``https://`` (any fsspec protocol).

Training streams remote shards without copying them first: the shard reader (:class:`.decode.ShardReader`) seeks
to a sample's members and reads them, and :class:`RangedFile` turns every such read into one ranged request
(``fs.cat_file(path, start, end)``; an HTTP ``Range: bytes=start-end`` request), so only the bytes of the samples
a rank actually reads cross the network, and forked DataLoader workers each open their own connections.

Transient failures (connection errors, timeouts, HTTP 5xx / 429, a short read) are retried with exponential
backoff (:class:`Retry`: ``VIT_ADAPTER_DS_REMOTE_RETRIES`` attempts, default 6, waits 0.5 s, 1 s, 2 s ... capped at
``VIT_ADAPTER_DS_REMOTE_MAX_BACKOFF`` seconds, default 16); a missing object or a refused permission is not
retried. After the last attempt the error names the URL and byte range (the loader then counts the sample as bad,
see ``data.max_bad_fraction``).

Protocols come from fsspec: ``s3://`` needs ``s3fs``, ``gs://`` needs ``gcsfs``, ``http(s)://`` uses fsspec's
HTTP file system when ``aiohttp`` is installed and otherwise a small built-in client (urllib) with the same
ranged-read semantics. Credentials are those of the underlying library (environment, instance role, config files);
``VIT_ADAPTER_DS_REMOTE_OPTIONS`` may hold JSON storage options passed to fsspec, for every protocol (e.g.
``{"anon": true}``) or per protocol (``{"s3": {"endpoint_url": "http://minio:9000"}, "gs": {"token": "anon"}}``).
"""
from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request

REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "http://", "https://", "az://", "abfs://", "abfss://",
                  "hf://", "oss://")


_PROTOCOLS = {s[:-3] for s in REMOTE_SCHEMES}


def is_remote(path) -> bool:
    """True for a URL of a remote store (``file://`` and plain paths are local)."""
    return isinstance(path, str) and path.lower().startswith(REMOTE_SCHEMES)


def join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *(n.strip("/") for n in names)])


class Retry:
    """Exponential backoff with jitter for transient errors."""

    def __init__(self, attempts: int | None = None, base: float = 0.5, max_backoff: float | None = None,
                 sleep=time.sleep):
        self.attempts = max(1, int(attempts if attempts is not None else
                                   os.environ.get("VIT_ADAPTER_DS_REMOTE_RETRIES", 6)))
        self.base = base
        self.max_backoff = float(max_backoff if max_backoff is not None else
                                 os.environ.get("VIT_ADAPTER_DS_REMOTE_MAX_BACKOFF", 16))
        self.sleep = sleep

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.base * 2 ** attempt) * (0.75 + 0.5 * random.random())

    def __call__(self, what: str, fn):
        last = None
        for attempt in range(self.attempts):
            try:
                return fn()
            except (FileNotFoundError, PermissionError, IsADirectoryError, ValueError):
                raise
            except Exception as e:  # noqa: BLE001 -- every library has its own transient error types
                if not _transient(e):
                    raise
                last = e
                if attempt + 1 < self.attempts:
                    self.sleep(self.delay(attempt))
        raise OSError(f"{what}: failed after {self.attempts} attempts: {type(last).__name__}: {last}") from last


def _transient(e: Exception) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    status = getattr(e, "status", None) or getattr(e, "code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False
    return True


class _UrllibHTTP:
    """The two calls this module needs from an fsspec file system, for http(s) without aiohttp."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout

    def _open(self, url, method="GET", headers=None):
        req = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 -- the user's shard URL
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FileNotFoundError(url) from e
            if e.code in (401, 403):
                raise PermissionError(f"{url}: HTTP {e.code}") from e
            raise

    def cat_file(self, url, start=None, end=None):
        headers = {}
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self._open(url, headers=headers) as r:
            data = r.read()
            if start is not None and r.status != 206:
                if r.status == 200 and start == 0 and (end is None or len(data) <= end):
                    return data
                raise OSError(f"{url}: the server ignored the byte range (HTTP {r.status}); ranged reads are "
                              "required for streaming shards")
            return data

    def size(self, url):
        with self._open(url, method="HEAD") as r:
            n = r.headers.get("Content-Length")
        if n is None:
            raise OSError(f"{url}: no Content-Length")
        return int(n)


_FS_CACHE: dict = {}


def storage_options(scheme: str) -> dict:
    """The fsspec storage options for ``scheme`` from ``VIT_ADAPTER_DS_REMOTE_OPTIONS`` (JSON): either one dict
    for every protocol (``{"anon": true}``) or one dict per protocol (``{"s3": {"endpoint_url": ...}, "gs":
    {...}}``; a protocol not named gets none)."""
    raw = os.environ.get("VIT_ADAPTER_DS_REMOTE_OPTIONS", "") or "{}"
    try:
        opts = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"VIT_ADAPTER_DS_REMOTE_OPTIONS is not valid JSON ({e}): {raw!r}") from e
    if not isinstance(opts, dict):
        raise ValueError(f"VIT_ADAPTER_DS_REMOTE_OPTIONS must be a JSON object, got {raw!r}")
    per_protocol = [k for k in opts if k.lower() in _PROTOCOLS]
    if per_protocol and len(per_protocol) == len(opts) and all(isinstance(v, dict) for v in opts.values()):
        by_name = {k.lower(): v for k, v in opts.items()}
        aliases = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}
        return dict(by_name.get(scheme, by_name.get(aliases.get(scheme, ""), {})))
    return opts


def filesystem(url: str):
    """``(fs, path)`` for ``url``: an fsspec file system (or the built-in HTTP client) and the path inside it."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        try:
            import aiohttp  # noqa: F401 -- fsspec's HTTP file system needs it
        except ImportError:
            fs = _FS_CACHE.setdefault((os.getpid(), "http"), _UrllibHTTP())
            return fs, url
    import fsspec

    opts = storage_options(scheme)
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
    except ImportError as e:
        raise ImportError(f"reading {url} needs the fsspec backend for '{scheme}://' ({e}); e.g. pip install "
                          f"{ {'s3': 's3fs', 's3a': 's3fs', 'gs': 'gcsfs', 'gcs': 'gcsfs'}.get(scheme, 'the backend') }"
                          ) from e
    return fs, path


def read_range(url: str, start: int, size: int, retry: Retry | None = None) -> bytes:
    """``size`` bytes of ``url`` from ``start`` (one ranged request; retried on transient errors / short reads)."""
    fs, path = filesystem(url)

    def once():
        data = fs.cat_file(path, start=start, end=start + size)
        if len(data) != size:
            raise ConnectionError(f"short read: {len(data)} of {size} bytes")
        return bytes(data)
    return (retry or Retry())(f"reading bytes {start}-{start + size - 1} of {url}", once)


def read_bytes(url: str, retry: Retry | None = None) -> bytes:
    """The whole object (small files: the manifest)."""
    fs, path = filesystem(url)
    return (retry or Retry())(f"reading {url}", lambda: bytes(fs.cat_file(path)))


def size(url: str, retry: Retry | None = None) -> int:
    fs, path = filesystem(url)
    return int((retry or Retry())(f"size of {url}", lambda: fs.size(path)))


class RangedFile:
    """Read-only file object over a remote object: ``seek`` + ``read(n)`` = one ranged request, nothing cached
    or prefetched (the shard reader reads one sample's members at a time)."""

    def __init__(self, url: str, retry: Retry | None = None):
        self.url, self.retry, self.pos, self.closed = url, retry or Retry(), 0, False

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("RangedFile supports absolute seeks only")
        self.pos = int(offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = size(self.url, self.retry) - self.pos
        if n <= 0:
            return b""
        data = read_range(self.url, self.pos, n, self.retry)
        self.pos += len(data)
        return data

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_shard(path):
    """A binary file object for a shard: :class:`RangedFile` for a URL, ``open(path, 'rb')`` otherwise."""
    return RangedFile(path) if is_remote(path) else open(path, "rb")


def load_manifest(shard_dir: str, split: str | None, name: str) -> tuple[str, dict]:
    """(resolved shard-set URL, parsed manifest) for a remote ``shard_dir``: ``shard_dir/<name>``, or
    ``shard_dir/<split or 'train'>/<name>`` (as :func:`.manifest.resolve_shard_dir` does for folders)."""
    from .manifest import ShardSetError

    candidates = [shard_dir] if split is None else []
    candidates += [join(shard_dir, split or "train"), shard_dir]
    errors = []
    for d in dict.fromkeys(candidates):
        try:
            return d, json.loads(read_bytes(join(d, name)))
        except FileNotFoundError:
            errors.append(join(d, name))
        except (OSError, ValueError) as e:
            raise ShardSetError(f"cannot read manifest {join(d, name)}: {e}") from e
    raise ShardSetError(f"no {name} at {' or '.join(errors)}: not a shard set (or its writer did not finish)")


def verify_shards(shard_dir: str, manifest: dict, mode: str) -> None:
    """``exists`` / ``size``: each shard's size from the store equals the manifest's; ``sha256`` also reads every
    byte once (ranged, in 8 MiB pieces)."""
    import hashlib

    from .manifest import ShardSetError

    for s in manifest["shards"]:
        url = join(manifest.get("shard_dir", shard_dir), s["name"])
        try:
            n = size(url)
        except OSError as e:
            raise ShardSetError(f"shard {url} listed in the manifest is missing or unreadable: {e}") from e
        if mode in ("size", "sha256") and n != s["bytes"]:
            raise ShardSetError(f"shard {url} has {n} bytes, the manifest says {s['bytes']}: truncated or replaced")
        if mode == "sha256":
            h = hashlib.sha256()
            for off in range(0, n, 8 << 20):
                h.update(read_range(url, off, min(8 << 20, n - off)))
            if h.hexdigest() != s["sha256"]:
                raise ShardSetError(f"shard {url}: sha256 {h.hexdigest()} does not match the manifest's")
