"""Soft-NMS (mmcv semantics, used by the HTC++ test config) against hand-computed decays."""
from __future__ import annotations

import math

import pytest
import torch

from vit_adapter_ds.models.detectors.soft_nms import batched_soft_nms, soft_nms

# A and B overlap with IoU 90 / 110; C is far away
BOXES = torch.tensor([[0., 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
SCORES = torch.tensor([0.9, 0.8, 0.7])
IOU_AB = 90 / 110


def test_linear_decay_hand_computed():
    keep, s = soft_nms(BOXES, SCORES, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7, 0.8 * (1 - IOU_AB)]))


def test_linear_below_threshold_is_untouched():
    keep, s = soft_nms(BOXES, SCORES, iou_threshold=0.9, method="linear")
    assert keep.tolist() == [0, 1, 2]
    torch.testing.assert_close(s, SCORES)


def test_gaussian_decay_hand_computed():
    keep, s = soft_nms(BOXES, SCORES, sigma=0.5, method="gaussian")
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(s, torch.tensor([0.9, 0.7, 0.8 * math.exp(-IOU_AB ** 2 / 0.5)]))


def test_naive_is_hard_nms_and_min_score_drops():
    keep, s = soft_nms(BOXES, SCORES, iou_threshold=0.5, method="naive")
    assert keep.tolist() == [0, 2]
    keep, _ = soft_nms(BOXES, SCORES, iou_threshold=0.3, min_score=0.2, method="linear")
    assert keep.tolist() == [0, 2]  # B decays to 0.145 < 0.2


def test_batched_by_class_and_empty():
    keep, s = batched_soft_nms(BOXES, SCORES, torch.tensor([0, 1, 0]), iou_threshold=0.3)
    assert keep.tolist() == [0, 1, 2]  # A and B are different classes: no decay
    torch.testing.assert_close(s, SCORES)
    keep, s = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and s.shape == (0,)
    with pytest.raises(ValueError, match="method"):
        soft_nms(BOXES, SCORES, method="cubic")


def test_min_score_applies_after_decay_only():
    keep, s = soft_nms(torch.tensor([[0., 0, 1, 1]]), torch.tensor([0.0005]), min_score=1e-3)
    assert keep.tolist() == [0]  # mmcv keeps an undecayed box whatever its score
