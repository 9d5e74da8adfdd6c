"""HTC (HTC++ settings) on a small input: forward/backward shapes, every stage's losses present and finite, one
optimizer step of each stage's loss changes that stage's heads, and inference outputs."""
from __future__ import annotations

import pytest
import torch

from vit_adapter_ds.models.backbones import ViTAdapter
from vit_adapter_ds.models.detectors.extra_attention import ExtraAttention
from vit_adapter_ds.models.detectors.fpn import FPN
from vit_adapter_ds.models.detectors.htc import (HTC_PLUS_PLUS_STAGES, CascadeStage, HybridTaskCascade,
                                                 HybridTaskCascadeRoIHead)
from vit_adapter_ds.models.detectors.htc_heads import HTCMaskHead, Shared4Conv1FCBBoxHead
from vit_adapter_ds.models.detectors.mask_rcnn import RPN, FixedStrideAnchorGenerator
from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign
from vit_adapter_ds.models.detectors.semantic_head import FusedSemanticHead

from test_detection_model import _targets

C, NC = 32, 7


def tiny_htc():
    torch.manual_seed(0)
    backbone = ViTAdapter(embed_dim=96, depth=4, num_heads=3, conv_inplane=16, deform_num_heads=6,
                          interaction_indexes=[[i, i] for i in range(4)], window_attn=[True, True, True, False],
                          window_size=[7, 7, 7, None], task="detection")
    necks = [ExtraAttention([96] * 4, num_head=4, drop_path=0.3), FPN([96] * 4, C, 5)]
    rpn = RPN(C, anchor_generator=FixedStrideAnchorGenerator(), train_max_per_img=2000, smooth_l1_beta=1 / 9,
              allowed_border=0)
    names = ("0", "1", "2", "3")
    roi = HybridTaskCascadeRoIHead(
        bbox_roi_extractor=LevelRoIAlign(names, 7), mask_roi_extractor=LevelRoIAlign(names, 14),
        bbox_heads=[Shared4Conv1FCBBoxHead(C, C, 64, 7, NC) for _ in range(3)],
        mask_heads=[HTCMaskHead(i > 0, 4, C, C, NC) for i in range(3)],
        stages=[CascadeStage(iou, target_stds=stds) for iou, stds in HTC_PLUS_PLUS_STAGES],
        semantic_head=FusedSemanticHead(5, 1, 4, C, C, 11),
        semantic_roi_extractor=LevelRoIAlign(("semantic",), 14, (8,)), num_classes=NC)
    return HybridTaskCascade(backbone, necks, rpn, roi)


def test_htc_losses_of_every_stage_and_one_step_each():
    model = tiny_htc().train()
    x = torch.randn(2, 3, 128, 160)
    sem = torch.randint(0, 11, (2, 16, 20))
    sem[0, :3] = 255
    losses = model(x, _targets(), semantic_labels=sem)
    expect = {"loss_rpn_cls", "loss_rpn_bbox", "loss_semantic_seg", "loss"} | {
        f"s{i}.{k}" for i in range(3) for k in ("loss_cls", "loss_bbox", "acc", "loss_mask")}
    assert set(losses) == expect
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    total = sum(v for k, v in losses.items() if k != "loss" and not k.endswith("acc"))
    torch.testing.assert_close(losses["loss"], total)
    for i in range(3):
        model.zero_grad()
        torch.manual_seed(5)
        loss = model(x, _targets(), semantic_labels=sem)
        stage_loss = loss[f"s{i}.loss_cls"] + loss[f"s{i}.loss_bbox"] + loss[f"s{i}.loss_mask"]
        stage_loss.backward()
        g_box = model.roi_head.bbox_head[i].fc_cls.weight.grad
        g_mask = model.roi_head.mask_head[i].conv_logits.weight.grad
        assert g_box is not None and g_box.abs().sum() > 0 and g_mask.abs().sum() > 0
        later = model.roi_head.bbox_head[i + 1].fc_cls.weight.grad if i < 2 else None
        assert later is None or later.abs().sum() == 0  # stage i's loss does not reach later stages
        before = model.roi_head.bbox_head[i].fc_cls.weight.detach().clone()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        assert not torch.equal(before, model.roi_head.bbox_head[i].fc_cls.weight)


def test_htc_inference_shapes():
    model = tiny_htc().eval()
    out = model.predict(torch.randn(1, 3, 128, 160), [(120, 150)], [(240, 300)])
    o = out[0]
    k = len(o["boxes"])
    assert k <= 100 and o["labels"].shape == o["scores"].shape == (k,) and o["masks"].shape == (k, 240, 300)
    assert o["labels"].max() < NC if k else True
    assert (o["scores"][:-1] >= o["scores"][1:]).all()


def test_allowed_border_ignores_outside_anchors():
    rpn = RPN(8, anchor_generator=FixedStrideAnchorGenerator((4,), (8,), (1.0,)), allowed_border=0)
    anchors = [torch.tensor([[-16., -16, 16, 16], [0, 0, 32, 32], [10, 10, 42, 42]])]
    rpn._image_sizes = [(40, 40)]
    t = [{"boxes": torch.tensor([[0., 0, 32, 32]]), "labels": torch.tensor([1])}]
    labels, _ = rpn.assign_targets_to_anchors(anchors, t)
    assert labels[0].tolist() == [-1.0, 1.0, -1.0]  # outside (x1 < 0; x2 >= 40) -> ignored


def test_htc_plus_plus_recipe_matches_official_and_builds():
    from mmengine import Config

    from vit_adapter_ds.config.errors import ConfigError
    from vit_adapter_ds.models.detectors.htc import HybridTaskCascade
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    c = Config.fromfile(str(DETECTION_RECIPES["htc++_beitv2_adapter_large_fpn_3x_coco"]))
    b = c.model.backbone
    assert (b.type, b.embed_dim, b.depth, b.drop_path_rate, b.deform_ratio, b.init_values) == \
        ("BEiTAdapter", 1024, 24, 0.4, 0.5, 1e-6)
    assert b.window_attn == [True] * 24 and b.window_size == [14, 14, 14, 14, 14, 56] * 4
    assert c.model.neck[0] == dict(type="ExtraAttention", in_channels=[1024] * 4, num_head=32, with_ffn=True,
                                   ffn_ratio=4.0, drop_path=0.3)
    assert [h.bbox_coder.target_stds for h in c.model.roi_head.bbox_head] == \
        [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    assert [r.assigner.pos_iou_thr for r in c.model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    assert c.model.test_cfg.rcnn.nms == dict(type="soft_nms", iou_threshold=0.5)
    assert (c.optimizer.lr, c.optimizer.paramwise_cfg.layer_decay_rate, c.data.samples_per_gpu) == (1e-4, 0.9, 1)
    with torch.device("meta"):
        model = HybridTaskCascade.from_config(c.model.to_dict())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 401  # paper: HTC++ ViT-Adapter-L, 401M
    assert model.rpn.allowed_border == 0 and model.rpn._post_nms_top_n["training"] == 2000
    assert model.roi_head.stage_loss_weights == [1.0, 0.5, 0.25]
    bad = c.model.to_dict()
    bad["roi_head"]["mask_head"][1]["with_conv_res"] = False
    with pytest.raises(ConfigError, match=r"model.roi_head.mask_head\[1\].with_conv_res must be True"):
        with torch.device("meta"):
            HybridTaskCascade.from_config(bad)
    bad = c.model.to_dict()
    bad["roi_head"]["bbox_head"][2]["loss_bbox"]["betta"] = 1.0
    with pytest.raises(ConfigError, match=r"model.roi_head.bbox_head\[2\].loss_bbox.betta: unknown key"):
        with torch.device("meta"):
            HybridTaskCascade.from_config(bad)


def test_htc_keymap_round_trip():
    from vit_adapter_ds.models.detectors.keymap import htc_from_mmdet, htc_to_mmdet

    sd = tiny_htc().state_dict()
    official = htc_to_mmdet(sd)
    assert "neck.1.lateral_convs.0.conv.weight" in official and "rpn_head.rpn_cls.weight" in official
    assert "roi_head.bbox_head.2.fc_reg.weight" in official and "neck.0.attn.qkv.weight" in official
    assert "roi_head.mask_head.1.conv_res.conv.weight" in official
    assert "roi_head.semantic_head.lateral_convs.4.conv.weight" in official
    back = htc_from_mmdet(official)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
