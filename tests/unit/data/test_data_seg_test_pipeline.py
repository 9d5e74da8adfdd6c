"""The official mmseg TEST pipeline in a segmentation recipe's data.val / data.test (data/pipeline.py translates
it): the same evaluation settings (test scale, ResizeToMultiple, ratios, flip, PadShortSide, SETR_Resize, mean /
std) as the flat recipes' ``evaluation`` keys; what it does not implement is refused, naming the dotted path."""
from __future__ import annotations

import copy

import pytest

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.data.datasets import SegmentationShards
from vit_adapter_ds.data.loader import ValLoader
from vit_adapter_ds.data.pipeline import SEG_TEST_KEYS, seg_test_settings_from_pipeline

IMAGENET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
AUGREG = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)


def official(img_scale, norm=IMAGENET, ratios=None, flip=False, pad=None, resize=None, divisor=32):
    """A test pipeline as the official ViT-Adapter configs write it (segmentation/configs/{ade20k,coco_stuff164k}):
    ``pad``: 'before' / 'after' Normalize (the Mask2Former _ms PadShortSide(896)), ``resize``: a SETR_Resize step."""
    transforms = [resize or dict(type='Resize', keep_ratio=True)]
    if divisor:
        transforms.append(dict(type='ResizeToMultiple', size_divisor=divisor))
    transforms.append(dict(type='RandomFlip'))
    padding = dict(type='PadShortSide', size=896, pad_val=0, seg_pad_val=255)
    transforms += [padding] if pad == 'before' else []
    transforms.append(dict(type='Normalize', **norm))
    transforms += [padding] if pad == 'after' else []
    transforms += [dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])]
    aug = dict(type='MultiScaleFlipAug', img_scale=img_scale, flip=flip, transforms=transforms)
    if ratios is not None:
        aug['img_ratios'] = ratios
    return [dict(type='LoadImageFromFile'), aug]


M2F_MS = [640. / 896., 768. / 896., 1.0]
OFFICIAL_TEST = {  # typed from the official configs, independently of the recipes
    "upernet_deit_adapter_tiny_512_160k_ade20k": official((2048, 512)),
    "upernet_deit_adapter_small_512_160k_ade20k": official((2048, 512)),
    "upernet_deit_adapter_base_512_160k_ade20k": official((2048, 512)),
    "upernet_augreg_adapter_large_512_160k_ade20k": official((2048, 512), AUGREG),
    "upernet_beit_adapter_large_640_160k_ade20k_ss": official((2048, 640)),
    "mask2former_beit_adapter_large_640_160k_ade20k_ss": official((2048, 640)),
    "mask2former_beit_adapter_large_896_80k_ade20k_ss": official((3584, 896)),
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ss": official((3584, 896)),
    "mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss": official((3584, 896)),
    "mask2former_beit_adapter_large_896_80k_ade20k_ms": official((3584, 896), ratios=M2F_MS, flip=True, pad='before'),
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ms": official((3584, 896), ratios=M2F_MS, flip=True,
                                                                        pad='before'),
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ms": official(
        (3584, 896), ratios=[800. / 896., 832. / 896., 864. / 896., 1.0], flip=True, pad='after'),
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ss": official((3584, 896), flip=True),  # one scale, flipped
}


def _as_official(cfg, pipeline):
    """The recipe with its test settings moved into data.val / data.test.pipeline (the official form)."""
    data, ev = to_plain(cfg.data), to_plain(cfg.evaluation)
    for split in ("val", "test"):
        section = {k: v for k, v in (data.get(split) or data["val"]).items() if k != "img_norm_cfg"}
        data[split] = dict(section, pipeline=copy.deepcopy(pipeline))
    return data, {k: v for k, v in ev.items() if k not in SEG_TEST_KEYS}


@pytest.mark.parametrize("name", sorted(OFFICIAL_TEST))
def test_official_test_pipeline_gives_the_flat_recipes_settings(name):
    cfg = load_recipe(name)
    flat = SegmentationShards.test_settings(to_plain(cfg.data), to_plain(cfg.evaluation), "val")
    data, ev = _as_official(cfg, OFFICIAL_TEST[name])
    SegmentationShards.check_config(data, ev)
    for split in ("val", "test"):
        assert SegmentationShards.test_settings(data, ev, split) == flat
    val_kw = SegmentationShards._kwargs(ValLoader.__init__, data["val"], "data.val")
    assert (val_kw["mean"], val_kw["std"]) == (flat["mean"], flat["std"])


def test_the_setr_multi_scale_test():
    """upernet_beit_adapter_large_640_160k_ade20k_ms: SETR_Resize(crop_size) for the ratios, + flip; the _ss recipe's
    flat evaluation.ms_resize is that rule."""
    setr = dict(type='SETR_Resize', keep_ratio=True, crop_size=(640, 640), setr_multi_scale=True)
    ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    got = seg_test_settings_from_pipeline(official((2048, 640), ratios=ratios, flip=True, resize=setr, divisor=None))
    cfg = load_recipe("upernet_beit_adapter_large_640_160k_ade20k_ss", ["evaluation.flip=True"])
    ev = dict(to_plain(cfg.evaluation), img_ratios=ratios, size_divisor=None)
    assert got == SegmentationShards.test_settings(to_plain(cfg.data), ev)


@pytest.mark.parametrize("edit,msg", [
    (lambda p: p[1]["transforms"].pop(2), r"data\.val\.pipeline\[1\]\.transforms: the steps must be"),
    (lambda p: p[1]["transforms"].insert(4, dict(type='Pad', size_divisor=32)), r"transforms: the steps must be"),
    (lambda p: p[1].update(flip_direction='vertical'), r"data\.val\.pipeline\[1\]\.flip_direction='vertical'"),
    (lambda p: p[1].update(img_scale=(2048,)), r"data\.val\.pipeline\[1\]\.img_scale must be 2 positive integers"),
    (lambda p: p[1].update(img_ratios=[0.5, -1]), r"data\.val\.pipeline\[1\]\.img_ratios must be"),
    (lambda p: p[1].update(scale_factor=2), r"data\.val\.pipeline\[1\]\.scale_factor: unknown or unsupported key"),
    (lambda p: p[1]["transforms"][0].update(keep_ratio=False),
     r"data\.val\.pipeline\[1\]\.transforms\[0\]\.keep_ratio=False is not supported"),
    (lambda p: p[1]["transforms"][1].update(interpolation='bilinear'),
     r"transforms\[1\]\.interpolation: unknown or unsupported key"),
    (lambda p: p[1]["transforms"][3].update(to_rgb=False), r"transforms\[3\]\.to_rgb=False is not supported"),
    (lambda p: p[1]["transforms"][5].update(keys=['img', 'gt_semantic_seg']), r"transforms\[5\]\.keys=.* is not"),
    (lambda p: p[1]["transforms"].__setitem__(0, dict(type='SETR_Resize', keep_ratio=True, crop_size=(64, 64),
                                                      setr_multi_scale=True)),
     r"transforms\[0\]: SETR_Resize is implemented for multi-scale tests only"),
    (lambda p: p.insert(1, dict(type='LoadAnnotations')), r"data\.val\.pipeline must be \[LoadImageFromFile"),
])
def test_unsupported_test_pipelines_are_refused(edit, msg):
    p = official((2048, 512))
    edit(p)
    with pytest.raises(ConfigError, match=msg):
        SegmentationShards.check_config(dict(train=dict(shard_dir='t', crop_size=(64, 64)),
                                             val=dict(shard_dir='v', pipeline=p)), {})


def test_pad_short_side_must_follow_the_flip():
    p = official((3584, 896), ratios=M2F_MS, flip=True, pad='before')
    t = p[1]["transforms"]
    t.insert(1, t.pop(3))  # PadShortSide before RandomFlip
    with pytest.raises(ConfigError, match=r"optional PadShortSide after RandomFlip"):
        seg_test_settings_from_pipeline(p, "data.test.pipeline")


def test_pipeline_and_evaluation_keys_are_not_mixed():
    data = dict(train=dict(shard_dir='t'), val=dict(shard_dir='v', pipeline=official((2048, 512))))
    with pytest.raises(ConfigError, match=r"evaluation sets \['img_scale'\] and data\.val\.pipeline gives them"):
        SegmentationShards.test_settings(data, dict(img_scale=(2048, 512)))
    with pytest.raises(ConfigError, match=r"data\.val sets \['img_norm_cfg'\] and a pipeline"):
        SegmentationShards._kwargs(ValLoader.__init__, dict(data["val"], img_norm_cfg=IMAGENET), "data.val")
    # evaluation.ms_resize (the rule of a multi-scale test asked for on the command line) stays allowed
    setr = dict(type='SETR_Resize', crop_size=(512, 512))
    assert SegmentationShards.test_settings(data, dict(ms_resize=setr))["ms_resize"] == setr


def test_a_recipe_in_the_official_form_validates_and_tests_like_the_flat_one(tmp_path):
    """The quickstart recipe written as the official configs are (dataset_type, data_root, train_pipeline,
    test_pipeline, data.train / val / test with type and pipeline; no test keys in evaluation): the task validates
    it and evaluates / predicts with the flat recipe's settings."""
    from vit_adapter_ds.recipes import QUICKSTART
    from vit_adapter_ds.tasks import task_for

    (tmp_path / "official.py").write_text(f'''
_base_ = [{str(QUICKSTART)!r}]
dataset_type = 'synthetic'
data_root = 'shards/synthetic/'
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', img_scale=(256, 128), ratio_range=(0.5, 2.0)),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size=crop_size, pad_val=0, seg_pad_val=255),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(256, 128), flip=False,
         transforms=[
             dict(type='Resize', keep_ratio=True),
             dict(type='ResizeToMultiple', size_divisor=32),
             dict(type='RandomFlip'),
             dict(type='Normalize', **img_norm_cfg),
             dict(type='ImageToTensor', keys=['img']),
             dict(type='Collect', keys=['img']),
         ])
]
data = dict(
    train=dict(_delete_=True, type=dataset_type, shard_dir=data_root + 'train', pipeline=train_pipeline),
    val=dict(_delete_=True, type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline),
    test=dict(type=dataset_type, shard_dir=data_root + 'val', pipeline=test_pipeline))
evaluation = dict(_delete_=True, interval=100, metric='mIoU', save_best='mIoU')
''')
    flat, official_cfg = task_for(load_recipe(None)), task_for(load_recipe(str(tmp_path / "official.py")))
    official_cfg.validate()
    for split in ("val", "test"):
        assert official_cfg._test_settings(split=split) == flat._test_settings()
        assert official_cfg._norm(split) == flat._norm()
    from vit_adapter_ds.data.loader import TrainLoader

    data = to_plain(official_cfg.cfg.data)
    kw = SegmentationShards._kwargs(TrainLoader.__init__, data["train"], "data.train")
    assert kw == {**SegmentationShards._kwargs(TrainLoader.__init__, to_plain(flat.cfg.data)["train"], "data.train"),
                  "photometric": True}
