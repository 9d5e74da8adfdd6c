"""The planner's training image size (plan/step.py ``train_image_size``): the largest image a recipe's
``train_pipeline`` can give, followed step by step over every AutoAugment policy. Expected sizes worked out by hand
from mmdet 2.22 / mmseg's transforms: keep-ratio ``Resize`` to (long L, short S) x r gives at most S*r x L*r (an
image of that aspect), ``RandomCrop`` caps it ('absolute_range' (a, b): each side up to b), a later ``Resize``
sets it again, ``Pad`` rounds up. The DETR-style policy was planned at its 384-600 crop (384 x 600) before, ~4x too
few pixels for every 3x detection recipe."""
from __future__ import annotations

import pytest

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.plan.step import train_image_size


@pytest.mark.parametrize("recipe, size", [
    # DETR-style AutoAugment (max 800 x 1333), then RandomCrop absolute_range (1024, 1024), Pad 32
    ("mask_rcnn_augreg_adapter_large_fpn_3x_coco", (800, 1024)),
    ("cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco", (800, 1024)),
    ("sparse_rcnn_deit_adapter_small_fpn_3x_coco", (800, 1024)),
    # the same policies without the 1024 crop: 800 x 1333 padded to 32
    ("mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic", (800, 1344)),
    # HTC++: Resize range (1600, 400)-(1600, 1400): 1400 x 1600, padded to 32
    ("htc++_beit_adapter_large_fpn_3x_coco", (1408, 1600)),
    # large-scale jitter: Resize (1024, 1024) x 0.1-2.0, RandomCrop 1024, Pad 1024
    ("mask_rcnn_mae_adapter_base_lsj_fpn_25ep_coco", (1024, 1024)),
    # segmentation: Resize (2048, 512) x 0.5-2.0, RandomCrop, Pad to the crop
    ("upernet_deit_adapter_tiny_512_160k_ade20k", (512, 512)),
    ("mask2former_beit_adapter_large_896_80k_ade20k_ss", (896, 896)),
    ("mask2former_beit_adapter_large_128_40k_chase_db1_ss", (128, 128)),
])
def test_official_recipes(recipe, size):
    assert train_image_size(load_recipe(recipe)) == size


def test_step_rules():
    def size(*steps):
        return train_image_size({"train_pipeline": list(steps)})

    resize = dict(type="Resize", img_scale=[(1333, 480), (1333, 800)], keep_ratio=True)
    assert size(resize) == (800, 1333)
    assert size(resize, dict(type="Pad", size_divisor=32)) == (800, 1344)
    assert size(dict(resize, ratio_range=(0.5, 1.5))) == (1200, 2000)
    assert size(resize, dict(type="RandomCrop", crop_size=(600, 700))) == (600, 700)
    assert size(resize, dict(type="RandomCrop", crop_size=(384, 600), crop_type="absolute_range")) == (600, 600)
    assert size(resize, dict(type="RandomCrop", crop_size=(0.5, 0.5), crop_type="relative_range")) == (800, 1333)
    assert size(dict(type="RandomCrop", crop_size=(300, 400)), dict(type="Pad", size=(512, 512))) == (512, 512)
    policies = dict(type="AutoAugment", policies=[[dict(resize, img_scale=(1000, 600))], [resize]])
    assert size(policies) == (800, 1333)  # the larger branch
    with pytest.raises(Exception, match="--image-size"):
        size(dict(type="Normalize"))
