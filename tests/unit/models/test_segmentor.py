"""EncoderDecoder: losses vs mmseg's CrossEntropyLoss and hand-computed values, slide inference vs mmseg 1.2.2's
``slide_inference``, multi-scale/flip test against explicitly written pipelines, and a tiny ViT-Adapter."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmseg_ref
from vit_adapter_ds.models.heads import FCNHead, UPerHead
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.registry import build_model
from vit_adapter_ds.models.segmentor import (EncoderDecoder, cross_entropy, rescale_size,
                                             scales_from_ratios, inference_size)

NC = 5


class StubBackbone(nn.Module):
    """4 strided convs: (N, 3, H, W) -> maps at strides 4/8/16/32 with ``dim`` channels."""

    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.downs = nn.ModuleList(nn.Conv2d(dim, dim, 3, stride=2, padding=1) for _ in range(3))

    def forward(self, x):
        outs = [self.stem(x)]
        for d in self.downs:
            outs.append(d(outs[-1]))
        return outs


def small_model(dim=8, aux=True, **kw):
    torch.manual_seed(0)
    return EncoderDecoder(StubBackbone(dim), UPerHead([dim] * 4, 16, num_classes=NC),
                          FCNHead(dim, 8, num_classes=NC, in_index=2) if aux else None, num_classes=NC, **kw)


def test_train_losses_hand_computed():
    model = small_model()
    model.train()
    img = torch.randn(2, 3, 64, 64)
    gt = torch.randint(0, NC, (2, 1, 64, 64))
    gt[:, :, :10] = 255
    torch.manual_seed(1)
    losses = model(img, gt)
    assert set(losses) == {"loss_ce", "loss_aux", "loss", "acc"}
    assert not losses["acc"].requires_grad
    # recompute with the same dropout masks
    torch.manual_seed(1)
    feats = model.backbone(img)
    logit = F.interpolate(model.decode_head(feats), size=(64, 64), mode="bilinear", align_corners=False)
    aux = F.interpolate(model.auxiliary_head(feats), size=(64, 64), mode="bilinear", align_corners=False)
    lab = gt[:, 0]
    valid = lab != 255
    ce = F.cross_entropy(logit, lab, ignore_index=255, reduction="none")
    ce_aux = F.cross_entropy(aux, lab, ignore_index=255, reduction="none")
    n_all = lab.numel()
    torch.testing.assert_close(losses["loss_ce"], ce.sum() / n_all)
    torch.testing.assert_close(losses["loss_aux"], 0.4 * ce_aux.sum() / n_all)
    torch.testing.assert_close(losses["loss"], ce.sum() / n_all + 0.4 * ce_aux.sum() / n_all)
    acc = ((logit.argmax(1) == lab) & valid).sum() / valid.sum() * 100
    torch.testing.assert_close(losses["acc"], acc.float())
    losses["loss"].backward()
    assert model.backbone.stem.weight.grad is not None


def test_avg_non_ignore_and_no_aux():
    model = small_model(aux=False, avg_non_ignore=True).eval()  # eval: dropout off, BN running stats
    img = torch.randn(1, 3, 32, 32)
    gt = torch.randint(0, NC, (1, 16, 16))  # label smaller than the image: logits resized to the label
    gt[0, 0] = 255
    losses = model(img, gt)
    assert set(losses) == {"loss_ce", "loss", "acc"}
    logit = F.interpolate(model.decode_head(model.backbone(img)), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(losses["loss_ce"], F.cross_entropy(logit, gt, ignore_index=255))
    with pytest.raises(ValueError):
        model(img, torch.zeros(1, 2, 16, 16, dtype=torch.long))


ce_mod = mmseg_ref.load("losses.cross_entropy_loss")


@pytest.mark.skipif(ce_mod is None, reason="mmseg not importable")
@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_cross_entropy_matches_mmseg(avg_non_ignore):
    torch.manual_seed(0)
    logits = torch.randn(2, NC, 9, 7, dtype=torch.float64)
    label = torch.randint(0, NC, (2, 9, 7))
    label[0, :3] = 255
    ref = ce_mod.CrossEntropyLoss(avg_non_ignore=avg_non_ignore)(logits, label, ignore_index=255)
    torch.testing.assert_close(cross_entropy(logits, label, 255, avg_non_ignore).double(), ref,
                               rtol=1e-6, atol=1e-7)


ed_mod = mmseg_ref.load("segmentors.encoder_decoder")


@pytest.mark.skipif(ed_mod is None, reason="mmseg not importable")
@pytest.mark.parametrize("size,crop,stride", [((80, 112), (32, 32), (21, 21)), ((64, 40), (48, 48), (32, 32)),
                                              ((96, 96), (64, 64), (64, 64))])
def test_slide_matches_mmseg(size, crop, stride):
    model = small_model().eval().double()
    img = torch.randn(2, 3, *size, dtype=torch.float64)
    fake = types.SimpleNamespace(test_cfg=types.SimpleNamespace(stride=stride, crop_size=crop), out_channels=NC,
                                 encode_decode=lambda x, metas: model.encode_decode(x))
    metas = [dict(ori_shape=size, img_shape=size, pad_shape=size, padding_size=[0, 0, 0, 0])] * 2
    ref = ed_mod.EncoderDecoder.slide_inference(fake, img, metas)
    torch.testing.assert_close(model.slide_logits(img, crop, stride).double(), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.slide_logits(img, crop, stride, crop_batch=4), ref, rtol=1e-10, atol=1e-10)


def test_slide_hand_windows():
    """A window count map written out by hand for a 1-D-like case: width 10, crop 4, stride 3 ->
    windows x=[0,4), [3,7), [6,10) (w_grids = (10-4+2)//3+1 = 3)."""
    calls = []

    class Rec(EncoderDecoder):
        def encode_decode(self, img):
            calls.append(tuple(img.shape[2:]))
            return torch.ones(img.shape[0], NC, *img.shape[2:])

    model = Rec(StubBackbone(), UPerHead([8] * 4, 16, num_classes=NC), num_classes=NC)
    out = model.slide_logits(torch.zeros(1, 3, 4, 10), 4, 3)
    assert calls == [(4, 4)] * 3
    torch.testing.assert_close(out, torch.ones(1, NC, 4, 10))


def test_rescale_and_ratios():
    # ADE-like 512x683 at (2048, 512): short side 512 fits -> unchanged; then to multiples of 32: 512 x 704
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert inference_size(512, 683, (2048, 512), 32) == (512, 704)
    # 300x400 at (2048, 512): factor min(2048/400, 512/300) = 1.7067 -> (512, 683)
    assert rescale_size(300, 400, (2048, 512)) == (512, 683)
    # a very wide image is limited by the long edge: 100x1000 at (2048, 512) -> factor 2.048 -> (205, 2048)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)
    assert scales_from_ratios((2048, 512), [0.5, 0.75, 1.75]) == [(1024, 256), (1536, 384), (3584, 896)]


class PointwiseBackbone(nn.Module):
    """Per-pixel (1x1) features at stride 1 for all 4 levels: inference commutes with flips."""

    def __init__(self, dim=4):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 1)

    def forward(self, x):
        y = self.proj(x)
        return [y, y, y, y]


def test_aug_test_against_explicit_pipeline():
    torch.manual_seed(0)
    model = EncoderDecoder(StubBackbone(), UPerHead([8] * 4, 16, num_classes=NC), num_classes=NC).eval()
    img = torch.randn(1, 3, 48, 80)
    out = model.aug_test(img, scales=[(64, 32), (160, 96)], flip=True, size_divisor=32)
    # written out: (64, 32) -> factor min(64/80, 32/48) = 0.6667 -> (32, 53) -> multiples of 32 -> (32, 64);
    # (160, 96) -> factor 2 -> (96, 160) (already multiples of 32)
    probs = []
    for size in [(32, 64), (96, 160)]:
        x = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            xi = x.flip(3) if flip else x
            logit = F.interpolate(model.decode_head(model.backbone(xi)), size=size, mode="bilinear")
            p = F.interpolate(logit, size=(48, 80), mode="bilinear").softmax(1)
            probs.append(p.flip(3) if flip else p)
    torch.testing.assert_close(out, torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.sum(1), torch.ones(1, 48, 80))


def test_flip_of_pointwise_model_is_identity():
    torch.manual_seed(0)
    head = FCNHead(4, 4, num_classes=NC, in_index=0, kernel_size=1)
    model = EncoderDecoder(PointwiseBackbone(), head, num_classes=NC).eval()
    img = torch.randn(1, 3, 16, 24)
    p = model.predict(img)
    torch.testing.assert_close(model.predict(img, flip=True), p)
    torch.testing.assert_close(model.aug_test(img, scales=[None], flip=True), p)
    # slide over a per-pixel model equals whole inference
    torch.testing.assert_close(model.predict(img, mode="slide", crop_size=8, stride=5), p)
    assert model.predict_labels(img, out_size=(8, 12)).shape == (1, 8, 12)


def _quickstart_model_cfg(**backbone):
    from vit_adapter_ds.config import load_recipe
    cfg = load_recipe("synthetic_quickstart")
    m = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    m["backbone"].update(backbone)
    return m


def test_build_segmentor_tiny_vit_adapter():
    torch.manual_seed(0)
    mcfg = _quickstart_model_cfg(embed_dim=48, depth=4, num_heads=3, img_size=64, pretrain_size=64,
                                 conv_inplane=16, drop_path_rate=0.0)
    mcfg["decode_head"]["channels"] = 16
    mcfg["auxiliary_head"]["in_channels"] = 48
    mcfg["auxiliary_head"]["channels"] = 8
    mcfg["decode_head"]["in_channels"] = [48] * 4
    model = build_model(mcfg)
    assert model.aux_weight == 0.4 and model.decode_weight == 1.0 and model.num_classes == 8
    keys = set(model.state_dict())
    assert "decode_head.psp_modules.3.1.conv.weight" in keys and "auxiliary_head.convs.0.conv.weight" in keys
    assert "backbone.blocks.0.attn.qkv.weight" in keys
    model.train()
    img = torch.randn(2, 3, 64, 64)
    gt = torch.randint(0, 8, (2, 64, 64))
    losses = model(img, gt)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    model.eval()
    p = model.predict(img, mode="slide", crop_size=(64, 64), stride=(32, 32))
    assert p.shape == (2, 8, 64, 64)
    ms = model.aug_test(img[:1], scales=scales_from_ratios((128, 64), [0.5, 1.0]), flip=True, size_divisor=32)
    assert ms.shape == (1, 8, 64, 64)


def test_build_segmentor_rejects_unsupported():
    mcfg = _quickstart_model_cfg()
    mcfg["decode_head"]["loss_decode"] = dict(type="FocalLoss")
    with pytest.raises(ConfigError, match="model.decode_head.loss_decode.type='FocalLoss'"):
        build_model(mcfg, device="meta")
    mcfg = _quickstart_model_cfg()
    mcfg["decode_head"]["bogus"] = 1
    with pytest.raises(ConfigError, match="model.decode_head.bogus"):
        build_model(mcfg, device="meta")
