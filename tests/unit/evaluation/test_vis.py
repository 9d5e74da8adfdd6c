"""``vit_adapter_ds.utils.vis.denormalize`` against values computed by hand."""
import numpy as np
import torch

from vit_adapter_ds.utils.vis import denormalize

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def test_denormalize_by_hand():
    # (3, H=1, W=2): pixel = x * std + mean per channel, rounded half to even, clamped to 0..255, HWC uint8
    img = torch.tensor([[[0.0, 1.0]], [[-1.0, 3.0]], [[-2.0, 0.5]]])
    # R: 123.675 -> 124, 182.07 -> 182; G: 59.16 -> 59, 287.64 -> 255 (clamp); B: -11.22 -> 0 (clamp), 132.2175 -> 132
    expected = np.array([[[124, 59, 0], [182, 255, 132]]], np.uint8)
    got = denormalize(img, MEAN, STD)
    assert got.dtype == np.uint8 and got.shape == (1, 2, 3)
    np.testing.assert_array_equal(got, expected)


def test_denormalize_inverts_the_loader_normalisation():
    # a uint8 image normalised in float64 as the loader does (x - mean) / std comes back exactly, per channel
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (3, 5, 7), generator=g, dtype=torch.uint8)
    mean = torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(3, 1, 1)
    norm = ((raw.double() - mean) / std).float().requires_grad_()  # a tensor that needs grad is accepted too
    np.testing.assert_array_equal(denormalize(norm, MEAN, STD), raw.permute(1, 2, 0).numpy())
