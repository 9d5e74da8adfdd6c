"""Mask R-CNN 3x recipes equal the official configs (values typed here from the official files at czczup/ViT-Adapter
fd64a51 / docs/official-architecture.md §5.2), build on the meta device with the paper's parameter counts, and their
pipelines translate to the implemented transforms; unsupported pipeline steps are refused by name."""
from __future__ import annotations

import pytest
import torch
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.data import det_transforms as T
from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

I12 = [[0, 2], [3, 5], [6, 8], [9, 11]]
I24 = [[0, 5], [6, 11], [12, 17], [18, 23]]
IMNET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
AUGREG = ((127.5,) * 3, (127.5,) * 3)
OFFICIAL = {
    # name: (embed, depth, heads, deform heads, deform ratio, dpr, window pattern, indexes, pretrained, norm,
    #        paper #Param (M) of the whole Mask R-CNN, layer decay or None)
    "mask_rcnn_deit_adapter_tiny_fpn_3x_coco": (192, 12, 3, 6, 1.0, 0.1, [True, True, False], I12,
                                                "deit_tiny_patch16_224-a1311bcf.pth", IMNET, 28.1, None),
    "mask_rcnn_deit_adapter_small_fpn_3x_coco": (384, 12, 6, 6, 1.0, 0.2, [True, True, False], I12,
                                                 "deit_small_patch16_224-cd65a155.pth", IMNET, 47.8, None),
    "mask_rcnn_deit_adapter_base_fpn_3x_coco": (768, 12, 12, 12, 0.5, 0.3, [True, True, False], I12,
                                                "deit_base_patch16_224-b5f2ef4d.pth", IMNET, 120.2, None),
    "mask_rcnn_augreg_adapter_large_fpn_3x_coco": (
        1024, 24, 16, 16, 0.5, 0.4, [True] * 5 + [False], I24,
        "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.pth",
        AUGREG, 347.9, 0.80),
}


def load(name):
    return Config.fromfile(str(DETECTION_RECIPES[name]))


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_mask_rcnn_recipes_match_official(name):
    d, depth, heads, dheads, ratio, dpr, pattern, idx, pre, norm, params, decay = OFFICIAL[name]
    c = load(name)
    b = c.model.backbone
    assert (b.type, b.embed_dim, b.depth, b.num_heads, b.deform_num_heads, b.deform_ratio, b.drop_path_rate) == \
        ("ViTAdapter", d, depth, heads, dheads, ratio, dpr)
    assert (b.patch_size, b.mlp_ratio, b.conv_inplane, b.n_points, b.cffn_ratio) == (16, 4, 64, 4, 0.25)
    assert b.interaction_indexes == idx
    reps = depth // len(pattern)
    assert b.window_attn == pattern * reps
    assert b.window_size == [14 if w else None for w in pattern] * reps
    assert b.pretrained == "pretrained/" + pre
    assert dict(c.model.neck) == dict(type="FPN", in_channels=[d] * 4, out_channels=256, num_outs=5)
    assert c.model.roi_head.bbox_head.num_classes == 80 and c.model.roi_head.mask_head.num_classes == 80
    assert c.model.test_cfg.rcnn.score_thr == 0.05 and c.model.test_cfg.rcnn.max_per_img == 100
    o = c.optimizer
    assert (o.type, o.lr, o.weight_decay) == ("AdamW", 1e-4, 0.05)
    if decay is None:
        assert o.paramwise_cfg.custom_keys == {k: {"decay_mult": 0.0} for k in ("level_embed", "pos_embed", "norm",
                                                                               "bias")}
        assert "constructor" not in o
    else:
        assert o.constructor == "LayerDecayOptimizerConstructor"
        assert o.paramwise_cfg == {"num_layers": 24, "layer_decay_rate": decay}
    # official (fd64a51): `# fp16 = dict(loss_scale=dict(init_scale=512))` commented out in all four files
    assert "fp16" not in c
    assert c.optimizer_config.grad_clip is None
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert c.data.samples_per_gpu == 2 and c.global_batch_size == 16
    # official: the base's evaluation = dict(metric=['bbox', 'segm']) + the file's evaluation = dict(save_best='auto')
    assert dict(c.evaluation) == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=2 if decay else 3, save_last=True)
    tr = T.train_ops_from_pipeline(c.data.train.pipeline, "data.train.pipeline")
    assert (tr["mean"], tr["std"]) == norm
    scales = tuple((s, 1333) for s in (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800))
    assert tr["ops"] == [("flip", 0.5),
                         ("autoaugment", ([("resize", scales)],
                                          [("resize", ((400, 1333), (500, 1333), (600, 1333))), ("crop", (384, 600)),
                                           ("resize", scales)])),
                         ("crop", (1024, 1024))]
    assert tr["ops"] == T.official_train_ops()
    te = T.test_cfg_from_pipeline(c.data.val.pipeline, "data.val.pipeline")
    assert te == {"scale": (1333, 800), "mean": norm[0], "std": norm[1]}
    with torch.device("meta"):
        model = MaskRCNN.from_config(c.model.to_dict())
    assert model.pretrained == "pretrained/" + pre
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == params  # paper, Table: #Param


def test_synthetic_recipe_builds_and_translates():
    c = load("synthetic_mask_rcnn")
    model = MaskRCNN.from_config(c.model.to_dict())
    assert model.num_classes == 7 and model.neck.out_channels == 64
    tr = T.train_ops_from_pipeline(c.data.train.pipeline)
    assert tr["ops"][-1] == ("crop", (256, 256))
    assert T.test_cfg_from_pipeline(c.data.val.pipeline)["scale"] == (267, 176)


def _official_pipeline():
    return [dict(p) for p in load("mask_rcnn_deit_adapter_tiny_fpn_3x_coco").data.train.pipeline]


@pytest.mark.parametrize("index,change,msg", [
    (3, {"type": "Resize", "img_scale": [(1333, 640), (1333, 800)], "multiscale_mode": "ratio", "keep_ratio": True},
     r"train_pipeline\[3\].multiscale_mode='ratio' is not supported"),
    (5, {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1], "to_rgb": False},
     r"train_pipeline\[5\].to_rgb=False"),
    (4, {"type": "RandomCrop", "crop_type": "absolute", "crop_size": (10, 10)}, r"train_pipeline\[4\].crop_type"),
    (2, {"type": "PhotoMetricDistortion"}, r"train_pipeline\[2\].type='PhotoMetricDistortion' is not supported"),
    (6, {"type": "Pad", "size_divisor": 64}, r"train_pipeline\[6\].size_divisor=64"),
    (2, {"type": "RandomFlip", "flip_ratio": 0.5, "direction": "vertical"}, "direction='vertical'"),
])
def test_unsupported_train_steps_are_refused(index, change, msg):
    p = _official_pipeline()
    p[index] = change
    with pytest.raises(ConfigError, match=msg):
        T.train_ops_from_pipeline(p)


def test_second_resize_needs_override():
    p = _official_pipeline()
    p.insert(4, {"type": "Resize", "img_scale": (1333, 800), "keep_ratio": True})
    with pytest.raises(ConfigError, match="override=True"):
        T.train_ops_from_pipeline(p)


def test_base_coco_instance_pipeline_is_single_scale():
    c = Config.fromfile(str(DETECTION_RECIPES["mask_rcnn_deit_adapter_tiny_fpn_3x_coco"].parent.parent /
                            "_base_" / "datasets" / "coco_instance.py"))
    tr = T.train_ops_from_pipeline(c.train_pipeline)
    assert tr["ops"] == [("resize", ((1333, 800),)), ("flip", 0.5)]


def test_resize_range_mode_hand_checked():
    from test_detection_data import ScriptedRng, _sample

    p = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
         dict(type="Resize", img_scale=[(1600, 400), (1600, 1400)], multiscale_mode="range", keep_ratio=True),
         dict(type="RandomFlip", flip_ratio=0.5), dict(type="Normalize", mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True),
         dict(type="Pad", size_divisor=32), dict(type="DefaultFormatBundle"),
         dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"])]
    ops = T.train_ops_from_pipeline(p)["ops"]
    assert ops == [("resize_range", ((1600, 400), (1600, 1400))), ("flip", 0.5)]
    # long edge randint(1600, 1601) = 1600, short randint(400, 1401) -> 500; 100 x 200 image:
    # f = min(1600 / 200, 500 / 100) = 5 -> (500, 1000)
    rng = ScriptedRng([((1600, 1601), 1600), ((400, 1401), 500), ("random", 0.9)])
    o = T.apply_ops(_sample(), rng, ops)
    assert tuple(o["img"].shape) == (3, 500, 1000)
    torch.testing.assert_close(o["boxes"].as_subclass(torch.Tensor)[0], torch.tensor([100., 50, 300, 250]))
