"""Test-time resize rules against the official transforms run on real arrays with mmcv (keep-ratio ``Resize`` +
``ResizeToMultiple``; ViT-Adapter's ``SETR_Resize`` written out from segmentation/mmseg_custom/datasets/pipelines/
transform.py with ``mmcv.imrescale``), and their use by ``EncoderDecoder.aug_test`` and ``evaluate``."""
from __future__ import annotations

import mmcv
import numpy as np
import pytest
import torch
from torch import nn

from vit_adapter_ds.evaluation.evaluator import evaluate
from vit_adapter_ds.models.heads import FCNHead
from vit_adapter_ds.models.segmentor import EncoderDecoder
from vit_adapter_ds.models.test_time_resize import (KeepRatioResize, SETRResize, build_test_resize,
                                                    scales_from_ratios, select_test_resize)

RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # the official ADE20K multi-scale ratios
SIZES = [(512, 683), (683, 512), (640, 640), (375, 500), (256, 1000), (2000, 300), (481, 1337), (97, 131),
         (1024, 768), (333, 334)]


def official_multi_scale_flip_aug_scales(img_scale, img_ratios):
    """mmseg 0.x MultiScaleFlipAug, mode 'a scale and a range of image ratios'."""
    return [(int(img_scale[0] * ratio), int(img_scale[1] * ratio)) for ratio in img_ratios]


def official_setr_resize(img: np.ndarray, scale, crop_size) -> tuple[int, int]:
    """SETR_Resize(keep_ratio=True, crop_size, setr_multi_scale=True)._resize_img, as in the official file."""
    if min(scale) < crop_size[0]:
        new_short = crop_size[0]
    else:
        new_short = min(scale)
    h, w = img.shape[:2]
    if h > w:
        new_h, new_w = new_short * h / w, new_short
    else:
        new_h, new_w = new_short, new_short * w / h
    out = mmcv.imrescale(img, (new_h, new_w))
    return out.shape[:2]


def official_resize_keep_ratio_to_multiple(img: np.ndarray, scale, size_divisor) -> tuple[int, int]:
    """mmseg Resize(keep_ratio=True) then ResizeToMultiple(size_divisor)."""
    img = mmcv.imrescale(img, scale)
    img = mmcv.imresize_to_multiple(img, size_divisor, scale_factor=1)
    return img.shape[:2]


def test_multi_scale_flip_aug_scales():
    assert scales_from_ratios((2048, 640), RATIOS) == official_multi_scale_flip_aug_scales((2048, 640), RATIOS)
    assert scales_from_ratios((2048, 640), [0.5, 0.75]) == [(1024, 320), (1536, 480)]


@pytest.mark.parametrize("size", SIZES)
def test_keep_ratio_resize_matches_mmcv(size):
    img = np.zeros((*size, 3), np.uint8)
    rule = KeepRatioResize(32)
    for scale in official_multi_scale_flip_aug_scales((2048, 512), RATIOS) + [(2048, 640), (3584, 896)]:
        assert rule(*size, scale) == official_resize_keep_ratio_to_multiple(img, scale, 32), (size, scale)


@pytest.mark.parametrize("size", SIZES)
def test_setr_resize_matches_the_official_transform(size):
    img = np.zeros((*size, 3), np.uint8)
    rule = SETRResize((640, 640))
    for scale in official_multi_scale_flip_aug_scales((2048, 640), RATIOS):
        assert rule(*size, scale) == official_setr_resize(img, scale, (640, 640)), (size, scale)


def test_setr_resize_hand_values():
    rule = SETRResize((640, 640))
    # ADE-like 512x683: ratios 0.5 and 0.75 give scales (1024, 320) / (1536, 480), whose short sides are below the
    # crop: both become short side 640 (683 * 640 / 512 = 853.75 -> 854), not 320 / 480.
    assert rule(512, 683, (1024, 320)) == (640, 854)
    assert rule(512, 683, (1536, 480)) == (640, 854)
    # ratio 1.75: (3584, 1120): short side 1120, long side uncapped and not rounded to a multiple of 32
    assert rule(512, 683, (3584, 1120)) == (1120, 1494)
    # a very wide image keeps its aspect ratio with no long-edge cap (keep-ratio Resize would cap it at 2048)
    assert rule(256, 1000, (2048, 640)) == (640, 2500)
    assert KeepRatioResize(32)(256, 1000, (2048, 640)) == (544, 2048)


def test_build_and_select_rules():
    assert isinstance(build_test_resize(None, 32), KeepRatioResize)
    assert build_test_resize(dict(type="Resize", keep_ratio=True), 32).size_divisor == 32
    setr = build_test_resize(dict(type="SETR_Resize", keep_ratio=True, crop_size=(640, 640), setr_multi_scale=True))
    assert isinstance(setr, SETRResize) and setr.crop_size == (640, 640)
    ms = dict(type="SETR_Resize", crop_size=(640, 640))
    assert isinstance(select_test_resize(32, ms, multi_scale=True), SETRResize)
    assert isinstance(select_test_resize(32, ms, multi_scale=False), KeepRatioResize)
    for bad, match in [(dict(type="SETR_Resize"), "crop_size"), (dict(type="Pad"), "not supported"),
                       (dict(type="Resize", keep_ratio=False), "keep_ratio"),
                       (dict(type="SETR_Resize", crop_size=640, scale=3), "unknown keys"), ("SETR", "dict")]:
        with pytest.raises(ValueError, match=match):
            build_test_resize(bad, 32)


class _RecordingBackbone(nn.Module):
    """Records the input sizes it sees; 4 stride-1 maps (whole-image inference works at any size)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        y = self.proj(x)
        return [y, y, y, y]


def _recording_model():
    torch.manual_seed(0)
    head = FCNHead(4, 4, num_classes=3, in_index=0, kernel_size=1)
    return EncoderDecoder(_RecordingBackbone(), head, num_classes=3).eval()


def test_aug_test_infers_at_the_rule_sizes():
    model = _recording_model()
    img = torch.randn(1, 3, 51, 68)
    scales = scales_from_ratios((204, 64), [0.5, 1.0, 1.5])  # (102, 32), (204, 64), (306, 96)
    out = model.aug_test(img, scales=scales, flip=True, resize_rule=SETRResize((64, 64)))
    assert out.shape == (1, 3, 51, 68)
    expected = [official_setr_resize(np.zeros((51, 68, 3), np.uint8), s, (64, 64)) for s in scales]
    assert model.backbone.sizes == [e for e in expected for _ in range(2)]  # each scale plain + flipped
    assert expected[0] == expected[1] == (64, 85)
    with pytest.raises(ValueError, match="not both"):
        model.aug_test(img, scales=scales, resize_rule=SETRResize(64), size_divisor=32)


def test_evaluate_uses_the_recipe_multi_scale_rule_only_for_multi_scale():
    model = _recording_model()
    loader = [{"img": torch.randn(1, 3, 51, 68), "gt_semantic_seg": torch.zeros(1, 51, 68, dtype=torch.long)}]
    ms = dict(type="SETR_Resize", crop_size=(64, 64))
    evaluate(model, loader, 3, mode="whole", img_scale=(204, 64), size_divisor=32, ms_resize=ms,
             aug=dict(ratios=[0.5, 1.0], flip=False))
    assert model.backbone.sizes == [(64, 85), (64, 85)]
    model.backbone.sizes.clear()
    evaluate(model, loader, 3, mode="whole", img_scale=(204, 64), size_divisor=32, ms_resize=ms)
    assert model.backbone.sizes == [(64, 96)]  # single scale: Resize keep_ratio (64, 85) + ResizeToMultiple(32)
