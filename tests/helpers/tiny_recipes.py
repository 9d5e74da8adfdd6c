"""Tiny recipes written as the official configs write them: detection recipes over synthetic COCO shards (96 x 128
images), one template for the tests that train, evaluate or predict with a small Mask R-CNN / HTC++; and the
segmentation pipelines / ``--cfg-options`` that shrink a segmentation recipe's crop and scales."""
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


IMAGENET_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def seg_train_pipeline(crop=(64, 64), scale=(128, 64), norm=IMAGENET_NORM) -> list:
    """mmseg's train pipeline (as ViT-Adapter's _base_/datasets/ade20k.py) at ``crop`` / ``scale``."""
    return [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='Resize', img_scale=tuple(scale), ratio_range=(0.5, 2.0)),
            dict(type='RandomCrop', crop_size=tuple(crop), cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
            dict(type='PhotoMetricDistortion'), dict(type='Normalize', **norm),
            dict(type='Pad', size=tuple(crop), pad_val=0, seg_pad_val=255), dict(type='DefaultFormatBundle'),
            dict(type='Collect', keys=['img', 'gt_semantic_seg'])]


def seg_test_pipeline(scale=(128, 64), norm=IMAGENET_NORM) -> list:
    """mmseg's single-scale test pipeline (the ViT-Adapter recipes': Resize + ResizeToMultiple(32)) at ``scale``."""
    return [dict(type='LoadImageFromFile'),
            dict(type='MultiScaleFlipAug', img_scale=tuple(scale), flip=False,
                 transforms=[dict(type='Resize', keep_ratio=True), dict(type='ResizeToMultiple', size_divisor=32),
                             dict(type='RandomFlip'), dict(type='Normalize', **norm),
                             dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])]


# where the sizes sit in the recipes' pipelines (the official step order: data/pipeline.py SEG_TRAIN_STEPS)
RESIZE, CROP, PAD = 2, 3, 7  # train pipeline steps
MULTI_SCALE_FLIP_AUG = 1  # test pipeline step


def seg_size_options(crop: int, scale=(128, 64), test_scale=None) -> list[str]:
    """``--cfg-options`` that set a built-in segmentation recipe's train crop (RandomCrop and Pad), train scale and
    test scale (``test_scale``, default ``scale``) through its official pipelines."""
    (sw, sh), (tw, th) = scale, test_scale or scale
    return [f"data.train.pipeline.{RESIZE}.img_scale=({sw},{sh})",
            f"data.train.pipeline.{CROP}.crop_size=({crop},{crop})", f"data.train.pipeline.{PAD}.size=({crop},{crop})",
            f"data.val.pipeline.{MULTI_SCALE_FLIP_AUG}.img_scale=({tw},{th})"]
