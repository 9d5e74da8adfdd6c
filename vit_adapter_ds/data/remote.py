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

A server that ignores ``Range`` (answers 200 with the whole object) or a backend that returns more bytes than asked
for raises :class:`RangeIgnoredError` at once (not retried: every retry would download the whole object again).

Credentials and signatures in URLs (``https://user:pass@host/...``, pre-signed ``X-Amz-Signature=...``,
``X-Goog-Signature=...``, ``sig=...``, ``token=...``) never reach a message: every error, warning and log line that
can hold a URL goes through :func:`redact_url`.
"""
from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request

from ..utils.redact import redact_url
from .errors import ShardSetError

REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "http://", "https://", "az://", "abfs://", "abfss://",
                  "hf://", "oss://")


_PROTOCOLS = {s[:-3] for s in REMOTE_SCHEMES}


def _chain(e: BaseException):
    """``e`` and the exceptions a traceback of it prints (its causes / contexts)."""
    seen = []
    while e is not None and all(e is not x for x in seen):
        seen.append(e)
        e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
    return seen


def _scrubbed(e: BaseException) -> BaseException:
    """``e`` itself when neither its message nor those of its chained exceptions hold a secret; otherwise an
    exception of the same type (or ``OSError`` where that type cannot be built from a message) with the redacted
    message and ``e``'s traceback, and no chain (the chained originals would print the secret in a traceback)."""
    if all(redact_url(f"{x}") == f"{x}" for x in _chain(e)):
        return e
    clean = redact_url(f"{e}")
    try:
        new = type(e)(clean)
        if f"{new}" != clean:
            raise TypeError
    except Exception:  # noqa: BLE001 -- an exception type with another signature
        new = OSError(f"{type(e).__name__}: {clean}")
    new.__cause__, new.__suppress_context__ = None, True
    return new.with_traceback(e.__traceback__)


class RangeIgnoredError(OSError):
    """A ranged read got more bytes than it asked for: the server ignored ``Range`` (HTTP 200 with the whole object)
    or the backend returned the whole object. Permanent: :class:`Retry` does not retry it (each try would download
    the whole object again)."""


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
        """``fn()``, retried on transient errors. Every exception that leaves here names ``what`` and has its
        message redacted (:func:`redact_url`); see :func:`_permanent` for the types of permanent ones."""
        last = None
        for attempt in range(self.attempts):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 -- every library has its own transient error types
                if not _transient(e):
                    raise _permanent(e, what) from _scrubbed(e)
                last = e
                if attempt + 1 < self.attempts:
                    self.sleep(self.delay(attempt))
        raise OSError(redact_url(f"{what}: failed after {self.attempts} attempts: {type(last).__name__}: {last}")
                      ) from _scrubbed(last)


def _permanent(e: Exception, what: str) -> Exception:
    """The exception to raise for a permanent error ``e`` met while ``what``: an ``OSError`` / ``ValueError`` keeps its
    type; a library's own error (aiohttp's or gcsfs's HTTP 403, ...) becomes ``PermissionError`` (401, 403),
    ``FileNotFoundError`` (404) or ``OSError``, as the built-in HTTP client raises them (the shard reader counts an
    ``OSError`` as a bad sample). The message names ``what`` (s3fs's "The specified key does not exist." does not
    name the object) and is redacted."""
    what, msg = redact_url(what), redact_url(f"{e}")
    head, sep, rest = msg.partition(": ")
    if sep and head in what and rest:  # "<url>: HTTP 403": the url is named once
        msg = rest
    if isinstance(e, OSError) or isinstance(e, ValueError):
        kind = type(e)
    else:
        kind = {401: PermissionError, 403: PermissionError, 404: FileNotFoundError}.get(_status(e), OSError)
    if not msg or msg in what:  # fsspec's FileNotFoundError(url)
        reason = {FileNotFoundError: "no such object", PermissionError: "permission denied"}.get(kind, "failed")
        text = f"{what}: {reason} ({type(e).__name__})"
    else:
        text = f"{what}: {msg}" if kind is type(e) else f"{what}: {type(e).__name__}: {msg}"
    try:
        new = kind(text)
        if f"{new}" != text:
            raise TypeError(kind)
    except Exception:  # noqa: BLE001 -- an exception type with another signature
        new = OSError(f"{what}: {type(e).__name__}: {msg}")
    return new


def _transient(e: Exception) -> bool:
    """Worth retrying: not a missing object, a refused permission, a bad argument or an ignored byte range, not an
    HTTP 4xx other than 408 / 429."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError,
                      RangeIgnoredError)):
        return False
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    status = _status(e)
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return False
    return True


def _status(e: Exception) -> int | None:
    """The HTTP status of a library's error (aiohttp ``status``, gcsfs ``code``), None when it has none."""
    status = getattr(e, "status", None) or getattr(e, "code", None)
    return status if isinstance(status, int) else None


class _UrllibHTTP:
    """The two calls this module needs from an fsspec file system, for http(s) without aiohttp."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout

    def _open(self, url, method="GET", headers=None):
        headers = dict(headers or {})
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None:  # user:password@host: HTTP basic auth (urllib would take it for the host)
            import base64

            user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
        req = urllib.request.Request(url, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 -- the user's shard URL
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FileNotFoundError(redact_url(url)) from None
            if e.code in (401, 403):
                raise PermissionError(f"{redact_url(url)}: HTTP {e.code}") from None
            raise

    def cat_file(self, url, start=None, end=None):
        headers = {}
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self._open(url, headers=headers) as r:
            if start is None or r.status == 206:
                return r.read()
            if r.status == 200 and start == 0:  # the whole object is the range when it is no longer than asked
                data = r.read() if end is None else r.read(end + 1)
                if end is None or len(data) <= end:
                    return data
            raise RangeIgnoredError(range_ignored_message(url, start, end, f"HTTP {r.status}"))

    def size(self, url):
        with self._open(url, method="HEAD") as r:
            n = r.headers.get("Content-Length")
        if n is None:
            raise OSError(f"{redact_url(url)}: no Content-Length")
        return int(n)


def range_ignored_message(url, start, end, got) -> str:
    return (f"{redact_url(url)}: the server ignored the byte range (asked for bytes {start}-"
            f"{'' if end is None else end - 1}, got {got}); streaming shards needs a store that serves ranged "
            "reads (HTTP Range requests)")


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
        raise ImportError(redact_url(
            f"reading {url} needs the fsspec backend for '{scheme}://' ({e}); e.g. pip install "
            f"{ {'s3': 's3fs', 's3a': 's3fs', 'gs': 'gcsfs', 'gcs': 'gcsfs'}.get(scheme, 'the backend') }")) from None
    except Exception as e:  # noqa: BLE001 -- a backend's own error about the URL (bad options, ...)
        clean = _scrubbed(e)
        if clean is e:
            raise
        raise clean from None
    return fs, path


def read_range(url: str, start: int, size: int, retry: Retry | None = None) -> bytes:
    """``size`` bytes of ``url`` from ``start`` (one ranged request; retried on transient errors / short reads)."""
    fs, path = filesystem(url)

    def once():
        data = fs.cat_file(path, start=start, end=start + size)
        if len(data) > size:  # the whole object (or more than the range): retrying would fetch it again
            raise RangeIgnoredError(range_ignored_message(url, start, start + size, f"{len(data)} bytes"))
        if len(data) < size:
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
    candidates = [shard_dir] if split is None else []
    candidates += [join(shard_dir, split or "train"), shard_dir]
    errors = []
    for d in dict.fromkeys(candidates):
        try:
            return d, json.loads(read_bytes(join(d, name)))
        except FileNotFoundError:
            errors.append(join(d, name))
        except (OSError, ValueError) as e:
            raise ShardSetError(redact_url(f"cannot read manifest {join(d, name)}: {e}")) from _scrubbed(e)
    raise ShardSetError(redact_url(f"no {name} at {' or '.join(errors)}: not a shard set (or its writer did not "
                                   "finish)"))


def verify_shards(shard_dir: str, manifest: dict, mode: str) -> None:
    """``exists`` / ``size``: each shard's size from the store equals the manifest's; ``sha256`` also reads every
    byte once (ranged, in 8 MiB pieces)."""
    import hashlib

    for s in manifest["shards"]:
        url = join(manifest.get("shard_dir", shard_dir), s["name"])
        try:
            n = size(url)
        except OSError as e:
            raise ShardSetError(redact_url(f"shard {url} listed in the manifest is missing or unreadable: {e}")
                                ) from _scrubbed(e)
        if mode in ("size", "sha256") and n != s["bytes"]:
            raise ShardSetError(redact_url(f"shard {url} has {n} bytes, the manifest says {s['bytes']}: truncated "
                                           "or replaced"))
        if mode == "sha256":
            h = hashlib.sha256()
            for off in range(0, n, 8 << 20):
                h.update(read_range(url, off, min(8 << 20, n - off)))
            if h.hexdigest() != s["sha256"]:
                raise ShardSetError(redact_url(f"shard {url}: sha256 {h.hexdigest()} does not match the manifest's"))
