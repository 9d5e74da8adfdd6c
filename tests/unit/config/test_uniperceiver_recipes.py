"""The three official Uni-Perceiver-Adapter recipes equal the official configs field for field (values typed here from
github.com/czczup/ViT-Adapter at fd64a51: segmentation/configs/ade20k/upernet_uniperceiver_adapter_large_512_160k_
ade20k.py, detection/configs/mask_rcnn/mask_rcnn_uniperceiver_adapter_base_fpn_3x_coco.py and
detection/configs/htc++/htc++_uniperceiver_adapter_large_fpn_3x_coco.py with their _base_ files; the typed references
shared with the other recipe tests are imported from them), and build on the meta device through the task's validation
with the official parameter counts:

* UperNet Uni-Perceiver-Adapter-L: segmentation/README.md lists 364M; the official model has 363.4M (the official
  UniPerceiverAdapter built from the official class has the same 326,593,728 backbone parameters, key for key, as
  ours: tests/unit/models/test_official_parity.py checks the key list at base size). 364M is the AugReg-L row's count
  (363.8M: its 577 x 1024 pos_embed against Uni-Perceiver's 196 + 8 position rows), so the README figure is checked
  to be within 0.5M and the exact count is checked against the AugReg-L recipe's.
* Mask R-CNN Uni-Perceiver-Adapter-B: 120M (detection/configs/mask_rcnn/README.md).
* HTC++ Uni-Perceiver-Adapter-L: no official README lists a parameter count (or result) for this file; the measured
  count, 399.9M, is the AugReg-L HTC++ model's 400.3M less the same 0.38M of position tables.
"""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.recipes import RECIPES
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_config_recipes import I12, I24, _resolved
from test_detection_htc_recipes import TRAIN_PIPELINE as HTC_TRAIN_PIPELINE
from test_detection_htc_recipes import _plain, official_model, official_test_pipeline
from test_detection_recipes_more import (IMNET, _no_delete, coco_pipelines, official_mask_rcnn_model,
                                         train_pipeline_3x)
from test_seg_recipes_more_datasets import official_ss_test, official_train

SEG = "upernet_uniperceiver_adapter_large_512_160k_ade20k"
MASK_RCNN = "mask_rcnn_uniperceiver_adapter_base_fpn_3x_coco"
HTC = "htc++_uniperceiver_adapter_large_fpn_3x_coco"
UNI_L = "pretrained/uni-perceiver-large-L24-H1024-224size-pretrained_converted.pth"
UNI_B = "pretrained/uni-perceiver-base-L12-H768-224size-torch-pretrained_converted.pth"
T12 = [True, True, False, True, True, False, True, True, False, True, True, False]
W12 = [14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None]
T24 = [True, True, True, True, True, False] * 4
W24 = [14, 14, 14, 14, 14, None] * 4


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _header(path):
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


def _check_layer_decay(c, model):
    """The recipe's optimizer groups: Uni-Perceiver's visual_embed is layer 0, layers.i layer i + 1, the adapter and
    heads the top layer (official get_num_layer_for_vit; checked in full in tests/unit/models/test_uniperceiver.py)."""
    from vit_adapter_ds.engine.optim import param_groups_for_recipe

    depth, rate = c.optimizer.paramwise_cfg.num_layers, c.optimizer.paramwise_cfg.layer_decay_rate
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in param_groups_for_recipe(model, c) for p in g["params"]}
    top = depth + 1
    assert scale["backbone.visual_embed.patch_embed.proj.weight"] == pytest.approx(rate ** top)
    assert scale["backbone.visual_embed.patch_embed.spatial_pos_embed.weight"] == pytest.approx(rate ** top)
    assert scale["backbone.layers.0.self_attn.in_proj.weight"] == pytest.approx(rate ** (top - 1))
    assert scale[f"backbone.layers.{depth - 1}.gamma_2"] == pytest.approx(rate)
    assert scale["backbone.level_embed"] == scale["backbone.interactions.0.injector.gamma"] == 1.0


# --------------------------------------------------------------------------------------------------- UperNet
def official_seg_model():
    """mmseg 0.20 _base_/models/upernet_r50.py with the file's backbone (the ResNet is replaced, ``_delete_=True``),
    head channels / classes and slide test."""
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    return dict(
        type="EncoderDecoder",
        pretrained=UNI_L,
        backbone=dict(type="UniPerceiverAdapter", patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                      drop_path_rate=0.4, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25,
                      deform_ratio=0.5, with_cp=True, interaction_indexes=I24, window_attn=[False] * 24,
                      window_size=[None] * 24),
        decode_head=dict(type="UPerHead", in_channels=[1024, 1024, 1024, 1024], in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=512, dropout_ratio=0.1, num_classes=150,
                         norm_cfg=norm_cfg, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=1024, in_index=2, channels=256, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg,
                            align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)))


def test_upernet_recipe_matches_official():
    assert SEG in RECIPES
    c = load_recipe(SEG)
    assert _no_delete(_plain(c.model.to_dict())) == _plain(official_seg_model())
    assert _plain(c.data.train.pipeline) == _plain(official_train((2048, 512), (512, 512), False, True))
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(official_ss_test((2048, 512)))
        assert c.data[split].type == "ADE20KDataset"
        train, test = _resolved(c, split)
        assert (train["scale"], train["ratio_range"], train["crop_size"], train["cat_max_ratio"]) == \
            ((2048, 512), (0.5, 2.0), (512, 512), 0.75)
        assert (test["img_scale"], test["size_divisor"], test["flip"], test["img_ratios"]) == \
            ((2048, 512), 32, False, None)
        assert train["mean"] == test["mean"] == (123.675, 116.28, 103.53)
    assert c.data.train.type == "ADE20KDataset" and c.data.samples_per_gpu == 2
    assert c.global_batch_size == 16  # README: 8 GPUs x 2 images
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(dict(
        type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.8)))
    assert _no_delete(c.lr_config.to_dict()) == dict(policy="poly", warmup="linear", warmup_iters=1500,
                                                     warmup_ratio=1e-6, power=1.0, min_lr=0.0, by_epoch=False)
    assert c.runner.to_dict() == dict(type="IterBasedRunner", max_iters=160000)  # schedule_160k's max_iters
    assert c.checkpoint_config.to_dict() == dict(by_epoch=False, interval=1000, max_keep_ckpts=1)
    assert c.evaluation.to_dict() == dict(interval=16000, metric="mIoU", save_best="mIoU")
    assert c.fp16 == {"loss_scale": {"init_scale": 512}}  # set in the official file, with with_cp=True
    head = _header(RECIPES[SEG])
    assert head.startswith(f"# Official: segmentation/configs/ade20k/{SEG}.py (fd64a51)")
    assert "55.0 / 55.4" in head and "364M" in head


def test_upernet_recipe_builds_with_the_official_parameter_count():
    c, task, model = load_and_validate(SEG)
    assert type(task).__name__ == "SemanticSegmentation" and type(model.backbone).__name__ == "UniPerceiverAdapter"
    assert next(model.parameters()).device.type == "meta"
    n = _params(model)
    assert _params(model.backbone) == 326_593_728  # the official class's count (module docstring)
    assert round(n / 1e6, 1) == 363.4 and abs(n / 1e6 - 364) < 0.6  # README: 364M
    # the AugReg-L recipe's model (README 364M) differs by the position tables only: (577 - 196 - 8) x 1024
    augreg = sum(p.numel() for p in load_and_validate("upernet_augreg_adapter_large_512_160k_ade20k")[2].parameters())
    assert augreg - n == (577 - 196 - 8) * 1024 - 2 * 1024  # - the Uni-Perceiver embedding LayerNorm
    assert model.backbone.task == "segmentation" and model.backbone.vit_feature_per_interaction
    flags = {type(m).__name__: bool(m.with_cp) for m in model.backbone.modules() if hasattr(m, "with_cp")}
    assert flags == {"BertLayer": True, "Injector": False, "Extractor": False}  # the official segmentation copy
    _check_layer_decay(c, model)


# ------------------------------------------------------------------------------------------------ Mask R-CNN
def official_mask_rcnn_backbone():
    return dict(type="UniPerceiverAdapter", patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
                drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=12, cffn_ratio=0.25,
                deform_ratio=0.5, interaction_indexes=I12, window_attn=T12, window_size=W12, pretrained=UNI_B)


def test_mask_rcnn_recipe_matches_official():
    c = Config.fromfile(str(DETECTION_RECIPES[MASK_RCNN]))
    assert _no_delete(_plain(c.model.to_dict())) == _plain(official_mask_rcnn_model(official_mask_rcnn_backbone(),
                                                                                    768))
    assert _plain(c.data.train.pipeline) == _plain(train_pipeline_3x(IMNET))
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(coco_pipelines(IMNET)[1])
        assert c.data[split].type == "CocoDataset"
    assert (c.data.train.type, c.data.samples_per_gpu, c.data.workers_per_gpu) == ("CocoDataset", 2, 2)
    assert c.global_batch_size == 16  # 8 GPUs x 2 images (detection/README)
    # no betas in the official file: AdamW's default (0.9, 0.999)
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(dict(
        type="AdamW", lr=0.0001, weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65)))
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[27, 33])
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=36)
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=3, save_last=True)
    assert "fp16" not in c  # `# fp16 = dict(loss_scale=dict(init_scale=512))` commented out
    assert (c.load_from, c.resume_from, c.log_config.interval) == (None, None, 50)  # default_runtime.py
    head = _header(DETECTION_RECIPES[MASK_RCNN])
    assert head.startswith(f"# Official: detection/configs/mask_rcnn/{MASK_RCNN}.py (fd64a51)")
    assert "51.2 / 45.3" in head and "120M" in head


def test_mask_rcnn_recipe_builds_with_the_official_parameter_count():
    c, task, model = load_and_validate(str(DETECTION_RECIPES[MASK_RCNN]))
    assert type(task).__name__ == "ObjectDetection" and type(model).__name__ == "MaskRCNN"
    assert model.pretrained == UNI_B
    assert round(_params(model) / 1e6) == 120  # detection/configs/mask_rcnn/README.md #Param
    b = model.backbone
    assert type(b).__name__ == "UniPerceiverAdapter" and b.task == "detection" and not b.vit_feature_per_interaction
    assert [layer.self_attn.window_size for layer in b.layers] == W12
    _check_layer_decay(c, model)


# ---------------------------------------------------------------------------------------------------- HTC++
def official_htc_model():
    """The HTC++ model dict of the BEiT / BEiTv2-L files (test_detection_htc_recipes.official_model) with the file's
    backbone (``drop_path_rate=drop_path_rate=0.4``, ``with_cp=False``), ExtraAttention ``drop_path=drop_path_rate``
    and ``test_cfg.rcnn.max_per_img=100``."""
    m = official_model(UNI_L)
    m["backbone"] = dict(type="UniPerceiverAdapter", patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                         mlp_ratio=4, drop_path_rate=0.4, conv_inplane=64, n_points=4, deform_num_heads=16,
                         cffn_ratio=0.25, deform_ratio=0.5, with_cp=False, interaction_indexes=I24,
                         window_attn=T24, window_size=W24, pretrained=UNI_L)
    m["neck"][0]["drop_path"] = 0.4
    assert m["test_cfg"]["rcnn"]["max_per_img"] == 100
    return m


def test_htc_recipe_matches_official():
    c = Config.fromfile(str(DETECTION_RECIPES[HTC]))
    assert _plain(c.model.to_dict()) == _plain(official_htc_model())
    assert _plain(c.data.train.pipeline) == _plain(HTC_TRAIN_PIPELINE)  # file_client_args (disk) left out
    assert c.data.train.seg_prefix == "data/coco/stuffthingmaps/train2017/"
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(official_test_pipeline((1600, 1400), False))
    assert c.data.samples_per_gpu == 1 and c.global_batch_size == 16  # htc++/README: 16 GPUs x 1 image
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(dict(
        type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.90)))
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[27, 33])
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=36)
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=2, save_last=True)
    # the only HTC++ file with evaluation = dict(save_best='auto')
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert "fp16" not in c
    head = _header(DETECTION_RECIPES[HTC])
    assert head.startswith(f"# Official: detection/configs/htc++/{HTC}.py (fd64a51)")


def test_htc_recipe_validates_as_the_detection_task():
    c, task, model = load_and_validate(str(DETECTION_RECIPES[HTC]))
    assert type(task).__name__ == "ObjectDetection" and type(model).__name__ == "HybridTaskCascade"
    assert model.pretrained == UNI_L and model.roi_head.max_per_img == 100
    assert model.neck[0].drop_path.drop_prob == 0.4
    assert _params(model.backbone) == 326_593_728
    assert round(_params(model) / 1e6, 1) == 399.9  # no official count (module docstring)
    flags = {type(m).__name__: bool(m.with_cp) for m in model.backbone.modules() if hasattr(m, "with_cp")}
    assert flags == dict.fromkeys({"BertLayer", "Injector", "Extractor"}, False)
    assert [layer.self_attn.window_size for layer in model.backbone.layers] == W24
    _check_layer_decay(c, model)
