"""The Mask2Former COCO-panoptic recipe equals the official config field for field (the whole ``model`` dict, pipelines,
data, optimizer, schedule, checkpoints, evaluation and the EMA hook, typed here from czczup/ViT-Adapter
``detection/configs/mask2former/mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.py`` and its
``_base_/datasets/coco_panoptic.py``), and its model builds on the meta device with the parameter count derived here
by hand from mmdet's module shapes (the README gives none for this model)."""
from __future__ import annotations

import torch
from mmengine import Config

from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

NAME = "mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic"
RECIPE = str(DETECTION_RECIPES[NAME])
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
SCALES = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
          (736, 1333), (768, 1333), (800, 1333)]


def official_model():
    return dict(
        type="Mask2Former",
        backbone=dict(
            type="BEiTAdapter", img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
            qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6, drop_path_rate=0.4,
            conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5,
            window_attn=[True] * 24, window_size=([14] * 5 + [56]) * 4,
            interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
            pretrained="pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth"),
        panoptic_head=dict(
            type="Mask2FormerHead", in_channels=[1024] * 4, strides=[4, 8, 16, 32], feat_channels=256,
            out_channels=256, num_things_classes=80, num_stuff_classes=53, num_queries=100,
            num_transformer_feat_level=3,
            pixel_decoder=dict(
                type="MSDeformAttnPixelDecoder", num_outs=3, norm_cfg=dict(type="GN", num_groups=32),
                act_cfg=dict(type="ReLU"),
                encoder=dict(
                    type="DetrTransformerEncoder", num_layers=6,
                    transformerlayers=dict(
                        type="BaseTransformerLayer",
                        attn_cfgs=dict(type="MultiScaleDeformableAttention", embed_dims=256, num_heads=8,
                                       num_levels=3, num_points=4, im2col_step=64, dropout=0.0, batch_first=False,
                                       norm_cfg=None, init_cfg=None),
                        ffn_cfgs=dict(type="FFN", embed_dims=256, feedforward_channels=1024, num_fcs=2, ffn_drop=0.0,
                                      act_cfg=dict(type="ReLU", inplace=True)),
                        operation_order=("self_attn", "norm", "ffn", "norm")),
                    init_cfg=None),
                positional_encoding=dict(type="SinePositionalEncoding", num_feats=128, normalize=True),
                init_cfg=None),
            enforce_decoder_input_project=False,
            positional_encoding=dict(type="SinePositionalEncoding", num_feats=128, normalize=True),
            transformer_decoder=dict(
                type="DetrTransformerDecoder", return_intermediate=True, num_layers=9,
                transformerlayers=dict(
                    type="DetrTransformerDecoderLayer",
                    attn_cfgs=dict(type="MultiheadAttention", embed_dims=256, num_heads=8, attn_drop=0.0,
                                   proj_drop=0.0, dropout_layer=None, batch_first=False),
                    ffn_cfgs=dict(embed_dims=256, feedforward_channels=2048, num_fcs=2,
                                  act_cfg=dict(type="ReLU", inplace=True), ffn_drop=0.0, dropout_layer=None,
                                  add_identity=True),
                    feedforward_channels=2048,
                    operation_order=("cross_attn", "norm", "self_attn", "norm", "ffn", "norm")),
                init_cfg=None),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=2.0, reduction="mean",
                          class_weight=[1.0] * 133 + [0.1]),
            loss_mask=dict(type="CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
            loss_dice=dict(type="DiceLoss", use_sigmoid=True, activate=True, reduction="mean", naive_dice=True,
                           eps=1.0, loss_weight=5.0)),
        panoptic_fusion_head=dict(type="MaskFormerFusionHead", num_things_classes=80, num_stuff_classes=53,
                                  loss_panoptic=None, init_cfg=None),
        train_cfg=dict(
            num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
            assigner=dict(type="MaskHungarianAssigner", cls_cost=dict(type="ClassificationCost", weight=2.0),
                          mask_cost=dict(type="CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                          dice_cost=dict(type="DiceCost", weight=5.0, pred_act=True, eps=1.0)),
            sampler=dict(type="MaskPseudoSampler")),
        test_cfg=dict(panoptic_on=True, semantic_on=False, instance_on=True, max_per_image=100, iou_thr=0.8,
                      filter_low_score=True),
        init_cfg=None)


TRAIN_PIPELINE = [
    dict(type="LoadImageFromFile", to_float32=True),
    dict(type="LoadPanopticAnnotations", with_bbox=True, with_mask=True, with_seg=True),
    dict(type="RandomFlip", flip_ratio=0.5),
    dict(type="AutoAugment", policies=[
        [dict(type="Resize", img_scale=SCALES, multiscale_mode="value", keep_ratio=True)],
        [dict(type="Resize", img_scale=[(400, 1333), (500, 1333), (600, 1333)], multiscale_mode="value",
              keep_ratio=True),
         dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
         dict(type="Resize", img_scale=SCALES, multiscale_mode="value", override=True, keep_ratio=True)]]),
    dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32),
    dict(type="DefaultFormatBundle", img_to_float=True),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks", "gt_semantic_seg"]),
]
TEST_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="MultiScaleFlipAug", img_scale=(1333, 800), flip=False, transforms=[
        dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"), dict(type="Normalize", **NORM),
        dict(type="Pad", size_divisor=32), dict(type="ImageToTensor", keys=["img"]),
        dict(type="Collect", keys=["img"])]),
]
BASE_TRAIN_PIPELINE = [  # _base_/datasets/coco_panoptic.py
    dict(type="LoadImageFromFile"),
    dict(type="LoadPanopticAnnotations", with_bbox=True, with_mask=True, with_seg=True),
    dict(type="Resize", img_scale=(1333, 800), keep_ratio=True),
    dict(type="RandomFlip", flip_ratio=0.5),
    dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32),
    dict(type="SegRescale", scale_factor=1 / 4),
    dict(type="DefaultFormatBundle"),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks", "gt_semantic_seg"]),
]


def _plain(x):
    """Tuples as lists (mmengine keeps a config's tuples), recursively."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def test_panoptic_recipe_matches_official():
    c = Config.fromfile(RECIPE)
    assert _plain(c.model.to_dict()) == _plain(official_model())
    assert (c.num_things_classes, c.num_stuff_classes) == (80, 53)
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(TEST_PIPELINE)
        assert c.data[split].ins_ann_file == "data/coco/annotations/instances_val2017.json"
        assert c.data[split].type == "CocoPanopticDataset"
    assert c.data.train.type == "CocoPanopticDataset"
    assert (c.data.samples_per_gpu, c.data.workers_per_gpu, c.global_batch_size) == (1, 2, 16)  # 16 GPUs x 1
    assert c.optimizer.to_dict() == dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05,
                                         constructor="LayerDecayOptimizerConstructor",
                                         paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.90))
    assert c.optimizer_config.to_dict() == dict(grad_clip=dict(max_norm=0.01, norm_type=2))
    assert c.lr_config.to_dict() == dict(policy="step", gamma=0.1, by_epoch=False, step=[191750, 236000],
                                         warmup="linear", warmup_by_epoch=False, warmup_ratio=1.0, warmup_iters=10)
    assert c.max_iters == 265500 and c.runner.to_dict() == dict(type="IterBasedRunner", max_iters=265500)
    assert c.log_config.to_dict() == dict(interval=50, hooks=[dict(type="TextLoggerHook", by_epoch=False)])
    assert c.interval == 5000 and _plain(c.workflow) == [["train", 5000]]
    assert c.checkpoint_config.to_dict() == dict(by_epoch=False, interval=5000, save_last=True, max_keep_ckpts=3)
    assert _plain(c.dynamic_intervals) == [[265001, 265500]]
    assert _plain(c.evaluation.to_dict()) == dict(interval=5000, dynamic_intervals=[[265001, 265500]],
                                                  metric=["PQ", "bbox", "segm"])
    assert _plain(c.custom_hooks) == [dict(type="ExpMomentumEMAHook", resume_from=None, momentum=0.0001,
                                           priority=49)]
    header = open(RECIPE).read().splitlines()[0]
    assert header.startswith("# Official: detection/configs/mask2former/" + NAME)
    assert "PQ 58.4" in open(RECIPE).read()[:1500]


def test_panoptic_dataset_base_is_the_official_one():
    base = Config.fromfile(str(DETECTION_RECIPES[NAME].parent.parent / "_base_" / "datasets" / "coco_panoptic.py"))
    assert base.dataset_type == "CocoPanopticDataset"
    assert _plain(base.train_pipeline) == _plain(BASE_TRAIN_PIPELINE)
    assert _plain(base.test_pipeline) == _plain(TEST_PIPELINE)
    assert (base.data.samples_per_gpu, base.data.workers_per_gpu) == (2, 2)
    assert base.evaluation.to_dict() == dict(interval=1, metric=["PQ"])


def _head_params(c=256, cin=1024, enc=6, dec=9, ffn_enc=1024, ffn_dec=2048, heads=8, levels=3, points=4, q=100,
                 classes=133):
    """mmdet Mask2FormerHead parameters from its module shapes."""
    conv1 = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    gn = 2 * c
    pixel = levels * (conv1(cin, c) + gn)                                   # input_convs (bias, GN)
    msda = conv1(c, heads * levels * points * 2) + conv1(c, heads * levels * points) + 2 * conv1(c, c)
    pixel += enc * (msda + conv1(c, ffn_enc) + conv1(ffn_enc, c) + 2 * gn)  # encoder layers (2 LayerNorms)
    pixel += levels * c                                                      # level_encoding
    pixel += conv1(cin, c, bias=False) + gn                                 # lateral conv (no bias before GN)
    pixel += 9 * c * c + gn                                                  # 3x3 output conv (no bias) + GN
    pixel += conv1(c, c)                                                     # mask_feature
    mha = 3 * c * c + 3 * c + conv1(c, c)
    decoder = dec * (2 * mha + conv1(c, ffn_dec) + conv1(ffn_dec, c) + 3 * gn) + gn  # + post_norm
    rest = 2 * q * c + levels * c + conv1(c, classes + 1) + 3 * conv1(c, c)
    return pixel, pixel + decoder + rest


def test_panoptic_recipe_builds_on_meta_with_the_derived_parameter_count():
    from vit_adapter_ds.models.detectors import Mask2Former

    c = Config.fromfile(RECIPE)
    with torch.device("meta"):
        model = Mask2Former.from_config(to_plain(c.model))
    head = model.panoptic_head
    pixel, total = _head_params()
    assert sum(p.numel() for p in head.pixel_decoder.parameters()) == pixel == 6_101_440
    assert sum(p.numel() for p in head.parameters()) == total == 20_594_502
    # the backbone is the detection BEiTv2-Adapter-L of the HTC++ BEiTv2 recipe (the same dict, 401M model there)
    htc = Config.fromfile(str(DETECTION_RECIPES["htc++_beitv2_adapter_large_fpn_3x_coco"]))
    assert to_plain(htc.model.backbone) == to_plain(c.model.backbone)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 348
    assert model.pretrained == "pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth"
    assert model.test_cfg == dict(panoptic_on=True, instance_on=True, max_per_image=100, iou_thr=0.8,
                                  object_mask_thr=0.8, filter_low_score=True)
    crit = head.criterion
    assert crit.class_weight == [1.0] * 133 + [0.1] and (crit.cls_weight, crit.mask_weight, crit.dice_weight) == (
        2.0, 5.0, 5.0)
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert (head.num_queries, len(head.transformer_decoder.layers), model.num_things_classes) == (100, 9, 80)
