"""Decode heads vs mmseg 1.2.2 (keys, strict loading, outputs) and a float64 functional reference."""
import pytest
import torch
import torch.nn.functional as F

import mmseg_ref
from vit_adapter_ds.models.heads import FCNHead, UPerHead, norm_class

D, CH, NC = 8, 16, 5
SIZES = [(16, 20), (8, 10), (4, 5), (2, 3)]  # strides 4/8/16/32 of a 64x80 image


def feats(seed=0, dtype=torch.float64, n=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, D, h, w, generator=g, dtype=dtype) for h, w in SIZES]


def randomize_bn(model, seed=1):
    """Non-trivial BN statistics/affine so that eval-mode comparisons test them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def expected_uper_keys(n_levels=4, n_pool=4):
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    cm = lambda p: [f"{p}.conv.weight"] + [f"{p}.bn.{k}" for k in bn]  # noqa: E731
    keys = []
    for i in range(n_pool):
        keys += cm(f"psp_modules.{i}.1")
    keys += cm("bottleneck")
    for i in range(n_levels - 1):
        keys += cm(f"lateral_convs.{i}") + cm(f"fpn_convs.{i}")
    keys += cm("fpn_bottleneck") + ["conv_seg.weight", "conv_seg.bias"]
    return set(keys)


def test_uper_keys_and_shapes():
    head = UPerHead([D] * 4, CH, num_classes=NC)
    sd = head.state_dict()
    assert set(sd) == expected_uper_keys()
    assert sd["psp_modules.0.1.conv.weight"].shape == (CH, D, 1, 1)
    assert sd["bottleneck.conv.weight"].shape == (CH, D + 4 * CH, 3, 3)
    assert sd["lateral_convs.0.conv.weight"].shape == (CH, D, 1, 1)
    assert sd["fpn_convs.2.conv.weight"].shape == (CH, CH, 3, 3)
    assert sd["fpn_bottleneck.conv.weight"].shape == (CH, 4 * CH, 3, 3)
    assert sd["conv_seg.weight"].shape == (NC, CH, 1, 1)
    out = head.eval()(feats(dtype=torch.float32))
    assert out.shape == (2, NC, *SIZES[0])


def test_fcn_keys():
    head = FCNHead(D, CH, num_classes=NC, in_index=2, num_convs=1, concat_input=False)
    bn = {f"convs.0.bn.{k}" for k in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]}
    assert set(head.state_dict()) == {"convs.0.conv.weight", "conv_seg.weight", "conv_seg.bias"} | bn
    head2 = FCNHead(D, CH, num_classes=NC, num_convs=2, concat_input=True)
    assert {"convs.1.conv.weight", "conv_cat.conv.weight"} <= set(head2.state_dict())
    assert head.eval()(feats(dtype=torch.float32)).shape == (2, NC, *SIZES[2])


def _cbr(x, sd, p, padding=0):
    x = F.conv2d(x, sd[f"{p}.conv.weight"], padding=padding)
    x = F.batch_norm(x, sd[f"{p}.bn.running_mean"], sd[f"{p}.bn.running_var"], sd[f"{p}.bn.weight"],
                     sd[f"{p}.bn.bias"], False, 0.0, 1e-5)
    return F.relu(x)


def uper_reference(sd, xs, pool_scales=(1, 2, 3, 6)):
    """Float64 functional UPerNet (eval mode), written from the mmseg description."""
    up = lambda t, s: F.interpolate(t, size=s, mode="bilinear", align_corners=False)  # noqa: E731
    top = xs[3]
    psp = [top] + [up(_cbr(F.adaptive_avg_pool2d(top, s), sd, f"psp_modules.{i}.1"), top.shape[2:])
                   for i, s in enumerate(pool_scales)]
    lat = [_cbr(xs[i], sd, f"lateral_convs.{i}") for i in range(3)] + [_cbr(torch.cat(psp, 1), sd, "bottleneck", 1)]
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + up(lat[i], lat[i - 1].shape[2:])
    outs = [_cbr(lat[i], sd, f"fpn_convs.{i}", 1) for i in range(3)] + [lat[3]]
    outs = [outs[0]] + [up(o, outs[0].shape[2:]) for o in outs[1:]]
    y = _cbr(torch.cat(outs, 1), sd, "fpn_bottleneck", 1)
    return F.conv2d(y, sd["conv_seg.weight"], sd["conv_seg.bias"])


def test_uper_matches_functional_reference():
    torch.manual_seed(0)
    head = randomize_bn(UPerHead([D] * 4, CH, num_classes=NC)).double().eval()
    xs = feats()
    ref = uper_reference({k: v for k, v in head.state_dict().items()}, xs)
    torch.testing.assert_close(head(xs), ref, rtol=1e-10, atol=1e-10)


def test_fcn_matches_functional_reference():
    torch.manual_seed(0)
    head = randomize_bn(FCNHead(D, CH, num_classes=NC, num_convs=2)).double().eval()
    sd = head.state_dict()
    xs = feats()
    y = _cbr(_cbr(xs[2], sd, "convs.0", 1), sd, "convs.1", 1)
    ref = F.conv2d(y, sd["conv_seg.weight"], sd["conv_seg.bias"])
    torch.testing.assert_close(head(xs), ref, rtol=1e-10, atol=1e-10)


def test_init_like_mmcv():
    torch.manual_seed(0)
    head = UPerHead([64] * 4, 128, num_classes=150)
    w = head.conv_seg.weight
    assert abs(w.std().item() - 0.01) < 1e-3 and head.conv_seg.bias.abs().max() == 0
    # kaiming normal, fan_out, relu: std = sqrt(2 / (out * k * k))
    cw = head.fpn_bottleneck.conv.weight
    assert abs(cw.std().item() / (2 / (128 * 9)) ** 0.5 - 1) < 0.05
    assert torch.all(head.fpn_bottleneck.bn.weight == 1) and torch.all(head.fpn_bottleneck.bn.bias == 0)


def test_norm_choice_and_errors():
    from vit_adapter_ds.models.norm import BatchNorm2d
    assert norm_class("bn") is BatchNorm2d and issubclass(BatchNorm2d, torch.nn.BatchNorm2d)
    from vit_adapter_ds.models.norm import DistributedBatchNorm2d, convert_sync_batchnorm
    assert norm_class("syncbn") is DistributedBatchNorm2d and issubclass(DistributedBatchNorm2d, torch.nn.BatchNorm2d)
    head = FCNHead(8, 4, num_classes=3, in_index=0, norm="syncbn")
    assert convert_sync_batchnorm(head) is head  # no NCCL process group here: stays BatchNorm
    assert type(head.convs[0].bn) is DistributedBatchNorm2d
    head.convs[0].bn.running_mean.fill_(0.5)
    synced = convert_sync_batchnorm(head, force=True)  # what an NCCL run gets: real SyncBN, same state
    assert type(synced.convs[0].bn) is torch.nn.SyncBatchNorm
    assert torch.all(synced.convs[0].bn.running_mean == 0.5)
    plain = FCNHead(8, 4, num_classes=3, in_index=0, norm="bn")
    assert type(convert_sync_batchnorm(plain, force=True).convs[0].bn) is BatchNorm2d  # 'bn' never syncs
    with pytest.raises(ValueError):
        norm_class("gn")
    with pytest.raises(ValueError):
        UPerHead([D] * 4, CH, num_classes=NC, in_index=(0, 1, 2))
    with pytest.raises(ValueError):
        FCNHead([D], CH, num_classes=NC)
    with pytest.raises(TypeError):
        UPerHead([D] * 4, CH, num_classes=NC)(torch.zeros(1, D, 4, 4))


# ---------------------------------------------------------------------------------------------- mmseg 1.2.2 checks
uper_mod = mmseg_ref.load("decode_heads.uper_head")
fcn_mod = mmseg_ref.load("decode_heads.fcn_head")
needs_mmseg = pytest.mark.skipif(uper_mod is None or fcn_mod is None, reason="mmsegmentation/mmcv-lite not importable")


@needs_mmseg
@pytest.mark.parametrize("train", [False, True])
def test_uper_matches_mmseg(train):
    torch.manual_seed(0)
    ours = randomize_bn(UPerHead([D] * 4, CH, num_classes=NC, dropout_ratio=0.0)).double()
    ref = uper_mod.UPerHead(in_channels=[D] * 4, in_index=[0, 1, 2, 3], channels=CH, pool_scales=(1, 2, 3, 6),
                            num_classes=NC, dropout_ratio=0.0, norm_cfg=dict(type="BN", requires_grad=True),
                            align_corners=False).double()
    assert set(ref.state_dict()) == set(ours.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.train(train), ref.train(train)
    xs = feats()
    torch.testing.assert_close(ours(xs), ref(xs), rtol=1e-10, atol=1e-10)
    if train:  # BN running statistics updated identically
        torch.testing.assert_close(ours.state_dict()["fpn_bottleneck.bn.running_var"],
                                   ref.state_dict()["fpn_bottleneck.bn.running_var"])


@needs_mmseg
def test_fcn_matches_mmseg():
    torch.manual_seed(0)
    ours = randomize_bn(FCNHead(D, CH, num_classes=NC, in_index=2, num_convs=1, concat_input=False)).double().eval()
    ref = fcn_mod.FCNHead(in_channels=D, in_index=2, channels=CH, num_convs=1, concat_input=False, num_classes=NC,
                          dropout_ratio=0.1, norm_cfg=dict(type="BN", requires_grad=True),
                          align_corners=False).double().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    xs = feats()
    torch.testing.assert_close(ours(xs), ref(xs), rtol=1e-10, atol=1e-10)


def test_bf16_norm_statistics_stay_fp32():
    """300 momentum updates on slowly drifting inputs: a bf16 model whose statistics were kept in fp32 (what the
    engine does after DeepSpeed's bf16 cast) ends within bf16 input rounding of an fp32 BatchNorm fed the same
    bf16-rounded inputs; statistics cast to bf16 with the module (the old behaviour) drift percents away."""
    from vit_adapter_ds.models.norm import BatchNorm2d, keep_norm_stats_fp32

    torch.manual_seed(0)
    ours, ref, naive = BatchNorm2d(8).bfloat16(), torch.nn.BatchNorm2d(8), BatchNorm2d(8).bfloat16()
    assert keep_norm_stats_fp32(ours) == 1 and ours.running_mean.dtype == torch.float32
    assert naive.running_mean.dtype == torch.bfloat16
    for i in range(300):
        x = (torch.randn(4, 8, 6, 6) * (1 + i / 300) + 3 + i / 100).bfloat16()
        ours(x)
        ref(x.float())
        naive(x)
    for a, b in ((ours.running_mean, ref.running_mean), (ours.running_var, ref.running_var)):
        assert torch.allclose(a, b, rtol=2e-3), (a, b)
    err = ((naive.running_var.float() - ref.running_var).abs() / ref.running_var).max()
    assert err > 1e-2, err  # what keeping the statistics in bf16 would cost
    ours.eval()
    ref.eval()
    x = (torch.randn(2, 8, 6, 6) + 6).bfloat16()
    assert torch.allclose(ours(x).float(), ref(x.float()), atol=3e-2)
