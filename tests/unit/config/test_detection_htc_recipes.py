"""The HTC++ recipes equal the official configs field for field (the whole ``model`` dict, the pipelines, the data,
optimizer and schedule sections, typed here from czczup/ViT-Adapter ``detection/configs/htc++/*.py`` at fd64a51 and
docs/official-architecture.md §5.1), validate as the detection task with the paper's parameter count (401M), and the
task refuses the combinations it cannot run."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def official_model(pretrained, aug=False):
    """The official HTC++ ``model`` dict, the same in the BEiT-L and BEiTv2-L files but for ``pretrained``: backbone
    ``drop_path_rate=0.4`` (0.3 is ExtraAttention's ``drop_path``), plain ``nms`` (IoU 0.7) for the RPN's proposals
    in ``train_cfg.rpn_proposal`` and ``test_cfg.rpn``, soft-NMS only in ``test_cfg.rcnn``; the ``_ms`` files add
    ``type='HybridTaskCascadeAug'``, ``test_cfg.aug`` and ``pretrained=None``."""
    dpr, rpn_nms = 0.4, "nms"
    def bbox_head(stds):
        return dict(type="Shared4Conv1FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                    num_classes=80,
                    bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds),
                    reg_class_agnostic=True,
                    loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                    loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0))

    def mask_head(first):
        h = dict(type="HTCMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80,
                 loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))
        return dict(h, with_conv_res=False) if first else h

    def rcnn(iou):
        return dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                                  ignore_iof_thr=-1),
                    sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                                 add_gt_as_proposals=True),
                    mask_size=28, pos_weight=-1, debug=False)

    roi = lambda size, strides: dict(type="SingleRoIExtractor",  # noqa: E731
                                     roi_layer=dict(type="RoIAlign", output_size=size, sampling_ratio=0),
                                     out_channels=256, featmap_strides=strides)
    m = dict(
        type="HybridTaskCascadeAug" if aug else "HybridTaskCascade",
        backbone=dict(type="BEiTAdapter", img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                      mlp_ratio=4, qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6,
                      drop_path_rate=dpr, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25,
                      deform_ratio=0.5, window_attn=[True] * 24,
                      window_size=[14, 14, 14, 14, 14, 56, 14, 14, 14, 14, 14, 56, 14, 14, 14, 14, 14, 56,
                                   14, 14, 14, 14, 14, 56],
                      interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]], pretrained=pretrained),
        neck=[dict(type="ExtraAttention", in_channels=[1024] * 4, num_head=32, with_ffn=True, ffn_ratio=4.0,
                   drop_path=0.3),
              dict(type="FPN", in_channels=[1024] * 4, out_channels=256, num_outs=5)],
        rpn_head=dict(type="RPNHead", in_channels=256, feat_channels=256,
                      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                            strides=[4, 8, 16, 32, 64]),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(type="HybridTaskCascadeRoIHead", interleaved=True, mask_info_flow=True, num_stages=3,
                      stage_loss_weights=[1, 0.5, 0.25],
                      bbox_roi_extractor=roi(7, [4, 8, 16, 32]),
                      bbox_head=[bbox_head([0.1, 0.1, 0.2, 0.2]), bbox_head([0.05, 0.05, 0.1, 0.1]),
                                 bbox_head([0.033, 0.033, 0.067, 0.067])],
                      mask_roi_extractor=roi(14, [4, 8, 16, 32]),
                      mask_head=[mask_head(True), mask_head(False), mask_head(False)],
                      semantic_roi_extractor=roi(14, [8]),
                      semantic_head=dict(type="FusedSemanticHead", num_ins=5, fusion_level=1, num_convs=4,
                                         in_channels=256, conv_out_channels=256, num_classes=183,
                                         loss_seg=dict(type="CrossEntropyLoss", ignore_index=255, loss_weight=0.2))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=0, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=2000, nms=dict(type=rpn_nms, iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=[rcnn(0.5), rcnn(0.6), rcnn(0.7)]),
        test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type=rpn_nms, iou_threshold=0.7),
                               min_bbox_size=0),
                      rcnn=dict(score_thr=0.001, nms=dict(type="soft_nms", iou_threshold=0.5), max_per_img=100,
                                mask_thr_binary=0.5)))
    if aug:
        m["test_cfg"]["aug"] = dict(score_thr=0.001, nms=dict(type="soft_nms", iou_threshold=0.5), max_per_img=1000,
                                    scale_ranges=[["l"], ["l"], ["m", "l"], ["s", "m"], ["s", "m"], ["s", "m"]])
    return m


TRAIN_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="InstaBoost", action_candidate=("normal", "horizontal", "skip"), action_prob=(1, 0, 0),
         scale=(0.8, 1.2), dx=15, dy=15, theta=(-1, 1), color_prob=0.5, hflag=False, aug_ratio=0.5),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True, with_seg=True),
    dict(type="Resize", img_scale=[(1600, 400), (1600, 1400)], multiscale_mode="range", keep_ratio=True),
    dict(type="RandomFlip", flip_ratio=0.5),
    dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32),
    dict(type="SegRescale", scale_factor=1 / 8),
    dict(type="DefaultFormatBundle"),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks", "gt_semantic_seg"]),
]


def official_test_pipeline(scales, flip):
    return [dict(type="LoadImageFromFile"),
            dict(type="MultiScaleFlipAug", img_scale=scales, flip=flip,
                 transforms=[dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
                             dict(type="Normalize", **NORM), dict(type="Pad", size_divisor=32),
                             dict(type="ImageToTensor", keys=["img"]), dict(type="Collect", keys=["img"])])]


SS = ((1600, 1400), False)
MS = ([(3000, 600), (3000, 800), (3000, 1000), (3000, 1200), (3000, 1400), (3000, 1600)], True)
V2 = "pretrained/beitv2_large_patch16_224_pt1k_ft21k.pth"
V1 = "pretrained/beit_large_patch16_224_pt22k_ft22k.pth"
OFFICIAL = {  # recipe: (backbone pretrained, TTA, test pipeline); the _ms files have pretrained=None
    "htc++_beitv2_adapter_large_fpn_3x_coco": (V2, False, SS),
    "htc++_beitv2_adapter_large_fpn_3x_coco_ms": (None, True, MS),
    "htc++_beit_adapter_large_fpn_3x_coco": (V1, False, SS),
    "htc++_beit_adapter_large_fpn_3x_coco_ms": (None, True, MS),
}


def _plain(x):
    """Tuples as lists (mmengine keeps a recipe's tuples), for comparing with the typed official values."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_htc_recipes_match_official(name):
    pretrained, aug, (scales, flip) = OFFICIAL[name]
    c = Config.fromfile(str(DETECTION_RECIPES[name]))
    m = c.model
    # the values the issue names, spelled out (the whole dict is compared below)
    assert (m.backbone.drop_path_rate, m.neck[0].drop_path) == (0.4, 0.3)
    assert m.train_cfg.rpn_proposal.nms == {"type": "nms", "iou_threshold": 0.7}
    assert m.test_cfg.rpn.nms == {"type": "nms", "iou_threshold": 0.7}
    assert m.test_cfg.rcnn.nms == {"type": "soft_nms", "iou_threshold": 0.5}
    assert m.backbone.pretrained == pretrained
    assert _plain(c.model.to_dict()) == _plain(official_model(pretrained, aug))
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    assert c.data.train.seg_prefix == "data/coco/stuffthingmaps/train2017/"
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(official_test_pipeline(scales, flip))
    assert c.data.samples_per_gpu == 1 and c.global_batch_size == 16  # htc++/README: 16 GPUs x 1 image
    o = c.optimizer
    assert (o.type, o.lr, tuple(o.betas), o.weight_decay, o.constructor) == \
        ("AdamW", 1e-4, (0.9, 0.999), 0.05, "LayerDecayOptimizerConstructor")
    assert o.paramwise_cfg == {"num_layers": 24, "layer_decay_rate": 0.9}
    assert c.optimizer_config.grad_clip is None
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=2, save_last=True)
    assert dict(c.evaluation) == {"metric": ["bbox", "segm"]}  # no save_best in the HTC++ files
    assert "fp16" not in c  # commented out in the official files


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_htc_recipes_validate_as_the_detection_task(name):
    from vit_adapter_ds.tasks import ObjectDetection

    _, task, model = load_and_validate(str(DETECTION_RECIPES[name]))
    assert isinstance(task, ObjectDetection)
    assert type(model).__name__ == ("HybridTaskCascadeAug" if OFFICIAL[name][1] else "HybridTaskCascade")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 401  # paper: HTC++ ViT-Adapter-L, 401M
    assert model.rpn.nms_type == "nms" and model.pretrained == OFFICIAL[name][0]
    assert model.roi_head.semantic_head.conv_logits.out_channels == 183
    if OFFICIAL[name][1]:
        assert model.aug_cfg == {"score_thr": 0.001, "nms_type": "soft_nms", "nms_iou": 0.5, "max_per_img": 1000,
                                 "scale_ranges": (("l",), ("l",), ("m", "l"), ("s", "m"), ("s", "m"), ("s", "m"))}


def test_tta_pipeline_translation():
    from vit_adapter_ds.tasks.detection import tta_from_pipeline, val_loader_kwargs

    c = Config.fromfile(str(DETECTION_RECIPES["htc++_beitv2_adapter_large_fpn_3x_coco_ms"]))
    data = c.data.to_dict()
    assert tta_from_pipeline(data["val"]["pipeline"]) == {"scales": [tuple(s) for s in MS[0]], "flip": True}
    kw = val_loader_kwargs(data, "val")
    assert kw["scale"] is None and kw["mean"] == tuple(NORM["mean"]) and kw["std"] == tuple(NORM["std"])
    single = Config.fromfile(str(DETECTION_RECIPES["htc++_beitv2_adapter_large_fpn_3x_coco"])).data.to_dict()
    assert tta_from_pipeline(single["val"]["pipeline"]) is None
    assert val_loader_kwargs(single, "val")["scale"] == (1600, 1400)
    flip_only = [single["val"]["pipeline"][0], dict(single["val"]["pipeline"][1], flip=True)]
    assert tta_from_pipeline(flip_only) == {"scales": [(1600, 1400)], "flip": True}


V2_RECIPE = str(DETECTION_RECIPES["htc++_beitv2_adapter_large_fpn_3x_coco"])
MS_RECIPE = str(DETECTION_RECIPES["htc++_beitv2_adapter_large_fpn_3x_coco_ms"])


@pytest.mark.parametrize("recipe,option,msg", [
    (V2_RECIPE, "data.val.pipeline.1.flip=True",
     "data.val.pipeline asks for test-time augmentation .* needs model.type='HybridTaskCascadeAug'"),
    (V2_RECIPE, "model.test_cfg.aug.max_per_img=10", "test_cfg.aug is read by type='HybridTaskCascadeAug' only"),
    (MS_RECIPE, "model.test_cfg.aug.scale_ranges=[['l'],['m']]", "scale_ranges has 2 entries for the 6 scales"),
    (MS_RECIPE, "model.test_cfg.aug.nms.type=matrix_nms", "test_cfg.aug.nms.type='matrix_nms'"),
    (V2_RECIPE, "model.train_cfg.rpn_proposal.nms.type=soft_nms", "train_cfg.rpn_proposal.nms.type and "
                                                                   "test_cfg.rpn.nms.type differ"),
    (V2_RECIPE, "model.test_cfg.rpn.nms.type=matrix_nms", r"test_cfg.rpn.nms.type='matrix_nms'"),
])
def test_htc_recipe_errors(recipe, option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(recipe, [option])


def test_aug_type_needs_its_test_cfg():
    with pytest.raises(ConfigError, match="test_cfg.aug is required for type='HybridTaskCascadeAug'"):
        load_and_validate(V2_RECIPE, ["model.type=HybridTaskCascadeAug"])


def test_synthetic_htc_recipes_build():
    _, _, model = load_and_validate(str(DETECTION_RECIPES["synthetic_htc"]))
    assert type(model).__name__ == "HybridTaskCascade" and model.num_classes == 7
    assert model.roi_head.semantic_head.conv_logits.out_channels == 183
    _, _, model = load_and_validate(str(DETECTION_RECIPES["synthetic_htc_ms"]))
    assert type(model).__name__ == "HybridTaskCascadeAug" and len(model.aug_cfg["scale_ranges"]) == 3


def test_benchmark_configurations():
    """benchmarks/train_step.py: ``htc_l`` (BEiT-L HTC++ at 1216 x 1600) builds with ``with_cp`` reaching the
    backbone (meta device, 401M) and is skipped on a CPU; ``htc_cpu`` takes one finite training step."""
    import math
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    import train_step

    for cp in (False, True):
        with torch.device("meta"):
            model = train_step.build("htc_l", cp)
        flags = {type(m).__name__: bool(m.with_cp) for m in model.modules() if hasattr(m, "with_cp")}
        # ExtraAttention has with_cp too (the o365 recipes); the 3x recipe and the benchmark leave it off
        assert flags == {**dict.fromkeys({"Injector", "Extractor", "BEiTBlock"}, cp), "ExtraAttention": False}, flags
    assert type(model).__name__ == "HybridTaskCascade" and model.rpn.nms_type == "nms"
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 401
    assert train_step.model_kwargs("htc_l", 1, "meta")["semantic_labels"].shape == (1, 152, 200)
    r = train_step.one("htc_cpu", "fp32", batch=1, iters=1, warmup=0, device="cpu")
    assert r["size"] == [128, 128] and len(r["losses"]) == 1 and math.isfinite(r["losses"][0])
