"""The Mask2Former recipes against the official configs (values typed from github.com/czczup/ViT-Adapter
segmentation/configs/{ade20k,coco_stuff164k}/mask2former_*.py, independently of the recipe files), each built on
the meta device through EncoderDecoderMask2Former.from_config."""
from __future__ import annotations

import pytest
import torch

from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.config.loader import load_recipe
from vit_adapter_ds.data.datasets import SegmentationShards
from vit_adapter_ds.data.loader import TrainLoader
from vit_adapter_ds.models.registry import SEGMENTORS
from vit_adapter_ds.models.segmentor_mask2former import EncoderDecoderMask2Former

BEIT = "pretrained/beit_large_patch16_224_pt22k_ft22k.pth"
BEITV2 = "pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth"
ADE_FROM = "pretrained/mask2former_beit_adapter_large_896_80k_cocostuff164k.pth.tar"
ADE_FROM_V2 = "pretrained/mask2former_beitv2_adapter_large_896_80k_cocostuff164k.pth"
R_BEIT = [640. / 896., 768. / 896., 1.0]
R_BEITV2 = [800. / 896., 832. / 896., 864. / 896., 1.0]
R_SETR = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
#  name: (pretrained, load_from, classes, things, queries, img_size, with_cp, iters, per_gpu, train/test scale,
#         stride, eval interval, img_ratios, flip)
OFFICIAL = {
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ss":
        (BEIT, None, 171, 80, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, None, False),
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ms":
        (BEIT, None, 171, 80, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, R_BEIT, True),
    "mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss":
        (BEITV2, None, 171, 80, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, None, False),
    "mask2former_beit_adapter_large_896_80k_ade20k_ss":
        (BEIT, ADE_FROM, 150, 100, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, None, False),
    "mask2former_beit_adapter_large_896_80k_ade20k_ms":
        (BEIT, ADE_FROM, 150, 100, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, R_BEIT, True),
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ss":  # its official test_pipeline flips (one scale)
        (BEITV2, ADE_FROM_V2, 150, 100, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, None, True),
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ms":
        (BEITV2, ADE_FROM_V2, 150, 100, 200, 896, True, 80000, 1, (3584, 896), 512, 8000, R_BEITV2, True),
    "mask2former_beit_adapter_large_640_160k_ade20k_ss":
        (BEIT, None, 150, 100, 100, 640, True, 160000, 2, (2048, 640), 426, 16000, None, False),
    "mask2former_beit_adapter_large_640_160k_ade20k_ms":  # SETR_Resize, no ResizeToMultiple (SETR below)
        (BEIT, None, 150, 100, 100, 640, True, 160000, 2, (2048, 640), 426, 16000, R_SETR, True),
    "mask2former_beitv2_adapter_large_896_160k_ade20k_ss":  # no COCO-Stuff stage, 160k, evaluation every 8000
        (BEITV2, None, 150, 100, 200, 896, True, 160000, 1, (3584, 896), 512, 8000, None, False),
}
# the _ms configs whose multi-scale test resizes with SETR_Resize(crop_size, setr_multi_scale=True)
SETR = {"mask2former_beit_adapter_large_640_160k_ade20k_ms": dict(type="SETR_Resize", crop_size=(640, 640))}
# #Param of the official README (segmentation/README.md, configs/*/README.md at fd64a51), in millions; the official
# count includes the decode head's unused conv_seg (classes x 1024 + classes), which this model does not build
README_PARAMS = {
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ss": 571,
    "mask2former_beit_adapter_large_896_80k_cocostuff164k_ms": 571,
    "mask2former_beitv2_adapter_large_896_80k_cocostuff164k_ss": 571,
    "mask2former_beit_adapter_large_896_80k_ade20k_ss": 571,
    "mask2former_beit_adapter_large_896_80k_ade20k_ms": 571,
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ss": 571,
    "mask2former_beitv2_adapter_large_896_80k_ade20k_ms": 571,
    "mask2former_beit_adapter_large_640_160k_ade20k_ss": 568,
    "mask2former_beit_adapter_large_640_160k_ade20k_ms": 568,
    "mask2former_beitv2_adapter_large_896_160k_ade20k_ss": 571,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_mask2former_recipe_matches_official(name):
    (pretrained, load_from, classes, things, queries, size, with_cp, iters, per_gpu, scale, stride, interval,
     ratios, flip) = OFFICIAL[name]
    c = load_recipe(name)
    # the official _ms configs with PadShortSide name the Aug class (slide scores cropped to img_shape)
    aug = name in ("mask2former_beit_adapter_large_896_80k_ade20k_ms",
                   "mask2former_beitv2_adapter_large_896_80k_ade20k_ms",
                   "mask2former_beit_adapter_large_896_80k_cocostuff164k_ms")
    assert c.model.type == ("EncoderDecoderMask2FormerAug" if aug else "EncoderDecoderMask2Former")
    assert (c.model.pretrained, c.load_from) == (pretrained, load_from)
    b = c.model.backbone
    assert (b.type, b.img_size, b.embed_dim, b.depth, b.num_heads, b.drop_path_rate, b.init_values) == \
        ("BEiTAdapter", size, 1024, 24, 16, 0.3, 1e-6)
    assert (b.deform_num_heads, b.deform_ratio, b.cffn_ratio, b.n_points, b.conv_inplane) == (16, 0.5, 0.25, 4, 64)
    assert bool(b.get("with_cp", False)) == with_cp
    assert (c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.constructor) == \
        (2e-5, 0.05, "LayerDecayOptimizerConstructor")
    assert dict(c.optimizer.paramwise_cfg) == {"num_layers": 24, "layer_decay_rate": 0.9}
    assert (c.lr_config.warmup_iters, c.lr_config.warmup_ratio, c.lr_config.power) == (1500, 1e-6, 1.0)
    assert (c.runner.max_iters, c.data.samples_per_gpu, c.global_batch_size) == (iters, per_gpu, 16)
    data = to_plain(c.data)
    train = SegmentationShards._kwargs(TrainLoader.__init__, data["train"], "data.train")
    test = SegmentationShards.test_settings(data, to_plain(c.evaluation), "val")
    assert (train["scale"], train["crop_size"]) == (scale, (size, size))
    assert [s["type"] for s in data["train"]["pipeline"]][-3:] == ["ToMask", "DefaultFormatBundle", "Collect"]
    assert (c.evaluation.interval, test["img_scale"], test["size_divisor"]) == \
        (interval, scale, None if name in SETR else 32)
    assert test["img_ratios"] == (None if ratios is None else pytest.approx(ratios)) and test["flip"] == flip
    assert test["ms_resize"] == SETR.get(name)
    with torch.device("meta"):
        model = SEGMENTORS[c.model.type].from_config(to_plain(c.model))
    assert isinstance(model, EncoderDecoderMask2Former) and model.unpad_slide == aug
    head = model.decode_head
    assert (head.num_classes, head.num_queries, model.num_classes) == (classes, queries, classes)
    assert c.model.decode_head.num_things_classes == things
    crit = head.criterion
    assert crit.class_weight == [1.0] * classes + [0.1]
    assert (crit.cls_weight, crit.mask_weight, crit.dice_weight, crit.dice_eps, crit.naive_dice) == \
        (2.0, 5.0, 5.0, 1.0, True)
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (12544, 3.0, 0.75)
    m = crit.matcher
    assert (m.cls_weight, m.mask_weight, m.dice_weight, m.dice_eps) == (2.0, 5.0, 5.0, 1.0)
    enc, dec = head.pixel_decoder.encoder, head.transformer_decoder
    assert len(enc.layers) == 6 and len(dec.layers) == 9 and dec.num_heads == 32
    attn = enc.layers[0].attentions[0]
    assert (attn.d_model, attn.n_heads, attn.n_levels, attn.n_points) == (1024, 32, 3, 4)
    assert enc.layers[0].ffns[0].feedforward_channels == dec.layers[0].ffns[0].feedforward_channels == 4096
    assert enc.layers[0].ffns[0].with_cp == dec.layers[0].ffns[0].with_cp == with_cp
    assert head.pixel_decoder.positional_encoding.num_feats == head.decoder_positional_encoding.num_feats == 512
    assert head.pixel_decoder.input_convs[0].gn.num_groups == 32
    assert model.test_cfg == {"mode": "slide", "crop_size": (size, size), "stride": (stride, stride)}
    n = sum(p.numel() for p in model.parameters()) + classes * 1024 + classes  # + the official unused conv_seg
    assert round(n / 1e6) == README_PARAMS[name]


def test_every_ade20k_and_coco_stuff_164k_mask2former_recipe_has_a_row():
    from vit_adapter_ds.recipes import RECIPES

    assert sorted(OFFICIAL) == sorted(README_PARAMS) == sorted(
        n for n in RECIPES if n.startswith("mask2former") and n.endswith(("_ade20k_ss", "_ade20k_ms",
                                                                          "_cocostuff164k_ss", "_cocostuff164k_ms")))
