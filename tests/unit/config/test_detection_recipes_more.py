"""More official detection recipes equal the official configs at czczup/ViT-Adapter fd64a51, field for field (values
typed here from the official files ``detection/configs/mask_rcnn/*_1x_coco.py`` and
``detection/configs/htc++/htc++_{augreg_adapter_large_fpn_3x_coco{,_ms},beit_adapter_large_fpn_3x_coco_old}.py``
with their ``_base_`` files, not read from the recipes), build on the meta device with the official parameter counts,
and translate to the implemented pipelines. ``version='old'`` of the detection BEiT-Adapter is checked against its
official rule (``detection/mmdet_custom/models/backbones/beit_adapter.py``: level k adds the ViT tokens after
interaction k)."""
from __future__ import annotations

import pytest
import torch
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_htc_recipes import TRAIN_PIPELINE as HTC_TRAIN_PIPELINE
from test_detection_htc_recipes import _plain, official_model, official_test_pipeline


def load(name):
    return Config.fromfile(str(DETECTION_RECIPES[name]))


def _no_delete(x):
    """A recipe's dict without mmengine's ``_delete_`` markers (kept where the base had nothing to delete)."""
    if isinstance(x, dict):
        return {k: _no_delete(v) for k, v in x.items() if k != "_delete_"}
    if isinstance(x, (list, tuple)):
        return [_no_delete(v) for v in x]
    return x


def _params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- Mask R-CNN 1x
IMNET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
AUGREG = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], to_rgb=True)
AUGREG_L = "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.pth"
NO_DECAY = {"level_embed": {"decay_mult": 0.0}, "pos_embed": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
            "bias": {"decay_mult": 0.0}}


def official_mask_rcnn_model(backbone, dim):
    """detection/configs/_base_/models/mask_rcnn_r50_fpn.py with the file's backbone (the ResNet is replaced,
    ``_delete_=True``) and neck."""
    return dict(
        type="MaskRCNN",
        backbone=backbone,
        neck=dict(type="FPN", in_channels=[dim] * 4, out_channels=256, num_outs=5),
        rpn_head=dict(type="RPNHead", in_channels=256, feat_channels=256,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                            strides=[4, 8, 16, 32, 64]),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
                                    out_channels=256, featmap_strides=[4, 8, 16, 32]),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=80,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0),
                                    out_channels=256, featmap_strides=[4, 8, 16, 32]),
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
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                      mask_thr_binary=0.5)))


SCALES = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
          (736, 1333), (768, 1333), (800, 1333)]


def train_pipeline_3x(norm):
    """The DETR-style AutoAugment + 1024 crop pipeline written out in every official 3x file."""
    return [
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
        dict(type="Normalize", **norm),
        dict(type="Pad", size_divisor=32),
        dict(type="DefaultFormatBundle"),
        dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"]),
    ]


def coco_pipelines(norm):
    """detection/configs/_base_/datasets/coco_instance.py (and _augreg): the 1x files keep the base pipelines."""
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
             dict(type="Resize", img_scale=(1333, 800), keep_ratio=True), dict(type="RandomFlip", flip_ratio=0.5),
             dict(type="Normalize", **norm), dict(type="Pad", size_divisor=32), dict(type="DefaultFormatBundle"),
             dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"])]
    test = [dict(type="LoadImageFromFile"),
            dict(type="MultiScaleFlipAug", img_scale=(1333, 800), flip=False,
                 transforms=[dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
                             dict(type="Normalize", **norm), dict(type="Pad", size_divisor=32),
                             dict(type="ImageToTensor", keys=["img"]),
                             dict(type="Collect", keys=["img"])])]
    return train, test


T12 = [True, True, False, True, True, False, True, True, False, True, True, False]
W12 = [14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None]
I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
T24 = [True, True, True, True, True, False] * 4
W24 = [14, 14, 14, 14, 14, None] * 4
I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]

MASK_RCNN_1X = {
    # name: (backbone dict, FPN in-channels, norm, optimizer, max_keep_ckpts, the 3x recipe with the same model,
    #        README #Param (M), README box / mask AP)
    "mask_rcnn_deit_adapter_tiny_fpn_1x_coco": (
        dict(type="ViTAdapter", patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4, drop_path_rate=0.1,
             conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0, layer_scale=True,
             interaction_indexes=I12, window_attn=T12, window_size=W12,
             pretrained="pretrained/deit_tiny_patch16_224-a1311bcf.pth"),
        192, IMNET,
        dict(type="AdamW", lr=0.0002, weight_decay=0.01, paramwise_cfg=dict(custom_keys=NO_DECAY)),
        3, "mask_rcnn_deit_adapter_tiny_fpn_3x_coco", 28, (41.1, 37.5)),
    "mask_rcnn_deit_adapter_small_fpn_1x_coco": (
        dict(type="ViTAdapter", patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, drop_path_rate=0.2,
             conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
             interaction_indexes=I12, window_attn=T12, window_size=W12,
             pretrained="pretrained/deit_small_patch16_224-cd65a155.pth"),
        384, IMNET,
        dict(type="AdamW", lr=0.0001, weight_decay=0.05, paramwise_cfg=dict(custom_keys=NO_DECAY)),
        3, "mask_rcnn_deit_adapter_small_fpn_3x_coco", 48, (44.7, 39.9)),
    "mask_rcnn_deit_adapter_base_fpn_1x_coco": (
        dict(type="ViTAdapter", patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, drop_path_rate=0.3,
             conv_inplane=64, n_points=4, deform_num_heads=12, cffn_ratio=0.25, deform_ratio=0.5,
             interaction_indexes=I12, window_attn=T12, window_size=W12,
             pretrained="pretrained/deit_base_patch16_224-b5f2ef4d.pth"),
        768, IMNET,
        dict(type="AdamW", lr=0.0001, weight_decay=0.05, paramwise_cfg=dict(custom_keys=NO_DECAY)),
        3, "mask_rcnn_deit_adapter_base_fpn_3x_coco", 120, (47.0, 41.8)),
    "mask_rcnn_augreg_adapter_large_fpn_1x_coco": (
        dict(type="ViTAdapter", img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24,
             num_heads=16, mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64, n_points=4, deform_num_heads=16,
             cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=I24, window_attn=T24, window_size=W24,
             pretrained="pretrained/" + AUGREG_L),
        1024, AUGREG,
        dict(type="AdamW", lr=0.0001, weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
             paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.80)),
        2, "mask_rcnn_augreg_adapter_large_fpn_3x_coco", 348, (48.7, 43.3)),
}


def _header(name):
    return DETECTION_RECIPES[name].read_text().splitlines()


@pytest.mark.parametrize("name", sorted(MASK_RCNN_1X))
def test_mask_rcnn_1x_recipes_match_official(name):
    backbone, dim, norm, optimizer, keep, _, _, (box, mask) = MASK_RCNN_1X[name]
    c = load(name)
    assert _no_delete(_plain(c.model.to_dict())) == _plain(official_mask_rcnn_model(backbone, dim))
    train, test = coco_pipelines(norm)
    assert _plain(c.data.train.pipeline) == _plain(train)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(test)
        assert c.data[split].type == "CocoDataset"
    assert c.data.train.type == "CocoDataset"
    assert (c.data.samples_per_gpu, c.data.workers_per_gpu) == (2, 2)
    assert c.global_batch_size == 16  # 8 GPUs x 2 images (detection/README: "a single node with 8 gpus")
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(optimizer)
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    # _base_/schedules/schedule_1x.py
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[8, 11])
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=12)
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=keep, save_last=True)
    assert "fp16" not in c  # `# fp16 = dict(loss_scale=dict(init_scale=512))` commented out
    assert (c.load_from, c.resume_from, c.log_config.interval) == (None, None, 50)  # default_runtime.py
    head = _header(name)
    assert head[0] == f"# Official: detection/configs/mask_rcnn/{name}.py (fd64a51)"
    assert any(f"{box} / {mask}" in line for line in head[:10])


@pytest.mark.parametrize("name", sorted(MASK_RCNN_1X))
def test_mask_rcnn_1x_pipelines_translate(name):
    """The 1x files train on the base single-scale pipeline (not the 3x AutoAugment + crop one): Resize 1333 x 800
    (keep ratio) then flip 0.5, both implemented; test at 1333 x 800."""
    norm = MASK_RCNN_1X[name][2]
    c = load(name)
    tr = T.train_ops_from_pipeline(c.data.train.pipeline, "data.train.pipeline")
    assert tr == {"ops": [("resize", ((1333, 800),)), ("flip", 0.5)], "mean": tuple(norm["mean"]),
                  "std": tuple(norm["std"])}
    assert T.test_cfg_from_pipeline(c.data.val.pipeline, "data.val.pipeline") == \
        {"scale": (1333, 800), "mean": tuple(norm["mean"]), "std": tuple(norm["std"])}


@pytest.mark.parametrize("name", sorted(MASK_RCNN_1X))
def test_mask_rcnn_1x_builds_with_the_official_parameter_count(name):
    backbone, _, _, _, _, three_x, readme_m, _ = MASK_RCNN_1X[name]
    c = load(name)
    with torch.device("meta"):
        model = MaskRCNN.from_config(c.model.to_dict())
        same = MaskRCNN.from_config(load(three_x).model.to_dict())
    assert model.pretrained == backbone["pretrained"]
    assert round(_params(model) / 1e6) == readme_m  # detection/configs/mask_rcnn/README.md, Mask R-CNN 1x #Param
    # the 1x and 3x files build the same model (ViTAdapter's layer_scale defaults to True, as in the official code)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in same.state_dict().items()]
    _, task, validated = load_and_validate(str(DETECTION_RECIPES[name]))
    assert type(validated).__name__ == "MaskRCNN" and _params(validated) == _params(model)


# ------------------------------------------------------------------------------------------------------ HTC++
def official_htc_augreg_model(aug):
    """htc++_augreg_adapter_large_fpn_3x_coco{,_ms}.py: the BEiT-L HTC++ model dict (the same heads, RPN, train and
    test settings, typed in test_detection_htc_recipes.official_model) with the AugReg-L ViTAdapter backbone
    (``with_cp=True``), ExtraAttention ``drop_path=drop_path_rate=0.4`` and ``test_cfg.rcnn.max_per_img`` 300 (100
    in the _ms file)."""
    m = official_model(None if aug else "pretrained/" + AUGREG_L, aug)
    m["backbone"] = dict(type="ViTAdapter", img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24,
                         num_heads=16, mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64, n_points=4,
                         deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5, with_cp=True,
                         interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
                         window_attn=[True, True, True, True, True, False,
                                      True, True, True, True, True, False,
                                      True, True, True, True, True, False,
                                      True, True, True, True, True, False],
                         window_size=[14, 14, 14, 14, 14, None,
                                      14, 14, 14, 14, 14, None,
                                      14, 14, 14, 14, 14, None,
                                      14, 14, 14, 14, 14, None],
                         pretrained=None if aug else "pretrained/" + AUGREG_L)
    m["neck"][0]["drop_path"] = 0.4
    m["test_cfg"]["rcnn"]["max_per_img"] = 100 if aug else 300
    return m


def official_htc_beit_old_model():
    """htc++_beit_adapter_large_fpn_3x_coco_old.py: the BEiT-L file with backbone ``drop_path_rate=0.3`` and
    ``version='old'`` (ExtraAttention ``drop_path=0.3`` in both)."""
    m = official_model("pretrained/beit_large_patch16_224_pt22k_ft22k.pth")
    m["backbone"]["drop_path_rate"] = 0.3
    m["backbone"]["version"] = "old"
    return m


AUGREG_MS = ([(1600, 600), (1600, 800), (1600, 1000), (1600, 1200), (1600, 1400), (1600, 1600)], True)
SS = ((1600, 1400), False)
HTC = {
    # name: (model dict, test pipeline scales / flip, README box / mask AP in the header, README #Param (M))
    "htc++_augreg_adapter_large_fpn_3x_coco": (official_htc_augreg_model(False), SS, ("56.6 / 49.0", "57.4 / 50.0"),
                                               401),
    "htc++_augreg_adapter_large_fpn_3x_coco_ms": (official_htc_augreg_model(True), AUGREG_MS,
                                                  ("57.7 / 49.9", "58.4 / 50.7"), 401),
    "htc++_beit_adapter_large_fpn_3x_coco_old": (official_htc_beit_old_model(), SS, ("57.9 / 50.2", "58.5 / 50.8"),
                                                 401),
}


@pytest.mark.parametrize("name", sorted(HTC))
def test_htc_recipes_match_official(name):
    model, (scales, flip), aps, _ = HTC[name]
    c = load(name)
    assert _plain(c.model.to_dict()) == _plain(model)
    assert _plain(c.data.train.pipeline) == _plain(HTC_TRAIN_PIPELINE)  # ImageNet mean / std in all three files
    assert c.data.train.seg_prefix == "data/coco/stuffthingmaps/train2017/"
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(official_test_pipeline(scales, flip))
    assert c.data.samples_per_gpu == 1 and c.global_batch_size == 16  # htc++/README: 16 GPUs x 1 image
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(dict(
        type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.90)))
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[27, 33])
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=36)
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=2, save_last=True)
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"]}  # no save_best in the HTC++ files
    assert "fp16" not in c
    head = _header(name)
    assert head[0] == f"# Official: detection/configs/htc++/{name}.py (fd64a51)"
    text = "\n".join(line for line in head if line.startswith("#"))
    assert all(ap in text for ap in aps), aps


@pytest.mark.parametrize("name", sorted(HTC))
def test_htc_recipes_validate_with_the_official_parameter_count(name):
    from vit_adapter_ds.tasks import ObjectDetection

    model_cfg, (scales, flip), _, readme_m = HTC[name]
    _, task, model = load_and_validate(str(DETECTION_RECIPES[name]))
    assert isinstance(task, ObjectDetection)
    assert type(model).__name__ == model_cfg["type"]
    assert type(model.backbone).__name__ == model_cfg["backbone"]["type"]
    assert model.pretrained == model_cfg["backbone"]["pretrained"]
    assert model.roi_head.max_per_img == model_cfg["test_cfg"]["rcnn"]["max_per_img"]
    assert model.neck[0].drop_path.drop_prob == model_cfg["neck"][0]["drop_path"]
    n = _params(model) / 1e6
    if "augreg" in name:
        # htc++/README lists 401M for every HTC++ row; the AugReg-L model is 400.3M: its backbone is the Mask R-CNN
        # AugReg-L one (347.9M in total, the paper's count) and it lacks BEiT's relative-position tables (+1.02M)
        # but has an absolute pos_embed (577 x 1024) and k biases, 0.41M fewer than the BEiT-L model's 400.7M
        assert round(n, 1) == 400.3
        flags = {type(m).__name__: bool(m.with_cp) for m in model.modules() if hasattr(m, "with_cp")}
        # the official file sets with_cp in the backbone only; its ExtraAttention neck has none (mmdet default False)
        assert flags == {**dict.fromkeys({"Injector", "Extractor", "Block"}, True), "ExtraAttention": False}, flags
    else:
        assert round(n) == readme_m and round(n, 1) == 400.7
        assert model.backbone.version == "old" and model.backbone.vit_feature_per_interaction
    if model_cfg["type"] == "HybridTaskCascadeAug":
        assert model.aug_cfg == {"score_thr": 0.001, "nms_type": "soft_nms", "nms_iou": 0.5, "max_per_img": 1000,
                                 "scale_ranges": (("l",), ("l",), ("m", "l"), ("s", "m"), ("s", "m"), ("s", "m"))}


def test_augreg_tta_pipeline_translation():
    from vit_adapter_ds.tasks.detection import tta_from_pipeline, val_loader_kwargs

    data = load("htc++_augreg_adapter_large_fpn_3x_coco_ms").data.to_dict()
    assert tta_from_pipeline(data["val"]["pipeline"]) == {"scales": AUGREG_MS[0], "flip": True}
    single = load("htc++_augreg_adapter_large_fpn_3x_coco").data.to_dict()
    assert tta_from_pipeline(single["val"]["pipeline"]) is None
    assert val_loader_kwargs(single, "val")["scale"] == (1600, 1400)


# ------------------------------------------------------------------------------- BEiT-Adapter version='old'
def _tiny_beit(version, seed=0):
    from vit_adapter_ds.models.backbones.beit import BEiTAdapter

    torch.manual_seed(seed)
    # init_values 0.5 (not 1e-6): the layer scales and injector gammas must let each interaction change the tokens
    m = BEiTAdapter(img_size=64, embed_dim=32, depth=4, num_heads=2, qkv_bias=True, init_values=0.5,
                    deform_num_heads=2, n_points=2, conv_inplane=8, window_attn=[True] * 4,
                    window_size=[2, 2, 2, 4], interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
                    task="detection", version=version)
    for i, bn in enumerate((m.norm1, m.norm2, m.norm3, m.norm4)):  # non-trivial eval statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def test_beit_adapter_version_old_follows_the_official_rule():
    """Official detection BEiTAdapter.forward: ``version='old'`` appends ``x`` after each interaction and adds
    ``outs[k]`` (up-sampled x4 / x2 / x1 / down-sampled x0.5) to level k; 'new' adds the last ``x`` to every level.
    Same weights (no parameter differs), so: level 4 is bitwise the same, and each input of norm_k differs by
    interp(x_k) - interp(x_last), where x_k are the interactions' token outputs."""
    import torch.nn.functional as F

    new, old = _tiny_beit("new"), _tiny_beit("old")
    assert [(k, v.shape) for k, v in new.state_dict().items()] == [(k, v.shape) for k, v in old.state_dict().items()]
    old.load_state_dict(new.state_dict())
    torch.manual_seed(1)
    img = torch.randn(2, 3, 64, 96)

    def run(model):
        xs, norm_in = [], []
        hooks = [layer.register_forward_hook(lambda mod, args, out: xs.append(out[0].detach()))
                 for layer in model.interactions]
        hooks += [bn.register_forward_pre_hook(lambda mod, args: norm_in.append(args[0].detach()))
                  for bn in (model.norm1, model.norm2, model.norm3, model.norm4)]
        with torch.no_grad():
            out = model(img)
        for h in hooks:
            h.remove()
        return out, xs, norm_in

    out_new, xs_new, in_new = run(new)
    out_old, xs_old, in_old = run(old)
    for a, b in zip(xs_new, xs_old):
        assert torch.equal(a, b)  # the token path is the same
    H, W = 64 // 16, 96 // 16
    maps = [x.transpose(1, 2).reshape(2, 32, H, W) for x in xs_new]
    up = lambda t, s: F.interpolate(t, scale_factor=s, mode="bilinear", align_corners=False)  # noqa: E731
    scales = (4, 2, 1, 0.5)
    for k in range(4):
        expect = in_new[k] - (maps[3] if scales[k] == 1 else up(maps[3], scales[k])) + \
            (maps[k] if scales[k] == 1 else up(maps[k], scales[k]))
        torch.testing.assert_close(in_old[k], expect, rtol=0, atol=1e-5)
    assert torch.equal(out_old[3], out_new[3])
    assert all((out_old[k] - out_new[k]).abs().max() > 1e-3 for k in range(3))  # the rule changes levels 1-3


@pytest.mark.parametrize("kwargs,msg", [
    (dict(version="older", task="detection"), "version must be 'new' or 'old'"),
    (dict(version="old", task="segmentation"), "version='old' exists only in the detection BEiT-Adapter"),
    (dict(version="old", task="detection", interaction_indexes=[[0, 1], [2, 3]]),
     "version='old' needs exactly 4 interactions"),
])
def test_beit_adapter_version_is_checked(kwargs, msg):
    from vit_adapter_ds.models.backbones.beit import BEiTAdapter

    base = dict(img_size=64, embed_dim=32, depth=4, num_heads=2, deform_num_heads=2, n_points=2, conv_inplane=8,
                interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], window_size=2)
    with pytest.raises(ValueError, match=msg):
        BEiTAdapter(**{**base, **kwargs})


def test_old_recipe_version_option_is_checked():
    with pytest.raises(ConfigError, match=r"model.backbone.*version must be 'new' or 'old'"):
        load_and_validate(str(DETECTION_RECIPES["htc++_beit_adapter_large_fpn_3x_coco_old"]),
                          ["model.backbone.version=older"])
