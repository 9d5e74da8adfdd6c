"""The official segmentation configurations on Cityscapes / Mapillary, COCO-Stuff-10k, Pascal Context 59, ISPRS
Potsdam and CHASE_DB1 (issue 21) against the official files: every value below is typed from
github.com/czczup/ViT-Adapter segmentation/configs/{cityscapes,coco_stuff10k,pascal_context,potsdam,chase_db1}/<name>.py
at fd64a51 (with their _base_ model / dataset / schedule files and the configs/*/README.md results), independently of
the recipe files. Each recipe is built on the meta device through the task's validation
(vit_adapter_ds.tasks.load_and_validate) and its parameter count is checked against the official README.
CHASE_DB1 evaluates and keeps the best checkpoint by mmseg's mDice (evaluation/miou.py), as its official file."""
from __future__ import annotations

import pytest

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.data.datasets import SegmentationShards
from vit_adapter_ds.data.loader import TrainLoader
from vit_adapter_ds.recipes import RECIPES

BEIT = "pretrained/beit_large_patch16_224_pt22k_ft22k.pth"
MAPILLARY_FROM = "pretrained/mask2former_beit_adapter_large_896_80k_mapillary.pth.tar"
I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
R_SETR = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
NORM = dict(type="Normalize", mean=MEAN, std=STD, to_rgb=True)


def official_train(scale, crop, mask2former, reduce_zero_label, mapillary=False):
    """The official train_pipeline of these configs."""
    steps = [dict(type="LoadImageFromFile"),
             dict(type="LoadAnnotations", reduce_zero_label=True) if reduce_zero_label else
             dict(type="LoadAnnotations")]
    if mapillary:
        steps.append(dict(type="MapillaryHack"))
    steps += [dict(type="Resize", img_scale=scale, ratio_range=(0.5, 2.0)),
              dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75),
              dict(type="RandomFlip", prob=0.5),
              dict(type="PhotoMetricDistortion"),
              NORM,
              dict(type="Pad", size=crop, pad_val=0, seg_pad_val=255)]
    if mask2former:
        return steps + [dict(type="ToMask"), dict(type="DefaultFormatBundle"),
                        dict(type="Collect", keys=["img", "gt_semantic_seg", "gt_masks", "gt_labels"])]
    return steps + [dict(type="DefaultFormatBundle"), dict(type="Collect", keys=["img", "gt_semantic_seg"])]


def official_ss_test(scale, to_multiple=True):
    """Single-scale test: Resize(keep_ratio) [+ ResizeToMultiple(32)], no flip."""
    transforms = [dict(type="Resize", keep_ratio=True)]
    if to_multiple:
        transforms.append(dict(type="ResizeToMultiple", size_divisor=32))
    transforms += [dict(type="RandomFlip"), NORM, dict(type="ImageToTensor", keys=["img"]),
                   dict(type="Collect", keys=["img"])]
    return [dict(type="LoadImageFromFile"),
            dict(type="MultiScaleFlipAug", img_scale=scale, flip=False, transforms=transforms)]


def official_ms_test(scale, crop, ratios=R_SETR):
    """The _ms test: SETR_Resize(crop_size, setr_multi_scale) at each ratio, flipped."""
    return [dict(type="LoadImageFromFile"),
            dict(type="MultiScaleFlipAug", img_scale=scale, img_ratios=ratios, flip=True, transforms=[
                dict(type="SETR_Resize", keep_ratio=True, crop_size=crop, setr_multi_scale=True),
                dict(type="RandomFlip"), NORM, dict(type="ImageToTensor", keys=["img"]),
                dict(type="Collect", keys=["img"])])]


_M2F = dict(head="Mask2FormerHead", queries=100, feat=1024, load_from=None, rzl=True, mapillary=False)
_UPN = dict(head="UPerHead", load_from=None, rzl=True, mapillary=False)
_CITY = dict(_M2F, img=896, classes=19, things=8, iters=80000, per_gpu=1, batch=16, eval=1000, stride=512,
             train_scale=(2048, 1024), test_scale=(2048, 1024), train_type="CityscapesDataset",
             test_type="CityscapesDataset", rzl=False, readme=571)
_C10K_M2F = dict(_M2F, img=512, classes=171, things=80, iters=40000, per_gpu=2, batch=16, eval=4000, stride=341,
                 train_scale=(2048, 512), test_scale=(2048, 512), train_type="COCOStuffDataset",
                 test_type="COCOStuffDataset", readme=568)
_C10K_UPN = dict(_UPN, img=512, classes=171, iters=80000, per_gpu=2, batch=16, eval=8000, stride=341,
                 train_scale=(2048, 512), test_scale=(2048, 512), train_type="COCOStuffDataset",
                 test_type="COCOStuffDataset", readme=451)
_PC_M2F = dict(_M2F, img=480, classes=59, things=29, iters=40000, per_gpu=2, batch=16, eval=4000, stride=320,
               train_scale=(520, 520), test_scale=(4096, 520), train_type="PascalContextDataset59",
               test_type="PascalContextDataset59", readme=568)
_PC_UPN = dict(_UPN, img=480, classes=59, iters=80000, per_gpu=2, batch=16, eval=8000, stride=320,
               train_scale=(520, 520), test_scale=(4096, 520), train_type="PascalContextDataset59",
               test_type="PascalContextDataset59", readme=451)
# name: the official values; test = the official val / test pipeline
OFFICIAL = {
    # stage 1 of Mapillary -> Cityscapes: Mapillary train (MapillaryHack to the 19 Cityscapes ids), Cityscapes val;
    # batch 16 (samples_per_gpu=1 on the 16 GPUs of the Cityscapes row); no README row of its own
    "mask2former_beit_adapter_large_896_80k_mapillary_ss": dict(
        _CITY, train_type="MapillaryDataset", mapillary=True, readme=None,
        test=official_ss_test((2048, 1024))),
    # its test pipeline is _base_/datasets/cityscapes_896x896.py's (no ResizeToMultiple)
    "mask2former_beit_adapter_large_896_80k_cityscapes_ss": dict(
        _CITY, load_from=MAPILLARY_FROM, test=official_ss_test((2048, 1024), to_multiple=False)),
    # no load_from in the official _ms file (default_runtime's None)
    "mask2former_beit_adapter_large_896_80k_cityscapes_ms": dict(
        _CITY, test=official_ms_test((2048, 1024), (896, 896), R_SETR + [2.0])),
    "mask2former_beit_adapter_large_512_40k_cocostuff10k_ss": dict(_C10K_M2F, test=official_ss_test((2048, 512))),
    "mask2former_beit_adapter_large_512_40k_cocostuff10k_ms": dict(
        _C10K_M2F, test=official_ms_test((2048, 512), (512, 512))),
    "upernet_beit_adapter_large_512_80k_cocostuff10k_ss": dict(_C10K_UPN, test=official_ss_test((2048, 512))),
    "upernet_beit_adapter_large_512_80k_cocostuff10k_ms": dict(
        _C10K_UPN, test=official_ms_test((2048, 512), (512, 512))),
    "mask2former_beit_adapter_large_480_40k_pascal_context_59_ss": dict(_PC_M2F, test=official_ss_test((4096, 520))),
    "mask2former_beit_adapter_large_480_40k_pascal_context_59_ms": dict(
        _PC_M2F, test=official_ms_test((4096, 520), (480, 480))),
    "upernet_beit_adapter_large_480_80k_pascal_context_59_ss": dict(_PC_UPN, test=official_ss_test((4096, 520))),
    "upernet_beit_adapter_large_480_80k_pascal_context_59_ms": dict(
        _PC_UPN, test=official_ms_test((4096, 520), (480, 480))),
    # the 256-channel decoder of the official file; batch 8 = 8 GPUs x 1 (README "8x1")
    # 2 stuff classes, the 256-channel decoder, 4 x 128 crops per GPU on 4 GPUs (README "4x4"), mDice
    "mask2former_beit_adapter_large_128_40k_chase_db1_ss": dict(
        _M2F, feat=256, img=128, classes=2, things=0, iters=40000, per_gpu=4, batch=16, eval=4000, stride=85,
        train_scale=(960, 999), test_scale=(960, 999), train_type="ChaseDB1Dataset", test_type="ChaseDB1Dataset",
        rzl=False, readme=350, metric="mDice", test=official_ss_test((960, 999))),
    "mask2former_beit_adapter_large_512_80k_potsdam_ss": dict(
        _M2F, feat=256, img=512, classes=6, things=1, iters=80000, per_gpu=1, batch=8, eval=8000, stride=341,
        train_scale=(2048, 512), test_scale=(2048, 512), train_type="PotsdamDataset", test_type="PotsdamDataset",
        readme=352, test=official_ss_test((2048, 512))),
}


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _resolved(c, split="val"):
    data = to_plain(c.data)
    return (SegmentationShards._kwargs(TrainLoader.__init__, data["train"], "data.train"),
            SegmentationShards.test_settings(data, to_plain(c.get("evaluation") or {}), split))


def test_new_recipes_exist():
    assert set(OFFICIAL) <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_new_recipe_fields_match_official(name):
    w = OFFICIAL[name]
    c = load_recipe(name)
    b = c.model.backbone
    assert (b.type, b.img_size, b.patch_size, b.embed_dim, b.depth, b.num_heads, b.mlp_ratio, b.qkv_bias) == \
        ("BEiTAdapter", w["img"], 16, 1024, 24, 16, 4, True)
    assert (b.use_abs_pos_emb, b.use_rel_pos_bias, b.init_values, b.drop_path_rate, b.with_cp) == \
        (False, True, 1e-6, 0.3, True)
    assert (b.conv_inplane, b.n_points, b.deform_num_heads, b.cffn_ratio, b.deform_ratio) == (64, 4, 16, 0.25, 0.5)
    assert b.interaction_indexes == I24
    assert (c.model.pretrained, c.get("load_from")) == (BEIT, w["load_from"])
    slide = {"mode": "slide", "crop_size": (w["img"],) * 2, "stride": (w["stride"],) * 2}
    h = c.model.decode_head
    assert h.type == w["head"] and list(h.in_channels) == [1024] * 4
    if w["head"] == "Mask2FormerHead":
        # the official cityscapes _ms names the Aug class (its slide crop to img_shape: a no-op without PadShortSide)
        assert c.model.type == ("EncoderDecoderMask2FormerAug" if name.endswith("cityscapes_ms")
                                else "EncoderDecoderMask2Former")
        # the official _base_/models/mask2former_beit*.py test_cfg (mmdet panoptic keys) + the config's slide window
        assert dict(c.model.test_cfg) == dict(panoptic_on=True, semantic_on=False, instance_on=True, max_per_image=100,
                                              iou_thr=0.8, filter_low_score=True, **slide)
        assert (h.num_queries, h.num_things_classes, h.num_things_classes + h.num_stuff_classes) == \
            (w["queries"], w["things"], w["classes"])
        assert (h.feat_channels, h.out_channels) == (w["feat"], w["feat"])
        assert h.loss_cls.class_weight == [1.0] * w["classes"] + [0.1]
        assert (h.loss_cls.loss_weight, h.loss_mask.loss_weight, h.loss_dice.loss_weight) == (2.0, 5.0, 5.0)
        assert h.pixel_decoder.encoder.transformerlayers.ffn_cfgs.with_cp is True
        assert h.transformer_decoder.transformerlayers.ffn_cfgs.with_cp is True
        assert c.model.train_cfg.num_points == 12544
    else:
        assert dict(c.model.test_cfg) == slide
        ah = c.model.auxiliary_head
        assert (h.channels, h.num_classes, ah.type, ah.in_channels, ah.num_classes) == \
            (1024, w["classes"], "FCNHead", 1024, w["classes"])
    o = c.optimizer
    assert (o.type, o.lr, tuple(o.betas), o.weight_decay, o.constructor) == \
        ("AdamW", 2e-5, (0.9, 0.999), 0.05, "LayerDecayOptimizerConstructor")
    assert dict(o.paramwise_cfg) == {"num_layers": 24, "layer_decay_rate": 0.9}
    assert dict(c.lr_config) == dict(policy="poly", warmup="linear", warmup_iters=1500, warmup_ratio=1e-6,
                                     power=1.0, min_lr=0.0, by_epoch=False)
    assert dict(c.runner) == {"type": "IterBasedRunner", "max_iters": w["iters"]}
    assert (c.data.samples_per_gpu, c.global_batch_size) == (w["per_gpu"], w["batch"])
    assert dict(c.checkpoint_config) == {"by_epoch": False, "interval": 1000, "max_keep_ckpts": 1}
    metric = w.get("metric", "mIoU")
    assert dict(c.evaluation) == {"interval": w["eval"], "metric": metric, "save_best": metric}
    assert c.get("fp16") is None
    assert (c.data.train.type, c.data.val.type, c.data.test.type) == (w["train_type"],) + (w["test_type"],) * 2
    crop = (w["img"], w["img"])
    assert _plain(to_plain(c.data.train.pipeline)) == _plain(official_train(
        w["train_scale"], crop, w["head"] == "Mask2FormerHead", w["rzl"], w["mapillary"]))
    ms = len(w["test"][1].get("img_ratios") or []) > 0
    for split in ("val", "test"):
        assert _plain(to_plain(c.data[split].pipeline)) == _plain(w["test"])
        train, test = _resolved(c, split)
        assert (train["scale"], train["ratio_range"], train["crop_size"], train["cat_max_ratio"],
                train["photometric"]) == (w["train_scale"], (0.5, 2.0), crop, 0.75, True)
        assert (train["mean"], train["std"], test["mean"], test["std"]) == (tuple(MEAN), tuple(STD)) * 2
        assert ("label_remap" in train) == w["mapillary"]
        if w["mapillary"]:
            assert (train["label_remap"]["name"], train["label_remap"]["in_classes"],
                    train["label_remap"]["num_classes"]) == ("MapillaryHack", 66, 19)
        assert (test["img_scale"], test["flip"], test["pad_short_side"]) == (w["test_scale"], ms, None)
        if ms:
            assert test["img_ratios"] == pytest.approx(w["test"][1]["img_ratios"])
            assert (test["size_divisor"], test["ms_resize"]) == (None, {"type": "SETR_Resize", "crop_size": crop})
        else:
            has_multiple = any(t["type"] == "ResizeToMultiple" for t in w["test"][1]["transforms"])
            assert (test["img_ratios"], test["ms_resize"]) == (None, None)
            assert test["size_divisor"] == (32 if has_multiple else None)


# the official README's #Param (configs/*/README.md at fd64a51) differs from the exact count of these two configs:
# it is the figure of the sibling configuration (Cityscapes: the 896 ADE20K / COCO-Stuff Mask2Former, 200 queries and
# 150 / 171 classes; Pascal Context 59: the COCO-Stuff-10k 512 Mask2Former), so the test checks the exact difference
# to the sibling recipe (whose count rounds to the README figure) and that the README figure is within 1M
SIBLING = {
    # fewer queries (query_feat + query_embed: 100 x 1024 x 2) and classes (class_embed + the official conv_seg)
    "mask2former_beit_adapter_large_896_80k_cityscapes_ss": (
        "mask2former_beit_adapter_large_896_80k_ade20k_ss", 100 * 1024 * 2 + (150 - 19) * 1025 * 2),
    "mask2former_beit_adapter_large_896_80k_cityscapes_ms": (
        "mask2former_beit_adapter_large_896_80k_ade20k_ss", 100 * 1024 * 2 + (150 - 19) * 1025 * 2),
    # fewer classes (class_embed + conv_seg) and 480 instead of 512 relative-position tables (59^2 vs 63^2 + 3 each)
    "mask2former_beit_adapter_large_480_40k_pascal_context_59_ss": (
        "mask2former_beit_adapter_large_512_40k_cocostuff10k_ss", (171 - 59) * 1025 * 2 + (63 ** 2 - 59 ** 2) * 16 * 24),
    "mask2former_beit_adapter_large_480_40k_pascal_context_59_ms": (
        "mask2former_beit_adapter_large_512_40k_cocostuff10k_ss", (171 - 59) * 1025 * 2 + (63 ** 2 - 59 ** 2) * 16 * 24),
}


def _count(name):
    """Parameters of the model built on the meta device by the task's validation, plus the official Mask2Former
    head's unused conv_seg (feat_channels x classes + classes), which this model does not build."""
    from vit_adapter_ds.tasks import load_and_validate

    c, _, model = load_and_validate(name)
    assert next(model.parameters()).device.type == "meta"
    n = sum(p.numel() for p in model.parameters())
    if c.model.type.startswith("EncoderDecoderMask2Former"):
        classes = c.model.decode_head.num_things_classes + c.model.decode_head.num_stuff_classes
        n += c.model.decode_head.feat_channels * classes + classes
    return c, model, n


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_new_recipe_builds_on_meta_with_the_official_parameter_count(name):
    w = OFFICIAL[name]
    c, model, n = _count(name)
    if w["head"] == "Mask2FormerHead":
        head = model.decode_head
        assert (model.num_classes, head.num_classes, head.num_queries) == (w["classes"],) * 2 + (w["queries"],)
        assert head.criterion.class_weight == [1.0] * w["classes"] + [0.1]
        enc, dec = head.pixel_decoder.encoder, head.transformer_decoder
        heads, ffn, feats = (32, 4096, 512) if w["feat"] == 1024 else (8, 2048, 128)
        assert len(enc.layers) == 6 and len(dec.layers) == 9 and dec.num_heads == heads
        attn = enc.layers[0].attentions[0]
        assert (attn.d_model, attn.n_heads, attn.n_levels, attn.n_points) == (w["feat"], heads, 3, 4)
        assert enc.layers[0].ffns[0].feedforward_channels == dec.layers[0].ffns[0].feedforward_channels == ffn
        assert enc.layers[0].ffns[0].with_cp is True and dec.layers[0].ffns[0].with_cp is True
        assert head.pixel_decoder.positional_encoding.num_feats == head.decoder_positional_encoding.num_feats == feats
    else:
        assert model.decode_head.conv_seg.out_channels == model.auxiliary_head.conv_seg.out_channels == w["classes"]
    assert all(blk.with_cp for blk in model.backbone.blocks)
    assert model.backbone.blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert model.test_cfg == {"mode": "slide", "crop_size": (w["img"],) * 2, "stride": (w["stride"],) * 2}
    if w["readme"] is None:
        return
    if name in SIBLING:
        sibling, fewer = SIBLING[name]
        assert n == _count(sibling)[2] - fewer
        assert abs(n / 1e6 - w["readme"]) < 1
    else:
        assert round(n / 1e6) == w["readme"]


# the official BEiT-Adapter-B Mask2Former configurations (coco_stuff10k / pascal_context *_base_*): typed from the
# official files; every field they share with their BEiT-Adapter-L sibling (data, pipelines, schedule, checkpoints,
# evaluation, classes, queries, loss) is compared with that sibling, itself checked above against the official values
BASE_SIBLING = {
    "mask2former_beit_adapter_base_512_40k_cocostuff10k_ss": "mask2former_beit_adapter_large_512_40k_cocostuff10k_ss",
    "mask2former_beit_adapter_base_512_40k_cocostuff10k_ms": "mask2former_beit_adapter_large_512_40k_cocostuff10k_ms",
    "mask2former_beit_adapter_base_480_40k_pascal_context_59_ss":
        "mask2former_beit_adapter_large_480_40k_pascal_context_59_ss",
    "mask2former_beit_adapter_base_480_40k_pascal_context_59_ms":
        "mask2former_beit_adapter_large_480_40k_pascal_context_59_ms",
}


@pytest.mark.parametrize("name", sorted(BASE_SIBLING))
def test_beit_adapter_base_mask2former_recipes_match_official(name):
    from vit_adapter_ds.tasks import load_and_validate

    c, _, model = load_and_validate(name)
    large = load_recipe(BASE_SIBLING[name])
    b = c.model.backbone
    assert c.model.pretrained == "pretrained/beit_base_patch16_224_pt22k_ft22k.pth"
    assert (b.type, b.embed_dim, b.depth, b.num_heads, b.drop_path_rate, b.deform_num_heads, b.get("with_cp")) == \
        ("BEiTAdapter", 768, 12, 12, 0.2, 12, None)
    assert b.interaction_indexes == [[0, 2], [3, 5], [6, 8], [9, 11]]
    h = c.model.decode_head
    assert (list(h.in_channels), h.feat_channels, h.out_channels) == ([768] * 4, 256, 256)
    enc, dec = h.pixel_decoder.encoder.transformerlayers, h.transformer_decoder.transformerlayers
    assert (enc.attn_cfgs.embed_dims, enc.attn_cfgs.num_heads, enc.ffn_cfgs.feedforward_channels) == (256, 8, 1024)
    assert (dec.attn_cfgs.embed_dims, dec.attn_cfgs.num_heads, dec.ffn_cfgs.feedforward_channels,
            dec.feedforward_channels) == (256, 8, 2048, 2048)
    assert enc.ffn_cfgs.get("with_cp") is None and dec.ffn_cfgs.get("with_cp") is None
    assert h.pixel_decoder.positional_encoding.num_feats == h.positional_encoding.num_feats == 128
    assert (c.optimizer.lr, dict(c.optimizer.paramwise_cfg)) == (3e-5, {"num_layers": 12, "layer_decay_rate": 0.95})
    for key in ("num_queries", "num_things_classes", "num_stuff_classes", "loss_cls", "loss_mask", "loss_dice"):
        assert to_plain(h[key]) == to_plain(large.model.decode_head[key]), key
    assert to_plain(c.model.test_cfg) == to_plain(large.model.test_cfg)
    for key in ("data", "lr_config", "runner", "checkpoint_config", "evaluation", "global_batch_size"):
        assert to_plain(c[key]) == to_plain(large[key]), key
    # the official README: 120M parameters (with the official head's unused conv_seg, 256 x classes + classes)
    classes = h.num_things_classes + h.num_stuff_classes
    n = sum(p.numel() for p in model.parameters()) + 256 * classes + classes
    assert round(n / 1e6) == 120
    assert not any(getattr(blk, "with_cp", False) for blk in model.backbone.blocks)
