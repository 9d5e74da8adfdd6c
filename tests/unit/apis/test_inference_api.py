"""The Python inference API (``vit_adapter_ds.apis``) on the tiny built-in recipes (seeded random weights saved as
checkpoints): every input kind and size gives the same result at the image's own size; drawing follows mmseg's
``show_result`` blend formula (computed here); detection and panoptic results are consistent with their pictures;
bad inputs, checkpoints of another recipe, unknown options and out-of-memory failures give clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore:no checkpoint given")

SIZES = [(64, 96), (17, 23), (130, 61)]


def _checkpoint(tmp_path_factory, recipe, name, cfg_options=None):
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.engine.trainer import seed_everything
    from vit_adapter_ds.tasks import task_for

    seed_everything(0)
    model = task_for(load_recipe(recipe, cfg_options)).build_model(load_pretrained=False)
    path = tmp_path_factory.mktemp(name) / "model.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    from vit_adapter_ds.apis import init_model

    ckpt = _checkpoint(tmp_path_factory, None, "seg")
    return init_model(None, ckpt, device="cpu"), ckpt


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    from vit_adapter_ds.apis import init_model

    ckpt = _checkpoint(tmp_path_factory, "synthetic_mask_rcnn", "det")
    # random heads score every box alike: keep all of them for the checks
    return init_model("synthetic_mask_rcnn", ckpt, device="cpu", score_thr=0.0), ckpt


def _image(h, w, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    rgb[h // 4:h // 2, w // 4:w // 2] = (200, 40, 40)
    return rgb


# ---------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("h,w", SIZES)
def test_segmentation_inputs_of_every_kind_give_the_same_result_at_the_image_size(seg, tmp_path, h, w):
    model, _ = seg
    rgb = _image(h, w)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    ref = model(rgb, probabilities=True)
    assert ref.label_map.shape == (h, w) and ref.label_map.dtype == np.int64
    assert ref.probabilities.shape == (len(model.classes), h, w)
    np.testing.assert_allclose(ref.probabilities.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(ref.probabilities.argmax(0), ref.label_map)
    rgba = np.concatenate([rgb, np.random.default_rng(1).integers(0, 255, (h, w, 1), dtype=np.uint8)], 2)
    for given in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(rgb), rgba, rgb.copy(order="F")):
        assert np.array_equal(model(given).label_map, ref.label_map), type(given)
    gray = rgb[:, :, 0].copy()
    assert np.array_equal(model(gray).label_map, model(np.repeat(gray[:, :, None], 3, 2)).label_map)
    # a list gives a list, in order, each at its own size
    out = model([rgb, _image(40, 50, seed=3)])
    assert [r.label_map.shape for r in out] == [(h, w), (40, 50)]
    assert np.array_equal(out[0].label_map, ref.label_map)


def test_exif_orientation_is_applied_as_the_official_demos_read_images(seg, tmp_path):
    from vit_adapter_ds.apis import load_rgb

    rgb = _image(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "r.png", exif=exif)
    upright = np.rot90(rgb, k=-1)  # what a viewer shows
    assert np.array_equal(load_rgb(tmp_path / "r.png"), upright)
    model, _ = seg
    assert model(tmp_path / "r.png").label_map.shape == (50, 30)


def test_draw_is_the_blend_of_the_palette_over_the_image(seg):
    """mmseg ``show_result(opacity=0.5)``: each pixel = 0.5 * image + 0.5 * palette[class], rounded."""
    model, _ = seg
    rgb = _image(40, 60)
    res = model(rgb)
    pal = np.asarray(model.palette, np.float64)
    want = np.clip(np.round(0.5 * rgb + 0.5 * pal[res.label_map]), 0, 255).astype(np.uint8)
    assert np.array_equal(model.draw(rgb, res), want)
    assert np.array_equal(model.draw(rgb), want)  # predicted on the way
    legend = model.legend(res)
    ids, counts = np.unique(res.label_map, return_counts=True)
    assert sorted((d["id"], d["count"]) for d in legend) == sorted(zip(ids.tolist(), counts.tolist()))
    assert all(d["name"] == model.classes[d["id"]] and d["color"] == model.palette[d["id"]] for d in legend)
    assert [d["count"] for d in legend] == sorted((d["count"] for d in legend), reverse=True)


def test_classes_come_from_the_recipes_dataset(seg):
    from vit_adapter_ds.data.catalog.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE

    model, _ = seg
    assert model.classes == list(SYNTHETIC_CLASSES) and model.palette == [list(c) for c in SYNTHETIC_PALETTE]
    assert model.task_name == "semantic_segmentation"


def test_detection_result_on_every_input_kind(det, tmp_path):
    model, _ = det
    rgb = _image(70, 93)
    Image.fromarray(rgb).save(tmp_path / "d.png")
    ref = model(rgb)
    assert len(ref) > 0 and ref.boxes.shape == (len(ref), 4) and ref.masks.shape == (len(ref), 70, 93)
    assert ref.masks.dtype == bool and np.all(np.diff(ref.scores) <= 0)
    assert np.all(ref.boxes[:, 0] >= 0) and np.all(ref.boxes[:, 2] <= 93) and np.all(ref.boxes[:, 3] <= 70)
    for given in (tmp_path / "d.png", Image.fromarray(rgb)):
        r = model(given)
        assert np.array_equal(r.boxes, ref.boxes) and np.array_equal(r.masks, ref.masks)
    thr = float(np.median(ref.scores))
    kept = ref.above(thr)
    assert len(kept) == int((ref.scores >= thr).sum()) and np.all(kept.scores >= thr)
    # drawing at a threshold above every score leaves the image as it was; at 0 it changes the boxes' pixels
    assert np.array_equal(model.draw(rgb, ref, score_thr=1.01), rgb)
    x1, y1, x2, y2 = (int(v) for v in ref.boxes[0])
    assert (model.draw(rgb, ref, score_thr=0.0)[y1:y2 + 1, x1:x2 + 1] != rgb[y1:y2 + 1, x1:x2 + 1]).any()
    assert model.task_name == "object_detection" and len(model.classes) == 7


def test_panoptic_segments_match_their_id_map(tmp_path_factory):
    from vit_adapter_ds.apis import PanopticResult, init_model

    ckpt = _checkpoint(tmp_path_factory, "synthetic_mask2former_panoptic", "pan")
    model = init_model("synthetic_mask2former_panoptic", ckpt, device="cpu",
                       cfg_options={"model.test_cfg.object_mask_thr": 0.0})
    rgb = _image(64, 80)
    res = model(rgb)
    assert isinstance(res, PanopticResult) and res.segment_ids.shape == (64, 80) and res.segments
    ids = set(np.unique(res.segment_ids).tolist()) - {0}
    assert ids == {s["id"] for s in res.segments}
    for s in res.segments:
        assert s["area"] == int((res.segment_ids == s["id"]).sum())
    assert res.instances is not None and res.instances.masks.shape[1:] == (64, 80)
    assert model.draw(rgb, res).shape == rgb.shape
    # the built-in twin is the panoptic task as it stands (its dataset: the synthetic COCO panoptic layout, 3 things
    # + 3 stuff; the names come from its shards' manifest, absent here)
    assert model.task_name == "panoptic_segmentation" and len(model.classes) == 6


# ---------------------------------------------------------------------------------------------- errors
def test_unreadable_inputs_name_the_input(seg, tmp_path):
    from vit_adapter_ds.apis import ImageError

    model, _ = seg
    with pytest.raises(ImageError, match="no such image file"):
        model(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ImageError, match=r"bad\.jpg: not a readable image"):
        model(tmp_path / "bad.jpg")
    with pytest.raises(ImageError, match="uint8"):
        model(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match=r"\(H, W, 3\)"):
        model(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        model(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ImageError, match="file path, a PIL image"):
        model(42)


def test_an_image_larger_than_the_memory_allows(seg, tmp_path, monkeypatch):
    from vit_adapter_ds.apis import ImageError, InferenceError

    model, _ = seg
    # a 20000 x 20000 PNG (400 megapixels: 1.2 GB of pixels, far more for the model) is refused before decoding
    Image.new("L", (20000, 20000)).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 2_000_000
    with pytest.raises(ImageError, match="too large"):
        model(tmp_path / "huge.png")
    # the model running out of memory (CPU allocator, CUDA) becomes a clear error naming the size
    for err in (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
                torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")):
        def boom(*a, err=err, **k):
            raise err
        monkeypatch.setattr(model.image_predictor, "predict", boom)
        with pytest.raises(InferenceError, match=r"40 x 30 pixels need more memory than cpu"):
            model(np.zeros((30, 40, 3), np.uint8))
    monkeypatch.setattr(model.image_predictor, "predict", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError, match="^x$"):  # any other error is left as it is
        model(np.zeros((30, 40, 3), np.uint8))


def test_checkpoint_of_another_recipe_and_missing_checkpoint(det, tmp_path):
    from vit_adapter_ds.apis import init_model
    from vit_adapter_ds.checkpoint.reader import CheckpointError

    _, det_ckpt = det
    with pytest.raises(CheckpointError, match="does not fit EncoderDecoder; shape mismatches: backbone.pos_embed"):
        init_model(None, det_ckpt, device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        init_model(None, tmp_path / "nope.pth", device="cpu")


def test_options_of_another_task_are_refused(seg):
    from vit_adapter_ds.apis import init_model

    _, ckpt = seg
    with pytest.raises(TypeError, match="score_thr: not an option of the semantic_segmentation task"):
        init_model(None, ckpt, device="cpu", score_thr=0.5)
    with pytest.raises(TypeError, match="mode: not an option of the object_detection task"):
        init_model("synthetic_mask_rcnn", None, device="cpu", mode="slide")


def test_test_time_settings_default_to_the_recipe_and_can_be_overridden(seg):
    from vit_adapter_ds.apis import init_model
    from vit_adapter_ds.config import load_recipe

    model, ckpt = seg
    tc = load_recipe(None).model.test_cfg
    assert model.settings()["mode"] == tc.mode and model.settings()["flip"] is False
    slide = init_model(None, ckpt, device="cpu", mode="slide", crop_size=(32, 32), stride=(24, 24), flip=True,
                       ratios=[0.5, 1.0])
    s = slide.settings()
    assert (s["mode"], s["crop_size"], s["stride"], s["flip"]) == ("slide", (32, 32), (24, 24), True)
    assert len(s["scales"]) == 2
    rgb = _image(48, 64)
    r = slide(rgb, probabilities=True)
    assert r.label_map.shape == (48, 64)
    np.testing.assert_allclose(r.probabilities.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("h,w", [(50, 70), (64, 96), (300, 120)])
def test_the_model_sees_the_recipes_test_scale(seg, monkeypatch, h, w):
    """The quickstart's test pipeline, by mmcv's rules computed here: ``Resize(img_scale=(256, 128),
    keep_ratio=True)`` scales by ``min(256 / long side, 128 / short side)`` (sizes rounded half up), then
    ``ResizeToMultiple(32)`` rounds each side up to a multiple of 32; the result comes back at the image's size."""
    import math

    model, _ = seg
    seen = []
    inner = model.model.view_probs

    def spy(x, *a, **k):
        seen.append(tuple(x.shape[-2:]))
        return inner(x, *a, **k)

    monkeypatch.setattr(model.model, "view_probs", spy)
    res = model(_image(h, w))
    f = min(256 / max(h, w), 128 / min(h, w))
    want = tuple(32 * math.ceil(int(v * f + 0.5) / 32) for v in (h, w))
    assert seen == [want] and res.label_map.shape == (h, w)
