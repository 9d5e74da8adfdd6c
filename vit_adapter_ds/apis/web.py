"""A local web page to try models in a browser: upload an image, pick a model, see the classes drawn over it.

Standard library only (``http.server.ThreadingHTTPServer``); the models are the inference API's
:class:`~vit_adapter_ds.apis.inference.Predictor`. What ``launch/demo.py --web`` calls::

    from vit_adapter_ds.apis.web import serve
    serve({"my_run": lambda: Predictor("recipe", "work_dirs/run", device="cpu")}, host="127.0.0.1", port=7860)

``serve(models, host="127.0.0.1", port=7860, *, max_upload=MAX_UPLOAD, allowed_hosts=None) -> None`` prints the
page's URL and serves until Ctrl-C (SIGINT). A process started with SIGINT ignored (a background job of a script,
``nohup``) is not stopped by Ctrl-C: the printed line then says to stop it with ``kill PID`` instead. ``models``
maps the names shown in the page's model list to zero-argument callables that build a ``Predictor`` (an already
built ``Predictor`` is taken as it is). A model is built on its first request, once even when several requests for
it arrive together, and kept; a build that fails answers 500 with its message and is tried again on the next
request. Requests for one model run one at a time; different models run side by side. :func:`make_server` returns
the server without serving (tests: ``threading.Thread(target=srv.serve_forever)``, ``srv.url``, ``srv.shutdown()``;
``port=0`` picks a free port).

The address defaults to ``127.0.0.1``, this machine only: there is no authentication, so serve on another address
(``0.0.0.0``) only on a network you trust. Bound to a loopback address, the server answers only requests whose
``Host`` names this machine (``localhost``, ``127.0.0.1``, ``[::1]``, any port): another site cannot reach it through
a DNS name that it re-points to 127.0.0.1 (DNS rebinding); any other ``Host`` gets 403. ``allowed_hosts`` (names,
without the port) replaces that list; bound to another address, every ``Host`` is answered unless it is given.

HTTP interface (what the page uses; also usable with ``curl``):

* ``GET /``: the page (one HTML document, inline CSS and JavaScript, nothing fetched from elsewhere);
* ``GET /models``: ``{"models": [names], "max_upload": bytes}``;
* ``POST /predict?model=NAME[&name=FILENAME]`` with the image file's bytes as the body (any format PIL reads;
  ``curl --data-binary @street.jpg 'http://127.0.0.1:7860/predict?model=NAME'``); ``model`` may be left out when
  there is one model. Answers ``{"model", "task", "width", "height", "image": "data:image/png;base64,...",
  "legend": [{"id", "name", "count", "color": [r, g, b]}], "seconds"}``: ``image`` is ``Predictor.draw`` of the
  upload at its own size, ``legend`` is ``Predictor.legend`` (classes by pixels / detections, most first).

Errors are JSON ``{"error": message, "status": code, "reason": phrase}`` with that HTTP status: 400 for no image, an
unreadable image (the :class:`~vit_adapter_ds.data.user_images.ImageError` message) or an unknown model; 411 for an
upload without a length; 413 for an upload over ``max_upload`` (32 MiB by default); 415 for a multipart form (send
the file's bytes); 403 for a ``Host`` not allowed (above); 404 / 405 for other paths and methods; 500 for anything
else (its message; the traceback goes to the server's stderr only). The page shows the status and the message.
"""
from __future__ import annotations

import base64
import html
import io
import ipaddress
import json
import os
import signal
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..data.user_images import ImageError, load_rgb

MAX_UPLOAD = 32 * 1024 * 1024
# an upload over the limit is still read (and dropped) up to this many times the limit before the answer, so that the
# browser gets the 413 instead of a reset connection; a larger one gets the answer and a closed connection
_DRAIN_FACTOR = 4
# the Host names a server bound to a loopback address answers (module docstring)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{round(n, 2):g} {unit}"
        n /= 1024
    return ""


class HTTPError(Exception):
    """An answer other than 200: ``status`` and the message shown to the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


class _Models:
    """The named models: built on first use (once, under the model's lock), then kept; used one request at a time."""

    def __init__(self, models: dict):
        from .inference import Predictor

        if not isinstance(models, dict) or not models:
            raise ValueError("models: a non-empty dict of name -> zero-argument callable returning a Predictor")
        self._factories, self._built = {}, {}
        for name, make in models.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"model names must be non-empty strings, not {name!r}")
            if isinstance(make, Predictor):
                self._built[name] = make
            elif not callable(make):
                raise TypeError(f"model {name!r}: expected a zero-argument callable returning a Predictor")
            self._factories[name] = make
        self._locks = {name: threading.Lock() for name in self._factories}

    @property
    def names(self) -> list[str]:
        return list(self._factories)

    def resolve(self, name: str | None) -> str:
        if name is None or name == "":
            if len(self._factories) == 1:
                return self.names[0]
            raise HTTPError(400, f"no model chosen; the models: {', '.join(self.names)}")
        if name not in self._factories:
            raise HTTPError(400, f"unknown model {name!r}; the models: {', '.join(self.names)}")
        return name

    def run(self, name: str, fn):
        """``fn(predictor)`` of model ``name`` (built first if needed), under the model's lock."""
        with self._locks[name]:
            if name not in self._built:
                try:
                    self._built[name] = self._factories[name]()
                except Exception as err:
                    traceback.print_exc(file=sys.stderr)
                    raise HTTPError(500, f"model {name!r} could not be loaded: {type(err).__name__}: {err}") from None
            return fn(self._built[name])


def _decode_upload(data: bytes, filename: str) -> np.ndarray:
    """The uploaded file's bytes as (H, W, 3) uint8 RGB, with :func:`load_rgb`'s rules (EXIF orientation)."""
    from PIL import Image, UnidentifiedImageError

    try:
        pic = Image.open(io.BytesIO(data))
        pic.load()
        return np.array(load_rgb(pic))  # a writable copy: PIL's pixels are read-only, drawing may take them as a tensor
    except ImageError as e:
        raise ImageError(f"{filename}: {e}") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{filename}: image too large to run a model on ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{filename}: not a readable image (not a format PIL knows, or damaged)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{filename}: not a readable image ({type(e).__name__}: {e})") from None


def _png_data_url(picture: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8), "RGB").save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def predict_payload(predictor, rgb: np.ndarray) -> dict:
    """What ``/predict`` answers for one image (without the model's name and the time)."""
    result = predictor(rgb)
    picture = predictor.draw(rgb, result)
    legend = [{"id": int(e["id"]), "name": str(e["name"]), "count": int(e["count"]),
               "color": [int(c) for c in e["color"]]} for e in predictor.legend(result)]
    return {"task": str(predictor.task_name), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
            "image": _png_data_url(picture), "legend": legend}


class _Handler(BaseHTTPRequestHandler):
    server: "DemoServer"
    server_version = "vit-adapter-ds-demo"

    # ------------------------------------------------------------------ answers
    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, status: int, obj: dict, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8", extra)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._json(status, {"error": message, "status": status, "reason": HTTPStatus(status).phrase}, extra)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if not self.server.quiet:
            super().log_message(format, *args)

    def _host_refused(self) -> bool:
        """Answer 403 (and say True) when the request's ``Host`` is not one the server answers (module docstring)."""
        allowed = self.server.allowed_hosts
        host = self.headers.get("Host")
        if allowed is None or host is None:  # (a request without Host comes from no browser: HTTP/1.0 tools)
            return False
        name = host_name(host)
        if name in allowed:
            return False
        self.close_connection = True
        self._error(403, f"this page answers requests for {', '.join(sorted(allowed))}, not for Host {host!r} "
                         "(a page of another site reaching it through its own DNS name is refused); open "
                         f"{self.server.url}")
        return True

    # ------------------------------------------------------------------ routes
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self._host_refused():
            return
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8",
                       {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                                   "script-src 'unsafe-inline'; connect-src 'self'"})
        elif path == "/models":
            self._json(200, {"models": self.server.models.names, "max_upload": self.server.max_upload})
        elif path == "/predict":
            self._error(405, "POST the image's bytes to /predict?model=NAME", {"Allow": "POST"})
        else:
            self._error(404, f"no page {path!r} here (the page is /)")

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        if self._host_refused():
            return
        url = urlsplit(self.path)
        if url.path != "/predict":
            self._error(404, f"no endpoint {url.path!r} here (POST /predict)")
            return
        try:
            self._json(200, self._predict(parse_qs(url.query)))
        except HTTPError as e:
            self._error(e.status, str(e))
        except ImageError as e:
            self._error(400, str(e))
        except Exception as e:  # the message, never the traceback (which goes to the server's stderr)
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"{type(e).__name__}: {e}")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise HTTPError(411, "send the image with a Content-Length (not chunked)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "send the image with a Content-Length")
        try:
            length = int(length)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise HTTPError(400, "bad Content-Length")
        limit = self.server.max_upload
        if length > limit:
            self.close_connection = True
            if length <= _DRAIN_FACTOR * limit:  # read it, so that the client sees the answer (not a reset)
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise HTTPError(413, f"the image is {_size(length)}; the upload limit is {_size(limit)}")
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            self.close_connection = True
            raise HTTPError(400, f"the upload ended after {len(data)} of {length} bytes")
        return data

    def _predict(self, query: dict) -> dict:
        data = self._read_body()  # first: an answer sent before the body is read may reach the browser as a reset
        if self.headers.get("Content-Type", "").lower().startswith("multipart/"):
            raise HTTPError(415, "send the image file's bytes as the request body, not a multipart form "
                                 "(curl --data-binary @image.jpg)")
        model = self.server.models.resolve(query.get("model", [None])[0])
        filename = query.get("name", ["the upload"])[0] or "the upload"
        if not data:
            raise HTTPError(400, "no image: choose an image file")
        rgb = _decode_upload(data, filename)
        start = time.perf_counter()
        payload = self.server.models.run(model, lambda p: predict_payload(p, rgb))
        return {"model": model, **payload, "seconds": round(time.perf_counter() - start, 3)}


class DemoServer(ThreadingHTTPServer):
    """The page's server: ``url``, ``models`` (the lazily built predictors), ``max_upload`` (bytes)."""

    daemon_threads = True

    def __init__(self, address, models: dict, max_upload: int = MAX_UPLOAD, quiet: bool = False,
                 allowed_hosts=None):
        self.models = _Models(models)
        if allowed_hosts is not None:
            self.allowed_hosts = frozenset(host_name(h) for h in allowed_hosts)
        elif is_loopback(address[0]):
            self.allowed_hosts = LOOPBACK_NAMES
        else:
            self.allowed_hosts = None  # served on a network address: whatever name the clients use for it
        self.max_upload = int(max_upload)
        self.quiet = quiet
        self.page = render_page(self.models.names, self.max_upload).encode("utf-8")
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"


def host_name(host: str) -> str:
    """The name of a ``Host`` header or an address, without its port and brackets, lower case:
    ``"[::1]:7860"`` -> ``"::1"``, ``"LocalHost:80"`` -> ``"localhost"``, ``"example.org."`` -> ``"example.org"``."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_loopback(address: str) -> bool:
    """Whether an address or host name is this machine only: ``localhost`` or a loopback IP (127.0.0.0/8, ::1)."""
    name = host_name(address)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def make_server(models: dict, host: str = "127.0.0.1", port: int = 0, *, max_upload: int = MAX_UPLOAD,
                quiet: bool = False, allowed_hosts=None) -> DemoServer:
    """The page's server bound to ``host:port`` (``port=0``: a free one, see ``server.url``), not yet serving; see
    the module docstring for ``models`` and ``allowed_hosts``. ``quiet``: no request log on stderr."""
    return DemoServer((host, int(port)), models, max_upload=max_upload, quiet=quiet, allowed_hosts=allowed_hosts)


def serve(models: dict, host: str = "127.0.0.1", port: int = 7860, *, max_upload: int = MAX_UPLOAD,
          allowed_hosts=None) -> None:
    """Serve the page on ``host:port`` until Ctrl-C, after printing its URL (see the module docstring)."""
    server = make_server(models, host, port, max_upload=max_upload, allowed_hosts=allowed_hosts)
    print(f"Serving the demo page on {server.url} (models: {', '.join(server.models.names)}); {stop_hint()}",
          flush=True)
    if not is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page (no login)",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


def stop_hint() -> str:
    """How to stop this process: ``"Ctrl-C to stop"``, or, when SIGINT is ignored here (started as a background job
    of a script or under ``nohup``: the shell ignores SIGINT for those and Python keeps it ignored, so Ctrl-C never
    arrives), ``"stop it with kill PID (Ctrl-C is ignored in this process)"``."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return f"stop it with kill {os.getpid()} (Ctrl-C is ignored in this process)"
    return "Ctrl-C to stop"


# ---------------------------------------------------------------------- the page
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ViT-Adapter demo</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
form { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; margin-bottom: 1rem; }
#error { color: #a00; background: #fee; border: 1px solid #d99; padding: .5rem .75rem; white-space: pre-wrap; }
#status { color: #555; min-height: 1.2em; }
#result { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
#overlay { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
#legend { list-style: none; padding: 0; margin: 0; }
#legend li { display: flex; align-items: center; gap: .5rem; margin: .2rem 0; }
.swatch { display: inline-block; width: 1.1rem; height: 1.1rem; border: 1px solid #444; flex: none; }
.count { color: #666; font-size: .9em; }
[hidden] { display: none !important; }
</style>
</head>
<body data-state="idle" data-runs="0">
<h1>ViT-Adapter demo</h1>
<form id="form">
  <label>Image <input id="file" type="file" accept="image/*"></label>
  <span class="count">(up to __MAX_SIZE__)</span>
  <label>Model <select id="model">__OPTIONS__</select></label>
  <button id="run" type="submit">Run</button>
</form>
<p id="status" aria-live="polite"></p>
<div id="error" role="alert" hidden></div>
<div id="result" hidden>
  <figure><img id="overlay" alt="the model's classes drawn over the image"><figcaption id="meta"></figcaption></figure>
  <ul id="legend"></ul>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let runs = 0;

function finish(state) {
  runs += 1;
  document.body.dataset.state = state;
  document.body.dataset.runs = String(runs);
  $("run").disabled = false;
}

function showError(text) {
  $("status").textContent = "";
  $("error").textContent = text;
  $("error").hidden = false;
  finish("error");
}

function showResult(data) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const entry of data.legend) {
    const li = document.createElement("li");
    li.className = "class";
    li.dataset.classId = String(entry.id);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = entry.color.map((c) => Number(c) | 0);
    swatch.style.backgroundColor = "rgb(" + r + ", " + g + ", " + b + ")";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.name;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = String(entry.count) + (data.task.indexOf("detection") >= 0 ? " detected" : " px");
    li.append(swatch, name, count);
    legend.append(li);
  }
  if (!data.legend.length) {
    const li = document.createElement("li");
    li.textContent = "nothing found";
    legend.append(li);
  }
  $("meta").textContent = data.model + " (" + data.task + "): " + data.width + " \\u00d7 " + data.height +
    " px, " + data.seconds + " s";
  const img = $("overlay");
  img.onload = () => { $("status").textContent = "Done."; $("result").hidden = false; finish("done"); };
  img.onerror = () => showError("The result picture could not be shown.");
  img.src = data.image;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  const model = $("model").value;
  document.body.dataset.state = "busy";
  $("run").disabled = true;
  $("error").hidden = true;
  $("result").hidden = true;
  $("overlay").removeAttribute("src");
  $("status").textContent = "Running " + model + "\\u2026";
  let url = "predict?model=" + encodeURIComponent(model);
  if (file) url += "&name=" + encodeURIComponent(file.name);
  let response;
  try {
    response = await fetch(url, {method: "POST", body: file || new Blob([]),
                                 headers: {"Content-Type": (file && file.type) || "application/octet-stream"}});
  } catch (err) {
    showError("Could not reach the server: " + err.message);
    return;
  }
  let data;
  try {
    data = await response.json();
  } catch (err) {
    data = {error: "the answer was not JSON"};
  }
  if (!response.ok) {
    showError("Error " + response.status + (data.reason ? " (" + data.reason + ")" : "") + ": " + data.error);
    return;
  }
  showResult(data);
});
</script>
</body>
</html>
"""


def render_page(names, max_upload: int = MAX_UPLOAD) -> str:
    """The page's HTML with the model list (names escaped: they are data)."""
    options = "".join(f'<option value="{html.escape(n, quote=True)}">{html.escape(n)}</option>' for n in names)
    return _PAGE.replace("__OPTIONS__", options).replace("__MAX_SIZE__", _size(max_upload))
