"""Semantic FPN (mmseg ``FPN`` neck + ``FPNHead``) against mmseg 1.2.2 in float64, the segmentor's neck (mmseg
``EncoderDecoder``: backbone -> neck -> heads, mmseg state-dict keys) and one training step of the paper recipe's
model at a tiny size.

mmseg 1.x ``FPNHead`` / ``FPN`` compute what 0.x's (the official code's mmseg 0.20.2) do: the same modules, keys and
forward (1.x only moved ``Upsample`` / ``resize`` from ``mmseg.ops`` to ``mmseg.models.utils``).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mmseg_ref
from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.models.detectors.fpn import FPN
from vit_adapter_ds.models.heads import FPNHead
from vit_adapter_ds.models.registry import build_model
from vit_adapter_ds.models.segmentor import EncoderDecoder

from test_heads import randomize_bn
from test_segmentor import StubBackbone

D, C, CH, NC = 8, 12, 6, 5  # backbone width, FPN width, head channels, classes
SIZES = [(16, 20), (8, 10), (4, 5), (2, 3)]  # strides 4/8/16/32 of a 64x80 image
BN = dict(type="BN", requires_grad=True)

head_mod = mmseg_ref.load("decode_heads.fpn_head")
neck_mod = mmseg_ref.load("necks.fpn")
needs_mmseg = pytest.mark.skipif(head_mod is None or neck_mod is None, reason="mmsegmentation/mmcv-lite not importable")


def maps(channels, seed=0, dtype=torch.float64, n=2, sizes=SIZES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, h, w, generator=g, dtype=dtype) for h, w in sizes]


def fpn_head(**kw):
    torch.manual_seed(0)
    return randomize_bn(FPNHead([C] * 4, CH, num_classes=NC, **kw))


def mmseg_fpn_head(**kw):
    return head_mod.FPNHead(in_channels=[C] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32], channels=CH,
                            num_classes=NC, norm_cfg=BN, align_corners=False, **kw)


def test_fpn_head_keys_are_mmsegs():
    """scale_heads.{i}.{j}: j counts the parameter-free Upsample modules too (mmseg's nn.Sequential)."""
    sd = FPNHead([C] * 4, CH, num_classes=NC).state_dict()
    convs = {k.rsplit(".conv.weight", 1)[0] for k in sd if k.endswith(".conv.weight")}
    assert convs == {"scale_heads.0.0", "scale_heads.1.0", "scale_heads.2.0", "scale_heads.2.2", "scale_heads.3.0",
                     "scale_heads.3.2", "scale_heads.3.4"}
    assert sd["scale_heads.3.0.conv.weight"].shape == (CH, C, 3, 3)
    assert sd["scale_heads.3.4.conv.weight"].shape == (CH, CH, 3, 3)
    assert sd["conv_seg.weight"].shape == (NC, CH, 1, 1) and "scale_heads.3.2.bn.running_var" in sd


@needs_mmseg
@pytest.mark.parametrize("train", [False, True])
def test_fpn_head_matches_mmseg(train):
    ours = fpn_head(dropout_ratio=0.0).double()
    ref = mmseg_fpn_head(dropout_ratio=0.0).double()
    assert set(ref.state_dict()) == set(ours.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.train(train), ref.train(train)
    xs = maps(C)
    torch.testing.assert_close(ours(xs), ref(xs), rtol=1e-12, atol=1e-12)
    if train:  # BN running statistics updated identically
        torch.testing.assert_close(ours.state_dict()["scale_heads.3.4.bn.running_var"],
                                   ref.state_dict()["scale_heads.3.4.bn.running_var"])


@needs_mmseg
def test_fpn_head_odd_sizes_fp32_match_mmseg():
    """Sizes that are not powers of two (a 60x76 image): the x2 upsamplings fall short and the final bilinear
    resize to the finest map does the rest, as in mmseg; float32, eval mode (Dropout2d off)."""
    ours = fpn_head().eval()
    ref = mmseg_fpn_head().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    xs = maps(C, dtype=torch.float32, sizes=[(15, 19), (8, 10), (4, 5), (2, 3)])
    torch.testing.assert_close(ours(xs), ref(xs), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- the FPN neck
NECKS = {  # name: (start_level, add_extra_convs, num_outs)
    "semantic_fpn": (0, False, 4),  # mmseg _base_/models/fpn_r50.py
    "mask_rcnn": (0, False, 5),  # the max-pool level
    "one_stage": (1, "on_output", 5),  # ATSS / GFL: extra stride-2 convs
}


def both_layouts(start_level, extra, num_outs):
    """The torchvision- and mmcv-layout FPN with the same weights (float64)."""
    torch.manual_seed(0)
    tv = FPN([D] * 4, C, num_outs, start_level, extra).double()
    mm = FPN([D] * 4, C, num_outs, start_level, extra, key_layout="mmcv").double()
    sd = tv.state_dict()
    n = 4 - start_level
    mapped = {}
    for i in range(n):
        for t in ("weight", "bias"):
            mapped[f"lateral_convs.{i}.conv.{t}"] = sd[f"fpn.inner_blocks.{i}.0.{t}"]
            mapped[f"fpn_convs.{i}.conv.{t}"] = sd[f"fpn.layer_blocks.{i}.0.{t}"]
    for j in range(num_outs - n if extra else 0):
        for t in ("weight", "bias"):
            mapped[f"fpn_convs.{n + j}.conv.{t}"] = sd[f"fpn.extra_blocks.convs.{j}.{t}"]
    mm.load_state_dict(mapped, strict=True)
    return tv, mm


@needs_mmseg
@pytest.mark.parametrize("name", sorted(NECKS))
def test_fpn_mmcv_layout_matches_mmseg_and_torchvision(name):
    start_level, extra, num_outs = NECKS[name]
    tv, mm = both_layouts(start_level, extra, num_outs)
    ref = neck_mod.FPN([D] * 4, C, num_outs, start_level=start_level, add_extra_convs=extra).double()
    assert set(ref.state_dict()) == set(mm.state_dict())
    ref.load_state_dict(mm.state_dict(), strict=True)
    xs = maps(D)
    ours, theirs, torchvision = list(mm(xs).values()), ref(xs), list(tv(xs).values())
    assert list(mm(xs)) == tv.names == mm.names and len(ours) == len(theirs) == num_outs
    for a, b, c in zip(ours, theirs, torchvision):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert torch.equal(a, c)  # one computation, two key layouts


def test_fpn_key_layout_is_checked():
    with pytest.raises(ValueError, match="key_layout"):
        FPN([D] * 4, C, 4, key_layout="mmseg")
    assert FPN.from_config(dict(type="FPN", in_channels=[D] * 4, out_channels=C, num_outs=4), "model.neck",
                           key_layout="mmcv").key_layout == "mmcv"


# ---------------------------------------------------------------------------------------------- the segmentor
def semantic_fpn_cfg(dim=D):
    return dict(type="EncoderDecoder", backbone=dict(type="ViTAdapter"),
                neck=dict(type="FPN", in_channels=[dim] * 4, out_channels=C, num_outs=4),
                decode_head=dict(type="FPNHead", in_channels=[C] * 4, in_index=[0, 1, 2, 3],
                                 feature_strides=[4, 8, 16, 32], channels=CH, dropout_ratio=0.1, num_classes=NC,
                                 norm_cfg=dict(type="SyncBN", requires_grad=True), align_corners=False),
                train_cfg=dict(), test_cfg=dict(mode="whole"))


def stub_segmentor():
    """EncoderDecoder.from_config's neck and head on a stub backbone (4 strided convs)."""
    cfg = semantic_fpn_cfg()
    neck = EncoderDecoder.build_neck(cfg["neck"], "model.neck")
    head = FPNHead.from_config(cfg["decode_head"], "model.decode_head")
    torch.manual_seed(0)
    return EncoderDecoder(StubBackbone(D), randomize_bn(head), neck=neck, num_classes=NC).double()


def test_segmentor_state_dict_keys_are_mmsegs():
    sd = stub_segmentor().state_dict()
    neck = sorted(k for k in sd if k.startswith("neck."))
    assert neck == sorted(f"neck.{m}.{i}.conv.{t}" for m in ("lateral_convs", "fpn_convs") for i in range(4)
                          for t in ("weight", "bias"))
    assert "decode_head.scale_heads.3.4.conv.weight" in sd and not any(k.startswith("auxiliary_head") for k in sd)


@needs_mmseg
def test_segmentor_is_backbone_neck_head_as_mmseg():
    """encode_decode = resize(FPNHead(FPN(backbone(img)))) with mmseg's modules loaded from the segmentor's
    state dict (strictly, by the segmentor's own keys); the training loss runs through the neck too."""
    model = stub_segmentor().eval()
    sd = model.state_dict()
    neck = neck_mod.FPN([D] * 4, C, 4).double().eval()
    head = mmseg_fpn_head(dropout_ratio=0.1).double().eval()
    neck.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("neck.")}, strict=True)
    head.load_state_dict({k[12:]: v for k, v in sd.items() if k.startswith("decode_head.")}, strict=True)
    img = torch.randn(2, 3, 64, 80, dtype=torch.float64)
    with torch.no_grad():
        want = F.interpolate(head(list(neck(model.backbone(img)))), size=(64, 80), mode="bilinear",
                             align_corners=False)
        torch.testing.assert_close(model.encode_decode(img), want, rtol=1e-12, atol=1e-12)
    loaded = stub_segmentor()
    loaded.load_state_dict(sd, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), sd.values()))


@pytest.mark.parametrize("neck,match", [
    ([dict(type="FPN", in_channels=[D] * 4, out_channels=C, num_outs=4)], "a list of necks"),
    (dict(type="ChannelMapperWithPooling", in_channels=[D] * 4, out_channels=C, num_outs=4),
     "not supported in a segmentor"),
    (dict(type="FPN", in_channels=[D] * 4, out_channels=C, num_outs=3), "num_outs=3"),
])
def test_bad_necks_are_config_errors(neck, match):
    with pytest.raises(ConfigError, match=match):
        EncoderDecoder.build_neck(neck, "model.neck")


def test_head_must_read_the_necks_width():
    cfg = semantic_fpn_cfg(dim=96)
    cfg["backbone"] = to_plain(load_recipe(None).model.backbone)  # the quickstart's tiny ViT-Adapter (96 wide)
    cfg["neck"]["out_channels"] = 2 * C
    with pytest.raises(ConfigError, match=r"model.decode_head.in_channels=\[12, 12, 12, 12\]: the neck's maps have 24"):
        build_model(cfg, device="meta")


def test_paper_recipe_model_takes_a_training_step():
    """The Semantic FPN recipe's model (neck, head, losses, optimizer) with the quickstart's tiny ViT-Adapter as
    backbone: one AdamW step of the recipe's parameter groups on a 64x64 batch of 2."""
    from vit_adapter_ds.engine.optim import param_groups_for_recipe

    cfg = load_recipe("fpn_deit_adapter_tiny_512_80k_ade20k")
    model_cfg = copy.deepcopy(to_plain(cfg.model))
    model_cfg["backbone"] = to_plain(load_recipe(None).model.backbone)
    model_cfg["neck"]["in_channels"] = [96] * 4
    model_cfg["pretrained"] = None
    torch.manual_seed(0)
    model = build_model(model_cfg, load_pretrained=False).train()
    assert type(model.neck).__name__ == "FPN" and model.auxiliary_head is None
    groups = param_groups_for_recipe(model, cfg)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4  # plain AdamW: decay on every parameter
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model(torch.randn(2, 3, 64, 64), torch.randint(0, 150, (2, 1, 64, 64)))
    assert set(losses) == {"loss_ce", "loss", "acc"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.neck.lateral_convs[0].conv.weight.grad.abs().sum() > 0
    opt.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("neck.") for n in moved) and any(n.startswith("decode_head.scale_heads") for n in moved)
    # the recipe's whole-image test (test_cfg mode 'whole') on a non-square image, as ResizeToMultiple(32) leaves it
    prob = model.eval().predict(torch.randn(1, 3, 64, 96))
    assert prob.shape == (1, 150, 64, 96) and torch.allclose(prob.sum(1), torch.ones(1, 64, 96))
