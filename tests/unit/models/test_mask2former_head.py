"""Mask2Former head: positional encoding, decoder-layer semantics (masked cross-attention -> self-attention -> FFN,
post-norm) against float64 NumPy, the attention masks of the prediction chain, the all-masked fallback, semantic
inference, with_cp, the official state-dict keys / parameter count and the official layer-decay rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.config.loader import load_recipe
from vit_adapter_ds.engine.optim import build_param_groups
from vit_adapter_ds.models.heads.mask2former import (Mask2FormerCriterion, Mask2FormerHead, SinePositionalEncoding,
                                                     fill_fully_masked_rows, official_to_ours,
                                                     ours_to_official)
from vit_adapter_ds.models.heads.mask2former.transformer_decoder import MaskedAttentionDecoderLayer
from vit_adapter_ds.models.segmentor_mask2former import EncoderDecoderMask2Former


def tiny_head(**kw):
    torch.manual_seed(0)
    args = dict(in_channels=[16, 16, 16, 16], feat_channels=32, out_channels=32, num_classes=5, num_queries=6,
                pixel_decoder=dict(num_layers=2, num_heads=4, num_points=2, feedforward_channels=64, num_groups=8,
                                   positional_encoding=dict(num_feats=16, normalize=True)),
                decoder=dict(num_layers=3, num_heads=4, feedforward_channels=64),
                positional_encoding=dict(num_feats=16, normalize=True),
                criterion=Mask2FormerCriterion(5, num_points=64))
    args.update(kw)
    return Mask2FormerHead(**args)


def tiny_feats(n=2, size=64, c=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, c, size // s, size // s, generator=g, dtype=dtype) for s in (4, 8, 16, 32)]


# ----------------------------------------------------------------------------------------------- positional enc.
def test_sine_positional_encoding_formula():
    h, w, f = 3, 5, 8
    pe = SinePositionalEncoding(f, normalize=True)(torch.zeros(1, h, w, dtype=torch.bool))
    assert pe.shape == (1, 2 * f, h, w)
    for y in range(h):
        for x in range(w):
            ey, ex = (y + 1) / (h + 1e-6) * 2 * math.pi, (x + 1) / (w + 1e-6) * 2 * math.pi
            for k in range(f):
                t = 10000 ** (2 * (k // 2) / f)
                fn = math.sin if k % 2 == 0 else math.cos
                assert pe[0, k, y, x].item() == pytest.approx(fn(ey / t), abs=1e-5)
                assert pe[0, f + k, y, x].item() == pytest.approx(fn(ex / t), abs=1e-5)


# ----------------------------------------------------------------------------------------------- decoder layer
def np_ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_mha(mod, q_in, k_in, v_in, mask=None):
    """nn.MultiheadAttention math for one batch element: q_in (Lq, C), k_in/v_in (Lk, C), mask (heads, Lq, Lk)
    True = excluded."""
    a = mod.attn
    w_in, b_in = a.in_proj_weight.detach().double().numpy(), a.in_proj_bias.detach().double().numpy()
    c = q_in.shape[1]
    heads = a.num_heads
    d = c // heads
    q = q_in @ w_in[:c].T + b_in[:c]
    k = k_in @ w_in[c:2 * c].T + b_in[c:2 * c]
    v = v_in @ w_in[2 * c:].T + b_in[2 * c:]
    out = np.zeros((q.shape[0], c))
    for h in range(heads):
        s = q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d)
        if mask is not None:
            s = np.where(mask[h], -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        out[:, h * d:(h + 1) * d] = s @ v[:, h * d:(h + 1) * d]
    return out @ a.out_proj.weight.detach().double().numpy().T + a.out_proj.bias.detach().double().numpy()


def np_decoder_layer(layer, query, memory, qpos, mpos, mask):
    norms = [(n.weight.detach().double().numpy(), n.bias.detach().double().numpy()) for n in layer.norms]
    x = np_ln(query + np_mha(layer.attentions[0], query + qpos, memory + mpos, memory, mask), *norms[0])
    x = np_ln(x + np_mha(layer.attentions[1], x + qpos, x + qpos, x), *norms[1])
    f = layer.ffns[0].layers
    w1, b1 = f[0][0].weight.detach().double().numpy(), f[0][0].bias.detach().double().numpy()
    w2, b2 = f[1].weight.detach().double().numpy(), f[1].bias.detach().double().numpy()
    return np_ln(x + np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, *norms[2])


def test_decoder_layer_is_masked_cross_then_self_then_ffn():
    torch.manual_seed(0)
    c, heads, q, k, n = 16, 4, 5, 12, 2
    layer = MaskedAttentionDecoderLayer(c, heads, 32).double().eval()
    for p in layer.parameters():  # non-trivial norms
        p.data.add_(0.1 * torch.randn_like(p))
    query, qpos = torch.randn(q, n, c, dtype=torch.float64), torch.randn(q, n, c, dtype=torch.float64)
    memory, mpos = torch.randn(k, n, c, dtype=torch.float64), torch.randn(k, n, c, dtype=torch.float64)
    mask = torch.rand(n * heads, q, k) < 0.6
    mask[:, :, 0] = False                                       # no fully masked row here
    out = layer(query, memory, qpos, mpos, mask)
    for b in range(n):
        ref = np_decoder_layer(layer, query[:, b].numpy(), memory[:, b].numpy(), qpos[:, b].numpy(),
                               mpos[:, b].numpy(), mask[b * heads:(b + 1) * heads].numpy())
        np.testing.assert_allclose(out[:, b].detach().numpy(), ref, rtol=1e-9, atol=1e-10)


def test_fully_masked_rows_fall_back_to_unmasked():
    mask = torch.tensor([[[True, True, True], [True, False, True]]])
    assert fill_fully_masked_rows(mask).tolist() == [[[False, False, False], [True, False, True]]]
    torch.manual_seed(0)
    c, heads, q, k = 8, 2, 3, 6
    layer = MaskedAttentionDecoderLayer(c, heads, 16).double().eval()
    query, memory = torch.randn(q, 1, c, dtype=torch.float64), torch.randn(k, 1, c, dtype=torch.float64)
    pos = torch.zeros(q, 1, c, dtype=torch.float64)
    mpos = torch.zeros(k, 1, c, dtype=torch.float64)
    mask = torch.zeros(heads, q, k, dtype=torch.bool)
    mask[:, 1] = True                                           # query 1 sees nothing -> attends everywhere
    mask[0, 2, 3:] = True
    out = layer(query, memory, pos, mpos, fill_fully_masked_rows(mask))
    unmasked_row = mask.clone()
    unmasked_row[:, 1] = False
    ref = layer(query, memory, pos, mpos, unmasked_row)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("force_full_rows", [False, True])
def test_attention_masks_come_from_the_previous_prediction(monkeypatch, force_full_rows):
    head = tiny_head().eval()
    if force_full_rows:  # nearly constant mask features: a query's logits share one sign -> fully masked rows
        with torch.no_grad():
            head.pixel_decoder.mask_feature.weight.mul_(0.01)
            bias = head.pixel_decoder.mask_feature.bias
            bias.copy_(5.0 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
    feats = tiny_feats()
    seen = []
    for layer in head.transformer_decoder.layers:
        orig = layer.forward

        def record(query, memory, query_pos, memory_pos, attn_mask=None, _orig=orig):
            seen.append((memory.shape[0], attn_mask.clone()))
            return _orig(query, memory, query_pos, memory_pos, attn_mask)
        monkeypatch.setattr(layer, "forward", record)
    with torch.no_grad():
        cls_list, mask_list = head(feats)
    assert len(cls_list) == len(mask_list) == 4                 # initial + 3 layers
    level_sizes = [f.shape[-2:] for f in (feats[3], feats[2], feats[1])]  # 1/32, 1/16, 1/8
    heads = head.num_heads
    for i, (mem_len, mask) in enumerate(seen):
        size = level_sizes[i % 3]
        assert mem_len == size[0] * size[1]                      # layer i cross-attends to level i % 3
        prev = F.interpolate(mask_list[i], size=size, mode="bilinear", align_corners=False)
        ref = (torch.sigmoid(prev) < 0.5).flatten(2)            # (N, Q, hw)
        ref = ref[:, None].expand(-1, heads, -1, -1).reshape(-1, *ref.shape[1:])
        full = ref.all(-1, keepdim=True)
        if force_full_rows and i == 0:
            assert full.any() and not full.all()
        ref = ref & ~full
        assert torch.equal(mask, ref)


def test_tiny_head_forward_backward_and_semantic_inference():
    head = tiny_head()
    feats = [f.requires_grad_() for f in tiny_feats()]
    gt = torch.randint(0, 5, (2, 64, 64))
    gt[1, :20] = 255
    losses = head.loss(feats, gt)
    assert len(losses) == 3 * 4 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert missing == []
    assert all(f.grad is not None for f in feats)
    head.eval()
    with torch.no_grad():
        cls_list, mask_list = head(tiny_feats())
        seg = head.forward_test(tiny_feats())
    assert cls_list[-1].shape == (2, 6, 6) and mask_list[-1].shape == (2, 6, 16, 16) and seg.shape == (2, 5, 16, 16)
    prob = cls_list[-1].softmax(-1)
    sig = mask_list[-1].sigmoid()
    ref = torch.zeros_like(seg)
    for q in range(6):
        ref += prob[:, q, :5, None, None] * sig[:, q, None]
    torch.testing.assert_close(seg, ref, rtol=1e-5, atol=1e-6)
    # bounded by sum_q sigmoid (no-object probability excluded)
    assert (seg >= 0).all() and (seg.sum(1) <= sig.sum(1) + 1e-5).all()


def test_with_cp_gives_identical_outputs_and_grads():
    outs = []
    for cp in (False, True):
        head = tiny_head(pixel_decoder=dict(num_layers=2, num_heads=4, num_points=2, feedforward_channels=64,
                                            num_groups=8, with_cp=cp, positional_encoding=dict(num_feats=16,
                                                                                              normalize=True)),
                         decoder=dict(num_layers=3, num_heads=4, feedforward_channels=64, with_cp=cp))
        feats = tiny_feats()
        cls_list, mask_list = head(feats)
        (cls_list[-1].square().sum() + mask_list[-1].square().mean()).backward()
        outs.append((mask_list[-1].detach(), {n: p.grad.clone() for n, p in head.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    for n, g in outs[0][1].items():
        torch.testing.assert_close(g, outs[1][1][n], rtol=1e-6, atol=1e-7, msg=n)


# ----------------------------------------------------------------------------------------------- segmentor
def test_segmentor_predict_whole_and_slide():
    c = load_recipe("synthetic_mask2former")
    torch.manual_seed(0)
    model = EncoderDecoderMask2Former.from_config(to_plain(c.model)).eval()
    img = torch.randn(1, 3, 128, 160)
    prob = model.predict(img)
    assert prob.shape == (1, 8, 128, 160)
    torch.testing.assert_close(prob.sum(1), torch.ones(1, 128, 160))
    scores = model.encode_decode(img)
    torch.testing.assert_close(prob, scores.softmax(1))         # official inference: softmax of the scores
    slide = model.predict(img, mode="slide", crop_size=(128, 128), stride=(96, 96))
    # mmseg slide_inference written out by hand for 128x160, crop 128, stride 96: w_grids = (160-128+95)//96+1 = 2,
    # windows x=[0,128) and the last one shifted back inside the image, x=[32,160); each window decoded on its own,
    # the scores summed in float64 and divided by the per-pixel window count (1 | 2 | 1), then softmax
    with torch.no_grad():
        left = model.encode_decode(img[:, :, :, 0:128]).double()
        right = model.encode_decode(img[:, :, :, 32:160]).double()
    acc = torch.zeros(1, 8, 128, 160, dtype=torch.float64)
    acc[..., 0:128] += left
    acc[..., 32:160] += right
    count = torch.ones(160, dtype=torch.float64)
    count[32:128] = 2
    ref = (acc / count).softmax(1)
    assert slide.shape == ref.shape
    torch.testing.assert_close(slide.double(), ref, rtol=1e-5, atol=1e-6)
    assert (slide - prob).abs().max() > 1e-3       # the windows see different context than the whole image


# ----------------------------------------------------------------------------------------------- official keys
def official_decode_head_shapes(c=1024, ffn=4096, enc_layers=6, dec_layers=9, queries=200, classes=150,
                                enc_heads=32, levels=3, points=4, in_ch=1024, out_ch=1024):
    """The official mmseg_custom Mask2FormerHead state dict on mmcv 1.x (written from the official module tree:
    ConvModule(conv, gn), BaseTransformerLayer(attentions, ffns, norms), FFN.layers, nn.MultiheadAttention)."""
    s = {}
    for i in range(levels):
        s[f"pixel_decoder.input_convs.{i}.conv.weight"] = (c, in_ch, 1, 1)
        s[f"pixel_decoder.input_convs.{i}.conv.bias"] = (c,)
        s[f"pixel_decoder.input_convs.{i}.gn.weight"] = (c,)
        s[f"pixel_decoder.input_convs.{i}.gn.bias"] = (c,)
    for j in range(enc_layers):
        p = f"pixel_decoder.encoder.layers.{j}."
        s[p + "attentions.0.sampling_offsets.weight"] = (enc_heads * levels * points * 2, c)
        s[p + "attentions.0.sampling_offsets.bias"] = (enc_heads * levels * points * 2,)
        s[p + "attentions.0.attention_weights.weight"] = (enc_heads * levels * points, c)
        s[p + "attentions.0.attention_weights.bias"] = (enc_heads * levels * points,)
        s[p + "attentions.0.value_proj.weight"] = (c, c)
        s[p + "attentions.0.value_proj.bias"] = (c,)
        s[p + "attentions.0.output_proj.weight"] = (c, c)
        s[p + "attentions.0.output_proj.bias"] = (c,)
        s[p + "ffns.0.layers.0.0.weight"] = (ffn, c)
        s[p + "ffns.0.layers.0.0.bias"] = (ffn,)
        s[p + "ffns.0.layers.1.weight"] = (c, ffn)
        s[p + "ffns.0.layers.1.bias"] = (c,)
        for k in range(2):
            s[p + f"norms.{k}.weight"] = (c,)
            s[p + f"norms.{k}.bias"] = (c,)
    s["pixel_decoder.level_encoding.weight"] = (levels, c)
    s["pixel_decoder.lateral_convs.0.conv.weight"] = (c, in_ch, 1, 1)
    s["pixel_decoder.lateral_convs.0.gn.weight"] = (c,)
    s["pixel_decoder.lateral_convs.0.gn.bias"] = (c,)
    s["pixel_decoder.output_convs.0.conv.weight"] = (c, c, 3, 3)
    s["pixel_decoder.output_convs.0.gn.weight"] = (c,)
    s["pixel_decoder.output_convs.0.gn.bias"] = (c,)
    s["pixel_decoder.mask_feature.weight"] = (out_ch, c, 1, 1)
    s["pixel_decoder.mask_feature.bias"] = (out_ch,)
    for i in range(dec_layers):
        p = f"transformer_decoder.layers.{i}."
        for a in range(2):
            s[p + f"attentions.{a}.attn.in_proj_weight"] = (3 * c, c)
            s[p + f"attentions.{a}.attn.in_proj_bias"] = (3 * c,)
            s[p + f"attentions.{a}.attn.out_proj.weight"] = (c, c)
            s[p + f"attentions.{a}.attn.out_proj.bias"] = (c,)
        s[p + "ffns.0.layers.0.0.weight"] = (ffn, c)
        s[p + "ffns.0.layers.0.0.bias"] = (ffn,)
        s[p + "ffns.0.layers.1.weight"] = (c, ffn)
        s[p + "ffns.0.layers.1.bias"] = (c,)
        for k in range(3):
            s[p + f"norms.{k}.weight"] = (c,)
            s[p + f"norms.{k}.bias"] = (c,)
    s["transformer_decoder.post_norm.weight"] = (c,)
    s["transformer_decoder.post_norm.bias"] = (c,)
    s["query_embed.weight"] = (queries, c)
    s["query_feat.weight"] = (queries, c)
    s["level_embed.weight"] = (levels, c)
    s["cls_embed.weight"] = (classes + 1, c)
    s["cls_embed.bias"] = (classes + 1,)
    s["mask_embed.0.weight"] = (c, c)
    s["mask_embed.0.bias"] = (c,)
    s["mask_embed.2.weight"] = (c, c)
    s["mask_embed.2.bias"] = (c,)
    s["mask_embed.4.weight"] = (out_ch, c)
    s["mask_embed.4.bias"] = (out_ch,)
    s["conv_seg.weight"] = (classes, c, 1, 1)                 # mmseg BaseDecodeHead classifier (unused)
    s["conv_seg.bias"] = (classes,)
    return s


@pytest.fixture(scope="module")
def full_ade_model():
    c = load_recipe("mask2former_beit_adapter_large_896_80k_ade20k_ss")
    with torch.device("meta"):
        return EncoderDecoderMask2Former.from_config(to_plain(c.model))


def test_full_head_keys_shapes_and_parameter_count(full_ade_model):
    official = official_decode_head_shapes()
    ours = {k: tuple(v.shape) for k, v in full_ade_model.decode_head.state_dict().items()}
    expected = {k: v for k, v in official.items() if not k.startswith("conv_seg.")}
    assert ours == expected
    n_head = sum(math.prod(v) for v in official.values())
    n_ours = sum(p.numel() for p in full_ade_model.decode_head.parameters())
    assert n_ours == n_head - 150 * 1024 - 150
    total = sum(p.numel() for p in full_ade_model.parameters())
    # official BEiT-Adapter-L + Mask2Former at 896: 571M (the count includes the unused conv_seg)
    assert abs(total + 150 * 1024 + 150 - 571e6) < 0.5e6
    assert full_ade_model.num_classes == 150 and full_ade_model.decode_head.num_queries == 200
    assert full_ade_model.test_cfg == {"mode": "slide", "crop_size": (896, 896), "stride": (512, 512)}
    enc = full_ade_model.decode_head.pixel_decoder.encoder.layers[0]
    assert enc.ffns[0].with_cp and full_ade_model.decode_head.transformer_decoder.layers[0].ffns[0].with_cp
    assert enc.attentions[0].n_heads == 32 and enc.attentions[0].n_levels == 3 and enc.attentions[0].n_points == 4


def test_synthetic_official_state_dict_loads():
    head = tiny_head()
    official = official_decode_head_shapes(c=32, ffn=64, enc_layers=2, dec_layers=3, queries=6, classes=5,
                                           enc_heads=4, levels=3, points=2, in_ch=16, out_ch=32)
    g = torch.Generator().manual_seed(3)
    sd = {"decode_head." + k: torch.randn(v, generator=g) for k, v in official.items()}
    sd["backbone.cls_token"] = torch.zeros(1)
    ours = official_to_ours(sd)
    assert "decode_head.conv_seg.weight" not in ours and "backbone.cls_token" in ours
    head_sd = {k[len("decode_head."):]: v for k, v in ours.items() if k.startswith("decode_head.")}
    head.load_state_dict(head_sd, strict=True)
    torch.testing.assert_close(head.query_feat.weight, sd["decode_head.query_feat.weight"])
    torch.testing.assert_close(head.transformer_decoder.layers[2].attentions[1].attn.in_proj_weight,
                               sd["decode_head.transformer_decoder.layers.2.attentions.1.attn.in_proj_weight"])


def test_ours_to_official_gives_the_official_keys_and_round_trips():
    """Export of a head state dict: the hand-written official table's keys and shapes (without the unused conv_seg,
    which mmcv's non-strict load of a released checkpoint does not need), values unchanged; official -> ours ->
    official is the official dict less conv_seg, ours -> official -> ours is the identity."""
    head = tiny_head()
    official = official_decode_head_shapes(c=32, ffn=64, enc_layers=2, dec_layers=3, queries=6, classes=5,
                                           enc_heads=4, levels=3, points=2, in_ch=16, out_ch=32)
    ours = {"decode_head." + k: v for k, v in head.state_dict().items()}
    ours["backbone.cls_token"] = torch.zeros(1)
    exported = ours_to_official(ours)
    expected = {"decode_head." + k: v for k, v in official.items() if not k.startswith("conv_seg.")}
    expected["backbone.cls_token"] = (1,)
    assert {k: tuple(v.shape) for k, v in exported.items()} == expected
    assert all(exported[k] is ours[k] for k in ours)
    assert official_to_ours(exported) == ours
    g = torch.Generator().manual_seed(4)
    sd = {"decode_head." + k: torch.randn(v, generator=g) for k, v in official.items()}
    back = ours_to_official(official_to_ours(sd))
    assert back == {k: v for k, v in sd.items() if ".conv_seg." not in k}
    for prefix in ("", "model.decode_head."):
        sd2 = {prefix + k: v for k, v in {"a.weight": 1, "conv_seg.weight": 2, "conv_seg.bias": 3}.items()}
        assert official_to_ours(sd2, prefix) == {prefix + "a.weight": 1}
        assert ours_to_official(official_to_ours(sd2, prefix), prefix) == {prefix + "a.weight": 1}


# ----------------------------------------------------------------------------------------------- from_config
@pytest.mark.parametrize("path,value,match", [
    (("pixel_decoder", "encoder", "transformerlayers", "attn_cfgs", "num_headz"), 32,
     r"model\.decode_head\.pixel_decoder\.encoder\.transformerlayers\.attn_cfgs\.num_headz"),
    (("loss_cls", "loss_weigth"), 2.0, r"model\.decode_head\.loss_cls\.loss_weigth"),
    (("transformer_decoder", "transformerlayers", "operation_order"), ("self_attn", "norm", "cross_attn", "norm",
                                                                        "ffn", "norm"), "operation_order"),
    (("num_queries",), "200", r"model\.decode_head\.num_queries must be int"),
    (("loss_cls", "class_weight"), [1.0] * 150, "class_weight has 150 entries"),
    (("pixel_decoder", "norm_cfg", "type"), "BN", r"pixel_decoder\.norm_cfg\.type='BN'"),
])
def test_from_config_rejects_bad_keys(path, value, match):
    c = to_plain(load_recipe("mask2former_beit_adapter_large_896_80k_ade20k_ss").model)
    node = c["decode_head"]
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=match):
        with torch.device("meta"):
            EncoderDecoderMask2Former.from_config(c)


def test_from_config_rejects_bad_train_and_test_cfg():
    c = to_plain(load_recipe("synthetic_mask2former").model)
    c["train_cfg"]["assigner"]["dice_cost"]["eps_"] = 1.0
    with pytest.raises(ConfigError, match=r"model\.decode_head\.train_cfg\.assigner\.dice_cost\.eps_"):
        EncoderDecoderMask2Former.from_config(c)
    c = to_plain(load_recipe("synthetic_mask2former").model)
    c["test_cfg"] = {"mode": "slide"}
    with pytest.raises(ConfigError, match="crop_size and stride"):
        EncoderDecoderMask2Former.from_config(c)
    c = to_plain(load_recipe("synthetic_mask2former").model)
    c["auxiliary_head"] = {"type": "FCNHead"}
    with pytest.raises(ConfigError, match="auxiliary_head"):
        EncoderDecoderMask2Former.from_config(c)


# ----------------------------------------------------------------------------------------------- layer decay
def _official_layer_id(var_name, num_max_layer):
    """Re-implementation of the official get_num_layer_for_vit (segmentation/mmcv_custom)."""
    if var_name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    for prefix in ("backbone.patch_embed", "decode_head.mask_embed", "decode_head.cls_embed",
                   "decode_head.level_embed", "decode_head.query_embed", "decode_head.query_feat"):
        if var_name.startswith(prefix):
            return 0
    if var_name.startswith("backbone.blocks"):
        return int(var_name.split(".")[2]) + 1
    return num_max_layer - 1


def _official_groups(model, base_lr, wd, num_layers, rate):
    n = num_layers + 2
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = len(p.shape) == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        layer = _official_layer_id(name, n)
        out[name] = (f"layer_{layer}_{'no_decay' if no_decay else 'decay'}", rate ** (n - layer - 1),
                     0.0 if no_decay else wd, rate ** (n - layer - 1) * base_lr)
    return out


def test_layer_decay_matches_the_official_constructor_parameter_by_parameter():
    c = load_recipe("synthetic_mask2former")
    model = EncoderDecoderMask2Former.from_config(to_plain(c.model))
    ref = _official_groups(model, 2e-4, 0.05, 4, 0.9)
    groups = build_param_groups(model, 2e-4, 0.05, layer_decay_rate=0.9, num_layers=4, with_names=True)
    ours = {}
    for g in groups:
        for name in g["param_names"]:
            ours[name] = (g["group_name"], g["lr_scale"], g["weight_decay"], g["lr"])
    assert set(ours) == set(ref)
    for name in ref:
        assert ours[name][0] == ref[name][0], name
        assert ours[name][1:] == pytest.approx(ref[name][1:], rel=1e-12), name
    assert ours["decode_head.query_feat.weight"][1] == pytest.approx(0.9 ** 5)
    assert ours["decode_head.mask_embed.4.weight"][1] == pytest.approx(0.9 ** 5)
    assert ours["decode_head.pixel_decoder.level_encoding.weight"][1] == 1.0
    assert ours["decode_head.transformer_decoder.layers.0.ffns.0.layers.1.weight"][1] == 1.0


# ----------------------------------------------------------------------------------------------- _ms test
def test_aug_test_pads_short_side_and_removes_the_padding_as_the_official_classes():
    """PadShortSide (the official _ms tests): the image is padded bottom/right to >= pad_short_side; the official
    EncoderDecoderMask2FormerAug's slide inference cuts the padding off the scores before the resize back, while
    EncoderDecoderMask2Former (and whole-image inference of either) resizes the padded score map to the image."""
    from vit_adapter_ds.models.heads.common import resize
    from vit_adapter_ds.models.segmentor_mask2former import EncoderDecoderMask2FormerAug, black_pad_value
    c = load_recipe("synthetic_mask2former")
    torch.manual_seed(0)
    model = EncoderDecoderMask2Former.from_config(to_plain(c.model)).eval()
    slide = dict(to_plain(c.model), type="EncoderDecoderMask2FormerAug",
                 test_cfg=dict(mode="slide", crop_size=(128, 128), stride=(64, 64)))
    aug = EncoderDecoderMask2FormerAug.from_config(slide).eval()
    aug.load_state_dict(model.state_dict())
    img = torch.randn(1, 3, 64, 96)
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    black = black_pad_value(mean, std)

    def reference(m, unpad):
        """The official pipeline steps written out: flip, pad bottom/right to >= 128 with black, infer, (unpad),
        resize to the image, softmax, flip back; mean of the two views."""
        ref = 0
        for f in (False, True):
            x = img.flip(3) if f else img
            padded = torch.empty(1, 3, 128, 128)
            for ch in range(3):
                padded[:, ch] = (0.0 - mean[ch]) / std[ch]
            padded[:, :, :64, :96] = x
            with torch.no_grad():
                scores = m.logits(padded)
            scores = scores[:, :, :64, :96] if unpad else resize(scores, (64, 96), m.align_corners)
            p = scores.softmax(1)
            ref = ref + (p.flip(3) if f else p)
        return ref / 2

    kw = dict(scales=[None], flip=True, size_divisor=32, pad_short_side=128, pad_value=black)
    got_aug = aug.aug_test(img, **kw)
    torch.testing.assert_close(got_aug, reference(aug, unpad=True), rtol=1e-5, atol=1e-6)
    got = model.aug_test(img, **kw)  # whole mode, the non-Aug class: the padding stays in the resized map
    torch.testing.assert_close(got, reference(model, unpad=False), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, got_aug, atol=1e-3)
    # without padding the result differs (the padding changes what the model sees)
    plain = model.aug_test(img, scales=[None], flip=True, size_divisor=32)
    assert plain.shape == got.shape and not torch.allclose(plain, got)
    with pytest.raises(ConfigError, match=r"model\.type='EncoderDecoderMask2Former': this builds "
                                          r"EncoderDecoderMask2FormerAug"):
        EncoderDecoderMask2FormerAug.from_config(dict(slide, type="EncoderDecoderMask2Former"))


def test_bf16_head_gives_float32_losses_and_all_grads():
    """DeepSpeed bf16 runs the model in bf16: the criterion computes in float32, every parameter gets a grad."""
    head = tiny_head().to(torch.bfloat16)
    feats = [f.to(torch.bfloat16) for f in tiny_feats()]
    losses = head.loss(feats, torch.randint(0, 5, (2, 64, 64)))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in head.parameters())
