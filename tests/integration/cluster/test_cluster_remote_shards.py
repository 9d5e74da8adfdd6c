"""Shard sets on a web server / object store (``vit_adapter_ds/data/remote.py``): the train and val loaders stream
``http://``, ``s3://`` and ``gs://`` shards with ranged reads (no whole-shard download, nothing copied first), give
exactly the batches and resume state of the same shards on a local disk, and survive transient server errors
(retries with backoff); permanent errors are not retried and name the URL.

* http: a tiny range-capable HTTP server on 127.0.0.1 written here (python's http.server ignores ``Range``), which
  logs every request and can fail the next requests on purpose;
* s3: moto's S3 server (in this process) holding a copy of the shard sets, read by s3fs through a logging,
  fault-injecting proxy; the segmentation and detection loaders and a recipe's ``data.train.shard_dir``;
* gs: gcsfs against a minimal GCS JSON-API emulator written here (metadata, listing, media download with Range).
"""
from __future__ import annotations

import http.client
import importlib
import http.server
import json
import os
import sys
import threading
import traceback
import urllib.parse
from pathlib import Path

import pytest
import torch

from vit_adapter_ds.data import build_train_loader, build_val_loader, read_manifest
from vit_adapter_ds.data import remote
from vit_adapter_ds.data.make_shards import write_ade20k
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, write_synthetic_ade

OPTS = dict(crop_size=(32, 32), scale=(80, 40), seed=3, num_classes=8)


class LoggingServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that logs every request and can fail the next ones on purpose."""
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.log = []            # served: (method, path, range header or None, bytes sent)
        self.requests = []       # every request: (method, path)
        # faults for the next requests: "503", "403" or "drop" (close without a response) for the next request, or
        # (fault, method, path suffix) for the next request that matches
        self.fail_next = []
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    ERROR_BODY = b""             # the body of an injected 503
    ERROR_TYPE = "text/plain"

    def log_message(self, *args):
        pass

    def injected_fault(self):
        """Record the request; True when an injected fault took its place (a 503 or a dropped connection)."""
        srv = self.server
        path = self.path.split("?")[0]
        with srv.lock:
            srv.requests.append((self.command, self.path))
            action = None
            if srv.fail_next:
                f = srv.fail_next[0]
                if isinstance(f, str) or (self.command == f[1] and path.endswith(f[2])):
                    action = f if isinstance(f, str) else f[0]
                    srv.fail_next.pop(0)
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        if action in ("503", "403"):
            self.send_response(int(action))
            self.send_header("Content-Type", self.ERROR_TYPE)
            self.send_header("Content-Length", str(len(self.ERROR_BODY)))
            self.end_headers()
            self.wfile.write(self.ERROR_BODY)
            return True
        return False

    def logged(self, nbytes):
        with self.server.lock:
            self.server.log.append((self.command, self.path, self.headers.get("Range"), nbytes))


class RangeServer(LoggingServer):
    """Serves the files under ``root`` with ``Range`` support (python's http.server ignores ``Range``)."""

    def __init__(self, root):
        super().__init__(RangeHandler)
        self.root = Path(root)


class RangeHandler(FaultyHandler):
    def _serve(self, head):
        srv = self.server
        if self.injected_fault():
            return
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            start, end = rng.split("=", 1)[1].split("-")
            start, end = int(start), (int(end) if end else len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.logged(0 if head else len(body))
        if not head:
            self.wfile.write(body)

    def do_GET(self):
        self._serve(False)

    def do_HEAD(self):
        self._serve(True)


class NoRangeHandler(RangeHandler):
    """A server that ignores ``Range``, as many plain web servers and some proxies do: every GET is answered 200 with
    the whole file (counted in ``server.full_bodies`` before the response is sent)."""

    def _serve(self, head):
        srv = self.server
        if self.injected_fault():
            return
        path = srv.root / self.path.split("?")[0].lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if not head:  # counted before the client can see the response
            with srv.lock:
                srv.full_bodies += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return
        try:
            self.wfile.write(data)
        except OSError:  # the client may close after the status line: it needs none of these bytes
            pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("remote")
    root = write_synthetic_ade(base / "raw", 12, 4, seed=5, size=(64, 80))
    kw = dict(classes=SYNTHETIC_CLASSES, dataset="synthetic", palette=SYNTHETIC_PALETTE, num_workers=1,
              progress=False)
    write_ade20k(root, str(base / "syn" / "train"), "train", max_samples=4, **kw)  # 3 shards
    write_ade20k(root, str(base / "syn" / "val"), "val", max_samples=2, **kw)
    return base


def _record_backoff(srv, monkeypatch):
    """``srv.delays``: the attempt numbers ``remote.Retry`` backed off after (its retries, in order)."""
    srv.delays = []
    delay = remote.Retry.delay
    monkeypatch.setattr(remote.Retry, "delay", lambda self, a: srv.delays.append(a) or delay(self, a))


@pytest.fixture()
def server(shards, monkeypatch):
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_MAX_BACKOFF", "0.05")
    srv = RangeServer(shards).start()
    _record_backoff(srv, monkeypatch)
    yield srv
    srv.stop()


@pytest.fixture(params=["fsspec", "urllib"])
def http_client(request, monkeypatch):
    """Both http(s) paths of ``remote.filesystem``: fsspec's HTTP file system (aiohttp installed) and the built-in
    urllib client (aiohttp made unimportable)."""
    if request.param == "urllib":
        monkeypatch.setitem(sys.modules, "aiohttp", None)
        monkeypatch.setattr(remote, "_FS_CACHE", {})
    else:
        pytest.importorskip("aiohttp")
    fs, _ = remote.filesystem("http://127.0.0.1/x")
    assert (type(fs).__name__ == "_UrllibHTTP") == (request.param == "urllib"), type(fs)
    return request.param


def _shard_requests(srv):
    return [r for r in srv.log if r[1].endswith(".tar")]


def _same_batches(a, b):
    assert a["meta"]["keys"] == b["meta"]["keys"]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["gt_semantic_seg"], b["gt_semantic_seg"])


def test_remote_train_loader_streams_ranged_reads_like_local(shards, server):
    local = iter(build_train_loader(str(shards / "syn"), batch_size=2, **OPTS))
    loader = build_train_loader(f"{server.url}/syn", batch_size=2, **OPTS)
    m = read_manifest(f"{server.url}/syn")
    total = sum(s["bytes"] for s in m["shards"])
    assert m["shard_dir"] == f"{server.url}/syn/train" and m["num_samples"] == 12
    it = iter(loader)
    _same_batches(next(it), next(local))
    reqs = _shard_requests(server)
    gets = [r for r in reqs if r[0] == "GET"]
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets), gets  # every shard read is ranged
    assert sum(r[3] for r in gets) < total / 3  # one batch of 2 samples: a fraction of the shard bytes
    for _ in range(5):  # the rest of the epoch and into the next one
        _same_batches(next(it), next(local))


def test_remote_loader_resumes_and_val_matches(shards, server):
    a = build_train_loader(f"{server.url}/syn", batch_size=2, **OPTS)
    it = iter(a)
    next(it), next(it)
    state = a.state_dict()
    want = next(it)
    b = build_train_loader(f"{server.url}/syn", batch_size=2, **OPTS)
    b.load_state_dict(state)
    _same_batches(next(iter(b)), want)
    remote_val = list(build_val_loader(f"{server.url}/syn", split="val", num_classes=8))
    local_val = list(build_val_loader(str(shards / "syn"), split="val", num_classes=8))
    assert len(remote_val) == len(local_val) == 4
    for x, y in zip(remote_val, local_val):
        _same_batches(x, y)


def test_transient_errors_are_retried(shards, server):
    local = next(iter(build_train_loader(str(shards / "syn"), batch_size=2, **OPTS)))
    server.fail_next = ["503", "drop", "503"]  # manifest read: 503, connection dropped, 503, then fine
    loader = build_train_loader(f"{server.url}/syn", batch_size=2, **OPTS)
    assert not server.fail_next
    assert server.delays[:1] == [0]  # the first 503 was retried by remote.Retry (no HTTP client retries a 503)
    server.fail_next = ["drop", "503"]  # the next shard reads
    _same_batches(next(iter(loader)), local)
    # outcomes, not request counts (a dropped keep-alive connection may be re-opened by the HTTP client without
    # reaching the handler): both faults were met, the batch is the local one
    assert not server.fail_next


def test_permanent_errors_name_the_url(shards, server):
    url = f"{server.url}/syn/train/missing.tar"
    with pytest.raises(FileNotFoundError, match="/syn/train/missing.tar"):
        remote.read_range(url, 0, 10)
    assert server.delays == []  # a missing object is not retried
    shard = f"{server.url}/syn/train/" + read_manifest(str(shards / "syn"))["shards"][0]["name"]
    server.fail_next = ["503"] * 3
    with pytest.raises(OSError, match=r"reading bytes 5-14 of .*failed after 3 attempts"):
        remote.read_range(shard, 5, 10, remote.Retry(attempts=3, max_backoff=0.01))
    assert remote.read_range(shard, 5, 10) == (shards / "syn" / "train" / shard.rsplit("/", 1)[1]).read_bytes()[5:15]


def test_backoff_grows_and_is_capped():
    r = remote.Retry(attempts=6, base=0.5, max_backoff=4)
    delays = [r.delay(i) for i in range(6)]
    assert all(0.375 <= d <= 0.625 for d in delays[:1]) and 0.75 <= delays[1] <= 1.25
    assert all(d <= 5.0 for d in delays) and delays[5] >= 3.0


def test_unknown_backend_says_what_to_install(monkeypatch):
    """s3fs made unimportable (``sys.modules["s3fs"] = None``, and fsspec's registry forgets a class it already
    imported), so the message is checked whether s3fs is installed or not."""
    registry = importlib.import_module("fsspec.registry")._registry
    for proto in ("s3", "s3a"):
        monkeypatch.delitem(registry, proto, raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(ImportError, match=r"reading s3://bucket/shards/train/manifest.json needs the fsspec "
                                          r"backend for 's3://'.*pip install s3fs"):
        remote.filesystem("s3://bucket/shards/train/manifest.json")
    assert not remote.is_remote("/data/shards") and not remote.is_remote("file:///data") and remote.is_remote(
        "gs://b/x") and remote.is_remote(os.fspath("https://h/x"))


@pytest.mark.parametrize("start", [5, 0])
def test_server_that_ignores_range_is_a_permanent_error(shards, http_client, start, monkeypatch):
    """A server answering a ranged GET with 200 and the whole object: one request, then a RangeIgnoredError naming
    the URL and the reason; never a retry loop (each retry would download the whole shard again)."""
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_MAX_BACKOFF", "0.01")
    srv = RangeServer(shards)
    srv.RequestHandlerClass = NoRangeHandler
    srv.full_bodies = 0
    srv.start()
    try:
        name = read_manifest(str(shards / "syn"))["shards"][0]["name"]
        url = f"{srv.url}/syn/train/{name}"
        assert (shards / "syn" / "train" / name).stat().st_size > start + 512 * 2
        sleeps = []
        with pytest.raises(remote.RangeIgnoredError) as e:
            remote.read_range(url, start, 512, remote.Retry(attempts=5, sleep=sleeps.append))
        msg = str(e.value)
        assert url in msg and "ignored the byte range" in msg and f"bytes {start}-{start + 511}" in msg, msg
        assert not remote._transient(e.value) and isinstance(e.value, OSError)
        assert sleeps == [] and srv.full_bodies == 1, (sleeps, srv.full_bodies)  # no retry loop
        # the same through a shard file object (what the loaders read with)
        with pytest.raises(remote.RangeIgnoredError, match="ignored the byte range"):
            f = remote.RangedFile(url, remote.Retry(attempts=5, sleep=sleeps.append))
            f.seek(start)
            f.read(512)
        assert sleeps == [] and srv.full_bodies == 2
        # and through a loader: the first sample stops training (not one whole-shard download per sample, each
        # counted as a bad sample until the budget runs out)
        with pytest.raises(remote.RangeIgnoredError, match="ignored the byte range"):
            next(iter(build_train_loader(f"{srv.url}/syn", batch_size=2, **dict(OPTS, num_workers=0))))
        assert srv.full_bodies == 4  # the manifest (read whole on purpose) and one shard read
    finally:
        srv.stop()


class _WholeObjectFS:
    """An fsspec-like backend (s3fs / gcsfs ``cat_file``) that returns the whole object whatever range is asked."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def cat_file(self, path, start=None, end=None):
        self.calls += 1
        return self.data


@pytest.mark.parametrize("url", ["s3://bucket/sets/train/shard-000000.tar", "gs://bucket/sets/train/shard-000000.tar"])
def test_backend_returning_more_than_the_range_is_the_same_permanent_error(url, monkeypatch):
    fs = _WholeObjectFS(bytes(range(256)) * 8)
    monkeypatch.setattr(remote, "filesystem", lambda u: (fs, u.split("://", 1)[1]))
    sleeps = []
    with pytest.raises(remote.RangeIgnoredError, match=r"shard-000000.tar: the server ignored the byte range .*"
                                                       r"bytes 100-199, got 2048 bytes"):
        remote.read_range(url, 100, 100, remote.Retry(attempts=4, sleep=sleeps.append))
    assert fs.calls == 1 and sleeps == []
    fs.data = fs.data[:50]  # fewer bytes than asked: a short read, transient (retried)
    with pytest.raises(OSError, match="failed after 4 attempts: ConnectionError: short read: 50 of 100 bytes"):
        remote.read_range(url, 100, 100, remote.Retry(attempts=4, sleep=sleeps.append))
    assert fs.calls == 5 and len(sleeps) == 3


SECRET = "s3cr3tSIGvalue"
SIGNED_QUERY = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA{SECRET}%2F20261206%2Fus-east-1&X-Amz-Date="
                f"20261206T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={SECRET}")


def _all_text(exc):
    """Everything a traceback of ``exc`` prints (the chained exceptions included)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize("fault", ["404", "503", "403", "norange"])
def test_errors_of_signed_urls_carry_no_secret(shards, server, http_client, fault, monkeypatch):
    name = read_manifest(str(shards / "syn"))["shards"][0]["name"]
    path = "/syn/train/" + ("missing.tar" if fault == "404" else name)
    url = f"{server.url}{path}?{SIGNED_QUERY}"
    if fault in ("503", "403"):
        server.fail_next = [fault] * 3
    if fault == "norange":
        server.RequestHandlerClass = NoRangeHandler
        server.full_bodies = 0
    with pytest.raises(OSError) as e:
        remote.read_range(url, 5, 10, remote.Retry(attempts=3, max_backoff=0.01))
    text = _all_text(e.value)
    assert SECRET not in text, text
    assert path in str(e.value) and "X-Amz-Signature=REDACTED" in str(e.value), str(e.value)  # still names the object


def test_credentials_in_the_url_reach_no_message_or_status(shards, server, http_client, caplog, tmp_path):
    """``http://user:password@host/...``: the shard-set errors, the loader's bad-sample warnings and the ``error`` of
    ``status.json`` (what a failed run records) name the URL without the password."""
    from vit_adapter_ds.data.manifest import ShardSetError
    from vit_adapter_ds.engine.status import read_status, recorded

    base = server.url.replace("http://", f"http://reader:{SECRET}@")
    with pytest.raises(ShardSetError) as e:  # no such shard set
        read_manifest(f"{base}/nothing-here")
    assert SECRET not in _all_text(e.value) and "reader" not in str(e.value)
    assert "127.0.0.1" in str(e.value) and "/nothing-here" in str(e.value), str(e.value)
    with pytest.raises(ShardSetError), recorded(tmp_path):
        read_manifest(f"{base}/nothing-here")
    status = (tmp_path / "status.json").read_text()
    assert read_status(tmp_path)["state"] == "failed" and "/nothing-here" in status and SECRET not in status, status
    loader = build_train_loader(f"{base}/syn", batch_size=2, max_bad_fraction=1.0, **OPTS)
    server.fail_next = [("403", "GET", ".tar")] * 2  # two bad samples, warned about
    with caplog.at_level("WARNING"):
        next(iter(loader))
    assert not server.fail_next and "skipped bad sample" in caplog.text and SECRET not in caplog.text, caplog.text
    assert "403" in caplog.text and "/syn/train/shard-" in caplog.text, caplog.text  # the reason and the object


# ------------------------------------------------------------------------------------------------ s3:// (moto)
# moto's S3 server (in this process, on 127.0.0.1) holds a copy of the shard sets; s3fs reads them through a
# logging proxy in front of it, so the test sees every request (and its Range header) and can inject faults.
BUCKET = "vit-adapter-ds-shards"
S3_503 = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
          b'<Message>injected by the test</Message></Error>')


class ProxyServer(LoggingServer):
    """Forwards every request to ``upstream`` (host, port) as it is, logging it (and its ``Range``)."""

    def __init__(self, upstream):
        super().__init__(ProxyHandler)
        self.upstream = upstream


class ProxyHandler(FaultyHandler):
    ERROR_BODY, ERROR_TYPE = S3_503, "application/xml"
    HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "date", "server"}

    def _forward(self):
        if self.injected_fault():
            return
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body,
                         headers={k: v for k, v in self.headers.items() if k.lower() not in self.HOP})
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in self.HOP:
                self.send_header(k, v)
        length = r.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        self.logged(0 if self.command == "HEAD" else len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


@pytest.fixture(scope="module")
def det_shards(shards):
    """A small detection shard set (COCO layout) next to the segmentation ones: ``det/train``."""
    from vit_adapter_ds.data.make_shards import write_coco
    from vit_adapter_ds.data.synthetic import write_synthetic_coco

    root = shards / "coco_raw"
    write_synthetic_coco(str(root), 6, 2, seed=1, size=(64, 80))
    write_coco(str(root), str(shards / "det" / "train"), "train", num_workers=1, progress=False, max_samples=3)
    return shards / "det"


@pytest.fixture(scope="module")
def moto_s3(shards, det_shards):
    """moto's S3 server with the bucket holding ``syn/`` and ``det/`` under the prefix ``sets/``; yields its
    (host, port). Uploaded with boto3 straight to moto (not through the proxy)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for sub in ("syn", "det"):
        for f in sorted((shards / sub).rglob("*")):
            if f.is_file():
                s3.put_object(Bucket=BUCKET, Key=f"sets/{f.relative_to(shards).as_posix()}", Body=f.read_bytes())
    yield host, port
    server.stop()


@pytest.fixture()
def s3(moto_s3, monkeypatch):
    """A logging, fault-injecting proxy in front of moto; the storage options (per protocol, as a user sets them)
    point s3fs at it. botocore's own retries are off, so a failed request is retried by ``remote.Retry``; its
    backoff delays are recorded in ``proxy.delays``."""
    proxy = ProxyServer(moto_s3).start()
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_MAX_BACKOFF", "0.05")
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS", json.dumps({"s3": {
        "endpoint_url": proxy.url, "key": "testing", "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": {"retries": {"total_max_attempts": 1}}}}))
    proxy.delays = []
    delay = remote.Retry.delay
    monkeypatch.setattr(remote.Retry, "delay", lambda self, a: proxy.delays.append(a) or delay(self, a))
    yield proxy
    proxy.stop()


def _s3_shard_gets(proxy):
    return [r for r in proxy.log if r[0] == "GET" and r[1].split("?")[0].endswith(".tar")]


def test_s3_train_loader_streams_ranged_reads_like_local_and_resumes(shards, s3):
    url = f"s3://{BUCKET}/sets/syn"
    m = read_manifest(url)
    assert m["shard_dir"] == f"{url}/train" and m["num_samples"] == 12
    total = sum(s["bytes"] for s in m["shards"])
    local = build_train_loader(str(shards / "syn"), batch_size=2, **OPTS)
    loader = build_train_loader(url, batch_size=2, **OPTS)
    lit, it = iter(local), iter(loader)
    _same_batches(next(it), next(lit))
    gets = _s3_shard_gets(s3)
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets), gets  # every shard read is ranged
    assert sum(r[3] for r in gets) < total / 3  # one batch of 2 samples: a fraction of the shard bytes
    _same_batches(next(it), next(lit))
    state = loader.state_dict()
    assert state == local.state_dict() and state["samples_consumed_in_epoch"] == 4
    resumed = build_train_loader(url, batch_size=2, num_workers=1, **OPTS)  # a forked worker opens its own client
    resumed.load_state_dict(state)
    rit = iter(resumed)
    for _ in range(5):  # the rest of the epoch and into the next one
        _same_batches(next(rit), next(lit))
    assert resumed.state_dict() == local.state_dict()
    assert not s3.delays  # nothing failed, nothing retried


def test_s3_transient_errors_are_retried_with_backoff(shards, s3):
    local = next(iter(build_train_loader(str(shards / "syn"), batch_size=2, **OPTS)))
    s3.fail_next = [("503", "GET", "train/manifest.json")] * 2  # reading the manifest fails twice
    loader = build_train_loader(f"s3://{BUCKET}/sets/syn", batch_size=2, **OPTS)
    assert not s3.fail_next and s3.delays == [0, 1]  # retried twice by remote.Retry, the second wait doubled
    # the next shard reads: a 503 (retried by remote.Retry) and a connection closed without a response (s3fs
    # retries that one itself)
    s3.fail_next = [("503", "GET", ".tar"), ("drop", "GET", ".tar")]
    _same_batches(next(iter(loader)), local)
    # outcomes, not request counts (a dropped keep-alive connection may be re-opened without reaching the server,
    # and s3fs may retry it itself): both faults were met, the batch is the local one, and the 503 of the shard read
    # was retried by remote.Retry from its first backoff (s3fs does not retry a 503 ServiceUnavailable)
    assert not s3.fail_next and s3.delays[:3] == [0, 1, 0], s3.delays
    before = list(s3.delays)
    with pytest.raises(FileNotFoundError, match="missing.tar"):  # a missing object: no retry
        remote.read_range(f"s3://{BUCKET}/sets/syn/train/missing.tar", 0, 10)
    assert s3.delays == before


def test_s3_detection_loader_streams_like_local(det_shards, s3):
    from vit_adapter_ds.data.detection import DetectionTrainLoader

    kw = dict(batch_size=2, transform_kw=DET_SMALL, seed=3)
    local = DetectionTrainLoader(str(det_shards / "train"), **kw)
    loader = DetectionTrainLoader(f"s3://{BUCKET}/sets/det/train", **kw)
    assert loader.num_samples == local.num_samples > 0
    _same_det(next(loader), next(local))
    gets = _s3_shard_gets(s3)
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets), gets
    state = loader.state_dict()
    assert state == local.state_dict()
    resumed = DetectionTrainLoader(f"s3://{BUCKET}/sets/det/train", **kw)
    resumed.load_state_dict(state)
    _same_det(next(resumed), next(local))


def test_s3_recipe_data_section_streams_from_the_bucket(shards, s3):
    """The recipe's ``data.train.shard_dir`` as an ``s3://`` URL: the task's train loader (what the engine
    builds) gives the batches of the same recipe on the local copy."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.tasks import task_for

    def first_batch(shard_dir):
        cfg = load_recipe("synthetic_quickstart", [f"data.train.shard_dir={shard_dir}", "data.samples_per_gpu=2",
                                                   "data.workers_per_gpu=0"])
        return next(iter(task_for(cfg).build_train_loader(rank=1, world_size=2, seed=5)))

    _same_batches(first_batch(f"s3://{BUCKET}/sets/syn/train"), first_batch(str(shards / "syn" / "train")))
    assert _s3_shard_gets(s3)


def test_s3_epoch_based_detection_recipe_is_converted_from_the_remote_manifest(det_shards, s3, monkeypatch,
                                                                              tmp_path):
    """An ``EpochBasedRunner`` detection recipe whose train shards are in a bucket is converted to iterations from
    the remote set's length (2 ranks x 1 image per step), as for local shards."""
    from vit_adapter_ds.tasks import load_and_validate

    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = tmp_path / "epochs.py"
    recipe.write_text(f"_base_ = [{str(DETECTION_RECIPES['synthetic_mask_rcnn'])!r}]\n"
                      "runner = dict(_delete_=True, type='EpochBasedRunner', max_epochs=3)\n")
    opts = ["data.samples_per_gpu=1", "data.workers_per_gpu=0", "evaluation.interval=1"]
    got = {}
    for name, where in (("s3", f"s3://{BUCKET}/sets/det/train"), ("local", str(det_shards / "train"))):
        cfg, _, _ = load_and_validate(str(recipe), [f"data.train.shard_dir={where}", *opts])
        got[name] = (dict(cfg["_epoch_conversion"]), dict(cfg["runner"]), cfg["lr_config"]["step"])
    assert got["s3"] == got["local"]
    from vit_adapter_ds.data.detection import DetectionTrainLoader

    per_epoch = -(-DetectionTrainLoader(str(det_shards / "train"), batch_size=1).num_samples // 2)
    assert got["s3"][0] == {"max_epochs": 3, "iters_per_epoch": per_epoch} and per_epoch >= 2
    assert got["s3"][1]["max_iters"] == 3 * per_epoch


DET_SMALL = dict(scales=((96, 160), (128, 160)), crop_scales=((64, 160), (80, 160)), crop_range=(48, 96),
                 final_crop=(128, 128))


def _same_det(a, b):
    assert a["meta"]["keys"] == b["meta"]["keys"]
    assert torch.equal(a["img"], b["img"])
    for ta, tb in zip(a["targets"], b["targets"]):
        assert ta.keys() == tb.keys()
        for k in ta:
            assert (torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k]), k


# ------------------------------------------------------------------------------------------------ gs:// (gcsfs)
# A minimal GCS JSON-API emulator: just what gcsfs calls to read (object metadata, listing, media download with
# Range), serving the files under the shards folder as the objects of one bucket.
GCS_BUCKET = "vit-adapter-ds-gcs"


class GcsEmulator(LoggingServer):
    def __init__(self, root, bucket):
        super().__init__(GcsHandler)
        self.root, self.bucket = Path(root), bucket

    def objects(self):
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def resource(self, name):
        p = self.root / name
        return {"kind": "storage#object", "bucket": self.bucket, "name": name, "size": str(p.stat().st_size),
                "generation": "1", "metageneration": "1", "contentType": "application/octet-stream",
                "updated": "2026-12-01T00:00:00.000Z", "timeCreated": "2026-12-01T00:00:00.000Z"}


class GcsHandler(FaultyHandler):
    ERROR_BODY, ERROR_TYPE = b'{"error": {"code": 503, "message": "injected by the test"}}', "application/json"

    def _send(self, status, body, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.logged(len(body))
        self.wfile.write(body)

    def _json(self, obj, status=200):
        self._send(status, json.dumps(obj).encode())

    def do_GET(self):
        if self.injected_fault():
            return
        srv = self.server
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        parts = u.path.split("/")  # ['', ('download',) 'storage', 'v1', 'b', bucket, 'o', object]
        if parts[1] == "download":
            parts = parts[1:]
        if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 5 or parts[4] != srv.bucket:
            return self._json({"error": {"code": 404, "message": "Not Found"}}, 404)
        if len(parts) == 5:  # the bucket
            return self._json({"kind": "storage#bucket", "name": srv.bucket})
        if len(parts) == 6 and parts[5] == "o":  # listing
            prefix, delim = q.get("prefix", ""), q.get("delimiter")
            items, prefixes = [], set()
            for name in srv.objects():
                if not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if delim and delim in rest:
                    prefixes.add(prefix + rest.split(delim, 1)[0] + delim)
                else:
                    items.append(srv.resource(name))
            return self._json({"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)})
        name = urllib.parse.unquote("/".join(parts[6:]))
        path = srv.root / name
        if not path.is_file():
            return self._json({"error": {"code": 404, "message": f"No such object: {srv.bucket}/{name}"}}, 404)
        if q.get("alt") != "media":
            return self._json(srv.resource(name))
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if not rng:
            return self._send(200, data, "application/octet-stream")
        start, end = rng.split("=", 1)[1].split("-")
        start, end = int(start), (int(end) if end else len(data) - 1)
        body = data[start:end + 1]
        self._send(206, body, "application/octet-stream",
                   [("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")])


@pytest.fixture()
def gcs(shards, monkeypatch):
    """The emulator, and gcsfs pointed at it (``endpoint_url``, anonymous). gcsfs's default class
    (``ExtendedGcsFileSystem``, ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``) first asks the Storage Control API over
    gRPC for the bucket type, which an emulator does not serve (a 60 s retry per read); its plain
    ``GCSFileSystem`` is what that class uses for ordinary buckets anyway."""
    import gcsfs.core

    registry = importlib.import_module("fsspec.registry")._registry  # (fsspec.registry is a read-only view)
    monkeypatch.setitem(registry, "gs", gcsfs.core.GCSFileSystem)
    monkeypatch.setitem(registry, "gcs", gcsfs.core.GCSFileSystem)
    emu = GcsEmulator(shards, GCS_BUCKET).start()
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS", json.dumps({"gs": {"endpoint_url": emu.url, "token": "anon"}}))
    yield emu
    emu.stop()


def test_gs_loaders_stream_ranged_reads_like_local(shards, gcs):
    url = f"gs://{GCS_BUCKET}/syn"
    m = read_manifest(url)
    assert m["shard_dir"] == f"{url}/train" and m["num_samples"] == 12
    total = sum(s["bytes"] for s in m["shards"])
    local, loader = (build_train_loader(d, batch_size=2, **OPTS) for d in (str(shards / "syn"), url))
    lit, it = iter(local), iter(loader)
    _same_batches(next(it), next(lit))
    gets = [r for r in gcs.log if r[1].split("?")[0].endswith(".tar") and "alt=media" in r[1]]
    assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets), gets  # every shard read is ranged
    assert sum(r[3] for r in gets) < total / 3
    # a transient error: retried (by gcsfs itself or by remote.Retry: only the outcome is checked)
    gcs.fail_next = [("503", "GET", ".tar")]
    _same_batches(next(it), next(lit))
    assert not gcs.fail_next and loader.state_dict() == local.state_dict()
    remote_val = list(build_val_loader(url, split="val", num_classes=8))
    local_val = list(build_val_loader(str(shards / "syn"), split="val", num_classes=8))
    assert len(remote_val) == len(local_val) == 4
    for x, y in zip(remote_val, local_val):
        _same_batches(x, y)


def test_storage_options_for_every_or_each_protocol(monkeypatch):
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS", '{"anon": true}')
    assert remote.storage_options("s3") == remote.storage_options("gs") == {"anon": True}
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS",
                       '{"s3": {"endpoint_url": "http://m:9000"}, "GS": {"token": "anon"}}')
    assert remote.storage_options("s3") == remote.storage_options("s3a") == {"endpoint_url": "http://m:9000"}
    assert remote.storage_options("gcs") == {"token": "anon"} and remote.storage_options("https") == {}
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS", '{"s3": {"a": 1}, "anon": true}')  # mixed: options as given
    assert remote.storage_options("gs") == {"s3": {"a": 1}, "anon": True}
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS", "{anon: true}")
    with pytest.raises(ValueError, match="VIT_ADAPTER_DS_REMOTE_OPTIONS is not valid JSON"):
        remote.storage_options("s3")
    monkeypatch.setenv("VIT_ADAPTER_DS_REMOTE_OPTIONS", "[1]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        remote.storage_options("s3")
