"""``launch/demo.py`` (``vit_adapter_ds/apis/demo.py``) on a folder and on a short generated video, with the tiny
quickstart segmentor and Mask R-CNN (seeded random weights saved as checkpoints): the files written equal the Python
API's results for the same pixels; a folder run skips and lists unreadable files, resumes (an image whose files all
exist is not redone; a leftover temporary file from a killed run is not taken as done); a single unreadable file,
a missing checkpoint and a detection flag on a segmentation recipe end with one error line and status 2."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from launching import REPO, env

DEMO = REPO / "launch" / "demo.py"
pytestmark = pytest.mark.filterwarnings("ignore:no checkpoint given")


def _checkpoint(tmp_path_factory, recipe, name):
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.engine.trainer import seed_everything
    from vit_adapter_ds.tasks import task_for

    seed_everything(0)
    model = task_for(load_recipe(recipe)).build_model(load_pretrained=False)
    path = tmp_path_factory.mktemp(name) / "model.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory, None, "seg")


@pytest.fixture(scope="module")
def det_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory, "synthetic_mask_rcnn", "det")


def _demo(*args, check=True):
    """``launch/demo.py ARGS`` as a command (its own process)."""
    res = subprocess.run([sys.executable, str(DEMO), "--no-progress", *map(str, args)], capture_output=True,
                         text=True, env=env(), timeout=300)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture
def demo(capsys):
    """The same command line run in this process (``cli(argv)``: exit status, stdout, stderr), to save start-ups."""
    from types import SimpleNamespace

    from vit_adapter_ds.apis.demo import cli

    def run(*args, check=True):
        try:
            code = cli(["--no-progress", *map(str, args)])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        out = capsys.readouterr()
        if check:
            assert code == 0, out.err[-3000:]
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def _folder(root):
    rng = np.random.default_rng(0)
    pics = {"a.png": (48, 64), "b.jpg": (40, 40), "a.jpg": (33, 50), "sub/c.png": (60, 30)}
    for name, (h, w) in pics.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name, quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image")
    return pics


def test_folder_run_writes_api_results_skips_unreadable_and_resumes(tmp_path, seg_ckpt, demo):
    from vit_adapter_ds.apis import init_model, load_rgb

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _folder(src)
    run = _demo("--checkpoint", seg_ckpt, "--input", src, "--out", out, "--recursive")
    assert "4 images written" in run.stdout and "1 unreadable" in run.stdout and "broken.png" in run.stdout
    assert [u["file"] for u in json.loads((out / "skipped.json").read_text())] == [str(src / "broken.png")]
    # two images with the stem "a" keep their suffix; sub-folders are kept
    stems = {"a_png": "a.png", "a_jpg": "a.jpg", "b": "b.jpg", "sub/c": "sub/c.png"}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(
        [f"{s}.png" for s in stems] + [f"{s}_overlay.png" for s in stems])
    model = init_model(None, seg_ckpt, device="cpu")
    for stem, name in stems.items():
        res = model(src / name)
        assert np.array_equal(np.asarray(Image.open(out / f"{stem}.png")), res.label_map), stem
        assert np.array_equal(np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB")),
                              model.draw(load_rgb(src / name), res)), stem

    # resumable: nothing redone; one output removed -> that image alone; a killed run's temporary file is not done
    again = demo("--checkpoint", seg_ckpt, "--input", src, "--out", out, "--recursive")
    assert "0 images written to" in again.stdout and "4 already done" in again.stdout
    (out / "b_overlay.png").unlink()
    (out / ".b_overlay.123.tmp.png").write_bytes(b"half")
    again = demo("--checkpoint", seg_ckpt, "--input", src, "--out", out, "--recursive")
    assert "1 images written" in again.stdout and "3 already done" in again.stdout
    assert (out / "b_overlay.png").is_file()


def test_video_gives_an_annotated_video_and_per_frame_results(tmp_path, seg_ckpt, det_ckpt, demo):
    import cv2

    from vit_adapter_ds.apis import init_model

    video = tmp_path / "clip.avi"
    sink = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (80, 48))
    for i in range(5):
        frame = np.full((48, 80, 3), 30, np.uint8)
        frame[10:30, 8 * i:8 * i + 24] = (40, 40, 220)
        sink.write(frame)
    sink.release()
    # the reference: the frames as OpenCV decodes them, through the API
    cap, frames = cv2.VideoCapture(str(video)), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    assert len(frames) == 5

    out = tmp_path / "seg"
    run = _demo("--checkpoint", seg_ckpt, "--input", video, "--out", out)
    assert "5 frames" in run.stdout
    model = init_model(None, seg_ckpt, device="cpu")
    labels = sorted((out / "clip_labels").glob("*.png"))
    assert len(labels) == 5
    for frame, png in zip(frames, labels):
        assert np.array_equal(np.asarray(Image.open(png)), model(frame).label_map), png
    cap = cv2.VideoCapture(str(out / "clip_demo.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 80 and int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 48
    assert not list(out.glob(".*tmp*"))

    out = tmp_path / "det"
    demo("--config", "synthetic_mask_rcnn", "--checkpoint", det_ckpt, "--input", video, "--out", out,
          "--score-thr", "0.0")
    lines = [json.loads(x) for x in (out / "clip_frames.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(5))
    det = init_model("synthetic_mask_rcnn", det_ckpt, device="cpu", score_thr=0.0)
    want = det(frames[2])
    got = lines[2]["detections"]
    assert len(got) == len(want) and got[0]["score"] == pytest.approx(float(want.scores[0]), abs=1e-6)


def test_errors_are_one_line_with_status_2(tmp_path, seg_ckpt, demo):
    (tmp_path / "bad.png").write_bytes(b"nope")
    res = demo("--checkpoint", seg_ckpt, "--input", tmp_path / "bad.png", "--out", tmp_path / "o", check=False)
    assert res.returncode == 2 and "error:" in res.stderr and "bad.png: not a readable image" in res.stderr
    res = demo("--checkpoint", tmp_path / "none.pth", "--input", tmp_path, "--out", tmp_path / "o", check=False)
    assert res.returncode == 2 and "none.pth" in res.stderr and "Traceback" not in res.stderr
    res = demo("--checkpoint", seg_ckpt, "--input", tmp_path, "--out", tmp_path / "o", "--score-thr", "0.5",
                check=False)
    assert res.returncode == 2 and "--score-thr: detection recipes only" in res.stderr
    res = demo("--input", tmp_path, "--out", tmp_path / "o", check=False)
    assert res.returncode == 2 and "--checkpoint is required" in res.stderr


def test_web_serves_every_model_given(monkeypatch, seg_ckpt, det_ckpt, demo):
    """``--web`` with ``--add-model``: the page offers each model by its recipe's name; each is built lazily by the
    page (the callables build the Predictor of that recipe and checkpoint); a recipe error stops before serving."""
    import vit_adapter_ds.apis.web as web

    served = {}
    monkeypatch.setattr(web, "serve", lambda models, host, port, allowed_hosts: served.update(
        models=models, host=host, port=port, allowed_hosts=allowed_hosts))
    demo("--checkpoint", seg_ckpt, "--web", "--port", "7999", "--add-model", "synthetic_mask_rcnn", det_ckpt,
         "--add-model", "synthetic_quickstart", seg_ckpt)
    assert list(served["models"]) == ["synthetic_quickstart", "synthetic_mask_rcnn", "synthetic_quickstart (3)"]
    assert (served["host"], served["port"], served["allowed_hosts"]) == ("127.0.0.1", 7999, None)
    built = served["models"]["synthetic_mask_rcnn"]()
    assert built.task_name == "object_detection" and str(built.checkpoint) == str(det_ckpt)
    res = demo("--checkpoint", seg_ckpt, "--web", "--add-model", "no_such_recipe", det_ckpt, check=False)
    assert res.returncode == 2 and "no_such_recipe" in res.stderr
    res = demo("--checkpoint", seg_ckpt, "--input", ".", "--out", "o", "--add-model", "x", "y", check=False)
    assert res.returncode == 2 and "--add-model: only with --web" in res.stderr
    demo("--checkpoint", seg_ckpt, "--web", "--allow-host", "demo.internal", "--allow-host", "gpu-box")
    assert served["allowed_hosts"] == ["demo.internal", "gpu-box"]
    res = demo("--checkpoint", seg_ckpt, "--input", ".", "--out", "o", "--allow-host", "x", check=False)
    assert res.returncode == 2 and "--allow-host: only with --web" in res.stderr
