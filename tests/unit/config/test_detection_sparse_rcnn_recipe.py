"""The Sparse R-CNN recipe equals the official config field for field (the whole ``model`` dict, pipelines, data,
optimizer with its ``rpn_head`` multipliers, grad clip, schedule, checkpoints, evaluation, no fp16; typed here from
czczup/ViT-Adapter ``detection/configs/sparse_rcnn/sparse_rcnn_deit_adapter_small_fpn_3x_coco.py`` and its
``_base_`` files at fd64a51), validates as the box-only detection task with the official parameter count
(``sparse_rcnn/README.md``: 110M), the official optimizer rule gives the learned proposals lr x0.25 / decay x0.002,
the tiny synthetic twin builds, and keys the model cannot run are refused with their dotted path."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_htc_recipes import _plain as _lists
from test_detection_recipes_more import _no_delete, coco_pipelines, train_pipeline_3x

NAME = "sparse_rcnn_deit_adapter_small_fpn_3x_coco"
RECIPE = str(DETECTION_RECIPES[NAME])
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def official_model():
    dii = dict(type="DIIHead", num_classes=80, num_ffn_fcs=2, num_heads=8, num_cls_fcs=1, num_reg_fcs=3,
               feedforward_channels=2048, in_channels=256, dropout=0.0, ffn_act_cfg=dict(type="ReLU", inplace=True),
               dynamic_conv_cfg=dict(type="DynamicConv", in_channels=256, feat_channels=64, out_channels=256,
                                     input_feat_shape=7, act_cfg=dict(type="ReLU", inplace=True),
                                     norm_cfg=dict(type="LN")),
               loss_bbox=dict(type="L1Loss", loss_weight=5.0), loss_iou=dict(type="GIoULoss", loss_weight=2.0),
               loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
               bbox_coder=dict(type="DeltaXYWHBBoxCoder", clip_border=False, target_means=[0.0] * 4,
                               target_stds=[0.5, 0.5, 1.0, 1.0]))
    rcnn = dict(assigner=dict(type="HungarianAssigner", cls_cost=dict(type="FocalLossCost", weight=2.0),
                              reg_cost=dict(type="BBoxL1Cost", weight=5.0),
                              iou_cost=dict(type="IoUCost", iou_mode="giou", weight=2.0)),
                sampler=dict(type="PseudoSampler"), pos_weight=1)
    return dict(
        type="SparseRCNN",
        backbone=dict(type="ViTAdapter", patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                      drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25,
                      deform_ratio=1.0, interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
                      window_attn=[True, True, False, True, True, False, True, True, False, True, True, False],
                      window_size=[14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None],
                      pretrained="pretrained/deit_small_patch16_224-cd65a155.pth"),
        neck=dict(type="FPN", in_channels=[384, 384, 384, 384], out_channels=256, start_level=0,
                  add_extra_convs="on_output", num_outs=4),
        rpn_head=dict(type="EmbeddingRPNHead", num_proposals=300, proposal_feature_channel=256),
        roi_head=dict(type="SparseRoIHead", num_stages=6, stage_loss_weights=[1] * 6, proposal_feature_channel=256,
                      bbox_roi_extractor=dict(type="SingleRoIExtractor",
                                              roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=2),
                                              out_channels=256, featmap_strides=[4, 8, 16, 32]),
                      bbox_head=[dii] * 6),
        train_cfg=dict(rpn=None, rcnn=[rcnn] * 6),
        test_cfg=dict(rpn=None, rcnn=dict(max_per_img=300)))


def _plain(x):
    return _lists(_no_delete(x))


def test_sparse_rcnn_recipe_matches_official():
    c = Config.fromfile(RECIPE)
    assert _plain(c.model.to_dict()) == _plain(official_model())
    train = train_pipeline_3x(NORM)
    train[-1] = dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels"])  # boxes only (masks loaded, not kept)
    assert _plain(c.data.train.pipeline) == _plain(train)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(coco_pipelines(NORM)[1])  # _base_/datasets/coco_detection
    assert c.data.samples_per_gpu == 2 and c.data.workers_per_gpu == 2 and c.global_batch_size == 16  # 8 x 2
    assert (c.num_stages, c.num_proposals) == (6, 300)
    o = c.optimizer
    assert (o.type, o.lr, o.weight_decay) == ("AdamW", 1e-4, 0.05) and "constructor" not in o
    assert o.paramwise_cfg.custom_keys == {"level_embed": {"decay_mult": 0.0}, "pos_embed": {"decay_mult": 0.0},
                                           "norm": {"decay_mult": 0.0}, "bias": {"decay_mult": 0.0},
                                           "rpn_head": {"decay_mult": 0.002, "lr_mult": 0.25}}
    assert dict(c.optimizer_config) == {"grad_clip": {"max_norm": 1, "norm_type": 2}}  # the _delete_ one wins
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=3, save_last=True)
    assert dict(c.evaluation) == {"interval": 1, "metric": "bbox"}  # _base_/datasets/coco_detection.py
    assert "fp16" not in c  # commented out in the official file
    text = open(RECIPE).read()
    assert text.splitlines()[0].startswith("# Official: detection/configs/sparse_rcnn/" + NAME)
    assert "fd64a51" in text[:400] and "48.1" in text[:1200]


def test_sparse_rcnn_recipe_validates_with_the_official_parameter_count():
    from vit_adapter_ds.models.detectors import SparseRCNN
    from vit_adapter_ds.tasks import ObjectDetection

    _, task, model = load_and_validate(RECIPE)
    assert isinstance(task, ObjectDetection) and type(model) is SparseRCNN and not model.with_mask
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 110  # sparse_rcnn/README.md: 110M
    assert model.pretrained == "pretrained/deit_small_patch16_224-cd65a155.pth"
    assert model.neck.names == ["0", "1", "2", "3"] and model.rpn_head.num_proposals == 300
    roi = model.roi_head
    assert roi.num_stages == 6 and roi.stage_loss_weights == [1.0] * 6 and roi.max_per_img == 300
    assert roi.loss_weights == [(2.0, 0.25, 2.0, 5.0, 2.0)] * 6 and roi.target_stds == [(0.5, 0.5, 1.0, 1.0)] * 6
    assert [(a.cls_weight, a.reg_weight, a.iou_weight, a.iou_mode, a.box_format) for a in roi.assigners] == \
        [(2.0, 5.0, 2.0, "giou", "xyxy")] * 6
    ex = roi.bbox_roi_extractor
    assert (ex.output_size, ex.sampling_ratio, ex.aligned, ex.featmap_strides) == (7, 2, True, [4, 8, 16, 32])
    h = roi.bbox_head[0]
    assert (h.attention.attn.num_heads, h.instance_interactive_conv.feat_channels, len(h.cls_fcs), len(h.reg_fcs),
            h.ffn.layers[0][0].out_features) == (8, 64, 3, 9, 2048)


def test_synthetic_twin_builds_and_the_proposals_get_the_official_multipliers():
    from vit_adapter_ds.engine.optim import param_groups_from_cfg

    cfg, task, model = load_and_validate(str(DETECTION_RECIPES["synthetic_sparse_rcnn"]))
    assert type(model).__name__ == "SparseRCNN" and model.num_classes == 7 and model.roi_head.num_stages == 2
    assert model.rpn_head.num_proposals == 20 and model.neck.out_channels == 64
    lr = cfg.optimizer.lr
    built = task.build_model(load_pretrained=False)
    groups = param_groups_from_cfg(built, cfg)
    rules = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(built.named_parameters())
    # mmcv custom_keys: the longest matching substring decides (rpn_head before norm / bias)
    assert rules[id(names["rpn_head.init_proposal_bboxes.weight"])] == pytest.approx((0.25 * lr, 0.002 * 0.05))
    assert rules[id(names["rpn_head.init_proposal_features.weight"])] == pytest.approx((0.25 * lr, 0.002 * 0.05))
    assert rules[id(names["roi_head.bbox_head.1.attention_norm.weight"])] == pytest.approx((lr, 0.0))
    assert rules[id(names["roi_head.bbox_head.0.fc_cls.bias"])] == pytest.approx((lr, 0.0))
    assert rules[id(names["roi_head.bbox_head.0.fc_cls.weight"])] == pytest.approx((lr, 0.05))


@pytest.mark.parametrize("option,msg", [
    ("model.roi_head.bbox_head.1.loss_iou.loss_wieght=1.0", r"model.roi_head.bbox_head\[1\].loss_iou.loss_wieght"),
    ("model.roi_head.bbox_head.0.loss_cls.type=CrossEntropyLoss", r"model.roi_head.bbox_head\[0\].loss_cls.type"),
    ("model.train_cfg.rcnn.2.assigner.iou_cost.iou_mode=iof", r"model.train_cfg.rcnn\[2\].assigner.iou_cost.iou_mode"),
    ("model.roi_head.num_stages=5", r"model.roi_head.stage_loss_weights must have 5 entries"),
    ("model.test_cfg.rcnn.score_thr=0.05", r"unknown key\(s\) model.test_cfg.rcnn.score_thr"),
    ("evaluation.metric=segm", r"predicts boxes only"),
])
def test_sparse_rcnn_recipe_errors_name_the_dotted_path(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(RECIPE, [option])
