"""The one-stage recipes equal their official configs field for field (typed here from czczup/ViT-Adapter
``detection/configs/atss/atss_deit_adapter_small_fpn_3x_coco.py``, ``gfl/gfl_deit_adapter_small_fpn_3x_coco.py`` and
their ``_base_`` files at fd64a51: the whole ``model`` dict, pipelines, data, optimizer, schedule, fp16, checkpoints,
evaluation), validate as the detection task with the official README parameter counts (``atss/README.md``,
``gfl/README.md``: 36M each), the tiny synthetic twins build, and keys the model cannot run are refused with their
dotted path."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_htc_recipes import _plain as _lists
from test_detection_recipes_more import _no_delete, coco_pipelines, train_pipeline_3x

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
BACKBONE = dict(type="ViTAdapter", patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
                interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
                window_attn=[True, True, False, True, True, False, True, True, False, True, True, False],
                window_size=[14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None],
                pretrained="pretrained/deit_small_patch16_224-cd65a155.pth")
NECK = dict(type="FPN", in_channels=[384, 384, 384, 384], out_channels=256, start_level=1,
            add_extra_convs="on_output", num_outs=5)
ANCHORS = dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
               strides=[8, 16, 32, 64, 128])
TRAIN_CFG = dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                max_per_img=100)
OFFICIAL = {
    "atss_deit_adapter_small_fpn_3x_coco": (dict(
        type="ATSS", backbone=BACKBONE, neck=NECK,
        bbox_head=dict(type="ATSSHead", num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
                       anchor_generator=ANCHORS,
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                       target_stds=[0.1, 0.1, 0.2, 0.2]),
                       loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                       loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                       loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)),
        train_cfg=TRAIN_CFG, test_cfg=TEST_CFG), "atss", 36, "49.6"),
    "gfl_deit_adapter_small_fpn_3x_coco": (dict(
        type="GFL", backbone=BACKBONE, neck=NECK,
        bbox_head=dict(type="GFLHead", num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
                       anchor_generator=ANCHORS,
                       loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
                       loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25), reg_max=16,
                       loss_bbox=dict(type="GIoULoss", loss_weight=2.0)),
        train_cfg=TRAIN_CFG, test_cfg=TEST_CFG), "gfl", 36, "50.0"),
}
# the official 3x train pipeline of these files: boxes only (Collect without gt_masks, LoadAnnotations with_mask)
TRAIN_PIPELINE = train_pipeline_3x(NORM)[:-1] + [dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels"])]
TEST_PIPELINE = coco_pipelines(NORM)[1]  # _base_/datasets/coco_detection.py's test pipeline equals coco_instance's


def _plain(x):
    return _lists(_no_delete(x))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_one_stage_recipe_matches_official(name):
    model, folder, _, box_ap = OFFICIAL[name]
    recipe = str(DETECTION_RECIPES[name])
    c = Config.fromfile(recipe)
    assert _plain(c.model.to_dict()) == _plain(model)
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(TEST_PIPELINE)
        assert c.data[split].type == "CocoDataset"
    assert (c.data.samples_per_gpu, c.data.workers_per_gpu, c.global_batch_size) == (2, 2, 16)  # 8 GPUs x 2
    o = c.optimizer
    assert (o.type, o.lr, o.weight_decay) == ("AdamW", 1e-4, 0.05) and "constructor" not in o  # no layer decay
    assert o.paramwise_cfg.custom_keys == {k: {"decay_mult": 0.0} for k in ("level_embed", "pos_embed", "norm",
                                                                           "bias")}
    assert c.optimizer_config.grad_clip is None
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=3, save_last=True)
    assert dict(c.evaluation) == dict(interval=1, metric="bbox")  # _base_/datasets/coco_detection.py
    assert c.fp16 == {"loss_scale": {"init_scale": 512}} and c.find_unused_parameters is True
    text = open(recipe).read()
    assert text.splitlines()[0].startswith(f"# Official: detection/configs/{folder}/{name}.py")
    assert "fd64a51" in text[:300] and f"box AP {box_ap}" in text[:1200]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_one_stage_recipe_validates_with_the_readme_parameter_count(name):
    from vit_adapter_ds.tasks import ObjectDetection

    model_cfg, _, millions, _ = OFFICIAL[name]
    _, task, model = load_and_validate(str(DETECTION_RECIPES[name]))
    assert isinstance(task, ObjectDetection) and type(model).__name__ == model_cfg["type"]
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == millions  # the README's #Param
    assert model.pretrained == BACKBONE["pretrained"] and not model.with_mask
    assert model.neck.names == ["0", "1", "2", "extra0", "extra1"] and model.anchor_generator.strides == (
        8, 16, 32, 64, 128)
    head = model.bbox_head
    assert (head.score_thr, head.nms_pre, head.nms_iou, head.max_per_img) == (0.05, 1000, 0.6, 100)
    assert len(head.cls_convs) == 4 and head.cls_convs[0].gn.num_groups == 32


@pytest.mark.parametrize("kind", ["ATSS", "GFL"])
def test_synthetic_twins_build_and_box_only_evaluation_is_enforced(kind):
    path = str(DETECTION_RECIPES[f"synthetic_{kind.lower()}"])
    _, _, model = load_and_validate(path)
    assert type(model).__name__ == kind and model.num_classes == 7 and model.neck.out_channels == 64
    with pytest.raises(ConfigError, match="predicts boxes only: use metric=\\['bbox'\\]"):
        load_and_validate(path, {"evaluation.metric": ["bbox", "segm"]})


@pytest.mark.parametrize("option,msg", [
    ("model.bbox_head.loss_cls.gama=2.0", r"model.bbox_head.loss_cls.gama"),
    ("model.bbox_head.loss_bbox.type=IoULoss", r"model.bbox_head.loss_bbox.type='IoULoss' is not supported"),
    ("model.neck.add_extra_convs=on_input", r"model.neck.add_extra_convs='on_input' is not supported"),
    ("model.neck.start_level=0", r"model.bbox_head.anchor_generator.strides=\[8, 16, 32, 64, 128\] must be"),
    ("model.train_cfg.assigner.topk=0", r"model.train_cfg.assigner.topk"),
    ("model.train_cfg.allowed_border=0", r"model.train_cfg.allowed_border=0 is not supported"),
    ("model.test_cfg.min_bbox_size=4", r"model.test_cfg.min_bbox_size=4 is not supported"),
    ("find_unused_parameters=1", r"find_unused_parameters"),
    ("model.bbox_head.type=GFLHead", r"model.bbox_head.type='GFLHead' is not supported"),  # model.type ATSS
])
def test_atss_recipe_errors_name_the_dotted_path(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(str(DETECTION_RECIPES["atss_deit_adapter_small_fpn_3x_coco"]), [option])


@pytest.mark.parametrize("option,msg", [
    ("model.bbox_head.loss_dfl.type=SmoothL1Loss", r"model.bbox_head.loss_dfl.type='SmoothL1Loss' is not supported"),
    ("model.bbox_head.loss_cls.activated=True", r"model.bbox_head.loss_cls.activated=True is not supported"),
    ("model.bbox_head.reg_max=0", r"model.bbox_head.reg_max"),
    ("model.bbox_head.loss_centerness.loss_weight=1.0", r"model.bbox_head.loss_centerness"),
])
def test_gfl_recipe_errors_name_the_dotted_path(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(str(DETECTION_RECIPES["gfl_deit_adapter_small_fpn_3x_coco"]), [option])
