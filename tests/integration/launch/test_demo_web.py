"""The demo page (``vit_adapter_ds.apis.web``, ``launch/demo.py --web``) in a real browser, and its HTTP endpoint.

The browser tests drive Debian's headless chromium with Selenium (``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
from apt, named explicitly, so Selenium Manager never looks for or downloads a driver): upload a PNG the test writes,
run the tiny quickstart segmentor or the tiny Mask R-CNN (random weights, seeded), and compare what the page shows --
the overlay picture (as decoded by the browser) and the legend -- with ``Predictor.draw`` / ``Predictor.legend``
computed here. Without chromium, chromedriver or selenium those tests skip, which under ``VIT_ADAPTER_DS_STRICT=1``
(CI, ``tests/conftest.py``) is a failure. The endpoint's error answers are checked with urllib, without a browser.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.apis import init_model, load_rgb
from vit_adapter_ds.apis.web import host_name, is_loopback, make_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SEG = "quickstart segmentor"
DET = 'tiny Mask R-CNN <random> & "weights"'   # model names are data: the page must escape them
UPLOAD_LIMIT = 2 * 1024 * 1024
# class names are data as well: one that would run a script if the page inserted names as HTML
XSS = ' <img src=x onerror="document.title=\'xss\'"> & "q"'


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def predictors():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the API warns
        seg = init_model(None, None, device="cpu")
        det = init_model("synthetic_mask_rcnn", None, device="cpu")
    seg.image_predictor.classes = [name + XSS for name in seg.image_predictor.classes]
    return {SEG: seg, DET: det}


def _start(models, **kw):
    srv = make_server(models, quiet=True, **kw)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    return srv, thread


def _stop(srv, thread):
    srv.shutdown()
    srv.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def server(predictors):
    """The page's server on a free port of 127.0.0.1, its models built on first use (``server.built`` counts)."""
    built = {name: 0 for name in predictors}

    def factory(name):
        def make():
            built[name] += 1
            return predictors[name]
        return make

    srv, thread = _start({name: factory(name) for name in predictors}, max_upload=UPLOAD_LIMIT)
    srv.built = built
    yield srv
    _stop(srv, thread)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e "
                                                                 "'.[web-test]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--no-first-run"):
        options.add_argument(arg)
    # the driver's path is given: Selenium Manager is not run (nothing is looked up or downloaded)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _synthetic_png(path, width=101, height=77, seed=0):
    """A PNG with a textured background and a few coloured shapes; an odd size (not the model's input size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    img = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.int64)
    img += rng.integers(-20, 20, img.shape)
    img[(xx - 30) ** 2 + (yy - 35) ** 2 < 15 ** 2] = (200, 40, 40)
    img[10:40, 60:95] = (40, 170, 60)
    img[50:70, 55:90] = (40, 60, 200)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    broken = d / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    huge = d / "huge.png"  # over the server's upload limit
    huge.write_bytes(os.urandom(UPLOAD_LIMIT + 300_000))
    return {"photo": _synthetic_png(d / "photo.png"), "other": _synthetic_png(d / "other.png", 64, 90, seed=1),
            "broken": broken, "huge": huge}


# ---------------------------------------------------------------------- driving the page
def _body(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body")


def _submit(driver, model, path=None, timeout=40):
    """Pick ``model``, choose the file ``path`` (None: none), click Run; wait for the page's answer: its state."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    runs = int(_body(driver).get_attribute("data-runs"))
    Select(driver.find_element(By.ID, "model")).select_by_visible_text(model)
    if path is not None:
        driver.find_element(By.ID, "file").send_keys(str(path))
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, timeout).until(lambda d: int(_body(d).get_attribute("data-runs")) > runs)
    return _body(driver).get_attribute("data-state")


def _decode_png_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,"), url[:60]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def _check_rendered(driver, predictor, path):
    """The page shows ``predictor``'s picture and legend of the image at ``path``, as computed in this process."""
    from selenium.webdriver.common.by import By

    rgb = load_rgb(path)
    result = predictor(rgb)
    expected = predictor.draw(rgb, result)
    legend = predictor.legend(result)

    img = driver.find_element(By.ID, "overlay")
    assert img.is_displayed()
    natural = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert natural == [rgb.shape[1], rgb.shape[0]]
    sent = _decode_png_data_url(img.get_attribute("src"))
    assert sent.shape == expected.shape and np.array_equal(sent, expected)
    # what the browser decoded and shows: the <img> drawn on a canvas, read back (PNG, lossless)
    shown = _decode_png_data_url(driver.execute_script(
        "const i = arguments[0], c = document.createElement('canvas');"
        "c.width = i.naturalWidth; c.height = i.naturalHeight;"
        "c.getContext('2d').drawImage(i, 0, 0); return c.toDataURL('image/png');", img))
    assert np.array_equal(shown, expected)

    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#legend li.class')).map((li) => ["
        "li.querySelector('.name').textContent, getComputedStyle(li.querySelector('.swatch')).backgroundColor,"
        "li.querySelector('.count').textContent, li.querySelectorAll('img, b, script').length])")
    got = [(name, [int(v) for v in re.findall(r"\d+", colour)[:3]], int(count.split()[0]), tags)
           for name, colour, count, tags in rows]
    assert got == [(e["name"], e["color"], e["count"], 0) for e in legend]
    assert driver.title == "ViT-Adapter demo"   # no inserted markup ran
    return legend


# ---------------------------------------------------------------------- the page in a browser
def test_page_shows_the_segmentation_overlay_and_legend(server, predictors, browser, images):
    browser.get(server.url)
    names = [o.text for o in browser.find_elements("css selector", "#model option")]
    assert names == [SEG, DET]
    assert _submit(browser, SEG, images["photo"]) == "done"
    legend = _check_rendered(browser, predictors[SEG], images["photo"])
    assert legend and all(e["name"].endswith(XSS) for e in legend)
    assert "101 \u00d7 77 px" in browser.find_element("id", "meta").text
    # the same page again, another image: the new result replaces the old one
    assert _submit(browser, SEG, images["other"]) == "done"
    _check_rendered(browser, predictors[SEG], images["other"])
    assert server.built[SEG] == 1


def test_page_runs_the_detector_and_shows_errors(server, predictors, browser, images):
    browser.get(server.url)
    assert _submit(browser, DET, images["photo"]) == "done"
    legend = _check_rendered(browser, predictors[DET], images["photo"])
    assert legend, "the seeded random detector finds nothing above its score threshold: pick another seed"
    assert server.built[DET] == 1

    error = browser.find_element("id", "error")
    assert _submit(browser, DET, images["broken"]) == "error"
    assert error.is_displayed() and not browser.find_element("id", "result").is_displayed()
    assert error.text.startswith("Error 400") and "broken.png: not a readable image" in error.text
    assert _submit(browser, SEG, images["huge"]) == "error"
    assert error.text.startswith("Error 413") and "upload limit is 2 MiB" in error.text
    # the page works again after errors
    assert _submit(browser, SEG, images["photo"]) == "done"
    assert not error.is_displayed()
    _check_rendered(browser, predictors[SEG], images["photo"])


def test_page_without_a_file_says_so(server, browser):
    browser.get(server.url)
    assert _submit(browser, SEG) == "error"
    assert browser.find_element("id", "error").text == "Error 400 (Bad Request): no image: choose an image file"


# ---------------------------------------------------------------------- the endpoint without a browser
def _request(url, data=None, content_type="image/png", method=None):
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_predict_endpoint_answers_json(server, predictors, images):
    status, headers, body = _request(server.url + "predict?model=" + urllib.request.quote(SEG),
                                     images["photo"].read_bytes())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    out = json.loads(body)
    seg = predictors[SEG]
    rgb = load_rgb(images["photo"])
    result = seg(rgb)
    assert (out["model"], out["task"], out["width"], out["height"]) == (SEG, "semantic_segmentation", 101, 77)
    assert np.array_equal(_decode_png_data_url(out["image"]), seg.draw(rgb, result))
    assert out["legend"] == seg.legend(result)


@pytest.mark.parametrize("case, status, message", [
    ("no file", 400, "no image: choose an image file"),
    ("corrupt", 400, "scan.png: not a readable image"),
    ("truncated", 400, "the upload: not a readable image (OSError"),
    ("unknown model", 400, "unknown model 'nope'; the models: quickstart segmentor, tiny Mask R-CNN"),
    ("no model", 400, "no model chosen"),
    ("too large", 413, "upload limit is 2 MiB"),
    ("multipart", 415, "not a multipart form"),
    ("GET /predict", 405, "POST the image"),
    ("other path", 404, "no page '/nope' here"),
])
def test_predict_endpoint_errors(server, images, case, status, message):
    png = images["photo"].read_bytes()
    seg = "predict?model=" + urllib.request.quote(SEG)
    url, data, ctype, method = {
        "no file": (seg, b"", "application/octet-stream", "POST"),
        "corrupt": (seg + "&name=scan.png", images["broken"].read_bytes(), "image/png", None),
        "truncated": (seg, png[:len(png) // 2], "image/png", None),
        "unknown model": ("predict?model=nope", png, "image/png", None),
        "no model": ("predict", png, "image/png", None),
        "too large": (seg, images["huge"].read_bytes(), "image/png", None),
        "multipart": (seg, b"--b\r\n\r\n--b--\r\n", "multipart/form-data; boundary=b", None),
        "GET /predict": ("predict", None, "", None),
        "other path": ("nope", None, "", None),
    }[case]
    got, headers, body = _request(server.url + url, data, ctype, method)
    assert got == status and headers["Content-Type"].startswith("application/json")
    out = json.loads(body)
    assert out["status"] == status and message in out["error"], out


class _Fake:
    """Duck-typed Predictor for the server's own behaviour (no model)."""

    task_name = "fake"

    def __init__(self, fail=None):
        self.fail = fail

    def __call__(self, rgb):
        if self.fail:
            raise self.fail
        return None

    def draw(self, rgb, result):
        return rgb

    def legend(self, result):
        return []


def test_internal_errors_are_500_with_the_message_and_no_traceback(images, capsys):
    calls = []

    def broken_model():
        calls.append(1)
        raise FileNotFoundError("work_dirs/run: no checkpoint <here>")

    srv, thread = _start({"bug": lambda: _Fake(RuntimeError("shape mismatch <x>")), "missing": broken_model})
    try:
        png = images["photo"].read_bytes()
        status, _, body = _request(srv.url + "predict?model=bug", png)
        assert status == 500 and json.loads(body)["error"] == "RuntimeError: shape mismatch <x>"
        assert b"Traceback" not in body
        for attempt in (1, 2):  # a failed build is not kept: the next request tries again
            status, _, body = _request(srv.url + "predict?model=missing", png)
            assert status == 500 and b"Traceback" not in body
            assert json.loads(body)["error"] == ("model 'missing' could not be loaded: FileNotFoundError: "
                                                 "work_dirs/run: no checkpoint <here>")
            assert len(calls) == attempt
    finally:
        _stop(srv, thread)
    assert "Traceback" in capsys.readouterr().err   # the server's stderr has it


def test_models_are_built_on_first_use_once_and_the_page_escapes_names(images):
    calls = []

    def slow_model():
        calls.append(1)
        time.sleep(0.5)
        return _Fake()

    srv, thread = _start({"slow": slow_model, "<script>alert(1)</script>": _Fake})
    try:
        assert srv.server_address[0] == "127.0.0.1"   # this machine only, by default
        status, headers, page = _request(srv.url)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"<script>alert(1)</script>" not in page and b"&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert calls == []   # nothing built for the page
        png = images["photo"].read_bytes()
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_request(srv.url + "predict?model=slow", png)))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert [a[0] for a in answers] == [200] * 6 and len(calls) == 1
        assert json.loads(answers[0][2])["legend"] == []
    finally:
        _stop(srv, thread)


def _serve_in_a_child(port, sigint):
    """``serve`` in a new Python process whose SIGINT is ``sigint`` from its start: ``"terminal"`` (what a command
    typed in a terminal gets: Python's KeyboardInterrupt) or ``"ignored"`` (a background job of a script, ``nohup``).
    Set explicitly, because the child would otherwise inherit the test process's own disposition: a suite started
    in the background has SIGINT ignored, and Python keeps an ignored SIGINT ignored (a fresh-clone run started with
    ``nohup .ci/run &`` failed here that way: SIGINT never arrived)."""
    handler = {"terminal": "signal.default_int_handler", "ignored": "signal.SIG_IGN"}[sigint]
    code = (f"import signal\nsignal.signal(signal.SIGINT, {handler})\n"
            "from vit_adapter_ds.apis.web import serve\n"
            f"serve({{'m': lambda: None}}, port={port})\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_serve_prints_the_url_and_stops_on_ctrl_c(free_port):
    port = free_port()
    proc = _serve_in_a_child(port, "terminal")
    try:
        line = proc.stdout.readline()
        assert line == f"Serving the demo page on http://127.0.0.1:{port}/ (models: m); Ctrl-C to stop\n", line
        status, _, page = _request(f"http://127.0.0.1:{port}/")
        assert status == 200 and b'<option value="m">m</option>' in page
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "stopped", (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_sigint_ignored_says_to_stop_it_with_kill(free_port):
    """Started where SIGINT is ignored, "Ctrl-C to stop" would be false: the line names ``kill PID``, and a SIGINT
    indeed leaves the page served; SIGTERM (what ``kill`` sends) ends it."""
    port = free_port()
    proc = _serve_in_a_child(port, "ignored")
    try:
        line = proc.stdout.readline()
        assert line == (f"Serving the demo page on http://127.0.0.1:{port}/ (models: m); stop it with kill {proc.pid} "
                        "(Ctrl-C is ignored in this process)\n"), line
        proc.send_signal(signal.SIGINT)
        status, _, page = _request(f"http://127.0.0.1:{port}/")
        assert status == 200 and b'<option value="m">m</option>' in page and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGTERM and out == "", (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- the Host header (DNS rebinding)
def _get_with_host(srv, host, path="/models", method="GET", body=None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_a_loopback_server_answers_only_requests_for_this_machine(images):
    srv, thread = _start({"m": _Fake})
    port = srv.server_address[1]
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "localhost.", None):
            status, body = _get_with_host(srv, host)
            assert status == 200 and json.loads(body)["models"] == ["m"], (host, body)
        png = images["photo"].read_bytes()
        for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1.nip.io:{port}", "localhost.evil",
                     f"10.0.0.5:{port}", ""):
            for method, path, body in (("GET", "/", None), ("GET", "/models", None),
                                       ("POST", "/predict?model=m", png)):
                status, answer = _get_with_host(srv, host, path, method, body)
                out = json.loads(answer)
                assert status == 403 and out["status"] == 403, (host, method, path, status)
                assert f"not for Host {host!r}" in out["error"] and srv.url in out["error"], out
    finally:
        _stop(srv, thread)
    # named hosts replace the default list (e.g. a reverse proxy's name)
    srv, thread = _start({"m": _Fake}, allowed_hosts=["demo.internal"])
    try:
        assert _get_with_host(srv, "demo.internal:443")[0] == 200
        assert _get_with_host(srv, f"localhost:{srv.server_address[1]}")[0] == 403
    finally:
        _stop(srv, thread)


def test_a_server_on_a_network_address_answers_any_host():
    srv, thread = _start({"m": _Fake}, host="0.0.0.0")
    try:
        assert srv.allowed_hosts is None
        assert _get_with_host(srv, "gpu-box.lab:7860")[0] == 200
    finally:
        _stop(srv, thread)


def test_host_names_and_loopback_addresses():
    assert [host_name(h) for h in ("[::1]:7860", "LocalHost:80", "example.org.", "::1", "127.0.0.1", " a:1 ")] == [
        "::1", "localhost", "example.org", "::1", "127.0.0.1", "a"]
    assert [is_loopback(a) for a in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "::", "10.1.2.3",
                                     "example.org")] == [True, True, True, True, False, False, False, False]
