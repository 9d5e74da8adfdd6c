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
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        o = model.predict(x, [(120, 150)], [(240, 300)])[0]
        r = model.predict(x, [(120, 150)])[0]  # the same detections in resized-image pixels
    k = len(o["boxes"])
    assert 0 < k <= 100, k  # an untrained model scores every class about 1/8 > score_thr: there are detections
    assert o["labels"].shape == o["scores"].shape == (k,) and o["masks"].shape == (k, 240, 300)
    assert o["masks"].dtype == torch.bool and r["masks"].shape == (k, 120, 150)
    assert 0 <= o["labels"].min() and o["labels"].max() < NC
    assert (o["scores"][:-1] >= o["scores"][1:]).all()
    # rescaled to the original image: boxes x 2 (mmdet rescale=True), same labels and scores
    assert torch.equal(o["labels"], r["labels"]) and torch.equal(o["scores"], r["scores"])
    torch.testing.assert_close(o["boxes"].double(), r["boxes"].double() * 2, atol=1e-4, rtol=1e-6)


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
    with pytest.raises(ConfigError, match=r"unknown key\(s\) model.roi_head.bbox_head\[2\].loss_bbox.betta;"):
        with torch.device("meta"):
            HybridTaskCascade.from_config(bad)


# Official mmdet 2.x HTC++ keys and shapes of tiny_htc() (ViT-Adapter detection/configs/htc++: neck [ExtraAttention,
# FPN], RPNHead, 3 x Shared4Conv1FCBBoxHead (reg_class_agnostic), HTCMaskHead (conv_res from stage 1 on),
# FusedSemanticHead), typed here as a literal table, not derived from the code. D = 96, C = 32, 7 classes, 11 stuff.
D = 96
HTC_OFFICIAL = {
    "neck.0.norm1.weight": (D,), "neck.0.norm1.bias": (D,),
    "neck.0.attn.qkv.weight": (3 * D, D), "neck.0.attn.qkv.bias": (3 * D,),
    "neck.0.attn.proj.weight": (D, D), "neck.0.attn.proj.bias": (D,),
    "neck.0.norm2.weight": (D,), "neck.0.norm2.bias": (D,),
    "neck.0.ffn.fc1.weight": (4 * D, D), "neck.0.ffn.fc1.bias": (4 * D,),
    "neck.0.ffn.fc2.weight": (D, 4 * D), "neck.0.ffn.fc2.bias": (D,),
    "neck.0.final_norm.weight": (D,), "neck.0.final_norm.bias": (D,),
    **{f"neck.1.lateral_convs.{i}.conv.weight": (C, D, 1, 1) for i in range(4)},
    **{f"neck.1.lateral_convs.{i}.conv.bias": (C,) for i in range(4)},
    **{f"neck.1.fpn_convs.{i}.conv.weight": (C, C, 3, 3) for i in range(4)},
    **{f"neck.1.fpn_convs.{i}.conv.bias": (C,) for i in range(4)},
    "rpn_head.rpn_conv.weight": (C, C, 3, 3), "rpn_head.rpn_conv.bias": (C,),
    "rpn_head.rpn_cls.weight": (3, C, 1, 1), "rpn_head.rpn_cls.bias": (3,),
    "rpn_head.rpn_reg.weight": (12, C, 1, 1), "rpn_head.rpn_reg.bias": (12,),
    **{k: v for s in range(3) for k, v in {
        **{f"roi_head.bbox_head.{s}.shared_convs.{i}.conv.weight": (C, C, 3, 3) for i in range(4)},
        **{f"roi_head.bbox_head.{s}.shared_convs.{i}.conv.bias": (C,) for i in range(4)},
        f"roi_head.bbox_head.{s}.shared_fcs.0.weight": (64, C * 7 * 7),
        f"roi_head.bbox_head.{s}.shared_fcs.0.bias": (64,),
        f"roi_head.bbox_head.{s}.fc_cls.weight": (NC + 1, 64), f"roi_head.bbox_head.{s}.fc_cls.bias": (NC + 1,),
        f"roi_head.bbox_head.{s}.fc_reg.weight": (4, 64), f"roi_head.bbox_head.{s}.fc_reg.bias": (4,),
        **{f"roi_head.mask_head.{s}.convs.{i}.conv.weight": (C, C, 3, 3) for i in range(4)},
        **{f"roi_head.mask_head.{s}.convs.{i}.conv.bias": (C,) for i in range(4)},
        f"roi_head.mask_head.{s}.upsample.weight": (C, C, 2, 2), f"roi_head.mask_head.{s}.upsample.bias": (C,),
        f"roi_head.mask_head.{s}.conv_logits.weight": (NC, C, 1, 1),
        f"roi_head.mask_head.{s}.conv_logits.bias": (NC,),
    }.items()},
    **{f"roi_head.mask_head.{s}.conv_res.conv.weight": (C, C, 1, 1) for s in (1, 2)},
    **{f"roi_head.mask_head.{s}.conv_res.conv.bias": (C,) for s in (1, 2)},
    **{f"roi_head.semantic_head.lateral_convs.{i}.conv.weight": (C, C, 1, 1) for i in range(5)},
    **{f"roi_head.semantic_head.lateral_convs.{i}.conv.bias": (C,) for i in range(5)},
    **{f"roi_head.semantic_head.convs.{i}.conv.weight": (C, C, 3, 3) for i in range(4)},
    **{f"roi_head.semantic_head.convs.{i}.conv.bias": (C,) for i in range(4)},
    "roi_head.semantic_head.conv_embedding.conv.weight": (C, C, 1, 1),
    "roi_head.semantic_head.conv_embedding.conv.bias": (C,),
    "roi_head.semantic_head.conv_logits.weight": (11, C, 1, 1), "roi_head.semantic_head.conv_logits.bias": (11,),
}
# the official keys this package names otherwise (torchvision FPN and RPN head modules); every other key is the same
HTC_RENAMED = {
    **{f"neck.1.lateral_convs.{i}.conv.{p}": f"neck.1.fpn.inner_blocks.{i}.0.{p}"
       for i in range(4) for p in ("weight", "bias")},
    **{f"neck.1.fpn_convs.{i}.conv.{p}": f"neck.1.fpn.layer_blocks.{i}.0.{p}"
       for i in range(4) for p in ("weight", "bias")},
    **{f"rpn_head.rpn_conv.{p}": f"rpn.head.conv.0.0.{p}" for p in ("weight", "bias")},
    **{f"rpn_head.rpn_cls.{p}": f"rpn.head.cls_logits.{p}" for p in ("weight", "bias")},
    **{f"rpn_head.rpn_reg.{p}": f"rpn.head.bbox_pred.{p}" for p in ("weight", "bias")},
}


def test_htc_keymap_matches_the_official_table():
    from vit_adapter_ds.models.detectors.keymap import htc_from_mmdet, htc_to_mmdet

    model = tiny_htc()
    sd = model.state_dict()
    # export: exactly the official keys and shapes (the backbone keys are the same in both layouts)
    exported = htc_to_mmdet(sd)
    heads = {k: tuple(v.shape) for k, v in exported.items() if not k.startswith("backbone.")}
    assert heads == HTC_OFFICIAL, (sorted(set(heads) - set(HTC_OFFICIAL)), sorted(set(HTC_OFFICIAL) - set(heads)))
    # a synthetic official checkpoint loads strictly, each tensor where the table says
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(shape, generator=g) for k, shape in HTC_OFFICIAL.items()}
    official.update({k: v.clone() for k, v in sd.items() if k.startswith("backbone.")})
    res = model.load_state_dict(htc_from_mmdet(official), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    loaded = model.state_dict()
    for k in HTC_OFFICIAL:
        assert torch.equal(loaded[HTC_RENAMED.get(k, k)], official[k]), k
    # and is written back exactly
    back = htc_to_mmdet(loaded)
    assert set(back) == set(official) and all(torch.equal(back[k], official[k]) for k in official)
