"""Tiny detection recipes over synthetic COCO shards (96 x 128 images), written as the official configs write them:
one template for the tests that train, evaluate or predict with a small Mask R-CNN / HTC++."""
from __future__ import annotations

IMG_NORM = "img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)"

MASK_RCNN_TRAIN = """train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', img_scale=(128, 96), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.5),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels', 'gt_masks']),
]"""

TEST = """test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(128, 96), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                     dict(type='Normalize', **img_norm_cfg), dict(type='Pad', size_divisor=32),
                     dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])
]"""


def detection_recipe(base: str, shards, *, train_pipeline: str = MASK_RCNN_TRAIN, loader: str = "",
                     tail: str = "") -> str:
    """The text of a recipe over ``base`` reading ``shards``/{train,val} with ``train_pipeline`` and the single-scale
    test pipeline at 128 x 96; ``loader``: leading ``data`` arguments (e.g. ``"samples_per_gpu=2, "``); ``tail``:
    further lines (schedule, evaluation)."""
    return (f"_base_ = [{base!r}]\n{IMG_NORM}\n{train_pipeline}\n{TEST}\n"
            f"data = dict({loader}train=dict(shard_dir={str(shards)!r} + '/train', pipeline=train_pipeline),\n"
            f"            val=dict(shard_dir={str(shards)!r} + '/val', pipeline=test_pipeline),\n"
            f"            test=dict(shard_dir={str(shards)!r} + '/val', pipeline=test_pipeline))\n{tail}")
