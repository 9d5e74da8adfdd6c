"""The plain-ViT detection baselines (``ViTBaseline``) and the Cascade Mask R-CNN ViT-Adapter-B recipe equal the
official configs at czczup/ViT-Adapter fd64a51 field for field (values typed here from
``detection/configs/mask_rcnn/mask_rcnn_deit_{tiny,small,base}_fpn_3x_coco.py``,
``mask_rcnn_augreg_large_fpn_3x_coco.py``, ``cascade_rcnn/cascade_mask_rcnn_deit_base_fpn_3x_coco.py``,
``cascade_rcnn/cascade_mask_rcnn_deit_adapter_base_fpn_3x_coco.py`` and their ``_base_`` files, not read from the
recipes) and build on the meta device with the README parameter counts (mask_rcnn/README.md: ViT-T 26M, ViT-S 42M,
ViT-B 114M, ViT-L 337M; cascade_rcnn/README.md: ViT-Adapter-B 158M). Two counts differ from a README: ViT-S builds
with 43.8M (its backbone equals the official class key for key and shape for shape, see the parity golden
vit_baseline_small_det, and the T / B / L files with the same code give their README counts, so the 42M is the
README's); the cascade DeiT-B baseline has no README row (151M)."""
from __future__ import annotations

import pytest
import torch
from mmengine import Config

from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.models.backbones import ViTAdapter, ViTBaseline
from vit_adapter_ds.models.detectors import CascadeRCNN, MaskRCNN
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_cascade_recipe import official_model as official_cascade_adapter_small
from test_detection_recipes_more import AUGREG, AUGREG_L, IMNET, NO_DECAY, T12, T24, W12, W24, I12, _no_delete, \
    coco_pipelines, official_mask_rcnn_model, train_pipeline_3x
from test_detection_htc_recipes import _plain


def deit_baseline(dim, heads, ckpt, drop_path=0.1):
    return dict(type="ViTBaseline", patch_size=16, embed_dim=dim, depth=12, num_heads=heads, mlp_ratio=4,
                drop_path_rate=drop_path, out_indices=[2, 5, 8, 11], window_attn=T12, window_size=W12,
                pretrained=f"pretrained/{ckpt}.pth")


AUGREG_BASELINE = dict(type="ViTBaseline", img_size=384, pretrain_size=384, patch_size=16, embed_dim=1024, depth=24,
                       num_heads=16, mlp_ratio=4, drop_path_rate=0.4, out_indices=[5, 11, 17, 23], window_attn=T24,
                       window_size=W24, pretrained="pretrained/" + AUGREG_L)
CUSTOM_KEYS = dict(type="AdamW", lr=0.0001, weight_decay=0.05, paramwise_cfg=dict(custom_keys=NO_DECAY))

MASK_RCNN_3X = {
    # name: (backbone, FPN in-channels, norm, optimizer, max_keep_ckpts, README #Param (M), built #Param (M),
    #        README box / mask AP)
    "mask_rcnn_deit_tiny_fpn_3x_coco": (deit_baseline(192, 3, "deit_tiny_patch16_224-a1311bcf"), 192, IMNET,
                                        CUSTOM_KEYS, 3, 26, 26, (40.2, 37.0)),
    "mask_rcnn_deit_small_fpn_3x_coco": (deit_baseline(384, 6, "deit_small_patch16_224-cd65a155"), 384, IMNET,
                                         CUSTOM_KEYS, 3, 42, 44, (44.0, 39.9)),
    "mask_rcnn_deit_base_fpn_3x_coco": (deit_baseline(768, 12, "deit_base_patch16_224-b5f2ef4d"), 768, IMNET,
                                        CUSTOM_KEYS, 3, 114, 114, (45.8, 41.3)),
    "mask_rcnn_augreg_large_fpn_3x_coco": (
        AUGREG_BASELINE, 1024, AUGREG,
        dict(type="AdamW", lr=0.0001, weight_decay=0.05, constructor="LayerDecayOptimizerConstructor",
             paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.80)),
        2, 337, 337, (48.3, 43.3)),
}


def load(name):
    return Config.fromfile(str(DETECTION_RECIPES[name]))


def _header(name):
    return DETECTION_RECIPES[name].read_text().splitlines()


def _schedule_3x(c):
    """_base_/schedules/schedule_3x.py and _base_/default_runtime.py."""
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[27, 33])
    assert c.runner.to_dict() == dict(type="EpochBasedRunner", max_epochs=36)
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert (c.load_from, c.resume_from, c.log_config.interval) == (None, None, 50)


@pytest.mark.parametrize("name", sorted(MASK_RCNN_3X))
def test_mask_rcnn_baseline_recipes_match_official(name):
    backbone, dim, norm, optimizer, keep, _, _, (box, mask) = MASK_RCNN_3X[name]
    c = load(name)
    assert _no_delete(_plain(c.model.to_dict())) == _plain(official_mask_rcnn_model(backbone, dim))
    assert _plain(c.data.train.pipeline) == _plain(train_pipeline_3x(norm))
    test = coco_pipelines(norm)[1]
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(test)
        assert c.data[split].type == "CocoDataset"
    assert c.data.samples_per_gpu == 2 and c.global_batch_size == 16  # 8 GPUs x 2 images
    # loader workers: the official _base_/datasets/coco_instance.py value
    assert c.data.workers_per_gpu == 2
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(optimizer)
    _schedule_3x(c)
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=keep, save_last=True)
    assert "fp16" not in c  # `# fp16 = dict(loss_scale=dict(init_scale=512))` commented out
    head = _header(name)
    assert head[0] == f"# Official: detection/configs/mask_rcnn/{name}.py (fd64a51)"
    assert any(f"{box} / {mask}" in line for line in head[:10])


@pytest.mark.parametrize("name", sorted(MASK_RCNN_3X))
def test_mask_rcnn_baseline_recipes_build_with_the_readme_parameter_count(name):
    backbone, _, norm, _, _, readme, built, _ = MASK_RCNN_3X[name]
    _, _, model = load_and_validate(str(DETECTION_RECIPES[name]))
    assert type(model) is MaskRCNN and type(model.backbone) is ViTBaseline
    assert next(model.parameters()).device.type == "meta"
    n = round(sum(p.numel() for p in model.parameters()) / 1e6)
    assert n == built and (n == readme or (name, n) == ("mask_rcnn_deit_small_fpn_3x_coco", 44))
    assert model.pretrained == backbone["pretrained"]
    assert model.backbone.out_indices == backbone["out_indices"]
    assert [type(b.attn).__name__ for b in model.backbone.blocks] == \
        ["WindowedAttention" if w else "Attention" for w in backbone["window_attn"]]
    assert f"ViT-{'TSBL'[[192, 384, 768, 1024].index(backbone['embed_dim'])]}" in " ".join(_header(name)[:10])
    tr = T.train_ops_from_pipeline(load(name).data.train.pipeline, "data.train.pipeline")
    assert (tr["mean"], tr["std"]) == (tuple(norm["mean"]), tuple(norm["std"]))


def test_augreg_large_baseline_layer_decay_uses_the_backbone_layer_ids():
    with torch.device("meta"):
        model = ViTBaseline(**{k: v for k, v in AUGREG_BASELINE.items() if k not in ("type", "pretrained")})
    L = 24 + 2
    assert [model.layer_id(n, L) for n in ("pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight",
                                           "blocks.23.gamma2", "norm1.weight", "up1.1.weight", "up2.bias")] == \
        [0, 0, 1, 24, 25, 25, 25]
    assert model.pos_embed.shape == (1, 24 * 24 + 1, 1024)


# ------------------------------------------------------------------------------------------ Cascade Mask R-CNN 3x
def official_cascade(backbone, dim):
    """The official cascade file's model: the adapter-S file's (typed in test_detection_cascade_recipe) with this
    file's backbone and FPN in-channels (the heads, RPN and train / test settings are the same text)."""
    m = official_cascade_adapter_small()
    m["backbone"] = dict(backbone, _delete_=True)
    m["neck"] = dict(type="FPN", in_channels=[dim] * 4, out_channels=256, num_outs=5)
    return m


CASCADE = {
    # name: (backbone, FPN in-channels, samples_per_gpu, README #Param (M) or None, built #Param (M), README AP)
    "cascade_mask_rcnn_deit_base_fpn_3x_coco": (
        deit_baseline(768, 12, "deit_base_patch16_224-b5f2ef4d", drop_path=0.2), 768, 1, None, 151, None),
    "cascade_mask_rcnn_deit_adapter_base_fpn_3x_coco": (
        dict(type="ViTAdapter", patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, drop_path_rate=0.3,
             conv_inplane=64, n_points=4, deform_num_heads=12, cffn_ratio=0.25, deform_ratio=0.5,
             interaction_indexes=I12, window_attn=T12, window_size=W12,
             pretrained="pretrained/deit_base_patch16_224-b5f2ef4d.pth"),
        768, 2, 158, 158, (52.1, 44.8)),
}


@pytest.mark.parametrize("name", sorted(CASCADE))
def test_cascade_recipes_match_official(name):
    backbone, dim, per_gpu, _, _, ap = CASCADE[name]
    c = load(name)
    assert _plain(c.model.to_dict()) == _plain(official_cascade(backbone, dim))
    assert _plain(c.data.train.pipeline) == _plain(train_pipeline_3x(IMNET))
    test = coco_pipelines(IMNET)[1]
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(test)
    assert (c.data.samples_per_gpu, c.data.workers_per_gpu) == (per_gpu, 2)  # workers: as above
    assert c.global_batch_size == 16  # the paper's batch size 16 (8 x 2; the DeiT-B baseline file has 1 per GPU)
    assert _plain(_no_delete(c.optimizer.to_dict())) == _plain(CUSTOM_KEYS)
    _schedule_3x(c)
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"]}  # no save_best in the cascade files
    assert c.checkpoint_config.to_dict() == dict(interval=1, max_keep_ckpts=3, save_last=True)
    assert c.fp16 == {"loss_scale": {"init_scale": 512}}  # set, not commented out, in both cascade files
    head = _header(name)
    assert head[0] == f"# Official: detection/configs/cascade_rcnn/{name}.py (fd64a51)"
    if ap is not None:
        assert any(f"{ap[0]} / {ap[1]}" in line for line in head[:10])
    else:
        assert any("none" in line for line in head[:10])


@pytest.mark.parametrize("name", sorted(CASCADE))
def test_cascade_recipes_build_with_the_readme_parameter_count(name):
    backbone, _, _, readme, built, _ = CASCADE[name]
    _, _, model = load_and_validate(str(DETECTION_RECIPES[name]))
    assert type(model) is CascadeRCNN
    assert type(model.backbone) is (ViTBaseline if backbone["type"] == "ViTBaseline" else ViTAdapter)
    n = round(sum(p.numel() for p in model.parameters()) / 1e6)
    assert n == built and (readme is None or n == readme)
    assert model.pretrained == backbone["pretrained"]
    assert len(model.roi_head.bbox_head) == 3 and model.roi_head.loss_bbox == [("giou", 10.0)] * 3
