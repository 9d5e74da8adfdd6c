"""The official mmseg train pipeline in a segmentation recipe (data/pipeline.py translates it, as it does the
detection pipelines): the loader arguments it means; what it does not implement is refused; the loader arguments
are never recipe keys of their own (one recipe dialect)."""
from __future__ import annotations

import copy

import pytest

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data.datasets import SegmentationShards
from vit_adapter_ds.data.loader import TrainLoader
from vit_adapter_ds.data.pipeline import seg_train_kwargs_from_pipeline

IMG_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
CROP = (512, 512)
ADE20K_PIPELINE = [  # ViT-Adapter segmentation/configs/_base_/datasets/ade20k.py
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=CROP, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **IMG_NORM),
    dict(type='Pad', size=CROP, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
M2F_PIPELINE = ADE20K_PIPELINE[:8] + [  # ViT-Adapter segmentation/configs/ade20k/mask2former_beit_*_ss.py
    dict(type='ToMask'),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg', 'gt_masks', 'gt_labels'])]
# the TrainLoader arguments that pipeline means (typed from mmseg's transforms, not from the translator)
LOADER_ARGS = dict(shard_dir='shards/ade20k/train', crop_size=(512, 512), scale=(2048, 512), ratio_range=(0.5, 2.0),
                   cat_max_ratio=0.75, photometric=True, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def _train_kwargs(section):
    return SegmentationShards._kwargs(TrainLoader.__init__, section, "data.train")


def test_official_pipeline_gives_the_loader_arguments():
    official = _train_kwargs(dict(type='ADE20KDataset', shard_dir='shards/ade20k/train', pipeline=ADE20K_PIPELINE))
    assert official == LOADER_ARGS
    without = [s for s in ADE20K_PIPELINE if s["type"] != "PhotoMetricDistortion"]
    assert seg_train_kwargs_from_pipeline(without)["photometric"] is False
    no_cat = copy.deepcopy(ADE20K_PIPELINE)
    del no_cat[3]["cat_max_ratio"]
    assert seg_train_kwargs_from_pipeline(no_cat)["cat_max_ratio"] == 1.0  # mmseg's default


def test_the_mask2former_pipeline_adds_to_mask():
    """ToMask (one binary mask per class present, the Mask2Former recipes) changes no loader argument: the
    Mask2Former criterion builds the same masks from the semantic map. Its Collect keys must name the masks."""
    assert _train_kwargs(dict(shard_dir='shards/ade20k/train', pipeline=M2F_PIPELINE)) == LOADER_ARGS
    p = copy.deepcopy(M2F_PIPELINE)
    p[-1]["keys"] = ['img', 'gt_semantic_seg']
    with pytest.raises(ConfigError, match=r"\[10\]\.keys=\['img', 'gt_semantic_seg'\] is not supported; only "
                                          r"\['img', 'gt_semantic_seg', 'gt_masks', 'gt_labels'\]"):
        seg_train_kwargs_from_pipeline(p, "data.train.pipeline")
    p = copy.deepcopy(M2F_PIPELINE)
    p[8]["ignore_index"] = 0
    with pytest.raises(ConfigError, match=r"\[8\]\.ignore_index=0 is not supported; only 255"):
        seg_train_kwargs_from_pipeline(p, "data.train.pipeline")
    p = copy.deepcopy(M2F_PIPELINE)
    p.insert(9, p.pop(8))  # ToMask after DefaultFormatBundle
    with pytest.raises(ConfigError, match=r"the steps must be .*'Pad', 'ToMask', 'DefaultFormatBundle'"):
        seg_train_kwargs_from_pipeline(p, "data.train.pipeline")


@pytest.mark.parametrize("edit,msg", [
    (lambda p: p.pop(4), r"the steps must be \[.*RandomFlip"),
    (lambda p: p[3].update(crop_size=(64, 64)), r"\[7\]\.size=\(512, 512\) is not supported; only \(64, 64\)"),
    (lambda p: p[4].update(prob=0.3), r"\[4\]\.prob=0\.3 is not supported"),
    (lambda p: p[5].update(brightness_delta=10), r"\[5\]\.brightness_delta: unknown or unsupported key"),
    (lambda p: p[6].update(to_rgb=False), r"\[6\]\.to_rgb=False is not supported"),
    (lambda p: p[7].update(seg_pad_val=0), r"\[7\]\.seg_pad_val=0 is not supported"),
    (lambda p: p[2].update(ratio_range=(2.0, 0.5)), r"\[2\]\.ratio_range must be \(min, max\)"),
    (lambda p: p[9].update(keys=['img']), r"\[9\]\.keys=\['img'\] is not supported"),
])
def test_unsupported_pipelines_are_refused(edit, msg):
    p = copy.deepcopy(ADE20K_PIPELINE)
    edit(p)
    with pytest.raises(ConfigError, match=msg):
        seg_train_kwargs_from_pipeline(p, "data.train.pipeline")


@pytest.mark.parametrize("key,value", [("crop_size", CROP), ("scale", (2048, 512)), ("ratio_range", (0.5, 2.0)),
                                       ("cat_max_ratio", 0.75), ("photometric", False), ("img_norm_cfg", IMG_NORM),
                                       ("mean", (0.0, 0.0, 0.0))])
def test_loader_arguments_are_not_data_keys(key, value):
    """One recipe dialect: what a pipeline gives is never a key of data.train, with or without a pipeline."""
    for section in (dict(shard_dir='x', pipeline=ADE20K_PIPELINE), dict(shard_dir='x')):
        with pytest.raises(ConfigError, match=rf"data\.train sets \['{key}'\]: these come from data\.train\.pipeline"):
            _train_kwargs(dict(section, **{key: value}))


def test_a_pipeline_is_required_and_val_takes_a_test_pipeline():
    from vit_adapter_ds.data.loader import ValLoader

    with pytest.raises(ConfigError, match=r"data\.train\.pipeline is required: the official train_pipeline"):
        _train_kwargs(dict(shard_dir='x'))
    with pytest.raises(ConfigError, match=r"data\.val\.pipeline is required: the official test_pipeline"):
        SegmentationShards._kwargs(ValLoader.__init__, dict(shard_dir='x'), "data.val")
    # a val / test section takes the official test pipeline (test_data_seg_test_pipeline.py), not a train one
    with pytest.raises(ConfigError, match=r"data\.val\.pipeline must be \[LoadImageFromFile, MultiScaleFlipAug"):
        SegmentationShards._kwargs(ValLoader.__init__, dict(shard_dir='x', pipeline=ADE20K_PIPELINE), "data.val")
