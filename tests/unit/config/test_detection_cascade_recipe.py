"""The Cascade Mask R-CNN recipe equals the official config field for field (the whole ``model`` dict, pipelines,
data, optimizer, schedule, fp16, checkpoints and evaluation, typed here from czczup/ViT-Adapter
``detection/configs/cascade_rcnn/cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco.py`` and its
``_base_/models/cascade_mask_rcnn_r50_fpn.py`` at fd64a51), validates as the detection task with the official
parameter count (``cascade_rcnn/README.md``: 86M), the tiny synthetic twin builds, and keys the model cannot run are
refused with their dotted path."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_htc_recipes import _plain as _lists
from test_detection_recipes_more import _no_delete, coco_pipelines, train_pipeline_3x

NAME = "cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco"
RECIPE = str(DETECTION_RECIPES[NAME])
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
STDS = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])


def official_model():
    def bbox_head(stds):
        return dict(type="ConvFCBBoxHead", num_shared_convs=4, num_shared_fcs=1, in_channels=256,
                    conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
                    bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds),
                    reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type="SyncBN", requires_grad=True),
                    loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                    loss_bbox=dict(type="GIoULoss", loss_weight=10.0))

    def rcnn(iou):
        return dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                                  match_low_quality=False, ignore_iof_thr=-1),
                    sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                 add_gt_as_proposals=True),
                    mask_size=28, pos_weight=-1, debug=False)

    def roi(size):
        return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                    out_channels=256, featmap_strides=[4, 8, 16, 32])

    return dict(
        type="CascadeRCNN",
        backbone=dict(_delete_=True, type="ViTAdapter", patch_size=16, embed_dim=384, depth=12, num_heads=6,
                      mlp_ratio=4, drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                      cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
                      window_attn=[True, True, False, True, True, False, True, True, False, True, True, False],
                      window_size=[14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None],
                      pretrained="pretrained/deit_small_patch16_224-cd65a155.pth"),
        neck=dict(type="FPN", in_channels=[384, 384, 384, 384], out_channels=256, num_outs=5),
        rpn_head=dict(type="RPNHead", in_channels=256, feat_channels=256,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                            strides=[4, 8, 16, 32, 64]),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(type="CascadeRoIHead", num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
                      bbox_roi_extractor=roi(7), bbox_head=[bbox_head(s) for s in STDS],
                      mask_roi_extractor=roi(14),
                      mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256,
                                     num_classes=80,
                                     loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=0, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=2000, nms=dict(type="nms", iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=[rcnn(0.5), rcnn(0.6), rcnn(0.7)]),
        test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                               min_bbox_size=0),
                      rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                                mask_thr_binary=0.5)))


TRAIN_PIPELINE = train_pipeline_3x(NORM)
TEST_PIPELINE = coco_pipelines(NORM)[1]  # _base_/datasets/coco_instance.py


def _plain(x):
    return _lists(_no_delete(x))


def test_cascade_recipe_matches_official():
    c = Config.fromfile(RECIPE)
    m = c.model
    # the values the task names, spelled out (the whole dict is compared below)
    assert m.type == "CascadeRCNN" and m.roi_head.type == "CascadeRoIHead" and m.roi_head.num_stages == 3
    assert m.roi_head.stage_loss_weights == [1, 0.5, 0.25]
    assert [h.bbox_coder.target_stds for h in m.roi_head.bbox_head] == list(STDS)
    assert all((h.type, h.num_shared_convs, h.num_shared_fcs, h.norm_cfg.type, h.reg_decoded_bbox,
                h.reg_class_agnostic, h.loss_bbox.type, h.loss_bbox.loss_weight) ==
               ("ConvFCBBoxHead", 4, 1, "SyncBN", True, False, "GIoULoss", 10.0) for h in m.roi_head.bbox_head)
    assert [r.assigner.pos_iou_thr for r in m.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    assert not any(r.assigner.match_low_quality for r in m.train_cfg.rcnn)
    assert m.train_cfg.rpn.allowed_border == 0 and m.train_cfg.rpn_proposal.max_per_img == 2000
    assert _plain(m.to_dict()) == _plain(official_model())
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(TEST_PIPELINE)
    assert c.data.samples_per_gpu == 2 and c.global_batch_size == 16  # 8 GPUs x 2 images
    o = c.optimizer
    assert (o.type, o.lr, o.weight_decay) == ("AdamW", 1e-4, 0.05) and "constructor" not in o
    assert o.paramwise_cfg.custom_keys == {k: {"decay_mult": 0.0} for k in ("level_embed", "pos_embed", "norm",
                                                                           "bias")}
    assert c.optimizer_config.grad_clip is None
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=3, save_last=True)
    assert dict(c.evaluation) == {"metric": ["bbox", "segm"]}  # no save_best in this file (runtime's is commented)
    assert c.fp16 == {"loss_scale": {"init_scale": 512}}  # set (not commented out) in the official cascade file
    header = open(RECIPE).read().splitlines()[0]
    assert header.startswith("# Official: detection/configs/cascade_rcnn/" + NAME)
    assert "fd64a51" in open(RECIPE).read()[:400] and "51.5 / 44.3" in open(RECIPE).read()[:1200]


def test_cascade_recipe_validates_with_the_official_parameter_count():
    from vit_adapter_ds.models.detectors import CascadeRCNN
    from vit_adapter_ds.tasks import ObjectDetection

    _, task, model = load_and_validate(RECIPE)
    assert isinstance(task, ObjectDetection) and type(model) is CascadeRCNN
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 86  # cascade_rcnn/README.md: 86M
    assert model.pretrained == "pretrained/deit_small_patch16_224-cd65a155.pth"
    roi = model.roi_head
    assert roi.stage_loss_weights == [1.0, 0.5, 0.25] and roi.loss_bbox == [("giou", 10.0)] * 3
    assert roi.target_stds == [tuple(s) for s in STDS]
    assert [s.matcher.high_threshold for s in roi.stages] == [0.5, 0.6, 0.7]
    assert not any(s.matcher.allow_low_quality_matches for s in roi.stages)
    assert (roi.score_thr, roi.nms_iou, roi.max_per_img, roi.mask_size) == (0.05, 0.5, 100, 28)
    assert model.rpn.allowed_border == 0 and model.rpn.smooth_l1_beta == pytest.approx(1 / 9)
    assert all(type(h.shared_convs[0].bn).__name__ == "DistributedBatchNorm2d" for h in roi.bbox_head)
    assert len(roi.mask_head) == 3 and all(not h.with_conv_res for h in roi.mask_head)


def test_synthetic_cascade_recipe_builds():
    _, _, model = load_and_validate(str(DETECTION_RECIPES["synthetic_cascade_mask_rcnn"]))
    assert type(model).__name__ == "CascadeRCNN" and model.num_classes == 7 and model.neck.out_channels == 64
    assert model.roi_head.loss_bbox == [("giou", 10.0)] * 3 and len(model.roi_head.bbox_head[0].shared_convs) == 2


@pytest.mark.parametrize("option,msg", [
    ("model.roi_head.bbox_head.1.loss_bbox.loss_weigth=1.0", r"model.roi_head.bbox_head\[1\].loss_bbox.loss_weigth"),
    ("model.roi_head.bbox_head.2.reg_decoded_bbox=False",
     r"model.roi_head.bbox_head\[2\]: loss_bbox.type='GIoULoss' needs reg_decoded_bbox=True"),
    ("model.roi_head.bbox_head.0.loss_bbox.type=IoULoss", r"model.roi_head.bbox_head\[0\].loss_bbox.type='IoULoss'"),
    ("model.roi_head.bbox_head.0.num_cls_convs=1", r"model.roi_head.bbox_head\[0\].num_cls_convs=1 is not supported"),
    ("model.roi_head.bbox_head.0.norm_cfg.type=GN", r"model.roi_head.bbox_head\[0\].norm_cfg"),
    ("model.train_cfg.rcnn.1.assigner.pos_iuo_thr=0.6", r"model.train_cfg.rcnn\[1\].assigner.pos_iuo_thr"),
    ("model.roi_head.num_stages=2", r"model.roi_head.stage_loss_weights must have 2 entries"),
    ("model.roi_head.mask_head.num_classes=7", r"model.roi_head.mask_head\[0\].num_classes=7 differs"),
    ("model.test_cfg.rcnn.nms.type=soft_nms", r"model.test_cfg.rcnn.nms.type='soft_nms' is not supported"),
])
def test_cascade_recipe_errors_name_the_dotted_path(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(RECIPE, [option])
