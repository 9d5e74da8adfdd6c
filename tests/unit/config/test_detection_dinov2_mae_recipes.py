"""The DINOv2 Mask R-CNN recipes (``detection/configs/mask_rcnn/dinov2/mask_rcnn_dinov2_adapter_{small,base,large}
_fpn_3x_coco.py``) and the upgraded Mask R-CNN MAE recipes (``detection/configs/upgraded_mask_rcnn/
mask_rcnn_mae_adapter_base_lsj_fpn_{25,50}ep_coco.py``) equal the official files at czczup/ViT-Adapter fd64a51 field
for field (values typed here from those files and their ``_base_`` files, the shared ones imported from
test_detection_recipes_more), build on the meta device with the README parameter counts, and translate to the
implemented pipelines."""
from __future__ import annotations

import copy

import pytest
import torch

from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_htc_recipes import _plain
from test_detection_recipes_more import (AUGREG, I12, I24, IMNET, NO_DECAY, T12, T24, W12, W24, _header, _no_delete,
                                         _params, coco_pipelines, load, official_mask_rcnn_model, train_pipeline_3x)


def _dinov2_backbone(dim, depth, heads, dpr, deform_ratio, name):
    return dict(type="ViTAdapter", pretrain_size=592, img_size=592, patch_size=16, embed_dim=dim, depth=depth,
                num_heads=heads, mlp_ratio=4, drop_path_rate=dpr, conv_inplane=64, n_points=4, deform_num_heads=heads,
                cffn_ratio=0.25, deform_ratio=deform_ratio, interaction_indexes=I24 if depth == 24 else I12,
                window_attn=T24 if depth == 24 else T12, window_size=W24 if depth == 24 else W12,
                pretrained=f"pretrained/dinov2_vit{name}14_pretrain_14to16.pth")


DINOV2 = {
    # name: (backbone, FPN in-channels, train-pipeline norm, layer_decay_rate, README #Param (M), README box / mask AP,
    #        the recipe with the same model but a 197- or 577-token pos_embed (the README's count is that model's))
    "mask_rcnn_dinov2_adapter_small_fpn_3x_coco": (_dinov2_backbone(384, 12, 6, 0.2, 1.0, "s"), 384, IMNET, 0.70, 48,
                                                   "51.5 / 45.6", "mask_rcnn_deit_adapter_small_fpn_3x_coco"),
    "mask_rcnn_dinov2_adapter_base_fpn_3x_coco": (_dinov2_backbone(768, 12, 12, 0.3, 0.5, "b"), 768, IMNET, 0.60, 120,
                                                  "54.1 / 47.8", "mask_rcnn_deit_adapter_base_fpn_3x_coco"),
    "mask_rcnn_dinov2_adapter_large_fpn_3x_coco": (_dinov2_backbone(1024, 24, 16, 0.4, 0.5, "l"), 1024, AUGREG, 0.65,
                                                   348, "55.3 / 49.0", "mask_rcnn_augreg_adapter_large_fpn_3x_coco"),
}
SYNC = dict(type="MMSyncBN", requires_grad=True)


def official_mae_model(dpr):
    """upgraded_mask_rcnn/mask_rcnn_mae_adapter_base_lsj_fpn_*ep_coco.py merged into _base_/models/mask_rcnn_r50_fpn.py:
    the MAE ViTAdapter-B, FPN norm_cfg, rpn_head num_convs=2, Shared4Conv1FCBBoxHead and FCNMaskHead with norm_cfg
    (every other key of the heads kept from the base)."""
    backbone = dict(type="ViTAdapter", patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                    drop_path_rate=dpr, conv_inplane=64, n_points=4, deform_num_heads=12, cffn_ratio=0.25,
                    deform_ratio=0.5, use_extra_extractor=False, layer_scale=False, interaction_indexes=I12,
                    window_attn=T12, window_size=W12, pretrained="pretrained/mae_pretrain_vit_base.pth")
    m = official_mask_rcnn_model(backbone, 768)
    m["neck"]["norm_cfg"] = SYNC
    m["rpn_head"]["num_convs"] = 2
    m["roi_head"]["bbox_head"].update(type="Shared4Conv1FCBBoxHead", norm_cfg=SYNC)
    m["roi_head"]["mask_head"]["norm_cfg"] = SYNC
    return m


def lsj_train_pipeline():
    return [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="Resize", img_scale=(1024, 1024), ratio_range=(0.1, 2.0), multiscale_mode="range", keep_ratio=True),
        dict(type="RandomCrop", crop_type="absolute_range", crop_size=(1024, 1024), recompute_bbox=True,
             allow_negative_crop=True),
        dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
        dict(type="RandomFlip", flip_ratio=0.5),
        dict(type="Normalize", **IMNET),
        dict(type="Pad", size=(1024, 1024)),
        dict(type="DefaultFormatBundle"),
        dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"]),
    ]


MAE = {  # name: (drop_path_rate, max_epochs, README box / mask AP)
    "mask_rcnn_mae_adapter_base_lsj_fpn_25ep_coco": (0.1, 25, "50.3 / 44.7"),
    "mask_rcnn_mae_adapter_base_lsj_fpn_50ep_coco": (0.2, 50, "50.8 / 45.1"),
}


def _common_checks(c, name, folder, ap):
    assert c.data.train.type == "CocoDataset" and (c.data.samples_per_gpu, c.data.workers_per_gpu) == (2, 2)
    assert c.global_batch_size == 16  # 8 GPUs x 2 images (detection/README)
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"]}  # coco_instance.py's; no save_best in these files
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=3, save_last=True)
    assert (c.load_from, c.resume_from, c.log_config.interval) == (None, None, 50)  # default_runtime.py
    head = _header(name)
    assert head[0] == f"# Official: detection/configs/{folder}/{name}.py (fd64a51)"
    assert any(f"box / mask AP: {ap}." in line for line in head[:14])


@pytest.mark.parametrize("name", sorted(DINOV2))
def test_dinov2_recipes_match_official(name):
    backbone, dim, norm, rate, _, ap, _ = DINOV2[name]
    c = load(name)
    assert _no_delete(_plain(c.model.to_dict())) == _plain(official_mask_rcnn_model(backbone, dim))
    assert _plain(c.data.train.pipeline) == _plain(train_pipeline_3x(norm))
    # the files replace data.train.pipeline only: val / test keep coco_instance.py's (ImageNet mean / std, also for
    # the large file, whose train pipeline normalises with 127.5)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(coco_pipelines(IMNET)[1])
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(dict(
        type="AdamW", lr=0.0001, weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=backbone["depth"], layer_decay_rate=rate)))
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[27, 33])  # _base_/schedules/schedule_3x.py
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=36)
    assert "fp16" not in c  # commented out in the official files
    _common_checks(c, name, "mask_rcnn/dinov2", ap)


@pytest.mark.parametrize("name", sorted(MAE))
def test_mae_recipes_match_official(name):
    dpr, epochs, ap = MAE[name]
    c = load(name)
    assert _no_delete(_plain(c.model.to_dict())) == _plain(official_mae_model(dpr))
    assert _plain(c.data.train.pipeline) == _plain(lsj_train_pipeline())
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(coco_pipelines(IMNET)[1])
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(dict(
        type="AdamW", lr=0.0001, weight_decay=0.05, paramwise_cfg=dict(custom_keys=NO_DECAY)))
    # lr_config replaces schedule_1x.py's (_delete_=True); the runner keeps its type
    assert _no_delete(c.lr_config.to_dict()) == dict(policy="CosineAnnealing", min_lr_ratio=0.01, warmup="linear",
                                                     warmup_iters=2000, warmup_ratio=0.001)
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=epochs)
    assert c.fp16.to_dict() == dict(loss_scale=dict(init_scale=512))
    _common_checks(c, name, "upgraded_mask_rcnn", ap)


def test_pipelines_translate():
    for name, (_, _, norm, *_rest) in DINOV2.items():
        c = load(name)
        tr = T.train_ops_from_pipeline(c.data.train.pipeline, "data.train.pipeline")
        assert tr == {"ops": T.official_train_ops(), "mean": tuple(norm["mean"]), "std": tuple(norm["std"])}
        assert T.test_cfg_from_pipeline(c.data.val.pipeline, "data.val.pipeline") == \
            {"scale": (1333, 800), "mean": tuple(IMNET["mean"]), "std": tuple(IMNET["std"])}
    for name in MAE:
        tr = T.train_ops_from_pipeline(load(name).data.train.pipeline, "data.train.pipeline")
        assert tr["ops"] == [("resize_ratio", ((1024, 1024), (0.1, 2.0))), ("crop_recompute", (1024, 1024)),
                             ("filter_annotations", (0.01, 0.01)), ("flip", 0.5), ("pad_to", (1024, 1024))]


def _meta_model(cfg):
    with torch.device("meta"):
        return MaskRCNN.from_config(copy.deepcopy(cfg))


@pytest.mark.parametrize("name", sorted(DINOV2))
def test_dinov2_recipes_build_with_the_readme_parameter_count(name):
    """README #Param 48M / 120M / 348M are the DeiT-S / DeiT-B / AugReg-L rows' (the same architecture); the DINOv2
    models have a longer pos_embed (1 + 37 x 37 tokens for 592 / 16 instead of 197 for 224 or 577 for 384), and that is
    the whole difference (B: 121.1M, L: 348.7M)."""
    backbone, dim, _, _, readme_m, _, same = DINOV2[name]
    model = _meta_model(load(name).model.to_dict())
    other = _meta_model(load(same).model.to_dict())
    assert model.pretrained == backbone["pretrained"]
    assert round(_params(other) / 1e6) == readme_m
    tokens = {"mask_rcnn_augreg_adapter_large_fpn_3x_coco": 577}.get(same, 197)
    assert _params(model) - _params(other) == (1 + 37 * 37 - tokens) * dim
    assert tuple(model.backbone.pos_embed.shape) == (1, 1 + 37 * 37, dim)
    assert model.backbone.blocks[0].layer_scale  # gamma1 / gamma2 take DINOv2's ls1 / ls2


def test_dinov2_small_validates_as_a_recipe():
    _, task, validated = load_and_validate(str(DETECTION_RECIPES["mask_rcnn_dinov2_adapter_small_fpn_3x_coco"]))
    assert type(validated).__name__ == "MaskRCNN" and round(_params(validated) / 1e6) == 48


def test_mae_recipes_build_the_upgraded_model():
    """README #Param 122M: the model with the backbone's two extra extractors; the official files set
    use_extra_extractor=False (the two extractors, 2.0M, are not built), 120.1M."""
    for name in MAE:
        cfg = load(name).model.to_dict()
        model = _meta_model(cfg)
        assert model.pretrained == "pretrained/mae_pretrain_vit_base.pth"
        assert len(model.rpn.head.conv) == 2 and type(model.roi_heads.box_head).__name__ == "ConvFCBBoxHead"
        assert len(model.roi_heads.box_head.shared_convs) == 4 and len(model.roi_heads.box_head.shared_fcs) == 1
        assert not model.backbone.blocks[0].layer_scale
        norms = {type(m).__name__ for n, m in model.named_modules() if n.startswith(("neck", "roi_heads"))
                 and isinstance(m, torch.nn.BatchNorm2d)}
        assert norms == {"DistributedBatchNorm2d"}  # MMSyncBN: synchronised when several GPU ranks train
        cfg["backbone"]["use_extra_extractor"] = True
        with_extra = _meta_model(cfg)
        assert round(_params(with_extra) / 1e6) == 122
        extra = sum(p.numel() for k, p in with_extra.named_parameters() if ".extra_extractors." in k)
        assert _params(with_extra) - _params(model) == extra and round(_params(model) / 1e6, 1) == 120.1


def test_mae_recipes_validate_with_the_cosine_schedule():
    """The official schedule (CosineAnnealing by epoch, min_lr_ratio 0.01, 2000 warm-up iterations) is accepted and
    becomes the engine's cosine scheduler once the epochs are counted in iterations."""
    from vit_adapter_ds.engine.schedule import schedule_kwargs
    from vit_adapter_ds.tasks.detection import epochs_to_iterations

    cfg, _, model = load_and_validate(str(DETECTION_RECIPES["mask_rcnn_mae_adapter_base_lsj_fpn_25ep_coco"]))
    assert type(model).__name__ == "MaskRCNN"
    c = cfg.to_dict()
    epochs_to_iterations(c, 7330)  # 117266 images / 16
    assert schedule_kwargs(c) == dict(base_lr=1e-4, warmup_iters=2000, warmup_ratio=0.001, max_progress=25,
                                      iters_per_epoch=7330, min_lr_ratio=0.01, min_lr=None)
