"""The Mask R-CNN no-FPN recipe equals the official config field for field (the whole ``model`` dict, pipelines,
data, optimizer, schedule, fp16, checkpoints and evaluation, typed here from czczup/ViT-Adapter
``detection/configs/mask_rcnn/no_fpn/mask_rcnn_deit_adapter_small_3x_coco.py`` and its
``_base_/models/mask_rcnn_r50_fpn.py`` / ``coco_instance.py`` / ``schedule_3x.py`` at fd64a51), validates as the
detection task on the meta device with the official parameter count (``mask_rcnn/README.md``, the "FPN: No" row:
45M, box / mask AP 48.2 / 42.7), and a misspelled neck key is refused with its dotted path."""
from __future__ import annotations

import pytest
from mmengine import Config

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES
from vit_adapter_ds.tasks import load_and_validate

from test_detection_htc_recipes import _plain as _lists
from test_detection_recipes_more import _no_delete, coco_pipelines, official_mask_rcnn_model, train_pipeline_3x

NAME = "mask_rcnn_deit_adapter_small_3x_coco"
RECIPE = str(DETECTION_RECIPES[NAME])
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def official_model():
    """The official file's model: _base_/models/mask_rcnn_r50_fpn.py with its ViT-Adapter-S backbone and the
    ChannelMapperWithPooling neck in place of the FPN."""
    backbone = dict(_delete_=True, type="ViTAdapter", patch_size=16, embed_dim=384, depth=12, num_heads=6,
                    mlp_ratio=4, drop_path_rate=0.2, conv_inplane=64, n_points=4, deform_num_heads=6,
                    cffn_ratio=0.25, deform_ratio=1.0, interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
                    window_attn=[True, True, False, True, True, False, True, True, False, True, True, False],
                    window_size=[14, 14, None, 14, 14, None, 14, 14, None, 14, 14, None],
                    pretrained="pretrained/deit_small_patch16_224-cd65a155.pth")
    return dict(official_mask_rcnn_model(backbone, 384),
                neck=dict(type="ChannelMapperWithPooling", in_channels=[384, 384, 384, 384], out_channels=256,
                          num_outs=5))


TRAIN_PIPELINE = train_pipeline_3x(NORM)
TEST_PIPELINE = coco_pipelines(NORM)[1]  # _base_/datasets/coco_instance.py


def _plain(x):
    return _lists(_no_delete(x))


def test_no_fpn_recipe_matches_official():
    c = Config.fromfile(RECIPE)
    m = c.model
    # the fields that differ from the FPN recipe, spelled out (the whole dict is compared below)
    assert dict(m.neck) == dict(type="ChannelMapperWithPooling", in_channels=[384] * 4, out_channels=256,
                                num_outs=5)
    assert m.type == "MaskRCNN" and m.train_cfg.rpn.allowed_border == -1
    assert _plain(m.to_dict()) == _plain(official_model())
    assert c.pretrained == "pretrained/deit_small_patch16_224-cd65a155.pth"
    assert _plain(c.data.train.pipeline) == _plain(TRAIN_PIPELINE)
    for split in ("val", "test"):
        assert _plain(c.data[split].pipeline) == _plain(TEST_PIPELINE)
    assert dict(c.img_norm_cfg) == NORM
    assert c.data.samples_per_gpu == 2 and c.global_batch_size == 16  # 8 GPUs x 2 images
    o = c.optimizer
    assert (o.type, o.lr, o.weight_decay) == ("AdamW", 1e-4, 0.05) and "constructor" not in o
    assert "momentum" not in o  # _delete_=True drops the base SGD's keys
    assert o.paramwise_cfg.to_dict() == {"custom_keys": {k: {"decay_mult": 0.0} for k in (
        "level_embed", "pos_embed", "norm", "bias")}}
    assert c.optimizer_config.to_dict() == {"grad_clip": None}
    assert dict(c.lr_config) == dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001,
                                     step=[27, 33])
    assert dict(c.runner) == dict(type="EpochBasedRunner", max_epochs=36)
    assert dict(c.checkpoint_config) == dict(interval=1, max_keep_ckpts=3, save_last=True)
    # the base's evaluation = dict(metric=['bbox', 'segm']) + the file's evaluation = dict(save_best='auto')
    assert dict(c.evaluation) == {"metric": ["bbox", "segm"], "save_best": "auto"}
    assert c.fp16.to_dict() == {"loss_scale": {"init_scale": 512}}  # set in this file (the FPN file comments it)
    text = open(RECIPE).read()
    assert text.splitlines()[0] == ("# Official: detection/configs/mask_rcnn/no_fpn/mask_rcnn_deit_adapter_small_3x_"
                                    "coco.py (fd64a51)")
    assert "48.2 / 42.7" in text[:1200] and "45M" in text[:1200]


def test_no_fpn_recipe_validates_on_meta_with_the_official_parameter_count():
    from vit_adapter_ds.models.detectors import ChannelMapperWithPooling, MaskRCNN
    from vit_adapter_ds.tasks import ObjectDetection

    _, task, model = load_and_validate(RECIPE)
    assert isinstance(task, ObjectDetection) and type(model) is MaskRCNN
    assert next(model.parameters()).device.type == "meta"
    assert type(model.neck) is ChannelMapperWithPooling and model.neck.names == ["0", "1", "2", "3", "4"]
    assert model.neck.kernel_size == 1 and len(model.neck.extra_convs) == 1
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6) == 45  # mask_rcnn/README.md, FPN "No": 45M
    assert model.pretrained == "pretrained/deit_small_patch16_224-cd65a155.pth"
    # the FPN recipe (README 48M) differs by exactly the four 3 x 3 output convs that the no-FPN neck lacks
    _, _, fpn = load_and_validate(str(DETECTION_RECIPES["mask_rcnn_deit_adapter_small_fpn_3x_coco"]))
    assert sum(p.numel() for p in fpn.parameters()) - n == 4 * (256 * 256 * 9 + 256)


@pytest.mark.parametrize("option,msg", [
    ("model.neck.kernel_sise=3", r"unknown key\(s\) model.neck.kernel_sise"),
    ("model.neck.norm_cfg.type=GN", r"model.neck.norm_cfg="),
    ("model.neck.num_outs=3", r"model.neck.num_outs=3 must be at least"),
])
def test_no_fpn_recipe_errors_name_the_dotted_path(option, msg):
    with pytest.raises(ConfigError, match=msg):
        load_and_validate(RECIPE, [option])
