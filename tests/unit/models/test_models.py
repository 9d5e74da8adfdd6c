"""Backbone structure against the spec (keys, shapes, sizes), checkpointing, and the seg/det differences."""
import math

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.models import BEiTAdapter, MSDeformAttn, ViTAdapter, create_backbone
from vit_adapter_ds.models.backbones.adapter import deform_inputs, get_reference_points
from vit_adapter_ds.models.backbones.beit import BEiTAttention, relative_position_index
from vit_adapter_ds.models.backbones.vit import WindowedAttention

CONFIGS = {  # name -> (preset, overrides); parameter counts are at the official img_size
    "T": ("vit_adapter_tiny", {}), "S": ("vit_adapter_small", {}), "B": ("vit_adapter_base", {}),
    "L": ("vit_adapter_large", {}), "BEiT-L": ("beit_adapter_large_640", dict(img_size=224)),
    "BEiT-L-det": ("beit_adapter_large_det", {}),
}
# (parameters in millions at 1 decimal (docs/official-architecture.md §3 / issue), number of state_dict entries (docs/official-architecture.md §6))
EXPECTED = {"T": (8.0, 410), "S": (27.5, 410), "B": (99.5, 410), "L": (327.0, 578), "BEiT-L": (326.6, 650),
            "BEiT-L-det": (327.4, 649)}


def tiny_vit(**kw):
    cfg = dict(embed_dim=48, depth=4, num_heads=3, deform_num_heads=3, conv_inplane=16,
               interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], img_size=64, pretrain_size=64)
    cfg.update(kw)
    return ViTAdapter(**cfg)


def tiny_beit(**kw):
    cfg = dict(img_size=64, embed_dim=48, depth=4, num_heads=3, qkv_bias=True, init_values=0.1, deform_num_heads=3,
               conv_inplane=16, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    cfg.update(kw)
    return BEiTAdapter(**cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_official_sizes_and_key_counts(name):
    preset, overrides = CONFIGS[name]
    model = create_backbone(preset, **overrides)
    n_params = sum(p.numel() for p in model.parameters())
    millions, n_keys = EXPECTED[name]
    assert round(n_params / 1e6, 1) == millions
    assert len(model.state_dict()) == n_keys


def test_tiny_key_names_and_shapes_follow_the_spec():
    sd = create_backbone("vit_adapter_tiny").state_dict()
    assert sd["pos_embed"].shape == (1, 197, 192)
    assert sd["level_embed"].shape == (3, 192)
    assert sd["interactions.0.injector.attn.sampling_offsets.weight"].shape == (144, 192)
    assert sd["interactions.0.injector.attn.attention_weights.weight"].shape == (72, 192)
    assert sd["interactions.0.extractor.attn.sampling_offsets.weight"].shape == (48, 192)
    assert sd["interactions.0.extractor.attn.attention_weights.weight"].shape == (24, 192)
    assert sd["interactions.0.extractor.ffn.fc1.weight"].shape == (48, 192)
    assert sd["interactions.0.extractor.ffn.dwconv.dwconv.weight"].shape == (48, 1, 3, 3)
    assert "interactions.3.extra_extractors.1.ffn_norm.weight" in sd
    assert not any(k.startswith("interactions.2.extra_extractors") for k in sd)
    for k in ["spm.stem.0.weight", "spm.stem.1.running_var", "spm.stem.6.weight", "spm.conv4.1.num_batches_tracked",
              "spm.fc4.bias", "up.weight", "up.bias", "norm4.running_mean", "blocks.11.gamma2",
              "blocks.0.attn.qkv.bias", "blocks.0.mlp.fc2.weight", "patch_embed.proj.weight",
              "interactions.1.injector.gamma", "interactions.1.injector.query_norm.weight"]:
        assert k in sd, k
    assert "cls_token" not in sd


def test_beit_keys_value_projection_ratio_and_index_buffers():
    model = tiny_beit(deform_ratio=0.5)
    sd = model.state_dict()
    assert sd["interactions.0.injector.attn.value_proj.weight"].shape == (24, 48)
    assert sd["interactions.0.injector.attn.output_proj.weight"].shape == (48, 24)
    assert sd["cls_token"].shape == (1, 1, 48)
    # seg: table covers the whole 4x4 grid plus 3 cls entries; index (16+1)^2
    assert sd["blocks.0.attn.relative_position_bias_table"].shape == ((2 * 4 - 1) ** 2 + 3, 3)
    assert sd["blocks.0.attn.relative_position_index"].shape == (17, 17)
    for k in ["blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.gamma_1", "blocks.3.gamma_2"]:
        assert k in sd
    assert "blocks.0.attn.qkv.bias" not in sd
    # one index tensor per state_dict() call, shared by its blocks (stored once in a checkpoint), never the model's
    index_key = "blocks.{}.attn.relative_position_index"
    assert sd[index_key.format(0)].data_ptr() == sd[index_key.format(3)].data_ptr()
    assert model.state_dict()[index_key.format(0)].data_ptr() != sd[index_key.format(0)].data_ptr()
    det = tiny_beit(task="detection", window_attn=[True] * 4, window_size=[3, 3, 3, 5])
    dsd = det.state_dict()
    assert "cls_token" not in dsd
    assert dsd["blocks.0.attn.relative_position_bias_table"].shape == ((2 * 3 - 1) ** 2, 3)
    assert dsd["blocks.3.attn.relative_position_bias_table"].shape == ((2 * 5 - 1) ** 2, 3)
    assert dsd["blocks.3.attn.relative_position_index"].shape == (25, 25)
    assert len(dsd) == len(sd) - 1


def test_relative_position_index_matches_definition():
    wh, ww = 3, 4
    idx = relative_position_index(wh, ww, True)
    num = (2 * wh - 1) * (2 * ww - 1) + 3
    coords = [(i, j) for i in range(wh) for j in range(ww)]
    for a, (i1, j1) in enumerate(coords):
        for b, (i2, j2) in enumerate(coords):
            assert idx[a + 1, b + 1] == (i1 - i2 + wh - 1) * (2 * ww - 1) + (j1 - j2 + ww - 1)
    assert idx[0, 0] == num - 1 and idx[0, 5] == num - 3 and idx[5, 0] == num - 2
    assert torch.equal(relative_position_index(wh, ww, False), idx[1:, 1:])


@pytest.mark.parametrize("make", [tiny_vit, tiny_beit])
def test_strict_round_trip_through_a_file(tmp_path, make):
    torch.manual_seed(0)
    a = make()
    torch.save(a.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(1)
    b = make()
    b.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True), strict=True)
    a.eval(), b.eval()
    x = torch.randn(1, 3, 64, 64)
    for oa, ob in zip(a(x), b(x)):
        assert torch.equal(oa, ob)


def test_editing_a_state_dict_in_place_leaves_the_model_and_other_state_dicts_intact():
    """An in-place edit of one state dict's index (an EMA helper, ``sd[k].zero_()``) must not reach the model's
    cached index: the model's outputs, later state dicts and later loads of correct checkpoints stay right."""
    torch.manual_seed(0)
    model = tiny_beit().eval()
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    edited = model.state_dict()
    for k in edited:
        if k.endswith("relative_position_index"):
            edited[k].zero_()
    fresh = model.state_dict()
    for k in fresh:
        if k.endswith("relative_position_index"):
            assert torch.equal(fresh[k], good[k]), k
    assert torch.equal(relative_position_index(4, 4, True), good["blocks.0.attn.relative_position_index"])
    for a, b in zip(model(x), before):
        assert torch.equal(a, b)
    other = tiny_beit()
    other.load_state_dict(good, strict=True)  # a correct checkpoint still loads
    for a, b in zip(other.eval()(x), before):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="relative position index"):
        tiny_beit().load_state_dict(edited)  # the edited one is still recognised as wrong


def test_wrong_relative_position_index_is_rejected():
    model = tiny_beit()
    sd = model.state_dict()
    sd["blocks.1.attn.relative_position_index"] = sd["blocks.1.attn.relative_position_index"].flip(0)
    with pytest.raises(RuntimeError, match="relative position index"):
        tiny_beit().load_state_dict(sd)


def _loss(outs, seed=3):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)


@pytest.mark.parametrize("make,kw", [(tiny_vit, {}), (tiny_beit, {}),
                                     (tiny_beit, dict(task="detection", window_attn=[True, False, True, True],
                                                      window_size=[3, 4, 3, 5])),
                                     (tiny_vit, dict(task="detection", window_attn=[True, True, False, True],
                                                     window_size=3))])
def test_activation_checkpointing_gives_identical_outputs_and_gradients(make, kw):
    torch.manual_seed(0)
    ref = make(drop_path_rate=0.2, **kw)
    cp = make(drop_path_rate=0.2, with_cp=True, **kw)
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    results = []
    for model in (ref, cp):
        xi = x.clone().requires_grad_()
        torch.manual_seed(7)  # same drop-path draws
        outs = model(xi)
        _loss(outs).backward()
        results.append((outs, xi.grad, [p.grad for p in model.parameters()]))
    (o1, gx1, gp1), (o2, gx2, gp2) = results
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert torch.equal(gx1, gx2)
    assert all(torch.equal(a, b) for a, b in zip(gp1, gp2))


def _fusion_difference(model, x):
    """Output with add_vit_feature minus output without it, undoing the (default-statistics) eval BatchNorm."""
    model.eval()
    with torch.no_grad():
        with_vit = model(x)
        model.add_vit_feature = False
        without = model(x)
        model.add_vit_feature = True
    scale = math.sqrt(1 + 1e-5)
    return [(a - b) * scale for a, b in zip(with_vit, without)]


def _interaction_outputs(model, x):
    maps = []
    hook = lambda m, i, o: maps.append(o[0].detach())  # noqa: E731
    handles = [layer.register_forward_hook(hook) for layer in model.interactions]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    b, _, H, W = x.shape
    return [t.transpose(1, 2).reshape(b, -1, H // 16, W // 16) for t in maps]


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_vit_feature_fusion_follows_the_task(task):
    torch.manual_seed(0)
    model = tiny_vit(task=task)
    x = torch.randn(1, 3, 64, 96)
    diff = _fusion_difference(model, x)
    xs = _interaction_outputs(model.eval(), x)
    src = xs if task == "segmentation" else [xs[-1]] * 4
    expected = [F.interpolate(src[0], scale_factor=4, mode="bilinear", align_corners=False),
                F.interpolate(src[1], scale_factor=2, mode="bilinear", align_corners=False), src[2],
                F.interpolate(src[3], scale_factor=0.5, mode="bilinear", align_corners=False)]
    for d, e in zip(diff, expected):
        torch.testing.assert_close(d, e, rtol=1e-4, atol=1e-4)


def _naive_window_attention(q, k, v, scale, window, H, W):
    """float64 per-window attention from the definition: zero-padded q/k/v, no mask."""
    c = q.shape[-1]
    hp, wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    pad = lambda t: F.pad(t.reshape(H, W, c), [0, 0, 0, wp - W, 0, hp - H])  # noqa: E731
    q, k, v = pad(q), pad(k), pad(v)
    out = torch.zeros(hp, wp, c, dtype=q.dtype)
    for i in range(0, hp, window):
        for j in range(0, wp, window):
            qw = q[i:i + window, j:j + window].reshape(-1, c)
            kw = k[i:i + window, j:j + window].reshape(-1, c)
            vw = v[i:i + window, j:j + window].reshape(-1, c)
            att = torch.softmax(qw @ kw.T * scale, -1)
            out[i:i + window, j:j + window] = (att @ vw).reshape(window, window, c)
    return out[:H, :W].reshape(H * W, c)


def test_vit_windowed_attention_pads_qkv_with_zeros_and_no_mask():
    torch.manual_seed(0)
    dim, H, W, window = 8, 5, 7, 3
    attn = WindowedAttention(dim, num_heads=1, qkv_bias=True, window_size=window).double()
    x = torch.randn(1, H * W, dim, dtype=torch.float64)
    q, k, v = attn.qkv(x)[0].chunk(3, -1)
    expected = attn.proj(_naive_window_attention(q, k, v, attn.scale, window, H, W))
    torch.testing.assert_close(attn(x, H, W)[0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_attention_rounds_like_the_official_code(dtype):
    """On CPU float32/float64 the attention is the official op sequence, bit for bit (outputs and gradients): ViT
    ``(q @ k^T) * scale``, BEiT ``(q * scale) @ k^T + bias``, softmax, ``@ v``. CPU fused SDPA kernels round
    differently, which ill-conditioned gradients (batch-1 BatchNorm statistics) amplify far beyond 1e-5."""
    from vit_adapter_ds.models.backbones.vit import Attention

    torch.manual_seed(0)
    b, n, dim, heads = 1, 37, 48, 3
    vit_attn = Attention(dim, heads, qkv_bias=True).to(dtype)
    beit_attn = BEiTAttention(dim, heads, qkv_bias=True, window_size=(6, 6), with_cls=True).to(dtype)
    with torch.no_grad():
        beit_attn.relative_position_bias_table.normal_()
        beit_attn.q_bias.normal_(), beit_attn.v_bias.normal_()
    x = torch.randn(b, n, dim, dtype=dtype)

    def official_vit(x):
        qkv = vit_attn.qkv(x).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * vit_attn.scale).softmax(dim=-1)
        return vit_attn.proj((attn @ v).transpose(1, 2).reshape(b, n, dim))

    def official_beit(x):
        bias = torch.cat((beit_attn.q_bias, torch.zeros_like(beit_attn.v_bias), beit_attn.v_bias))
        qkv = F.linear(x, beit_attn.qkv.weight, bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        index = relative_position_index(6, 6, True)
        rel = beit_attn.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = ((q * beit_attn.scale) @ k.transpose(-2, -1) + rel.unsqueeze(0)).softmax(dim=-1)
        return beit_attn.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))

    for module, official in ((vit_attn, official_vit), (beit_attn, official_beit)):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = module(xa, 6, 6), official(xb)
        w = torch.randn(ya.shape, dtype=dtype)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert torch.equal(ya, yb), type(module).__name__
        assert torch.equal(xa.grad, xb.grad), type(module).__name__


@pytest.mark.parametrize("batch", [1, 2])
def test_dwconv_rounds_like_the_official_code(batch):
    """The ConvFFN depth-wise conv sees contiguous NCHW maps, as in the official code: bit-equal outputs and
    gradients (on strided views conv2d picks other kernels, which round differently for batch > 1)."""
    from vit_adapter_ds.models.backbones.adapter import DWConv

    torch.manual_seed(0)
    m = DWConv(48)
    H, W = 6, 10
    n = H * W // 4
    x = torch.randn(batch, 21 * n, 48)

    def official(x):
        B, N, C = x.shape
        x1 = x[:, 0:16 * n, :].transpose(1, 2).view(B, C, H * 2, W * 2).contiguous()
        x2 = x[:, 16 * n:20 * n, :].transpose(1, 2).view(B, C, H, W).contiguous()
        x3 = x[:, 20 * n:, :].transpose(1, 2).view(B, C, H // 2, W // 2).contiguous()
        return torch.cat([m.dwconv(t).flatten(2).transpose(1, 2) for t in (x1, x2, x3)], dim=1)

    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = m(xa, H, W), official(xb)
    w = torch.randn(ya.shape)
    ga = torch.autograd.grad((ya * w).sum(), (xa, m.dwconv.weight, m.dwconv.bias))
    gb = torch.autograd.grad((yb * w).sum(), (xb, m.dwconv.weight, m.dwconv.bias))
    assert torch.equal(ya, yb)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))


def test_beit_windowed_attention_pads_tokens_before_qkv():
    """Detection BEiT: padded tokens are zeros *before* the projection, so their value is v_bias (not 0)."""
    torch.manual_seed(0)
    dim, H, W, window = 8, 5, 4, 3
    attn = BEiTAttention(dim, num_heads=1, qkv_bias=True, window_size=(window, window), with_cls=False,
                         windowed=True).double()
    with torch.no_grad():
        attn.v_bias.normal_()
        attn.q_bias.normal_()
        attn.relative_position_bias_table.zero_()
    x = torch.randn(1, H * W, dim, dtype=torch.float64)
    hp, wp = 6, 6
    xp = F.pad(x.reshape(H, W, dim), [0, 0, 0, wp - W, 0, hp - H])
    wq, wk, wv = attn.qkv.weight.chunk(3, 0)
    q, k, v = xp @ wq.T + attn.q_bias, xp @ wk.T, xp @ wv.T + attn.v_bias
    expected = torch.zeros(hp, wp, dim, dtype=torch.float64)
    for i in range(0, hp, window):
        for j in range(0, wp, window):
            sl = (slice(i, i + window), slice(j, j + window))
            att = torch.softmax(q[sl].reshape(-1, dim) @ k[sl].reshape(-1, dim).T * attn.scale, -1)
            expected[sl] = (att @ v[sl].reshape(-1, dim)).reshape(window, window, dim)
    expected = attn.proj(expected[:H, :W].reshape(H * W, dim))
    torch.testing.assert_close(attn(x, H, W)[0], expected)


def test_seg_beit_has_cls_token_and_needs_exact_size():
    model = tiny_beit().eval()
    assert model.cls_token is not None
    with pytest.raises(ValueError, match="exactly img_size"):
        model(torch.randn(1, 3, 64, 96))
    det = tiny_beit(task="detection", window_attn=[True] * 4, window_size=3).eval()
    assert det.cls_token is None
    assert [o.shape[-2:] for o in det(torch.randn(1, 3, 64, 96))] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_input_validation():
    model = tiny_vit().eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="image batch"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="task"):
        tiny_vit(task="panoptic")
    with pytest.raises(ValueError, match="interaction index"):
        tiny_vit(interaction_indexes=[[0, 1], [2, 9]], add_vit_feature=False)
    with pytest.raises(TypeError):
        tiny_vit(not_an_official_argument=1)


def test_msdeform_attn_official_initialisation():
    torch.manual_seed(0)
    m = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2, ratio=0.5)
    assert m.value_proj.weight.shape == (16, 32) and m.output_proj.weight.shape == (32, 16)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    assert torch.count_nonzero(m.attention_weights.weight) == 0 and torch.count_nonzero(m.attention_weights.bias) == 0
    bias = m.sampling_offsets.bias.view(4, 3, 2, 2)
    # head k points along angle 2*pi*k/4, normalised so the larger component is 1, scaled by (point + 1)
    expected_dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for h in range(4):
        for lvl in range(3):
            for p in range(2):
                torch.testing.assert_close(bias[h, lvl, p], expected_dirs[h] * (p + 1), atol=1e-6, rtol=0)
    bound = math.sqrt(6 / (32 + 16))
    assert m.value_proj.weight.abs().max() <= bound and m.value_proj.weight.std() > bound / 4


def test_reference_points_and_deform_inputs():
    ref = get_reference_points([(2, 3)], "cpu")
    assert ref.shape == (1, 6, 1, 2)
    torch.testing.assert_close(ref[0, :, 0], torch.tensor([[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25],
                                                           [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]]))
    (r1, s1, l1), (r2, s2, l2) = deform_inputs(torch.zeros(1, 3, 64, 96))
    assert s1.tolist() == [[8, 12], [4, 6], [2, 3]] and l1.tolist() == [0, 96, 120]
    assert r1.shape == (1, 24, 1, 2) and s2.tolist() == [[4, 6]] and l2.tolist() == [0]
    assert r2.shape == (1, 96 + 24 + 6, 1, 2)


def test_injector_starts_as_identity_for_vit_and_small_for_beit():
    assert torch.count_nonzero(tiny_vit().interactions[0].injector.gamma) == 0
    g = tiny_beit(init_values=1e-6).interactions[0].injector.gamma
    torch.testing.assert_close(g, torch.full_like(g, 1e-6))


def test_bf16_model_runs_the_deformable_attention_in_fp32_and_stays_close(monkeypatch):
    import vit_adapter_ds.models.backbones.msdeform_attn as msda_module
    torch.manual_seed(0)
    ref = tiny_vit().eval()
    low = tiny_vit().eval()
    low.load_state_dict(ref.state_dict())
    low = low.to(torch.bfloat16)
    x = torch.randn(1, 3, 64, 64)
    calls, samples = [], []  # dtypes reaching the op (value, locations) and its bilinear sampling (input, grid)
    op, grid_sample = msda_module.ms_deform_attn, F.grid_sample

    def op_spy(value, shapes, starts, loc, w, *a, **k):
        out = op(value, shapes, starts, loc, w, *a, **k)
        calls.append((value.dtype, loc.dtype, out.dtype))
        return out

    def grid_sample_spy(inp, grid, *a, **k):
        samples.append((inp.dtype, grid.dtype))
        return grid_sample(inp, grid, *a, **k)

    monkeypatch.setattr(msda_module, "ms_deform_attn", op_spy)
    monkeypatch.setattr(F, "grid_sample", grid_sample_spy)
    with torch.no_grad():
        outs = low(x.bfloat16())
    monkeypatch.undo()
    # every deformable attention of the bf16 model: bf16 value, float32 sampling locations, sampled in float32,
    # returned in bf16
    assert calls and samples, "the deformable attention was never called"
    assert set(calls) == {(torch.bfloat16, torch.float32, torch.bfloat16)}, set(calls)
    assert set(samples) == {(torch.float32, torch.float32)}, set(samples)
    with torch.no_grad():
        for a, b in zip(ref(x), outs, strict=True):
            assert b.dtype == torch.bfloat16
            assert ((a - b.float()).norm() / a.norm()) < 0.05


def test_unknown_preset_is_named_in_the_error():
    with pytest.raises(ValueError, match="vit_adapter_tiny"):
        create_backbone("vit_adapter_huge")


def test_reference_op_samples_mixed_dtypes_in_float32():
    from vit_adapter_ds.ops import ms_deform_attn_reference
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 20, 2, 4, generator=g).bfloat16()
    shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=g)
    w = torch.rand(2, 5, 2, 2, 3, generator=g)
    out = ms_deform_attn_reference(value, shapes, starts, loc, w)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ms_deform_attn_reference(value.float(), shapes, starts, loc, w).bfloat16())
