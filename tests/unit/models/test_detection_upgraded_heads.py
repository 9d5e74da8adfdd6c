"""The upgraded Mask R-CNN parts of the official ``upgraded_mask_rcnn/mask_rcnn_mae_adapter_base_lsj_fpn_*ep_coco.py``
(FPN ``norm_cfg=MMSyncBN``, ``rpn_head.num_convs=2``, ``Shared4Conv1FCBBoxHead`` and ``FCNMaskHead`` with
``norm_cfg``) have mmdet 2.22's state-dict keys and shapes (typed here from mmdet's rules: mmcv ``ConvModule``
children ``conv`` / ``bn``, conv bias only without a norm, ``RPNHead.rpn_conv`` an ``nn.Sequential`` of ConvModules
when ``num_convs > 1``), compute what mmdet computes (re-derived here in float64 from the official-layout tensors:
ConvModule = conv -> norm -> act, FPN lateral / top-down nearest / output / max-pool level, RPN conv + ReLU twice,
4 x (conv, BN, ReLU) + flatten + FC + ReLU, mask convs then deconv + ReLU + 1x1 logits), start from mmdet's init, and
train one CPU step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors import MaskRCNN
from vit_adapter_ds.models.detectors.keymap import from_mmdet, to_mmdet

from test_detection_model import _targets

D, C, CONV, FC, NC = 48, 32, 24, 40, 7  # backbone width, FPN channels, box-head conv channels, FC width, classes
SYNC = dict(type="MMSyncBN", requires_grad=True)
FPN_NORM = SYNC  # the FPN's norm_cfg, as in the recipes
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def upgraded_cfg(**bbox):
    backbone = dict(type="ViTAdapter", img_size=64, pretrain_size=64, patch_size=16, embed_dim=D, depth=4,
                    num_heads=3, mlp_ratio=2, drop_path_rate=0.0, conv_inplane=16, n_points=2, deform_num_heads=6,
                    cffn_ratio=0.25, deform_ratio=0.5, use_extra_extractor=False, layer_scale=False,
                    interaction_indexes=[[i, i] for i in range(4)], window_attn=[False] * 4, window_size=[None] * 4)
    rc = dict(type="SingleRoIExtractor", out_channels=C, featmap_strides=[4, 8, 16, 32])
    return dict(
        type="MaskRCNN", backbone=backbone,
        neck=dict(type="FPN", in_channels=[D] * 4, out_channels=C, num_outs=5,
                  **({} if FPN_NORM is None else {"norm_cfg": FPN_NORM})),
        rpn_head=dict(in_channels=C, feat_channels=C, num_convs=2),
        roi_head=dict(
            bbox_roi_extractor=dict(rc, roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
            bbox_head=dict(dict(type="Shared4Conv1FCBBoxHead", in_channels=C, conv_out_channels=CONV,
                                fc_out_channels=FC, num_classes=NC, norm_cfg=SYNC), **bbox),
            mask_roi_extractor=dict(rc, roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0)),
            mask_head=dict(in_channels=C, conv_out_channels=C, num_classes=NC, norm_cfg=SYNC)))


def official_shapes():
    """mmdet 2.22's non-backbone keys and shapes of this model (one BN per ConvModule with a norm, no conv bias)."""
    out = {}

    def conv_module(prefix, cout, cin, k, norm=True):
        out[f"{prefix}.conv.weight"] = (cout, cin, k, k)
        if norm:
            out.update({f"{prefix}.bn.{n}": (() if n == "num_batches_tracked" else (cout,)) for n in BN})
        else:
            out[f"{prefix}.conv.bias"] = (cout,)

    for i in range(4):
        conv_module(f"neck.lateral_convs.{i}", C, D, 1, norm=FPN_NORM is not None)
        conv_module(f"neck.fpn_convs.{i}", C, C, 3, norm=FPN_NORM is not None)
    for i in range(2):
        conv_module(f"rpn_head.rpn_conv.{i}", C, C, 3, norm=False)
    out.update({"rpn_head.rpn_cls.weight": (3, C, 1, 1), "rpn_head.rpn_cls.bias": (3,),
                "rpn_head.rpn_reg.weight": (12, C, 1, 1), "rpn_head.rpn_reg.bias": (12,)})
    for i in range(4):
        conv_module(f"roi_head.bbox_head.shared_convs.{i}", CONV, C if i == 0 else CONV, 3)
    out.update({"roi_head.bbox_head.shared_fcs.0.weight": (FC, CONV * 49), "roi_head.bbox_head.shared_fcs.0.bias": (FC,),
                "roi_head.bbox_head.fc_cls.weight": (NC + 1, FC), "roi_head.bbox_head.fc_cls.bias": (NC + 1,),
                "roi_head.bbox_head.fc_reg.weight": (4 * NC, FC), "roi_head.bbox_head.fc_reg.bias": (4 * NC,)})
    for i in range(4):
        conv_module(f"roi_head.mask_head.convs.{i}", C, C, 3)
    out.update({"roi_head.mask_head.upsample.weight": (C, C, 2, 2), "roi_head.mask_head.upsample.bias": (C,),
                "roi_head.mask_head.conv_logits.weight": (NC, C, 1, 1), "roi_head.mask_head.conv_logits.bias": (NC,)})
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskRCNN.from_config(upgraded_cfg())


def test_official_keys_shapes_and_round_trip(model):
    off = to_mmdet(model.state_dict())
    heads = {k: tuple(v.shape) for k, v in off.items() if not k.startswith("backbone.")}
    assert heads == official_shapes()
    g = torch.Generator().manual_seed(1)
    official = {k: (torch.randint(0, 9, v.shape, generator=g) if v.dtype == torch.int64 else
                    torch.randn(v.shape, generator=g)) for k, v in off.items()}
    fresh = MaskRCNN.from_config(upgraded_cfg())
    fresh.load_state_dict(from_mmdet(official), strict=True)
    back = to_mmdet(fresh.state_dict())
    assert list(back) == list(official) and all(torch.equal(back[k], official[k]) for k in official)


def _conv_module(x, sd, p, padding=0):
    """mmcv ConvModule without activation: conv (bias only without a norm) -> norm (when the layout has one)."""
    x = F.conv2d(x, sd[p + ".conv.weight"], sd.get(p + ".conv.bias"), padding=padding)
    return _bn(x, sd, p + ".bn") if p + ".bn.weight" in sd else x


def _bn(x, sd, p):
    return (x - sd[p + ".running_mean"][None, :, None, None]) / torch.sqrt(sd[p + ".running_var"] + 1e-5)[
        None, :, None, None] * sd[p + ".weight"][None, :, None, None] + sd[p + ".bias"][None, :, None, None]


def test_heads_compute_the_mmdet_rule(model):
    """Eval mode (running statistics made non-trivial); every reference is computed from the official-layout
    tensors in float64."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.eval()
    sd = {k: v.double() for k, v in to_mmdet(model.state_dict()).items() if v.is_floating_point()}
    tol = dict(rtol=1e-4, atol=1e-5)
    # FPN: lateral ConvModule (1x1, BN, no act), top-down nearest to the finer size, output ConvModule, max-pool P6
    feats = [torch.randn(2, D, s, s + 1, generator=g).double() for s in (16, 8, 4, 2)]
    with torch.no_grad():
        ours = [v.double() for v in model.neck.double()(feats).values()]
    model.neck.float()
    lat = [_conv_module(x, sd, f"neck.lateral_convs.{i}") for i, x in enumerate(feats)]
    for i in range(3, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
    ref = [_conv_module(x, sd, f"neck.fpn_convs.{i}", padding=1) for i, x in enumerate(lat)]
    ref.append(F.max_pool2d(ref[-1], 1, stride=2))
    assert len(ours) == 5
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **tol)
    # RPN: rpn_conv = 2 x (conv 3x3 with bias, ReLU), then mmdet's ReLU (idempotent), rpn_cls / rpn_reg
    x = torch.randn(2, C, 6, 5, generator=g)
    with torch.no_grad():
        logits, deltas = model.rpn.head([x])
    t = x.double()
    for i in range(2):
        t = F.relu(F.conv2d(t, sd[f"rpn_head.rpn_conv.{i}.conv.weight"], sd[f"rpn_head.rpn_conv.{i}.conv.bias"],
                            padding=1))
    t = F.relu(t)
    torch.testing.assert_close(logits[0].double(), F.conv2d(t, sd["rpn_head.rpn_cls.weight"],
                                                            sd["rpn_head.rpn_cls.bias"]), **tol)
    torch.testing.assert_close(deltas[0].double(), F.conv2d(t, sd["rpn_head.rpn_reg.weight"],
                                                            sd["rpn_head.rpn_reg.bias"]), **tol)
    # Shared4Conv1FCBBoxHead: 4 x (conv 3x3, BN, ReLU), flatten, FC + ReLU, fc_cls (background last), fc_reg (4 C)
    r = torch.randn(5, C, 7, 7, generator=g)
    with torch.no_grad():
        cls_tv, reg_tv = model.roi_heads.box_predictor(model.roi_heads.box_head(r))
    t = r.double()
    for i in range(4):
        p = f"roi_head.bbox_head.shared_convs.{i}"
        t = F.relu(_conv_module(t, sd, p, padding=1))
    t = F.relu(F.linear(t.flatten(1), sd["roi_head.bbox_head.shared_fcs.0.weight"],
                        sd["roi_head.bbox_head.shared_fcs.0.bias"]))
    cls = F.linear(t, sd["roi_head.bbox_head.fc_cls.weight"], sd["roi_head.bbox_head.fc_cls.bias"])
    reg = F.linear(t, sd["roi_head.bbox_head.fc_reg.weight"], sd["roi_head.bbox_head.fc_reg.bias"])
    # torchvision's RoIHeads order: background first, 4 unused background deltas
    torch.testing.assert_close(cls_tv.double(), torch.cat([cls[:, NC:], cls[:, :NC]], 1), **tol)
    torch.testing.assert_close(reg_tv.double(), torch.cat([torch.zeros(5, 4, dtype=reg.dtype), reg], 1), **tol)
    # FCNMaskHead(norm_cfg): 4 x (conv 3x3 without bias, BN, ReLU), deconv 2x2 stride 2 + ReLU, 1x1 logits
    r = torch.randn(3, C, 14, 14, generator=g)
    with torch.no_grad():
        masks = model.roi_heads.mask_predictor(model.roi_heads.mask_head(r))
    t = r.double()
    for i in range(4):
        p = f"roi_head.mask_head.convs.{i}"
        t = F.relu(_conv_module(t, sd, p, padding=1))
    t = F.relu(F.conv_transpose2d(t, sd["roi_head.mask_head.upsample.weight"], sd["roi_head.mask_head.upsample.bias"],
                                  stride=2))
    ref = F.conv2d(t, sd["roi_head.mask_head.conv_logits.weight"], sd["roi_head.mask_head.conv_logits.bias"])
    torch.testing.assert_close(masks[:, 1:].double(), ref, **tol)  # channel 0: torchvision's unused background


def test_initialisation_is_mmdets():
    """mmdet 2.22 init: FPN convs Xavier uniform (FPN init_cfg, no bias with a norm), RPN convs normal std 0.01 bias
    0, box-head ConvModules Kaiming normal fan-out, shared FC Xavier uniform, fc_cls / fc_reg normal 0.01 / 0.001,
    mask ConvModules Kaiming normal fan-out; every norm weight 1, bias 0."""
    torch.manual_seed(3)
    sd = to_mmdet(MaskRCNN.from_config(upgraded_cfg(conv_out_channels=64, fc_out_channels=256)).state_dict())
    for k, v in sd.items():
        if k.startswith("backbone."):
            continue
        if ".bn.weight" in k:
            assert torch.all(v == 1), k
        elif k.endswith(".bias"):
            assert torch.all(v == 0), k
    for k in ("neck.lateral_convs.0.conv.weight", "neck.fpn_convs.1.conv.weight", "roi_head.bbox_head.shared_fcs.0.weight"):
        w = sd[k]
        fan_out, fan_in = w.shape[0] * w[0, 0].numel(), w.shape[1] * w[0, 0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound, k
    for k, std in (("rpn_head.rpn_conv.0.conv.weight", 0.01), ("rpn_head.rpn_conv.1.conv.weight", 0.01),
                   ("roi_head.bbox_head.fc_cls.weight", 0.01),
                   ("roi_head.bbox_head.fc_reg.weight", 0.001),
                   ("roi_head.bbox_head.shared_convs.1.conv.weight", math.sqrt(2.0 / (64 * 9))),
                   ("roi_head.mask_head.convs.2.conv.weight", math.sqrt(2.0 / (C * 9)))):
        assert abs(sd[k].std().item() - std) < 0.1 * std, (k, sd[k].std().item(), std)


def test_one_training_step_reaches_every_new_layer(model):
    model.train()
    model.zero_grad()
    torch.manual_seed(4)
    losses = model(torch.randn(2, 3, 128, 160), _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    named = dict(model.named_parameters())
    names = ["rpn.head.conv.1.0.weight", "roi_heads.box_head.shared_convs.3.bn.weight",
             "roi_heads.box_head.fc_cls.weight", "roi_heads.mask_head.0.1.weight"]
    if FPN_NORM is not None:
        names += ["neck.fpn.inner_blocks.0.1.weight", "neck.fpn.layer_blocks.3.1.bias"]
    for k in names:
        assert named[k].grad is not None and named[k].grad.abs().sum() > 0, k
    assert model.roi_heads.box_head.shared_convs[0].bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("change,msg", [
    (lambda c: c["roi_head"]["bbox_head"].update(type="Shared2FCBBoxHead"), "Shared2FCBBoxHead has no convs"),
    (lambda c: c["roi_head"]["mask_head"].update(norm_cfg=dict(type="LN")), r"mask_head.norm_cfg.type='LN'"),
    (lambda c: c["neck"].update(norm_cfg=dict(type="LN")), r"neck.norm_cfg=\{'type': 'LN'\}: only"),
    (lambda c: c["neck"].update(norm_cfg=dict(type="SyncBN", requires_grad=False)), r"neck.norm_cfg.requires_grad"),
    (lambda c: c["rpn_head"].update(num_convs=0), r"rpn_head.num_convs must be >= 1"),
    (lambda c: c["roi_head"]["bbox_head"].update(type="Shared4Conv1FCBBoxHeadX"), r"bbox_head.type"),
])
def test_bad_configs_name_the_key(change, msg):
    cfg = upgraded_cfg()
    change(cfg)
    with pytest.raises(ConfigError, match=msg):
        with torch.device("meta"):
            MaskRCNN.from_config(cfg)
