"""Recipes equal the official configurations (docs/official-architecture.md §4, values typed here from the spec table), load through
``_base_`` inheritance, and bad recipes / DeepSpeed configs / arguments are rejected with clear messages."""
from __future__ import annotations

import json

from pathlib import Path

import pytest

from vit_adapter_ds.config import ConfigError, load_recipe
from vit_adapter_ds.engine.deepspeed_setup import load_ds_config, resolve_ds_config
from vit_adapter_ds.recipes import PAPER_RECIPES, RECIPES

I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
UPERNET = {
    # name: (embed, depth, heads, deform_heads, deform_ratio, dpr, lr, wd, layer_decay, pretrained file, indexes)
    "upernet_deit_adapter_tiny_512_160k_ade20k": (192, 12, 3, 6, 1.0, 0.1, 12e-5, 0.01, 0.95,
                                                  "deit_tiny_patch16_224-a1311bcf.pth", I12),
    "upernet_deit_adapter_small_512_160k_ade20k": (384, 12, 6, 6, 1.0, 0.2, 6e-5, 0.01, 0.95,
                                                   "deit_small_patch16_224-cd65a155.pth", I12),
    "upernet_deit_adapter_base_512_160k_ade20k": (768, 12, 12, 12, 0.5, 0.3, 6e-5, 0.01, 0.95,
                                                  "deit_base_patch16_224-b5f2ef4d.pth", I12),
    "upernet_augreg_adapter_large_512_160k_ade20k": (
        1024, 24, 16, 16, 0.5, 0.4, 2e-5, 0.05, 0.95,
        "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.pth", I24),
    "upernet_augreg_adapter_tiny_512_160k_ade20k": (
        192, 12, 3, 6, 1.0, 0.1, 12e-5, 0.01, 0.95,
        "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.pth", I12),
    "upernet_deit_adapter_light_base_512_160k_ade20k": (768, 12, 12, 12, 0.5, 0.3, 6e-5, 0.01, 0.95,
                                                        "deit_base_patch16_224-b5f2ef4d.pth", [[0, 11]]),
}


def test_recipe_stems_are_unique_and_detection_recipes_load_by_name():
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    assert not set(RECIPES) & set(DETECTION_RECIPES)
    assert load_recipe("synthetic_htc").model.type == "HybridTaskCascade"
    assert load_recipe("mask_rcnn_deit_adapter_tiny_fpn_3x_coco.py").model.type == "MaskRCNN"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_loads_and_validates(name):
    cfg = load_recipe(name)
    assert cfg.model.backbone.type in ("ViTAdapter", "BEiTAdapter", "BEiTBaseline", "UniPerceiverAdapter")


@pytest.mark.parametrize("name", sorted(UPERNET))
def test_upernet_vit_adapter_recipes_match_official(name):
    d, depth, heads, dheads, ratio, dpr, lr, wd, decay, pre, idx = UPERNET[name]
    c = load_recipe(name)
    b = c.model.backbone
    assert (b.embed_dim, b.depth, b.num_heads, b.deform_num_heads, b.deform_ratio, b.drop_path_rate) == \
        (d, depth, heads, dheads, ratio, dpr)
    assert (b.patch_size, b.mlp_ratio, b.conv_inplane, b.n_points, b.cffn_ratio) == (16, 4, 64, 4, 0.25)
    assert b.interaction_indexes == idx
    # written out in every official file (global attention in every block)
    assert (list(b.window_attn), list(b.window_size)) == ([False] * depth, [None] * depth)
    assert c.model.pretrained == "pretrained/" + pre
    assert (c.optimizer.type, c.optimizer.lr, c.optimizer.weight_decay, tuple(c.optimizer.betas)) == \
        ("AdamW", lr, wd, (0.9, 0.999))
    assert c.optimizer.constructor == "LayerDecayOptimizerConstructor"
    assert c.optimizer.paramwise_cfg == {"num_layers": depth, "layer_decay_rate": decay}
    assert dict(c.lr_config) == dict(policy="poly", warmup="linear", warmup_iters=1500, warmup_ratio=1e-6,
                                     power=1.0, min_lr=0.0, by_epoch=False)
    assert c.runner.max_iters == 160000 and c.data.samples_per_gpu == 2 and c.global_batch_size == 16
    assert c.model.test_cfg == {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}
    train, test = _resolved(c)
    assert (train["crop_size"], train["scale"]) == ((512, 512), (2048, 512))
    dh, ah = c.model.decode_head, c.model.auxiliary_head
    assert (dh.type, dh.num_classes, list(dh.in_channels), dh.channels, tuple(dh.pool_scales), dh.dropout_ratio) == \
        ("UPerHead", 150, [d] * 4, 512, (1, 2, 3, 6), 0.1)
    assert (ah.type, ah.num_classes, ah.in_channels, ah.in_index, ah.channels, ah.loss_decode.loss_weight) == \
        ("FCNHead", 150, d, 2, 256, 0.4)
    assert dh.norm_cfg["type"] == "SyncBN"
    if depth == 24:  # AugReg-L: 384 pretrain size, with_cp, 127.5 normalisation, no fp16
        assert b.img_size == b.pretrain_size == 384 and b.with_cp is True
        assert train["mean"] == test["mean"] == (127.5,) * 3 and train["std"] == test["std"] == (127.5,) * 3
        assert c.get("fp16") is None
    else:
        assert c.fp16 == {"loss_scale": {"init_scale": 512}}
        assert train["mean"] == test["mean"] == (123.675, 116.28, 103.53)
        assert train["std"] == test["std"] == (58.395, 57.12, 57.375)


def _resolved(c, split="val"):
    """What the loaders and the evaluation take from a recipe's pipelines: the TrainLoader arguments of
    data.train.pipeline and the test settings of data.<split>.pipeline."""
    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.data.datasets import SegmentationShards
    from vit_adapter_ds.data.loader import TrainLoader

    data = to_plain(c.data)
    return (SegmentationShards._kwargs(TrainLoader.__init__, data["train"], "data.train"),
            SegmentationShards.test_settings(data, to_plain(c.get("evaluation") or {}), split))


# name: (num_classes, max_iters, evaluation interval, train / test img_scale, dataset type), typed from the official
# segmentation/configs/{ade20k,coco_stuff164k}/upernet_beit_adapter_large_640_*.py
BEIT_UPERNET_640 = {
    "upernet_beit_adapter_large_640_160k_ade20k_ss": (150, 160000, 16000, (2048, 640), "ADE20KDataset"),
    "upernet_beit_adapter_large_640_160k_ade20k_ms": (150, 160000, 16000, (2048, 640), "ADE20KDataset"),
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ss": (171, 80000, 8000, (2560, 640), "COCOStuffDataset"),
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ms": (171, 80000, 8000, (2560, 640), "COCOStuffDataset"),
}


@pytest.mark.parametrize("name", sorted(BEIT_UPERNET_640))
def test_beit_upernet_640_matches_official(name):
    classes, iters, interval, scale, dataset = BEIT_UPERNET_640[name]
    c = load_recipe(name)
    b = c.model.backbone
    assert (b.type, b.img_size, b.embed_dim, b.depth, b.num_heads, b.init_values, b.drop_path_rate) == \
        ("BEiTAdapter", 640, 1024, 24, 16, 1e-6, 0.3)
    assert (b.use_abs_pos_emb, b.use_rel_pos_bias, b.qkv_bias, b.with_cp, b.deform_ratio, b.deform_num_heads) == \
        (False, True, True, True, 0.5, 16)
    assert (b.patch_size, b.mlp_ratio, b.conv_inplane, b.n_points, b.cffn_ratio) == (16, 4, 64, 4, 0.25)
    assert b.interaction_indexes == I24
    assert (c.optimizer.type, c.optimizer.lr, c.optimizer.weight_decay, tuple(c.optimizer.betas)) == \
        ("AdamW", 2e-5, 0.05, (0.9, 0.999))
    assert c.optimizer.paramwise_cfg == {"num_layers": 24, "layer_decay_rate": 0.9}
    assert dict(c.lr_config) == dict(policy="poly", warmup="linear", warmup_iters=1500, warmup_ratio=1e-6,
                                     power=1.0, min_lr=0.0, by_epoch=False)
    dh, ah = c.model.decode_head, c.model.auxiliary_head
    assert (dh.type, dh.channels, dh.num_classes, list(dh.in_channels)) == ("UPerHead", 1024, classes, [1024] * 4)
    assert (ah.type, ah.num_classes, ah.in_channels, ah.channels) == ("FCNHead", classes, 1024, 256)
    assert c.model.test_cfg == {"mode": "slide", "crop_size": (640, 640), "stride": (426, 426)}
    assert c.model.pretrained == "pretrained/beit_large_patch16_224_pt22k_ft22k.pth" and c.get("load_from") is None
    assert (c.runner.max_iters, c.data.samples_per_gpu, c.global_batch_size) == (iters, 2, 16)  # 8 GPUs x 2
    assert (c.evaluation.interval, c.evaluation.save_best) == (interval, "mIoU")
    assert (c.checkpoint_config.interval, c.checkpoint_config.max_keep_ckpts) == (1000, 1)
    assert c.get("fp16") is None
    assert c.data.train.type == c.data.val.type == c.data.test.type == dataset
    train, test = _resolved(c)
    assert (train["scale"], train["crop_size"], test["img_scale"]) == (scale, (640, 640), scale)


# name: #Param of the official README (segmentation/README.md at fd64a51), in millions
README_PARAMS = {
    "upernet_deit_adapter_tiny_512_160k_ade20k": 36,
    "upernet_deit_adapter_small_512_160k_ade20k": 58,
    "upernet_deit_adapter_base_512_160k_ade20k": 134,
    "upernet_augreg_adapter_tiny_512_160k_ade20k": 36,
    "upernet_augreg_adapter_base_512_160k_ade20k": 134,
    "upernet_augreg_adapter_large_512_160k_ade20k": 364,
    "upernet_beit_adapter_large_640_160k_ade20k_ss": 451,
    "upernet_beit_adapter_large_640_160k_ade20k_ms": 451,
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ss": 451,
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ms": 451,
}


@pytest.mark.parametrize("name", sorted(README_PARAMS))
def test_upernet_parameter_count_matches_the_official_readme(name):
    """Built on the meta device. The README's 451M for BEiT-Adapter-L is the model with img_size 512 relative-position
    tables (the count of the 512 model); the 640 configs' tables hold (79^2 - 63^2) x 16 heads x 24 blocks more."""
    from vit_adapter_ds.tasks import load_and_validate

    def count(options=None):
        _, _, model = load_and_validate(name, options)
        assert next(model.parameters()).device.type == "meta"
        return sum(p.numel() for p in model.parameters())

    n = count()
    if "beit_adapter_large_640" in name:
        n512 = count(["model.backbone.img_size=512", "model.test_cfg.crop_size=(512,512)"])
        assert n - n512 == (79 ** 2 - 63 ** 2) * 16 * 24
        n = n512
    assert round(n / 1e6) == README_PARAMS[name]


@pytest.mark.parametrize("name,classes,things,load_from", [
    ("mask2former_beit_adapter_large_896_80k_cocostuff164k_ss", 171, 80, None),
    ("mask2former_beit_adapter_large_896_80k_ade20k_ss", 150, 100,
     "pretrained/mask2former_beit_adapter_large_896_80k_cocostuff164k.pth.tar")])
def test_mask2former_recipes_match_official(name, classes, things, load_from):
    c = load_recipe(name)
    b = c.model.backbone
    assert (b.img_size, b.drop_path_rate, b.with_cp, b.init_values, b.deform_ratio) == (896, 0.3, True, 1e-6, 0.5)
    h = c.model.decode_head
    assert (h.type, h.num_queries, h.num_things_classes + h.num_stuff_classes, h.num_things_classes) == \
        ("Mask2FormerHead", 200, classes, things)
    assert h.loss_cls.class_weight == [1.0] * classes + [0.1]
    assert (h.loss_cls.loss_weight, h.loss_mask.loss_weight, h.loss_dice.loss_weight) == (2.0, 5.0, 5.0)
    assert c.model.train_cfg.num_points == 12544
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.paramwise_cfg.layer_decay_rate) == (2e-5, 0.05, 0.9)
    assert c.runner.max_iters == 80000 and c.data.samples_per_gpu == 1 and c.global_batch_size == 16
    assert c.model.test_cfg.crop_size == (896, 896) and c.model.test_cfg.stride == (512, 512)
    assert c.load_from == load_from
    assert (c.checkpoint_config.interval, c.evaluation.interval) == (1000, 8000)


# The official pipeline scales, typed from the official configs (github.com/czczup/ViT-Adapter,
# segmentation/configs/{ade20k,coco_stuff164k}/<name>.py and mmseg 0.20 _base_/datasets/ade20k.py), independently
# of the recipes: train Resize(img_scale, ratio_range), RandomCrop(crop_size, cat_max_ratio); test
# MultiScaleFlipAug(img_scale, img_ratios, flip) + Resize(keep_ratio) + ResizeToMultiple(size_divisor); test_cfg
# mode / crop_size / stride; PadShortSide of the Mask2Former _ms tests; and the resize type of the official
# multi-scale (_ms) test pipeline of UperNet BEiT 640, which a multi-scale test on the command line uses.
_ADE512 = dict(train_scale=(2048, 512), ratio_range=(0.5, 2.0), crop=(512, 512), cat_max_ratio=0.75,
               test_scale=(2048, 512), size_divisor=32, img_ratios=None, flip=False, mode="slide",
               test_crop=(512, 512), stride=(341, 341), ms_resize=None, pad=None)
_M2F896 = dict(train_scale=(3584, 896), ratio_range=(0.5, 2.0), crop=(896, 896), cat_max_ratio=0.75,
               test_scale=(3584, 896), size_divisor=32, img_ratios=None, flip=False, mode="slide",
               test_crop=(896, 896), stride=(512, 512), ms_resize=None, pad=None)
_BLACK, _ZERO = dict(size=896, before_normalize=True), dict(size=896, before_normalize=False)
_CITY896 = dict(train_scale=(2048, 1024), ratio_range=(0.5, 2.0), crop=(896, 896), cat_max_ratio=0.75,
                test_scale=(2048, 1024), size_divisor=32, img_ratios=None, flip=False, mode="slide",
                test_crop=(896, 896), stride=(512, 512), ms_resize=None, pad=None)
_PC59 = dict(train_scale=(520, 520), ratio_range=(0.5, 2.0), crop=(480, 480), cat_max_ratio=0.75,
             test_scale=(4096, 520), size_divisor=32, img_ratios=None, flip=False, mode="slide",
             test_crop=(480, 480), stride=(320, 320), ms_resize=None, pad=None)
_SETR_MS = dict(size_divisor=None, img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True)  # the official _ms tests
OFFICIAL_PIPELINES = {
    "upernet_deit_adapter_tiny_512_160k_ade20k": _ADE512,
    "upernet_deit_adapter_small_512_160k_ade20k": _ADE512,
    "upernet_deit_adapter_base_512_160k_ade20k": _ADE512,
    "upernet_augreg_adapter_large_512_160k_ade20k": _ADE512,
    "upernet_beit_adapter_large_640_160k_ade20k_ss": dict(
        train_scale=(2048, 640), ratio_range=(0.5, 2.0), crop=(640, 640), cat_max_ratio=0.75,
        test_scale=(2048, 640), size_divisor=32, img_ratios=None, flip=False, mode="slide", test_crop=(640, 640),
        stride=(426, 426), ms_resize=dict(type="SETR_Resize", crop_size=(640, 640)), pad=None),
    "mask2former_beit_adapter_large_896_80k_ade20k_ss": _M2F896,
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ss": _M2F896,
    "mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss": _M2F896,
    "mask2former_beit_adapter_large_896_80k_ade20k_ms": dict(_M2F896, img_ratios=[640 / 896, 768 / 896, 1.0],
                                                             flip=True, pad=_BLACK),
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ms": dict(_M2F896, img_ratios=[640 / 896, 768 / 896, 1.0],
                                                                    flip=True, pad=_BLACK),
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ms": dict(
        _M2F896, img_ratios=[800 / 896, 832 / 896, 864 / 896, 1.0], flip=True, pad=_ZERO),
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ss": dict(_M2F896, flip=True),  # one scale, flipped
    "mask2former_beit_adapter_large_640_160k_ade20k_ss": dict(
        _M2F896, train_scale=(2048, 640), crop=(640, 640), test_scale=(2048, 640), test_crop=(640, 640),
        stride=(426, 426)),
    "mask2former_beit_adapter_large_640_160k_ade20k_ms": dict(
        _M2F896, train_scale=(2048, 640), crop=(640, 640), test_scale=(2048, 640), test_crop=(640, 640),
        stride=(426, 426), size_divisor=None, img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True,
        ms_resize=dict(type="SETR_Resize", crop_size=(640, 640))),
    "mask2former_beitv2_adapter_large_896_160k_ade20k_ss": _M2F896,
    "upernet_augreg_adapter_tiny_512_160k_ade20k": _ADE512,
    "upernet_augreg_adapter_base_512_160k_ade20k": _ADE512,
    "upernet_deit_adapter_light_base_512_160k_ade20k": _ADE512,
    "upernet_uniperceiver_adapter_large_512_160k_ade20k": _ADE512,
    "upernet_beit_large_512_160k_ade20k_ss": _ADE512,
    "upernet_beit_large_512_160k_ade20k_ms": dict(
        _ADE512, size_divisor=None, img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True,
        ms_resize=dict(type="SETR_Resize", crop_size=(512, 512))),
    "upernet_beit_adapter_large_640_160k_ade20k_ms": dict(
        train_scale=(2048, 640), ratio_range=(0.5, 2.0), crop=(640, 640), cat_max_ratio=0.75,
        test_scale=(2048, 640), size_divisor=None, img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True,
        mode="slide", test_crop=(640, 640), stride=(426, 426),
        ms_resize=dict(type="SETR_Resize", crop_size=(640, 640)), pad=None),
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ss": dict(
        train_scale=(2560, 640), ratio_range=(0.5, 2.0), crop=(640, 640), cat_max_ratio=0.75,
        test_scale=(2560, 640), size_divisor=32, img_ratios=None, flip=False, mode="slide", test_crop=(640, 640),
        stride=(426, 426), ms_resize=None, pad=None),
    "upernet_beit_adapter_large_640_80k_cocostuff164k_ms": dict(
        train_scale=(2560, 640), ratio_range=(0.5, 2.0), crop=(640, 640), cat_max_ratio=0.75,
        test_scale=(2560, 640), size_divisor=None, img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True,
        mode="slide", test_crop=(640, 640), stride=(426, 426),
        ms_resize=dict(type="SETR_Resize", crop_size=(640, 640)), pad=None),
    # the recipes on the datasets added for issue 21 (their other fields: test_seg_recipes_more_datasets.py)
    "mask2former_beit_adapter_large_896_80k_mapillary_ss": _CITY896,
    "mask2former_beit_adapter_large_896_80k_cityscapes_ss": dict(_CITY896, size_divisor=None),  # base test pipeline
    "mask2former_beit_adapter_large_896_80k_cityscapes_ms": dict(
        _CITY896, **dict(_SETR_MS, img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
        ms_resize=dict(type="SETR_Resize", crop_size=(896, 896))),
    "mask2former_beit_adapter_large_512_40k_cocostuff10k_ss": _ADE512,
    "mask2former_beit_adapter_large_512_40k_cocostuff10k_ms": dict(
        _ADE512, **_SETR_MS, ms_resize=dict(type="SETR_Resize", crop_size=(512, 512))),
    "upernet_beit_adapter_large_512_80k_cocostuff10k_ss": _ADE512,
    "upernet_beit_adapter_large_512_80k_cocostuff10k_ms": dict(
        _ADE512, **_SETR_MS, ms_resize=dict(type="SETR_Resize", crop_size=(512, 512))),
    "mask2former_beit_adapter_large_480_40k_pascal_context_59_ss": _PC59,
    "mask2former_beit_adapter_large_480_40k_pascal_context_59_ms": dict(
        _PC59, **_SETR_MS, ms_resize=dict(type="SETR_Resize", crop_size=(480, 480))),
    "upernet_beit_adapter_large_480_80k_pascal_context_59_ss": _PC59,
    "upernet_beit_adapter_large_480_80k_pascal_context_59_ms": dict(
        _PC59, **_SETR_MS, ms_resize=dict(type="SETR_Resize", crop_size=(480, 480))),
    "mask2former_beit_adapter_large_512_80k_potsdam_ss": _ADE512,
    "mask2former_beit_adapter_base_512_40k_cocostuff10k_ss": _ADE512,
    "mask2former_beit_adapter_base_512_40k_cocostuff10k_ms": dict(
        _ADE512, **_SETR_MS, ms_resize=dict(type="SETR_Resize", crop_size=(512, 512))),
    "mask2former_beit_adapter_base_480_40k_pascal_context_59_ss": _PC59,
    "mask2former_beit_adapter_base_480_40k_pascal_context_59_ms": dict(
        _PC59, **_SETR_MS, ms_resize=dict(type="SETR_Resize", crop_size=(480, 480))),
    "mask2former_beit_adapter_large_128_40k_chase_db1_ss": dict(
        _ADE512, train_scale=(960, 999), crop=(128, 128), test_scale=(960, 999), test_crop=(128, 128), stride=(85, 85)),
}


def test_augreg_base_matches_official():
    """upernet_augreg_adapter_base_512_160k_ade20k (typed from the official file): ViT-Adapter-B at 384 with 127.5
    normalisation, and the only UperNet config without layer decay: AdamW lr 2e-5, wd 0.01, mmcv custom_keys, where
    the longest matching key wins and ties go alphabetically ('bias' < 'head' < 'norm')."""
    from vit_adapter_ds.engine.optim import param_groups_for_recipe
    from vit_adapter_ds.tasks import load_and_validate

    c, _, model = load_and_validate("upernet_augreg_adapter_base_512_160k_ade20k")
    b = c.model.backbone
    assert (b.type, b.img_size, b.pretrain_size, b.embed_dim, b.depth, b.num_heads, b.drop_path_rate) == \
        ("ViTAdapter", 384, 384, 768, 12, 12, 0.3)
    assert (b.deform_num_heads, b.deform_ratio, b.cffn_ratio, b.n_points, b.conv_inplane, b.patch_size) == \
        (12, 0.5, 0.25, 4, 64, 16)
    assert b.interaction_indexes == I12 and b.get("with_cp") is None
    assert (list(b.window_attn), list(b.window_size)) == ([False] * 12, [None] * 12)
    assert c.model.pretrained == ("pretrained/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
                                  "--imagenet2012-steps_20k-lr_0.01-res_384.pth")
    assert (c.optimizer.type, c.optimizer.lr, c.optimizer.weight_decay, tuple(c.optimizer.betas)) == \
        ("AdamW", 2e-5, 0.01, (0.9, 0.999))
    assert c.optimizer.get("constructor") is None
    assert c.optimizer.paramwise_cfg == {"custom_keys": {
        "level_embed": {"decay_mult": 0.0}, "pos_embed": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
        "bias": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}}}
    assert (c.runner.max_iters, c.data.samples_per_gpu, c.global_batch_size) == (160000, 2, 16)
    assert c.fp16 == {"loss_scale": {"init_scale": 512}}
    train, test = _resolved(c)
    assert train["mean"] == test["mean"] == (127.5,) * 3 and train["std"] == test["std"] == (127.5,) * 3
    groups = {n: (g["lr"], g["weight_decay"]) for g in param_groups_for_recipe(model, c) for n in
              [model_name for model_name, q in model.named_parameters() if any(q is x for x in g["params"])]}
    assert groups["decode_head.conv_seg.weight"] == (2e-4, 0.01)
    assert groups["decode_head.conv_seg.bias"] == (2e-5, 0.0)  # 'bias' sorts before 'head'
    assert groups["auxiliary_head.convs.0.bn.weight"] == (2e-4, 0.01)
    assert groups["backbone.level_embed"] == groups["backbone.pos_embed"] == (2e-5, 0.0)
    assert groups["backbone.blocks.0.norm1.weight"] == groups["backbone.blocks.0.attn.qkv.bias"] == (2e-5, 0.0)
    assert groups["backbone.blocks.0.attn.qkv.weight"] == (2e-5, 0.01)


def test_deit_adapter_light_base_is_the_official_light_adapter():
    """upernet_deit_adapter_light_base_512_160k_ade20k: one interaction over the 12 blocks, no ConvFFN, no extra
    extractors, no ViT features added (official file); the built model has exactly those parts."""
    from vit_adapter_ds.tasks import load_and_validate

    c, _, model = load_and_validate("upernet_deit_adapter_light_base_512_160k_ade20k")
    b = c.model.backbone
    assert (b.with_cffn, b.use_extra_extractor, b.add_vit_feature) == (False, False, False)
    assert (list(b.window_attn), list(b.window_size)) == ([False] * 12, [None] * 12)
    bb = model.backbone
    assert len(bb.interactions) == 1 and bb.interactions[0].extra_extractors is None
    assert not any(type(m).__name__ == "ConvFFN" for m in bb.modules())


@pytest.mark.parametrize("name", ["upernet_beit_large_512_160k_ade20k_ss", "upernet_beit_large_512_160k_ade20k_ms"])
def test_plain_beit_upernet_matches_official(name):
    """upernet_beit_large_512_160k_ade20k_{ss,ms} (typed from the official files): the plain BEiT-L baseline."""
    from vit_adapter_ds.tasks import load_and_validate

    c, _, model = load_and_validate(name)
    b = c.model.backbone
    assert (b.type, b.img_size, b.patch_size, b.embed_dim, b.depth, b.num_heads, b.mlp_ratio) == \
        ("BEiTBaseline", 512, 16, 1024, 24, 16, 4)
    assert (b.qkv_bias, b.use_abs_pos_emb, b.use_rel_pos_bias, b.init_values, b.drop_path_rate) == \
        (True, False, True, 1e-6, 0.2)
    assert list(b.out_indices) == [7, 11, 15, 23] and b.get("with_cp") is None
    assert c.model.pretrained == "pretrained/beit_large_patch16_224_pt22k_ft22k.pth" and c.get("load_from") is None
    dh, ah = c.model.decode_head, c.model.auxiliary_head
    assert (dh.type, dh.channels, dh.num_classes, list(dh.in_channels)) == ("UPerHead", 1024, 150, [1024] * 4)
    assert (ah.type, ah.num_classes, ah.in_channels, ah.channels) == ("FCNHead", 150, 1024, 256)
    assert c.model.test_cfg == {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}
    assert (c.optimizer.type, c.optimizer.lr, c.optimizer.weight_decay, tuple(c.optimizer.betas)) == \
        ("AdamW", 2e-5, 0.05, (0.9, 0.999))
    assert c.optimizer.constructor == "LayerDecayOptimizerConstructor"
    assert c.optimizer.paramwise_cfg == {"num_layers": 24, "layer_decay_rate": 0.9}
    assert dict(c.lr_config) == dict(policy="poly", warmup="linear", warmup_iters=1500, warmup_ratio=1e-6,
                                     power=1.0, min_lr=0.0, by_epoch=False)
    assert (c.runner.max_iters, c.data.samples_per_gpu, c.global_batch_size) == (160000, 2, 16)  # 8 GPUs x 2
    assert (c.evaluation.interval, c.checkpoint_config.interval) == (16000, 1000) and c.get("fp16") is None
    assert type(model.backbone).__name__ == "BEiTBaseline" and len(model.backbone.blocks) == 24


def test_augreg_tiny_spells_out_global_attention():
    """upernet_augreg_adapter_tiny_512_160k_ade20k: window_attn=[False] * 12, window_size=[None] * 12 and the
    224 defaults (no img_size / pretrain_size), as the official file; every block attends globally."""
    from vit_adapter_ds.tasks import load_and_validate

    c, _, model = load_and_validate("upernet_augreg_adapter_tiny_512_160k_ade20k")
    b = c.model.backbone
    assert (list(b.window_attn), list(b.window_size)) == ([False] * 12, [None] * 12)
    assert "img_size" not in b and "pretrain_size" not in b and "with_cp" not in b
    assert not any(type(m).__name__ == "WindowedAttention" for m in model.modules())


def test_every_segmentation_recipe_has_a_pipeline_row():
    """Every official recipe (the paper recipes of PAPER_RECIPES have their own test: test_semantic_fpn_recipes)."""
    assert PAPER_RECIPES <= set(RECIPES)
    assert sorted(OFFICIAL_PIPELINES) == sorted(n for n in RECIPES if not n.startswith("synthetic")
                                                and n not in PAPER_RECIPES)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PIPELINES))
def test_pipeline_scales_match_official(name):
    if name not in RECIPES:
        pytest.fail(f"recipe {name} is missing")
    want = OFFICIAL_PIPELINES[name]
    c = load_recipe(name)
    tc = c.model.test_cfg
    for split in ("val", "test"):
        train, test = _resolved(c, split)
        assert (train["scale"], train["ratio_range"], train["crop_size"], train["cat_max_ratio"]) == \
            (want["train_scale"], want["ratio_range"], want["crop"], want["cat_max_ratio"])
        assert train["photometric"] is True
        assert (test["img_scale"], test["size_divisor"], test["flip"], test["pad_short_side"]) == \
            (want["test_scale"], want["size_divisor"], want["flip"], want["pad"])
        assert test["img_ratios"] == (None if want["img_ratios"] is None else pytest.approx(want["img_ratios"]))
        assert test["ms_resize"] == want["ms_resize"]
    assert (tc.mode, tuple(tc.crop_size), tuple(tc.stride)) == (want["mode"], want["test_crop"], want["stride"])


def test_quickstart_recipe_is_tiny():
    c = load_recipe(None)
    b = c.model.backbone
    assert 96 <= b.embed_dim <= 192 and 4 <= b.depth <= 6 and len(b.interaction_indexes) == 4
    assert 64 <= c.model.decode_head.channels <= 128 and 128 <= _resolved(c)[0]["crop_size"][0] <= 256


def test_unknown_recipe_lists_builtins():
    with pytest.raises(ConfigError, match="upernet_deit_adapter_tiny_512_160k_ade20k"):
        load_recipe("no_such_recipe")


def _ds(tmp_path, **kw):
    base = json.load(open(load_ds_config.__globals__["Path"](__file__).resolve().parents[3] / "ds_configs" / "zero2_fp32.json"))
    base.update(kw)
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(base))
    return load_ds_config(p)


def test_ds_auto_values_are_filled_from_recipe(tmp_path):
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k")
    ds = resolve_ds_config(_ds(tmp_path), cfg, world_size=2, has_cuda=False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (2, 4, 16)
    assert ds["optimizer"]["params"]["lr"] == 12e-5 and ds["optimizer"]["params"]["weight_decay"] == 0.01
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.999] and ds["gradient_clipping"] == 0.0
    ds8 = resolve_ds_config(_ds(tmp_path), cfg, world_size=8, has_cuda=False)
    assert ds8["gradient_accumulation_steps"] == 1


def test_fp16_initial_scale_from_recipe(tmp_path):
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k")
    ds = json.load(open(str(Path(__file__).resolve().parents[3] / "ds_configs" / "zero2_fp16.json")))
    p = tmp_path / "f.json"
    p.write_text(json.dumps(ds))
    out = resolve_ds_config(load_ds_config(p), cfg, world_size=8, has_cuda=True)
    assert out["fp16"]["initial_scale_power"] == 9  # init_scale=512


@pytest.mark.parametrize("kw,world,match", [
    (dict(train_batch_size=10, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=2), 2,
     r"train_batch_size 10 != .* 2 x .* 2 x world size 2 = 8"),
    (dict(gradient_accumulation_steps=1), 2, "gives 4 images per step but the recipe's global_batch_size is 16"),
    ({}, 3, "global_batch_size 16 is not divisible by micro batch 2 x world size 3"),
    (dict(train_micro_batch_size_per_gpu=0), 2, "must be a positive integer"),
])
def test_inconsistent_batch_sizes_are_rejected(tmp_path, kw, world, match):
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k")
    with pytest.raises(ConfigError, match=match):
        resolve_ds_config(_ds(tmp_path, **kw), cfg, world_size=world, has_cuda=False)


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    cfg = load_recipe(None)
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_ds_config(_ds(tmp_path, fp16={"enabled": True}), cfg, world_size=1, has_cuda=False)


def test_missing_and_broken_ds_config(tmp_path):
    with pytest.raises(ConfigError, match="not found.*zero2_fp32.json"):
        load_ds_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_ds_config(tmp_path / "bad.json")
