"""The official mmseg TEST pipeline in a segmentation recipe's data.val / data.test (data/pipeline.py translates
it): every recipe holds its official test pipeline step for step, the evaluation settings (test scale,
ResizeToMultiple, ratios, flip, PadShortSide, SETR_Resize, mean / std) come from it alone, and what it does not
implement is refused, naming the dotted path."""
from __future__ import annotations


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


TRAIN = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
         dict(type='Resize', img_scale=(2048, 512), ratio_range=(0.5, 2.0)),
         dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
         dict(type='PhotoMetricDistortion'), dict(type='Normalize', **IMAGENET),
         dict(type='Pad', size=(512, 512), pad_val=0, seg_pad_val=255), dict(type='DefaultFormatBundle'),
         dict(type='Collect', keys=['img', 'gt_semantic_seg'])]
M2F_MS = [640. / 896., 768. / 896., 1.0]
SETR_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
SETR640 = dict(type='SETR_Resize', keep_ratio=True, crop_size=(640, 640), setr_multi_scale=True)
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
    "mask2former_beitv2_adapter_large_896_160k_ade20k_ss": official((3584, 896)),
    "upernet_augreg_adapter_tiny_512_160k_ade20k": official((2048, 512)),  # ImageNet mean / std, unlike AugReg-L
    "upernet_augreg_adapter_base_512_160k_ade20k": official((2048, 512), AUGREG),
    "upernet_deit_adapter_light_base_512_160k_ade20k": official((2048, 512)),
    "upernet_uniperceiver_adapter_large_512_160k_ade20k": official((2048, 512)),
    "upernet_beit_large_512_160k_ade20k_ss": official((2048, 512)),
    "upernet_beit_large_512_160k_ade20k_ms": official(
        (2048, 512), ratios=SETR_RATIOS, flip=True, divisor=None,
        resize=dict(type='SETR_Resize', keep_ratio=True, crop_size=(512, 512), setr_multi_scale=True)),
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ss": official((2560, 640)),
    # the _ms configs of the 640 models: SETR_Resize instead of Resize + ResizeToMultiple, 6 ratios, flip
    "upernet_beit_adapter_large_640_160k_ade20k_ms": official((2048, 640), ratios=SETR_RATIOS, flip=True,
                                                              resize=SETR640, divisor=None),
    "mask2former_beit_adapter_large_640_160k_ade20k_ms": official((2048, 640), ratios=SETR_RATIOS, flip=True,
                                                                  resize=SETR640, divisor=None),
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ms": official((2560, 640), ratios=SETR_RATIOS, flip=True,
                                                                    resize=SETR640, divisor=None),
}


def _plain(v):
    """Tuples as lists (mmengine keeps a recipe's tuples, the official files mix both), to compare step lists."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@pytest.mark.parametrize("name", sorted(OFFICIAL_TEST))
def test_recipes_have_the_official_test_pipeline(name):
    """data.val and data.test of each recipe hold its official test pipeline, step for step; the evaluation and the
    val loader take their settings from it."""
    cfg = load_recipe(name)
    data, ev = to_plain(cfg.data), to_plain(cfg.evaluation)
    for split in ("val", "test"):
        assert _plain(data[split]["pipeline"]) == _plain(OFFICIAL_TEST[name])
        want = seg_test_settings_from_pipeline(OFFICIAL_TEST[name])
        # a pipeline's own SETR_Resize gives the multi-scale rule; otherwise evaluation.ms_resize may (the _ss)
        assert SegmentationShards.test_settings(data, ev, split) == \
            {**want, "ms_resize": want["ms_resize"] or ev.get("ms_resize")}
    assert not set(ev) & set(SEG_TEST_KEYS)
    val_kw = SegmentationShards._kwargs(ValLoader.__init__, data["val"], "data.val")
    norm, = (t for t in OFFICIAL_TEST[name][1]["transforms"] if t["type"] == "Normalize")  # the official one
    assert (val_kw["mean"], val_kw["std"]) == (tuple(norm["mean"]), tuple(norm["std"]))


def test_the_setr_multi_scale_test():
    """upernet_beit_adapter_large_640_160k_ade20k_ms: SETR_Resize(crop_size) for the ratios, + flip; the _ss recipe's
    evaluation.ms_resize (the rule of a multi-scale test asked for on the command line) is that rule."""
    setr = dict(type='SETR_Resize', keep_ratio=True, crop_size=(640, 640), setr_multi_scale=True)
    ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    got = seg_test_settings_from_pipeline(official((2048, 640), ratios=ratios, flip=True, resize=setr, divisor=None))
    assert (got["img_scale"], got["img_ratios"], got["flip"], got["size_divisor"]) == ((2048, 640), ratios, True, None)
    cfg = load_recipe("upernet_beit_adapter_large_640_160k_ade20k_ss")
    assert got["ms_resize"] == SegmentationShards.test_settings(to_plain(cfg.data), to_plain(cfg.evaluation))[
        "ms_resize"] == dict(type='SETR_Resize', crop_size=(640, 640))


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
        SegmentationShards.check_config(dict(train=dict(shard_dir='t', pipeline=TRAIN),
                                             val=dict(shard_dir='v', pipeline=p)), {})


def test_pad_short_side_must_follow_the_flip():
    p = official((3584, 896), ratios=M2F_MS, flip=True, pad='before')
    t = p[1]["transforms"]
    t.insert(1, t.pop(3))  # PadShortSide before RandomFlip
    with pytest.raises(ConfigError, match=r"optional PadShortSide after RandomFlip"):
        seg_test_settings_from_pipeline(p, "data.test.pipeline")


def test_test_settings_come_from_the_pipeline_only():
    data = dict(train=dict(shard_dir='t', pipeline=TRAIN), val=dict(shard_dir='v', pipeline=official((2048, 512))))
    with pytest.raises(ConfigError, match=r"data\.val sets \['img_norm_cfg'\]: these come from data\.val\.pipeline"):
        SegmentationShards._kwargs(ValLoader.__init__, dict(data["val"], img_norm_cfg=IMAGENET), "data.val")
    with pytest.raises(ConfigError, match=r"data\.test\.pipeline is required"):
        SegmentationShards.test_settings(dict(data, test=dict(shard_dir='v')), {}, "test")
    # evaluation.ms_resize (the rule of a multi-scale test asked for on the command line) stays allowed, unless the
    # pipeline has its own SETR_Resize
    setr = dict(type='SETR_Resize', crop_size=(512, 512))
    assert SegmentationShards.test_settings(data, dict(ms_resize=setr))["ms_resize"] == setr
    own = official((2048, 512), ratios=[0.5, 1.0], resize=dict(type='SETR_Resize', keep_ratio=True,
                                                                crop_size=(512, 512), setr_multi_scale=True),
                   divisor=None)
    with pytest.raises(ConfigError, match=r"evaluation sets \['ms_resize'\] and data\.val\.pipeline gives it"):
        SegmentationShards.test_settings(dict(data, val=dict(shard_dir='v', pipeline=own)), dict(ms_resize=setr))


def test_a_recipe_in_the_older_flat_dialect_is_refused_with_pointers(tmp_path):
    """The flat loader keys and evaluation test keys of earlier versions of these recipes are refused, each naming
    where its setting is now (the task validates on load, before any training)."""
    from vit_adapter_ds.recipes import QUICKSTART

    flat = tmp_path / "flat.py"
    flat.write_text(f"""
_base_ = [{str(QUICKSTART)!r}]
data = dict(train=dict(_delete_=True, shard_dir='shards/synthetic/train', crop_size=(128, 128), scale=(256, 128)))
""")
    with pytest.raises(ConfigError, match=r"data\.train sets \['crop_size', 'scale'\]: these come from "
                                          r"data\.train\.pipeline"):
        from vit_adapter_ds.tasks import task_for
        task_for(load_recipe(str(flat))).validate()
    ev = tmp_path / "ev.py"
    ev.write_text(f"_base_ = [{str(QUICKSTART)!r}]\nevaluation = dict(img_scale=(256, 128), size_divisor=32)\n")
    with pytest.raises(ConfigError, match=r"evaluation\.img_scale is not a recipe key; the setting is in "
                                          r"data\.val\.pipeline"):
        load_recipe(str(ev))
