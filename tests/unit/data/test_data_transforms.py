"""Training transforms against hand-computed cases and against mmseg/mmcv's own implementations (same draws)."""
import importlib
import os
import sys
import types

import numpy as np
import pytest
import torch

from vit_adapter_ds.data import transforms as T


class _ScriptedRng:
    """Returns scripted values in order; records which method was called."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def _next(self, name):
        self.calls.append(name)
        return self.values.pop(0)

    def random(self):
        return self._next("random")

    def integers(self, lo, hi=None):
        return self._next("integers")

    def uniform(self, lo, hi):
        return self._next("uniform")


class _GlobalNumpyAdapter:
    """Our rng interface over a numpy RandomState, drawing exactly like mmseg's np.random calls."""

    def __init__(self, rs):
        self.rs = rs

    def random(self):
        return self.rs.random_sample()

    def integers(self, lo, hi=None):
        return self.rs.randint(lo, hi)

    def uniform(self, lo, hi):
        return self.rs.uniform(lo, hi)


def _mmseg_transforms():
    """mmseg's RandomCrop / PhotoMetricDistortion and mmcv's RandomResize without mmseg.datasets' __init__ (which
    needs mmcv._ext); the temporary package stubs are removed again."""
    try:
        import mmseg
        from mmcv.transforms import RandomResize
    except ImportError:
        return None
    before = {k for k in sys.modules if k.startswith("mmseg.datasets")}
    saved = {k: sys.modules[k] for k in before}
    base = os.path.join(os.path.dirname(mmseg.__file__), "datasets")
    try:
        for name, path in (("mmseg.datasets", base), ("mmseg.datasets.transforms", os.path.join(base, "transforms"))):
            if name not in sys.modules:
                pkg = types.ModuleType(name)
                pkg.__path__ = [path]
                sys.modules[name] = pkg
        mod = importlib.import_module("mmseg.datasets.transforms.transforms")
        return mod.RandomCrop, mod.PhotoMetricDistortion, RandomResize
    except Exception:
        return None
    finally:
        for k in [k for k in sys.modules if k.startswith("mmseg.datasets")]:
            if k not in before:
                del sys.modules[k]
        sys.modules.update(saved)


MM = _mmseg_transforms()
needs_mm = pytest.mark.skipif(MM is None, reason="mmsegmentation 1.2.2 / mmcv-lite not importable")


def test_rescale_size_hand_computed():
    assert T.rescale_size(512, 683, (2048, 512)) == (512, 683)
    # f = min(1024 / 683, 256 / 512) = 0.5 -> (256, int(341.5 + 0.5) = 342)
    assert T.rescale_size(512, 683, (1024, 256)) == (256, 342)
    # long edge binds: f = min(1000 / 2000, 900 / 100) = 0.5
    assert T.rescale_size(100, 2000, (1000, 900)) == (50, 1000)


def test_random_resize_uses_the_drawn_ratio():
    img = torch.zeros(3, 64, 80, dtype=torch.uint8)
    lab = torch.zeros(64, 80, dtype=torch.uint8)
    rng = _ScriptedRng([0.5])  # ratio = 0.5 * 1.5 + 0.5 = 1.25 -> target (2560, 640) -> f = min(32, 10) = 10
    out, lo = T.random_resize(img, lab, rng, (2048, 512), (0.5, 2.0))
    assert out.shape == (3, 640, 800) and lo.shape == (640, 800)


def test_crop_cat_max_ratio_retries_ten_times():
    lab = torch.zeros(10, 10, dtype=torch.uint8)  # one class everywhere: every window fails the check
    rng = _ScriptedRng([0, 0] * 11)
    box = T.crop_bbox(lab, rng, (4, 4), 0.75)
    assert len(rng.calls) == 22 and box == (0, 4, 0, 4)  # first draw + 10 re-draws, the last one is used
    lab[:, 5:] = 1  # window (0..4, 3..7) has 2x4 of each class -> 0.5 < 0.75 accepted at once
    rng = _ScriptedRng([0, 3])
    assert T.crop_bbox(lab, rng, (4, 4), 0.75) == (0, 4, 3, 7) and len(rng.calls) == 2
    # ignore pixels are not counted: class 0 plus ignore only -> rejected
    lab2 = torch.full((10, 10), 255, dtype=torch.uint8)
    lab2[:, :5] = 0
    rng = _ScriptedRng([0, 3] * 11)
    T.crop_bbox(lab2, rng, (4, 4), 0.75)
    assert len(rng.calls) == 22
    # image smaller than the crop: offsets drawn from [0, 0]
    img, lo = T.random_crop(torch.zeros(3, 3, 5, dtype=torch.uint8), torch.zeros(3, 5, dtype=torch.uint8),
                            _ScriptedRng([0, 0] * 11), (4, 4))
    assert img.shape == (3, 3, 4) and lo.shape == (3, 4)


def test_flip_normalize_pad_hand_computed():
    img = torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3).repeat(3, 1, 1)
    lab = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.uint8)
    fi, fl = T.random_flip(img, lab, _ScriptedRng([0.2]))
    assert fl.tolist() == [[2, 1, 0], [5, 4, 3]] and fi[0].tolist() == [[2, 1, 0], [5, 4, 3]]
    fi, fl = T.random_flip(img, lab, _ScriptedRng([0.7]))
    assert fl.tolist() == lab.tolist()
    x = T.normalize(torch.tensor([[[124]], [[116]], [[104]]], dtype=torch.uint8))
    np.testing.assert_allclose(x.flatten().numpy(), [(124 - 123.675) / 58.395, (116 - 116.28) / 57.12,
                                                     (104 - 103.53) / 57.375], atol=1e-6)
    xi, xl = T.pad_to(torch.ones(3, 2, 3), lab, (4, 5))
    assert xi.shape == (3, 4, 5) and xl.shape == (4, 5)
    assert xi[:, :2, :3].eq(1).all() and xi[:, 2:].eq(0).all() and xi[:, :, 3:].eq(0).all()
    assert xl[:2, :3].tolist() == lab.tolist() and xl[2:].eq(255).all() and xl[:, 3:].eq(255).all()


def test_photometric_brightness_contrast_hand_computed():
    img = torch.tensor([[[0, 100, 250]]] * 3, dtype=torch.uint8)  # grey pixels: saturation/hue irrelevant
    # brightness yes (+10.7), mode 0, saturation no, hue no, contrast (last) yes (x2.0)
    rng = _ScriptedRng([1, 10.7, 0, 0, 0, 1, 2.0])
    out = T.photometric_distortion(img, rng)
    # 0 -> 10.7 -> 10 (truncated) -> 20; 100 -> 110 -> 220; 250 -> 255 (clipped) -> 255
    assert out[0, 0].tolist() == [20, 220, 255]
    assert rng.calls == ["integers", "uniform", "integers", "integers", "integers", "integers", "uniform"]
    # mode 1: contrast second (x0.5), brightness no: 0 -> 0, 100 -> 50, 250 -> 125
    rng = _ScriptedRng([0, 1, 1, 0.5, 0, 0])
    assert T.photometric_distortion(img, rng)[0, 0].tolist() == [0, 50, 125]


def test_hsv_against_opencv_and_hand_computed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    ref = cv2.cvtColor(np.ascontiguousarray(img.transpose(1, 2, 0)), cv2.COLOR_RGB2HSV)
    np.testing.assert_array_equal(T.rgb_to_hsv8(torch.from_numpy(img)).permute(1, 2, 0).numpy(), ref)
    hsv = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    hsv[..., 0] %= 180
    ours = T.hsv8_to_rgb(torch.from_numpy(hsv.transpose(2, 0, 1).copy())).permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(ours - cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    red = torch.tensor([[[255]], [[0]], [[0]]], dtype=torch.uint8)
    hsv = T.rgb_to_hsv8(red)
    assert hsv.flatten().tolist() == [0, 255, 255]
    hsv[0] = 60  # 120 degrees: green
    assert T.hsv8_to_rgb(hsv).flatten().tolist() == [0, 255, 0]


def test_train_transform_shapes_and_determinism():
    g = np.random.default_rng(1)
    img = torch.from_numpy(g.integers(0, 256, (3, 64, 80), dtype=np.uint8))
    lab = torch.from_numpy(g.integers(0, 8, (64, 80), dtype=np.uint8))
    a = T.train_transform(img, lab, np.random.default_rng([0, 1, 2]), (48, 48), scale=(40, 20))
    b = T.train_transform(img, lab, np.random.default_rng([0, 1, 2]), (48, 48), scale=(40, 20))
    assert a[0].shape == (3, 48, 48) and a[0].dtype == torch.float32 and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1][-1].eq(255).all() and a[0][:, -1].eq(0).all()  # height <= 40 < 48: padded (ignore / 0)
    c = T.train_transform(img, lab, np.random.default_rng([0, 1, 3]), (48, 48), scale=(40, 20))
    assert not torch.equal(a[0], c[0])


@needs_mm
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_resize_matches_mmcv(seed):
    _, _, RandomResize = MM
    g = np.random.default_rng(seed)
    img = g.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    lab = g.integers(0, 5, (48, 64), dtype=np.uint8)
    np.random.seed(seed)
    ref = RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)(
        {"img": img.copy(), "gt_seg_map": lab.copy(), "seg_fields": ["gt_seg_map"]})
    ours_i, ours_l = T.random_resize(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(lab),
                                     _GlobalNumpyAdapter(np.random.RandomState(seed)), (2048, 512), (0.5, 2.0))
    assert ours_i.shape[1:] == ref["img"].shape[:2] and ours_l.shape == ref["gt_seg_map"].shape
    diff = (ours_i.permute(1, 2, 0).int() - torch.from_numpy(ref["img"]).int()).abs()
    assert diff.float().mean() < 1.0  # OpenCV fixed-point bilinear vs float
    assert (ours_l.numpy() == ref["gt_seg_map"]).mean() > 0.97  # nearest: rare rounding differences


@needs_mm
@pytest.mark.parametrize("seed", range(6))
def test_random_crop_matches_mmseg(seed):
    RandomCrop, _, _ = MM
    g = np.random.default_rng(seed)
    lab = np.zeros((40, 50), np.uint8)  # mostly class 0 with a small blob and ignore: several re-draws
    lab[5:15, 10:22] = 3
    lab[30:, :] = 255
    img = g.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.random.seed(seed)
    ref = RandomCrop(crop_size=(16, 16), cat_max_ratio=0.75)({"img": img.copy(), "gt_seg_map": lab.copy(),
                                                             "seg_fields": ["gt_seg_map"]})
    oi, ol = T.random_crop(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(lab),
                           _GlobalNumpyAdapter(np.random.RandomState(seed)), (16, 16), 0.75)
    np.testing.assert_array_equal(ol.numpy(), ref["gt_seg_map"])
    np.testing.assert_array_equal(oi.permute(1, 2, 0).numpy(), ref["img"])


@needs_mm
@pytest.mark.parametrize("seed", range(8))
def test_photometric_distortion_matches_mmseg(seed):
    _, PMD, _ = MM
    g = np.random.default_rng(seed)
    rgb = g.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.random.seed(seed)
    ref_bgr = PMD()({"img": rgb[..., ::-1].copy()})["img"]  # mmseg works on BGR
    ours = T.photometric_distortion(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
                                    _GlobalNumpyAdapter(np.random.RandomState(seed)))
    diff = (ours.permute(1, 2, 0).int() - torch.from_numpy(ref_bgr[..., ::-1].copy()).int()).abs()
    # same draws; only the HSV->RGB rounding differs (<= 1), amplified at most by a later contrast (x1.5)
    assert diff.float().mean() < 0.05 and diff.max() <= 2, (diff.float().mean(), diff.max())
