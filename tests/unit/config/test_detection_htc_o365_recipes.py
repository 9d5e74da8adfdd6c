"""The HTC++ BEiTv2-L Objects365 -> COCO recipes equal the official configs field for field
(``detection/configs/htc++/htc++_beitv2_adapter_large_fpn_o365_coco{,_ms}.py`` at fd64a51): the model dict is the
3x HTC++ one typed in test_detection_htc_recipes.py with the differences of these files written out here, the
pipelines, data, optimizer, schedule, checkpoint, evaluation, ``custom_hooks`` and ``load_from`` sections typed from
the files."""
from __future__ import annotations

import pytest
import torch
from mmengine import Config

from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

from test_detection_htc_recipes import MS, NORM, _plain, official_model, official_test_pipeline

O365 = "htc++_beitv2_adapter_large_fpn_o365_coco"
O365_MS = "htc++_beitv2_adapter_large_fpn_o365_coco_ms"
LOAD_FROM = "pretrained/htc++_beitv2_adapter_large_fpn_o365.pth"
DISK = dict(backend="disk")


def official_o365_model(aug: bool) -> dict:
    """The 3x HTC++ model with the o365 file's differences: ``with_cp`` in the backbone and ExtraAttention, drop path
    0.3 (``drop_path_rate``) in both, backbone ``pretrained=None``, GN (32 groups) in the FPN, and in the three box
    heads ``num_classes=NUM_CLASSES`` (80), ``reg_decoded_bbox=True``, SyncBN and ``GIoULoss(loss_weight=10.0)``."""
    m = official_model(None, aug)
    m["backbone"].update(drop_path_rate=0.3, with_cp=True)
    m["neck"][0].update(with_cp=True, drop_path=0.3)
    m["neck"][1]["norm_cfg"] = dict(type="GN", num_groups=32)
    for head in m["roi_head"]["bbox_head"]:
        head.update(num_classes=80, reg_decoded_bbox=True, norm_cfg=dict(type="SyncBN", requires_grad=True),
                    loss_bbox=dict(type="GIoULoss", loss_weight=10.0))
    return m


TRAIN_PIPELINE = [
    dict(type="LoadImageFromFile", file_client_args=DISK),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True, with_seg=True),
    dict(type="Resize", img_scale=[(2000, 600), (2000, 1600)], multiscale_mode="range", keep_ratio=True),
    dict(type="RandomFlip", flip_ratio=0.5),
    dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32),
    dict(type="SegRescale", scale_factor=1 / 8),
    dict(type="DefaultFormatBundle"),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks", "gt_semantic_seg"]),
]


def test_pipeline(aug: bool) -> list:
    p = official_test_pipeline(*(MS if aug else ((2000, 1000), False)))
    p[0]["file_client_args"] = DISK
    return p


test_pipeline.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("name", [O365, O365_MS])
def test_o365_recipes_match_official(name):
    aug = name == O365_MS
    c = Config.fromfile(str(DETECTION_RECIPES[name]))
    assert _plain(c.model.to_dict()) == _plain(official_o365_model(aug))
    assert (c.NUM_CLASSES, c.drop_path_rate, c.file_client_args) == (80, 0.3, DISK)
    assert c.load_from == (None if aug else LOAD_FROM)  # the _ms file does not set it (default_runtime: None)
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    assert c.data.train.seg_prefix == "data/coco/stuffthingmaps/train2017/"
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(test_pipeline(aug))
    assert c.data.samples_per_gpu == 2 and c.data.workers_per_gpu == 2
    assert c.global_batch_size == 64  # "4 nodes, total batch size=2*32=64"
    o = c.optimizer
    assert (o.type, o.lr, tuple(o.betas), o.weight_decay, o.constructor) == \
        ("AdamW", 1e-4, (0.9, 0.999), 0.05, "LayerDecayOptimizerConstructor")
    assert o.paramwise_cfg == {"num_layers": 24, "layer_decay_rate": 0.8}
    assert c.optimizer_config.to_dict() == {"grad_clip": {"max_norm": 0.1, "norm_type": 2}}
    assert c.lr_config.to_dict() == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                         step=[])
    assert c.runner.to_dict() == dict(type="IterBasedRunner", max_iters=20000)
    assert c.checkpoint_config.to_dict() == dict(interval=500, max_keep_ckpts=3)
    assert c.evaluation.to_dict() == {"metric": ["bbox", "segm"], "interval": 500, "save_best": "auto"}
    assert _plain(c.custom_hooks) == [dict(type="ExpMomentumEMAHook", resume_from=None, momentum=0.0001,
                                           priority=49)]
    assert "fp16" not in c


def test_o365_schedule_and_hook_as_the_engine_reads_them():
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.engine.ema import build_hooks
    from vit_adapter_ds.engine.schedule import schedule_kwargs, step_lr_at

    cfg = load_recipe(str(DETECTION_RECIPES[O365]))
    kw = schedule_kwargs(cfg)
    assert kw["step"] == [] and kw["warmup_iters"] == 500
    assert step_lr_at(499, 1e-4, [], warmup_iters=500, warmup_ratio=0.001) < 1e-4 == \
        step_lr_at(19999, 1e-4, [], warmup_iters=500, warmup_ratio=0.001)
    (hook,) = build_hooks(cfg, 2)
    assert (hook.momentum, hook.total_iter, hook.interval, hook.iters_per_epoch) == (0.0001, 2000, 1, None)


@pytest.mark.parametrize("name", [O365, O365_MS])
def test_o365_recipes_validate_at_the_official_size(name):
    from vit_adapter_ds.tasks import ObjectDetection, load_and_validate

    _, task, model = load_and_validate(str(DETECTION_RECIPES[name]))
    assert isinstance(task, ObjectDetection)
    assert type(model).__name__ == ("HybridTaskCascadeAug" if name == O365_MS else "HybridTaskCascade")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 401  # htc++/README.md: 401M
    assert [b[0] for b in model.roi_head.box_losses] == ["giou"] * 3 and model.num_classes == 80
    assert model.neck[0].with_cp and "roi_head.bbox_head.0.shared_convs.0.bn.weight" in model.state_dict()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.neck[1].modules())
