"""The Mask R-CNN no-FPN recipe equals the official config field for field (the whole ``model`` dict, pipelines,
data, optimizer, schedule, fp16, checkpoints and evaluation, typed here from czczup/ViT-Adapter
``detection/configs/mask_rcnn/no_fpn/mask_rcnn_deit_adapter_small_3x_coco.py`` and its
``_base_/models/mask_rcnn_r50_fpn.py`` / ``coco_instance.py`` / ``schedule_3x.py`` at fd64a51), validates as the
detection task on the meta device with the official parameter count (``mask_rcnn/README.md``, the "FPN: No" row:
45M, box / mask AP 48.2 / 42.7), and a misspelled neck key is refused with its dotted path."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

NAME = "mask_rcnn_deit_adapter_small_3x_coco"
RECIPE = str(DETECTION_RECIPES[NAME])
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def official_model():
    def roi(size):
        return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                    out_channels=256, featmap_strides=[4, 8, 16, 32])

    return dict(
        type="MaskRCNN",
        backbone=dict(_delete_=True, type="ViTAdapter", patch_size=16, embed_dim=384, depth=12, num_heads=6,
                      mlp_ratio=4, drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                      cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
                      window_attn=[True, True, False, True, True, False, True, True, False, True, True, False],
                      window_size=[14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None],
                      pretrained="pretrained/deit_small_patch16_224-cd65a155.pth"),
        neck=dict(type="ChannelMapperWithPooling", in_channels=[384, 384, 384, 384], out_channels=256, num_outs=5),
        rpn_head=dict(type="RPNHead", in_channels=256, feat_channels=256,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                            strides=[4, 8, 16, 32, 64]),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead", bbox_roi_extractor=roi(7),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=80,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=roi(14),
            mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                    match_low_quality=True, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                               min_bbox_size=0),
                      rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                                mask_thr_binary=0.5)))


SCALES = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
          (736, 1333), (768, 1333), (800, 1333)]
TRAIN_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", flip_ratio=0.5),
    dict(type="AutoAugment", policies=[
        [dict(type="Resize", img_scale=SCALES, multiscale_mode="value", keep_ratio=True)],
        [dict(type="Resize", img_scale=[(400, 1333), (500, 1333), (600, 1333)], multiscale_mode="value",
              keep_ratio=True),
         dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
         dict(type="Resize", img_scale=SCALES, multiscale_mode="value", override=True, keep_ratio=True)]]),
    dict(type="RandomCrop", crop_type="absolute_range", crop_size=(1024, 1024), allow_negative_crop=True),
    dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32),
    dict(type="DefaultFormatBundle"),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"]),
]
TEST_PIPELINE = [  # _base_/datasets/coco_instance.py
    dict(type="LoadImageFromFile"),
    dict(type="MultiScaleFlipAug", img_scale=(1333, 800), flip=False,
         transforms=[dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"), dict(type="Normalize", **NORM),
                     dict(type="Pad", size_divisor=32), dict(type="ImageToTensor", keys=["img"]),
                     dict(type="Collect", keys=["img"])])]


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if k != "_delete_"}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def test_no_fpn_recipe_matches_official():
    c = Config.fromfile(RECIPE)
    m = c.model
    # the fields that differ from the FPN recipe, spelled out (the whole dict is compared below)
    assert dict(m.neck) == dict(type="ChannelMapperWithPooling", in_channels=[384] * 4, out_channels=256,
                                num_outs=5)
    assert m.type == "MaskRCNN" and m.train_cfg.rpn.allowed_border == -1
    assert _plain(m.to_dict()) == _plain(official_model())
    assert c.pretrained == "pretrained/deit_small_patch16_224-cd65a155.pth"
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(TEST_PIPELINE)
    assert dict(c.img_norm_cfg) == NORM
    assert c.data.samples_per_gpu == 2 and c.global_batch_size == 16  # 8 GPUs x 2 images
    o = c.optimizer
    assert (o.type, o.lr, o.weight_decay) == ("AdamW", 1e-4, 0.05) and "constructor" not in o
    assert "momentum" not in o  # _delete_=True drops the base SGD's keys
    assert o.paramwise_cfg.to_dict() == {"custom_keys": {k: {"decay_mult": 0.0} for k in (
        "level_embed", "pos_embed", "norm", "bias")}}
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=3, save_last=True)
    # the base's evaluation = dict(metric=['bbox', 'segm']) + the file's evaluation = dict(save_best='auto')
    assert dict(c.evaluation) == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert c.fp16.to_dict() == {"loss_scale": {"init_scale": 512}}  # set in this file (the FPN file comments it)
    text = open(RECIPE).read()
    assert text.splitlines()[0] == ("# Official: detection/configs/mask_rcnn/no_fpn/mask_rcnn_deit_adapter_small_3x_"
                                    "coco.py (fd64a51)")
    assert "48.2 / 42.7" in text[:1200] and "45M" in text[:1200]


def test_no_fpn_recipe_validates_on_meta_with_the_official_parameter_count():
    from vit_adapter_ds.models.detectors import ChannelMapperWithPooling, MaskRCNN
    from vit_adapter_ds.tasks import ObjectDetection

    _, task, model = load_and_validate(RECIPE)
    assert isinstance(task, ObjectDetection) and type(model) is MaskRCNN
    assert next(model.parameters()).device.type == "meta"
    assert type(model.neck) is ChannelMapperWithPooling and model.neck.names == ["0", "1", "2", "3", "4"]
    assert model.neck.kernel_size == 1 and len(model.neck.extra_convs) == 1
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6) == 45  # mask_rcnn/README.md, FPN "No": 45M
    assert model.pretrained == "pretrained/deit_small_patch16_224-cd65a155.pth"
    # the FPN recipe (README 48M) differs by exactly the four 3 x 3 output convs that the no-FPN neck lacks
    _, _, fpn = load_and_validate(str(DETECTION_RECIPES["mask_rcnn_deit_adapter_small_fpn_3x_coco"]))
    assert sum(p.numel() for p in fpn.parameters()) - n == 4 * (256 * 256 * 9 + 256)


@pytest.mark.parametrize("option,msg", [
    ("model.neck.kernel_sise=3", r"unknown key\(s\) model.neck.kernel_sise"),
    ("model.neck.norm_cfg.type=GN", r"model.neck.norm_cfg="),
    ("model.neck.num_outs=3", r"model.neck.num_outs=3 must be at least"),
])
def test_no_fpn_recipe_errors_name_the_dotted_path(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(RECIPE, [option])
