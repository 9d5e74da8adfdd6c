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


def test_draw_panoptic_blends_each_segment_and_leaves_void():
    """Segment pixels away from edges and text = image * (1 - alpha) + class colour * alpha (the second instance of
    a class darker), void pixels untouched, segment borders white; a map of another size is refused."""
    import numpy as np
    import pytest

    from vit_adapter_ds.evaluation.visualize import draw_panoptic
    from vit_adapter_ds.utils.vis import make_palette

    cats = [{"id": 7, "name": "a", "isthing": 1}, {"id": 9, "name": "b", "isthing": 0}]
    img = np.full((40, 60, 3), 100, np.uint8)
    ids = np.zeros((40, 60), np.int64)
    ids[:, :20], ids[:, 20:40], ids[20:, 40:] = 1000, 2000, 1  # two 'a' instances, one 'b'; void top right
    segs = [{"id": 1000, "category_id": 7}, {"id": 2000, "category_id": 7}, {"id": 1, "category_id": 9}]
    pic = draw_panoptic(img, ids, segs, cats).astype(float)
    pal = np.asarray(make_palette(2), float)
    assert np.allclose(pic[35, 2], np.round(100 * 0.5 + pal[0] * 0.5))
    assert np.allclose(pic[35, 22], np.round(100 * 0.5 + pal[0] * 0.75 * 0.5))
    assert np.allclose(pic[22, 58], np.round(100 * 0.5 + pal[1] * 0.5))
    assert (pic[5, 50] == 100).all() and (pic[10, 20] == 255).all() and (pic[20, 50] == 255).all()
    with pytest.raises(ValueError, match="differ in size"):
        draw_panoptic(img, ids[:10], segs, cats)
