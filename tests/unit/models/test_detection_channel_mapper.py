"""The official no-FPN neck ``ChannelMapperWithPooling`` (czczup/ViT-Adapter fd64a51,
``detection/mmdet_custom/models/necks/channel_mapper.py``): its outputs equal an independent reference of the
official rule written here with plain torch ops (a ``kernel_size`` conv with bias and ``padding=(k - 1) // 2`` then
ReLU per level; each extra level a 2 x 2 / stride 2 max pool of the previous *output*, floor for odd sizes -- not
mmdet ``ChannelMapper``'s stride-2 3 x 3 conv of the last input), same weights under the official state-dict names,
same input; the official initialisation (Xavier uniform, bias 0); ``from_config`` refuses keys and values with the
dotted path; Mask R-CNN takes it as its neck (train step, inference, official checkpoint keys both ways) while any
other neck type keeps being refused."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors import FPN, ChannelMapperWithPooling, MaskRCNN
from vit_adapter_ds.models.detectors.keymap import from_mmdet, load_mmdet_checkpoint, to_mmdet
from vit_adapter_ds.models.registry import NECKS

from test_detection_keymap import OFFICIAL as OFFICIAL_FPN
from test_detection_model import _targets, tiny_cfg

OFFICIAL_NECK = dict(type="ChannelMapperWithPooling", in_channels=[384, 384, 384, 384], out_channels=256, num_outs=5)


# --------------------------------------------------------------------------------------- independent reference
def _max_pool_2x2(x):
    """2 x 2 windows at stride 2, the last odd row / column dropped (nn.MaxPool2d(2, 2), ceil_mode=False)."""
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))


def reference(sd, feats, kernel_size=1, relu=True, num_outs=None):
    """The official ChannelMapperWithPooling.forward on the official state dict ``sd`` (``convs.i.conv.*``)."""
    outs = []
    for i, x in enumerate(feats):
        y = F.conv2d(x, sd[f"convs.{i}.conv.weight"], sd[f"convs.{i}.conv.bias"], padding=(kernel_size - 1) // 2)
        outs.append(torch.where(y > 0, y, torch.zeros_like(y)) if relu else y)
    for _ in range(len(feats), num_outs or len(feats)):
        outs.append(_max_pool_2x2(outs[-1]))
    return outs


def _official_sd(in_channels, out_channels, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, c in enumerate(in_channels):
        sd[f"convs.{i}.conv.weight"] = torch.randn(out_channels, c, k, k, generator=g) * 0.2
        sd[f"convs.{i}.conv.bias"] = torch.randn(out_channels, generator=g) * 0.2
    return sd


@pytest.mark.parametrize("cfg,sizes", [
    # the official neck (kernel 1, ReLU, one pooled level) on odd sizes: the pooled level floors 7 -> 3
    (dict(OFFICIAL_NECK, in_channels=[24] * 4, out_channels=16), (56, 28, 14, 7)),
    # kernel 3 (padding 1), no activation, two pooled levels (9 -> 4 -> 2), channels per level
    (dict(type="ChannelMapperWithPooling", in_channels=[8, 12, 16, 20], out_channels=6, kernel_size=3, act_cfg=None,
          num_outs=6), (33, 17, 9, 9)),
    # even kernel (padding 0: the map shrinks by 1, as the official ConvModule), num_outs None = one per input
    (dict(type="ChannelMapperWithPooling", in_channels=[5, 7], out_channels=4, kernel_size=2), (11, 6)),
])
def test_outputs_equal_the_official_rule(cfg, sizes):
    neck = ChannelMapperWithPooling.from_config(cfg, "model.neck")
    k = cfg.get("kernel_size", 1)
    sd = _official_sd(cfg["in_channels"], cfg["out_channels"], k)
    res = neck.load_state_dict(sd, strict=True)  # the official parameter names, nothing else
    assert not res.missing_keys and not res.unexpected_keys and set(neck.state_dict()) == set(sd)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, c, s, s + 1, generator=g) for c, s in zip(cfg["in_channels"], sizes)]
    out = neck(feats)
    ref = reference(sd, feats, k, cfg.get("act_cfg", "ReLU") is not None, cfg.get("num_outs"))
    assert list(out) == [str(i) for i in range(len(ref))] == neck.names
    for got, want in zip(out.values(), ref):
        assert got.shape == want.shape and torch.equal(got, want)
    if cfg.get("act_cfg", "ReLU") is not None:
        assert all((t >= 0).all() for t in out.values())


def test_official_neck_shapes_and_initialisation():
    torch.manual_seed(0)
    neck = NECKS.build(dict(OFFICIAL_NECK), "model.neck")
    assert type(neck) is ChannelMapperWithPooling and neck.out_channels == 256 and neck.num_outs == 5
    assert neck.kernel_size == 1 and len(neck.extra_convs) == 1
    assert sum(p.numel() for p in neck.parameters()) == 4 * (384 * 256 + 256)
    for i in range(4):
        w, b = neck.convs[i].conv.weight, neck.convs[i].conv.bias
        bound = math.sqrt(6.0 / (384 + 256))  # Xavier uniform, gain 1 (mmcv XavierInit distribution='uniform')
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound and torch.equal(b, torch.zeros(256))
    feats = [torch.randn(1, 384, 200 // s, 304 // s) for s in (4, 8, 16, 32)]
    shapes = [tuple(t.shape[-2:]) for t in neck(feats).values()]
    assert shapes == [(50, 76), (25, 38), (12, 19), (6, 9), (3, 4)]


@pytest.mark.parametrize("change,msg", [
    ({"kernel_sise": 3}, r"unknown key\(s\) model.neck.kernel_sise"),
    ({"norm_cfg": {"type": "BN"}}, r"model.neck.norm_cfg=\{'type': 'BN'\} is not supported here"),
    ({"conv_cfg": {"type": "DCN"}}, r"model.neck.conv_cfg="),
    ({"act_cfg": {"type": "LeakyReLU"}}, r"model.neck.act_cfg=\{'type': 'LeakyReLU'\} is not supported here"),
    ({"num_outs": 3}, r"model.neck.num_outs=3 must be at least len\(in_channels\)=4"),
    ({"num_outs": 5.0}, r"model.neck.num_outs"),
    ({"in_channels": [384, "x"]}, r"model.neck.in_channels must be a non-empty list of positive ints"),
    ({"in_channels": []}, r"model.neck.in_channels must be a non-empty list"),
    ({"out_channels": 0}, r"model.neck.out_channels"),
    ({"kernel_size": 0}, r"model.neck.kernel_size"),
    ({"type": "ChannelMapper"}, r"model.neck.type='ChannelMapper' is not supported here"),
    ({"init_cfg": {"type": "Kaiming"}}, r"model.neck.init_cfg="),
])
def test_from_config_refuses_with_the_dotted_path(change, msg):
    with pytest.raises(ConfigError, match=msg):
        ChannelMapperWithPooling.from_config(dict(OFFICIAL_NECK, **change), "model.neck")


def test_official_optional_keys_at_their_official_values_are_accepted():
    neck = ChannelMapperWithPooling.from_config(dict(
        OFFICIAL_NECK, kernel_size=1, conv_cfg=None, norm_cfg=None, act_cfg=dict(type="ReLU"),
        init_cfg=dict(type="Xavier", layer="Conv2d", distribution="uniform")), "model.neck")
    assert neck.names == ["0", "1", "2", "3", "4"]
    assert ChannelMapperWithPooling.from_config(dict(OFFICIAL_NECK, num_outs=None), "model.neck").num_outs == 4


# ------------------------------------------------------------------------------------------ inside Mask R-CNN
def _no_fpn_cfg(num_classes=7):
    cfg = tiny_cfg(num_classes=num_classes, depth=4)
    cfg["neck"] = dict(type="ChannelMapperWithPooling", in_channels=[192] * 4, out_channels=256, num_outs=5)
    return cfg


@pytest.fixture(scope="module")
def no_fpn_model():
    torch.manual_seed(0)
    return MaskRCNN.from_config(_no_fpn_cfg(num_classes=80))


def test_mask_rcnn_trains_and_predicts_with_the_no_fpn_neck():
    torch.manual_seed(0)
    model = MaskRCNN.from_config(_no_fpn_cfg())
    assert type(model.neck) is ChannelMapperWithPooling
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    model.train()
    losses = model(torch.randn(2, 3, 128, 160), _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(model.neck.convs[i].conv.weight.grad.abs().sum() > 0 for i in range(4))
    model.eval()
    (det,) = model.predict(torch.randn(1, 3, 128, 160))
    assert det["boxes"].shape[1] == 4 and det["masks"].shape[1:] == (128, 160)


def test_fpn_neck_unchanged_and_other_necks_refused():
    torch.manual_seed(0)
    a = MaskRCNN.from_config(tiny_cfg(depth=4))
    cfg = tiny_cfg(depth=4)
    del cfg["neck"]["type"]  # an absent type is FPN, as before
    torch.manual_seed(0)
    b = MaskRCNN.from_config(cfg)
    assert type(a.neck) is FPN and type(b.neck) is FPN
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    cfg = tiny_cfg(depth=4)
    cfg["neck"] = dict(type="ExtraAttention", in_channels=[192] * 4, num_head=3)
    with pytest.raises(ConfigError, match=r"model.neck.type='ExtraAttention' gives no feature pyramid"):
        MaskRCNN.from_config(cfg)
    cfg["neck"] = dict(type="NoSuchNeck")
    with pytest.raises(ConfigError, match=r"model.neck.type='NoSuchNeck' is not supported; choose one of"):
        MaskRCNN.from_config(cfg)
    cfg["neck"] = dict(_no_fpn_cfg()["neck"], out_channels=128)
    with pytest.raises(ConfigError, match=r"model.rpn_head.in_channels=256 must equal the neck's out_channels 128"):
        MaskRCNN.from_config(cfg)


# official key list of mask_rcnn/no_fpn with D = 192: the Mask R-CNN heads of the FPN file, the neck's ConvModules
OFFICIAL = {
    **{k: s for k, s in OFFICIAL_FPN.items() if not k.startswith("neck.")},
    **{f"neck.convs.{i}.conv.weight": (256, 192, 1, 1) for i in range(4)},
    **{f"neck.convs.{i}.conv.bias": (256,) for i in range(4)},
}


def test_official_no_fpn_checkpoint_loads_strictly_and_exports_back(no_fpn_model):
    model = no_fpn_model
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in OFFICIAL.items()}
    sd.update({"backbone." + k: v.clone() for k, v in model.backbone.state_dict().items()})
    res = load_mmdet_checkpoint(model, {"state_dict": sd}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    torch.testing.assert_close(model.neck.convs[2].conv.weight, sd["neck.convs.2.conv.weight"])
    back = to_mmdet(model.state_dict())
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    again = from_mmdet(back)
    assert set(again) == set(model.state_dict())
