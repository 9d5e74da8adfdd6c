"""``launch/eval.py`` and ``launch/predict.py`` with a detection recipe (Mask R-CNN + ViT-Adapter, tiny).

A detector trained for a few steps on synthetic COCO data (category ids remapped to non-contiguous COCO-style ids,
images stored as PNG so that every decoder reads the same pixels) is evaluated by the command line with 1 and 2
ranks. References, independent of the package's loaders and evaluator: the model's predictions computed here on
the raw images (normalised by hand), scored with pycocotools against the raw annotation file; the ``--out-json``
files through pycocotools' ``loadRes``; the drawn pictures against the input pixels.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import free_port
from tiny_recipes import detection_recipe
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

REPO = Path(__file__).resolve().parents[3]
IDS = [3, 8, 11, 17, 25, 40, 90]  # COCO-style category ids of the 7 synthetic classes (label i -> IDS[i])
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
TRAIN_STEPS = 20  # box AP about 0.04 after 20 steps (enough for non-trivial AP and detections)


def _env():
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _write_data(root: Path) -> Path:
    """Synthetic COCO (8 train / 4 val images of 96 x 128) with category ids ``IDS`` and PNG images, sharded."""
    from vit_adapter_ds.data.make_shards import write_coco
    from vit_adapter_ds.data.synthetic import write_synthetic_coco

    raw = root / "raw"
    write_synthetic_coco(raw, 8, 4, size=(96, 128))
    for sub in ("train2017", "val2017"):
        f = raw / "annotations" / f"instances_{sub}.json"
        d = json.loads(f.read_text())
        remap = {c["id"]: IDS[i] for i, c in enumerate(d["categories"])}
        for c in d["categories"]:
            c["id"] = remap[c["id"]]
        for a in d["annotations"]:
            a["category_id"] = remap[a["category_id"]]
        for im in d["images"]:
            jpg = raw / "images" / sub / im["file_name"]
            im["file_name"] = jpg.with_suffix(".png").name
            Image.open(jpg).convert("RGB").save(jpg.with_suffix(".png"))
            jpg.unlink()
        f.write_text(json.dumps(d))
    for split in ("train", "val"):
        write_coco(str(raw), str(root / "shards" / split), split, num_workers=1, progress=False)
    return raw


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """Shards, the recipe, a detector trained for ``TRAIN_STEPS`` (seed 0) and its checkpoint."""
    from vit_adapter_ds.tasks import load_and_validate

    root = tmp_path_factory.mktemp("det_cli")
    raw = _write_data(root)
    recipe = root / "tiny_mask_rcnn.py"
    recipe.write_text(detection_recipe(str(DETECTION_RECIPES["synthetic_mask_rcnn"]), root / "shards",
                                        loader="samples_per_gpu=2, workers_per_gpu=0, "))
    _, task, _ = load_and_validate(str(recipe))
    torch.manual_seed(0)
    model = task.build_model(load_pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batches = iter(task.build_train_loader(0, 1, seed=0))
    model.train()
    for _ in range(TRAIN_STEPS):
        loss = task.forward_loss(model, next(batches), "cpu", torch.float32)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), root / "model.pth")
    yield {"root": root, "raw": raw, "recipe": recipe, "model": model, "task": task,
           "val_images": sorted((raw / "images" / "val2017").glob("*.png"))}
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ references
def _predict(model, path):
    """The model's detections on one image file, preprocessed by hand (the test scale keeps 96 x 128; normalise;
    96 x 128 needs no padding to 32)."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    x = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)) \
        / torch.tensor(STD).view(3, 1, 1)
    assert x.shape[-2:] == (96, 128)
    with torch.no_grad():
        return rgb, model.predict(x[None], [(96, 128)], [(96, 128)])[0]


def _coco_stats(gt_file, results: dict) -> dict:
    """pycocotools directly: ``{'bbox_mAP': ..., 'segm_mAP': ...}`` (mmdet's maxDets 100 / 300 / 1000)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        for t, res in results.items():
            ev = COCOeval(gt, gt.loadRes(res), t)
            ev.params.maxDets = [100, 300, 1000]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out.update({f"{t}_{n}": float(ev.stats[i]) for i, n in enumerate(METRICS)})
    return out


def _reference_results(det) -> dict:
    from pycocotools import mask as mask_utils

    res = {"bbox": [], "segm": []}
    for path in det["val_images"]:
        image_id = int(path.stem)
        _, p = _predict(det["model"], path)
        for box, label, score, mask in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist(),
                                           p["masks"]):
            x1, y1, x2, y2 = box
            res["bbox"].append({"image_id": image_id, "category_id": IDS[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "score": score})
            rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            res["segm"].append({"image_id": image_id, "category_id": IDS[label], "segmentation": rle,
                                "score": score})
    return res


def _gt_file(det):
    return det["raw"] / "annotations" / "instances_val2017.json"


# ------------------------------------------------------------------------------------------------ eval
def test_eval_matches_pycocotools_and_out_json(det, tmp_path):
    from vit_adapter_ds.engine.eval_cli import eval_main, run_cli

    out, prefix = tmp_path / "m.json", tmp_path / "results"
    assert run_cli(eval_main, ["--config", str(det["recipe"]), "--checkpoint", str(det["root"] / "model.pth"),
                               "--out", str(out), "--out-json", str(prefix), "--num-workers", "0"]) == 0
    got = json.loads(out.read_text())
    ref = _coco_stats(_gt_file(det), _reference_results(det))
    assert ref["bbox_mAP"] > 0.005 and ref["segm_mAP"] > 0.005, ref  # non-trivial AP (measured ~0.04)
    assert got["num_images"] == 4
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-6), (k, got[k], v)
    # the COCO result files: ids mapped back to the manifest's COCO ids, loadable by pycocotools, the same AP
    files = {t: json.loads(Path(f"{prefix}.{t}.json").read_text()) for t in ("bbox", "segm")}
    assert got["results_files"] == {t: f"{prefix}.{t}.json" for t in ("bbox", "segm")}
    assert {r["category_id"] for r in files["bbox"]} <= set(IDS)
    assert {r["image_id"] for r in files["segm"]} <= {int(p.stem) for p in det["val_images"]}
    assert all(isinstance(r["segmentation"]["counts"], str) and "bbox" not in r for r in files["segm"])
    from_files = _coco_stats(_gt_file(det), files)
    assert from_files == {k: got[k] for k in from_files}


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_two_ranks_equals_one_rank(det, tmp_path):
    from vit_adapter_ds.engine.eval_cli import eval_main, run_cli

    one = tmp_path / "one.json"
    assert run_cli(eval_main, ["--config", str(det["recipe"]), "--checkpoint", str(det["root"] / "model.pth"),
                               "--out", str(one), "--num-workers", "0"]) == 0
    two = tmp_path / "two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "launch" / "eval.py"), "--config", str(det["recipe"]), "--checkpoint",
           str(det["root"] / "model.pth"), "--out", str(two), "--num-workers", "0", "--split", "test",
           "--out-json", str(tmp_path / "r2")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["num_images"] == 4  # every image once over the two ranks
    assert {k: b[k] for k in a if k.startswith(("bbox_", "segm_"))} == {k: a[k] for k in a
                                                                        if k.startswith(("bbox_", "segm_"))}
    assert len(json.loads((tmp_path / "r2.bbox.json").read_text())) == len(_reference_results(det)["bbox"])


# ------------------------------------------------------------------------------------------------ predict
def test_predict_draws_confident_detections(det, tmp_path):
    from vit_adapter_ds.engine.eval_cli import predict_main, run_cli

    preds = {p.stem: _predict(det["model"], p) for p in det["val_images"]}
    thr = _confident_threshold(preds)  # the best image has a detection at or above thr; others may have none
    out = tmp_path / "drawn"
    assert run_cli(predict_main, ["--config", str(det["recipe"]), "--checkpoint", str(det["root"] / "model.pth"),
                                  "--images", str(det["val_images"][0].parent), "--out", str(out),
                                  "--score-thr", str(thr), "--save-json"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in det["val_images"])
    _check_drawn(preds, out, thr)


def _confident_threshold(preds) -> float:
    """A score threshold that the best detection over the images reaches: some are drawn, some may not be."""
    best = max(float(p["scores"].max()) for _, p in preds.values() if len(p["scores"]))
    return round(0.9 * best, 4)


def _check_drawn(preds, out, thr):
    """The pictures and ``--save-json`` files under ``out`` against the in-process model's predictions ``preds``
    (``{stem: (rgb, prediction)}``): exactly the detections scoring ``>= thr``, each drawn inside its box; a picture
    without one equals its input."""
    drawn_any = False
    for stem, (rgb, p) in preds.items():
        pic = np.asarray(Image.open(out / f"{stem}.png"))
        assert pic.shape == rgb.shape
        keep = (p["scores"] >= thr).nonzero().flatten().tolist()
        changed = (pic != rgb).any(-1)
        if not keep:
            np.testing.assert_array_equal(pic, rgb)
        for k in keep:
            x1, y1, x2, y2 = (int(round(v)) for v in p["boxes"][k].tolist())
            assert changed[y1:y2 + 1, x1:x2 + 1].any(), (stem, k)
            drawn_any = True
        js = json.loads((out / f"{stem}.json").read_text())
        assert js["score_thr"] == thr and (js["height"], js["width"]) == rgb.shape[:2]
        assert len(js["detections"]) == len(keep), (stem, js["detections"], keep)
        for d, k in zip(js["detections"], keep):
            x1, y1, x2, y2 = p["boxes"][k].tolist()
            assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
            assert d["score"] == pytest.approx(float(p["scores"][k]), abs=1e-5)
            assert d["category_id"] == IDS[int(p["labels"][k])] and d["label"] == int(p["labels"][k])
    assert drawn_any


@pytest.mark.slow
@pytest.mark.distributed
def test_predict_two_ranks_official_checkpoint(det, tmp_path):
    """2 ranks, the checkpoint in the official mmdet layout (mmcv wrapper): each image written once, with exactly the
    in-process model's detections above a threshold that some of them reach (a model that was not loaded, or loaded
    wrongly, draws other boxes or none)."""
    from vit_adapter_ds.models.detectors.keymap import to_mmdet

    ckpt = tmp_path / "official.pth"
    torch.save({"meta": {"iter": TRAIN_STEPS}, "state_dict": to_mmdet(det["model"].state_dict())}, ckpt)
    preds = {p.stem: _predict(det["model"], p) for p in det["val_images"]}
    thr = _confident_threshold(preds)
    out = tmp_path / "drawn"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "launch" / "predict.py"), "--config", str(det["recipe"]), "--checkpoint", str(ckpt),
           "--images", *map(str, det["val_images"]), "--out", str(out), "--score-thr", str(thr), "--save-json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    for p in det["val_images"]:
        assert res.stdout.count(f"{p} -> ") == 1, res.stdout  # written once, by one rank
    _check_drawn(preds, out, thr)


# ------------------------------------------------------------------------------------------------ errors
def _error(capsys, main, argv) -> str:
    from vit_adapter_ds.engine.eval_cli import run_cli

    assert run_cli(main, argv) == 2
    return capsys.readouterr().err


def test_clear_errors(det, tmp_path, capsys):
    from vit_adapter_ds.engine.eval_cli import eval_main, predict_main

    base = ["--config", str(det["recipe"]), "--checkpoint", str(det["root"] / "model.pth"), "--num-workers", "0"]
    err = _error(capsys, eval_main, base + ["--mode", "slide", "--ratios", "0.5", "1.0"])
    assert "--mode, --ratios: segmentation recipes only" in err
    err = _error(capsys, predict_main, base[:4] + ["--images", str(tmp_path), "--out", str(tmp_path),
                                                   "--crop-size", "64", "64"])
    assert "--crop-size: segmentation recipes only" in err
    err = _error(capsys, eval_main, ["--checkpoint", "x.pth", "--out-json", "r"])  # the segmentation quickstart
    assert "--out-json: detection recipes only" in err
    err = _error(capsys, eval_main, base + ["--format-only"])
    assert "--format-only needs --out-json" in err
    err = _error(capsys, eval_main, base + ["--shards", str(tmp_path / "nowhere")])
    assert "data.val.shard_dir=" in err and "nowhere" in err
    err = _error(capsys, eval_main, base + ["--cfg-options", "data.val=None"])
    assert "the recipe has no data.val" in err and "--split test" in err
    # a checkpoint of another model: the missing and unexpected keys are named
    sd = det["model"].state_dict()
    sd.pop("neck.fpn.inner_blocks.0.0.weight")
    sd["decode_head.conv_seg.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "other.pth")
    err = _error(capsys, eval_main, ["--config", str(det["recipe"]), "--checkpoint", str(tmp_path / "other.pth")])
    assert "does not match the recipe's MaskRCNN" in err
    assert "1 key (neck.fpn.inner_blocks.0.0.weight) missing" in err and "(decode_head.conv_seg.weight)" in err
