"""HTC++ box heads of the Objects365 -> COCO recipes: ``Shared4Conv1FCBBoxHead`` with ``norm_cfg=SyncBN`` (mmcv
ConvModule keys) and ``reg_decoded_bbox=True`` + ``GIoULoss(loss_weight=10)``: the first stage's box loss against
the numpy mmdet reference of the Cascade test (class-agnostic deltas decoded without clipping, GIoU against the
matched ground truth, / number of sampled RoIs), and the config refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors.htc import CascadeStage, HybridTaskCascadeRoIHead
from vit_adapter_ds.models.detectors.htc_heads import HTCMaskHead, Shared4Conv1FCBBoxHead
from vit_adapter_ds.models.detectors.mask_rcnn import train_targets
from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign

from test_detection_cascade import C, NC, SIZES, STAGES, _features, _proposals, np_assign, np_delta2bbox, \
    np_giou_loss
from test_detection_model import _targets


def _head():
    torch.manual_seed(0)
    names = ("0", "1", "2", "3")
    return HybridTaskCascadeRoIHead(
        bbox_roi_extractor=LevelRoIAlign(names, 7), mask_roi_extractor=LevelRoIAlign(names, 14),
        bbox_heads=[Shared4Conv1FCBBoxHead(C, C, 32, 7, NC, num_convs=2, norm="syncbn") for _ in STAGES],
        mask_heads=[HTCMaskHead(i > 0, 2, C, C, NC) for i in range(3)],
        stages=[CascadeStage(iou, num=512, target_stds=stds, match_low_quality=False) for iou, stds in STAGES],
        num_classes=NC, box_losses=[("giou", 10.0, stds) for _, stds in STAGES])


def test_norm_keys_are_mmcv_convmodule():
    keys = set(Shared4Conv1FCBBoxHead(C, C, 32, 7, NC, num_convs=2, norm="syncbn").state_dict())
    assert {"shared_convs.0.conv.weight", "shared_convs.0.bn.weight", "shared_convs.0.bn.running_var",
            "shared_convs.1.bn.bias", "shared_fcs.0.weight", "fc_cls.bias", "fc_reg.weight"} <= keys
    assert "shared_convs.0.conv.bias" not in keys  # ConvModule with a norm: conv without bias
    plain = set(Shared4Conv1FCBBoxHead(C, C, 32, 7, NC, num_convs=2).state_dict())
    assert "shared_convs.0.conv.bias" in plain and not any(".bn." in k for k in plain)


def test_first_stage_giou_loss_matches_the_mmdet_rule():
    head = _head().eval()  # BN on running statistics: each RoI's output does not depend on the others
    images = torch.zeros(2, 3, 128, 160)
    targets = train_targets(images, _targets(), SIZES)
    proposals = _proposals(targets)
    feats = _features()
    losses = head.forward_train(feats, proposals, SIZES, targets)
    giou_sum, count = 0.0, 0
    for j, (t, p) in enumerate(zip(targets, proposals)):
        gt, gl = t["boxes"].numpy().astype(np.float64), t["labels"].numpy()
        boxes, labels, matched, _ = np_assign(gt, gl, p.numpy().astype(np.float64), 0.5)
        with torch.no_grad():
            rois = [torch.zeros(0, 4)] * 2
            rois[j] = torch.as_tensor(boxes, dtype=torch.float32)
            _, reg = head.bbox_head[0](head.bbox_roi_extractor(feats, rois))
        reg = reg.double().numpy()
        pos = labels < NC
        pred = np_delta2bbox(boxes[pos], reg[pos], STAGES[0][1])  # class-agnostic, reg_decoded_bbox: no clipping
        giou_sum += np_giou_loss(pred, gt[matched[pos]]).sum()
        count += len(boxes)
    assert giou_sum > 0
    np.testing.assert_allclose(losses["s0.loss_bbox"].item(), 10.0 * giou_sum / count, rtol=1e-5)
    assert all(torch.isfinite(v) for v in losses.values())


def tiny_o365_model() -> dict:
    """The synthetic HTC recipe's model with the Objects365 recipes' box heads (SyncBN, GIoU x10 on decoded boxes)."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    model = to_plain(load_recipe(str(DETECTION_RECIPES["synthetic_htc"])).model)
    for b in model["roi_head"]["bbox_head"]:
        b.update(reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
                 loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
    return model


def _build_with(mutate):
    from vit_adapter_ds.models.detectors.htc import htc_from_config

    cfg = tiny_o365_model()
    mutate(cfg["roi_head"]["bbox_head"][1])
    return htc_from_config(cfg)


@pytest.mark.parametrize("mutate,msg", [
    (lambda b: b.pop("reg_decoded_bbox"), r"bbox_head\[1\]: loss_bbox.type='GIoULoss' needs reg_decoded_bbox=True"),
    (lambda b: b["loss_bbox"].update(beta=1.0), r"bbox_head\[1\].loss_bbox.beta is a SmoothL1Loss key"),
    (lambda b: b.update(norm_cfg=dict(type='GN')), r"bbox_head\[1\].norm_cfg.type='GN'"),
    (lambda b: b.update(loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0)),
     "needs reg_decoded_bbox=False"),
])
def test_box_head_config_errors(mutate, msg):
    with pytest.raises(ConfigError, match=msg):
        _build_with(mutate)


def test_tiny_o365_model_builds_with_syncbn_giou_heads():
    m = _build_with(lambda b: None)
    assert [b[0] for b in m.roi_head.box_losses] == ["giou"] * 3 and m.roi_head.box_losses[2][1] == 10.0
    assert "roi_head.bbox_head.2.shared_convs.3.bn.running_mean" in m.state_dict()


def test_extra_attention_with_cp_gives_the_same_values_and_gradients():
    """The recipes' ExtraAttention(with_cp=True): activation checkpointing changes no value (drop path off)."""
    from vit_adapter_ds.models.detectors.extra_attention import ExtraAttention

    cfg = dict(type='ExtraAttention', in_channels=[16, 16], num_head=2, with_ffn=True, ffn_ratio=2.0)
    plain = ExtraAttention.from_config(cfg)
    cp = ExtraAttention.from_config(dict(cfg, with_cp=True))
    cp.load_state_dict(plain.state_dict())
    assert cp.with_cp and not plain.with_cp
    outs = []
    for m in (plain, cp):
        x = torch.randn(2, 16, 4, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
        y = m([torch.zeros(2, 16, 8, 10), x])
        y[-1].square().sum().backward()
        outs.append((y[-1].detach(), x.grad, m.attn.qkv.weight.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_fpn_group_norm_is_mmdets_rule_and_maps_to_the_official_keys():
    """FPN(norm_cfg=GN(4)) against mmdet FPN.forward re-derived with plain torch ops: lateral = GN(conv1x1) and
    output = GN(conv3x3) (convs without bias, no activation), top-down nearest sums, the max-pool level; the HTC key
    map names the norms mmcv ConvModule's ``gn`` both ways."""
    import torch.nn.functional as F

    from vit_adapter_ds.models.detectors.fpn import FPN
    from vit_adapter_ds.models.detectors.keymap import htc_from_mmdet, htc_to_mmdet

    fpn = FPN.from_config(dict(type='FPN', in_channels=[8, 8, 8, 8], out_channels=8, num_outs=5,
                               norm_cfg=dict(type='GN', num_groups=4)))
    with torch.no_grad():
        for m in fpn.modules():
            if isinstance(m, torch.nn.GroupNorm):  # non-trivial affine parameters
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 32 // 2 ** i, 40 // 2 ** i, generator=g) for i in range(4)]
    out = list(fpn(feats).values())
    sd = {f"neck.1.{k}": v for k, v in fpn.state_dict().items()}
    official = htc_to_mmdet(sd)
    assert "neck.1.lateral_convs.0.gn.weight" in official and "neck.1.fpn_convs.3.gn.bias" in official
    assert "neck.1.lateral_convs.0.conv.bias" not in official  # ConvModule with a norm: no conv bias
    assert set(htc_from_mmdet(official)) == set(sd)
    w = {k[len("neck.1."):]: v for k, v in official.items()}

    def cm(x, i, kind):  # mmcv ConvModule(conv, GN, act_cfg=None)
        x = F.conv2d(x, w[f"{kind}.{i}.conv.weight"], padding=1 if kind == "fpn_convs" else 0)
        return F.group_norm(x, 4, w[f"{kind}.{i}.gn.weight"], w[f"{kind}.{i}.gn.bias"])

    lat = [cm(f, i, "lateral_convs") for i, f in enumerate(feats)]
    for i in range(3, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
    ref = [cm(x, i, "fpn_convs") for i, x in enumerate(lat)]
    ref.append(F.max_pool2d(ref[-1], 1, stride=2))
    assert len(out) == 5
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    with pytest.raises(ConfigError, match=r"norm_cfg=.*only dict\(type='GN'"):
        FPN.from_config(dict(type='FPN', in_channels=[8] * 4, out_channels=8, num_outs=5,
                             norm_cfg=dict(type='LN')), "model.neck[1]")
