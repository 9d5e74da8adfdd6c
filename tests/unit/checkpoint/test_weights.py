"""Pretrained / released weights into the backbones: timm ViT -> ViTAdapter, BEiT -> BEiTAdapter (shared table
fan-out, index keys, geometric rel-pos resize), released segmentor checkpoints, the builder loading after
construction. Reading the files themselves (every kind, weights_only) is tested in tests/unit/checkpoint/test_checkpoint_reader.py.

References are independent of the code under test: values printed by the official ``scipy.interpolate.interp2d``
(SciPy 1.13.1, the last release that has it) and by the official loader's log, scipy's ``make_interp_spline``
(B-spline collocation, not FITPACK), and timm's own ViT blocks.
"""

import numpy as np
import pytest
import timm
import torch
from scipy.interpolate import make_interp_spline

from vit_adapter_ds.checkpoint.reader import CheckpointError
from vit_adapter_ds.checkpoint.loading import read_state_dict
from vit_adapter_ds.models import BEiTAdapter, ViTAdapter
from vit_adapter_ds.models.backbones.beit import (geometric_source_coordinates, relative_position_index,
                                                  resize_rel_pos_table)
from vit_adapter_ds.models.factory import (create_backbone, detect_checkpoint_kind, load_pretrained,
                                          split_segmentor_state_dict)

DIM, DEPTH, HEADS = 48, 4, 3


def tiny_vit(**kw):
    cfg = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, deform_num_heads=3, conv_inplane=16,
               interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], img_size=64, pretrain_size=64)
    cfg.update(kw)
    return ViTAdapter(**cfg)


def tiny_beit(**kw):
    cfg = dict(img_size=64, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, qkv_bias=True, init_values=0.1,
               deform_num_heads=3, conv_inplane=16, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    cfg.update(kw)
    return BEiTAdapter(**cfg)


def timm_deit(img_size=64, depth=DEPTH, distilled=False):
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, embed_dim=DIM, depth=depth, num_heads=HEADS, img_size=img_size)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def unilm_beit_state_dict(img_size=32, depth=DEPTH, shared=False, pretraining=False):
    """A BEiT/BEiTv2 checkpoint in microsoft/unilm's key format (fine-tuned: per-block tables + norm/head;
    pre-training: one shared ``rel_pos_bias`` table + mask_token/lm_head)."""
    g = torch.Generator().manual_seed(1)
    w = img_size // 16
    rows = (2 * w - 1) ** 2 + 3
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, DIM), "patch_embed.proj.weight": r(DIM, 3, 16, 16), "patch_embed.proj.bias": r(DIM)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "gamma_1": r(DIM), p + "gamma_2": r(DIM), p + "norm1.weight": r(DIM), p + "norm1.bias": r(DIM),
                   p + "attn.q_bias": r(DIM), p + "attn.v_bias": r(DIM), p + "attn.qkv.weight": r(3 * DIM, DIM),
                   p + "attn.proj.weight": r(DIM, DIM), p + "attn.proj.bias": r(DIM), p + "norm2.weight": r(DIM),
                   p + "norm2.bias": r(DIM), p + "mlp.fc1.weight": r(4 * DIM, DIM), p + "mlp.fc1.bias": r(4 * DIM),
                   p + "mlp.fc2.weight": r(DIM, 4 * DIM), p + "mlp.fc2.bias": r(DIM)})
        if not shared:
            sd[p + "attn.relative_position_bias_table"] = r(rows, HEADS)
            sd[p + "attn.relative_position_index"] = relative_position_index(w, w, True).clone()
    if shared:
        sd["rel_pos_bias.relative_position_bias_table"] = r(rows, HEADS)
        sd["rel_pos_bias.relative_position_index"] = relative_position_index(w, w, True).clone()
    if pretraining:
        sd.update({"mask_token": r(1, 1, DIM), "norm.weight": r(DIM), "norm.bias": r(DIM),
                   "lm_head.weight": r(8192, DIM), "lm_head.bias": r(8192)})
    else:
        sd.update({"fc_norm.weight": r(DIM), "fc_norm.bias": r(DIM), "head.weight": r(10, DIM), "head.bias": r(10)})
    return sd


def save(obj, path, **kw):
    torch.save(obj, path, **kw)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Relative position table resize
# ---------------------------------------------------------------------------------------------------------------------

def _official_test_table():
    i, j = np.meshgrid(np.arange(27), np.arange(27), indexing="ij")  # i: row = dy, j: column = dx (asymmetric)
    z = (np.sin(0.7 * i) + np.cos(0.3 * j) + 0.05 * i * j - 0.01 * j ** 2).astype(np.float32)
    return torch.cat([torch.from_numpy(z).reshape(-1, 1), torch.tensor([[7.0], [8.0], [9.0]])])


def test_geometric_coordinates_match_the_official_log():
    # printed by the official loader for 224 -> 896 (czczup/ViT-Adapter issue #23): "x = [-54.999898443794464,
    # -44.33237151632927, -35.57463714019768, -28.384787803571555, -22.482127222283516, ..."
    x = geometric_source_coordinates(27, 111)
    assert x.shape == (27,)
    np.testing.assert_allclose(x[:5], [-54.999898443794464, -44.33237151632927, -35.57463714019768,
                                       -28.384787803571555, -22.482127222283516], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(x[12:15], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(x, -x[::-1], atol=0)


def test_resize_matches_official_interp2d_values():
    # Values computed with scipy 1.13.1: interpolate.interp2d(x, x, z, kind='cubic')(dx, dx) on the official grid.
    official = {(0, 0): 0.9999999999999993, (3, 50): -1.497101886074261, (60, 17): 1.516522830400649,
                (110, 110): 26.48912239074707, (55, 56): 6.96883773803711, (20, 90): -1.6266758511914603,
                (100, 2): 0.2520947554921284}
    out = resize_rel_pos_table(_official_test_table(), 111)
    assert out.shape == (111 ** 2 + 3, 1) and out.dtype == torch.float32
    grid = out[:-3, 0].double().reshape(111, 111)
    for (row, col), value in official.items():
        assert abs(grid[row, col].item() - value) < 2e-6, (row, col)
    assert out[-3:, 0].tolist() == [7.0, 8.0, 9.0]


@pytest.mark.parametrize("src,dst", [(27, 111), (27, 79), (7, 13), (13, 5)])
def test_resize_equals_an_independent_tensor_product_not_a_knot_spline(src, dst):
    torch.manual_seed(src + dst)
    table = torch.randn(src * src + 3, 2, dtype=torch.float64)
    out = resize_rel_pos_table(table, dst)
    coords = geometric_source_coordinates(src, dst)
    targets = np.clip(np.arange(-(dst // 2), dst // 2 + 1, dtype=np.float64), coords[0], coords[-1])  # edge clamp
    for h in range(2):
        z = table[:-3, h].float().double().numpy().reshape(src, src)  # the official code fits float32 values
        along_x = make_interp_spline(coords, z, k=3, axis=1)(targets)
        ref = make_interp_spline(coords, along_x, k=3, axis=0)(targets)
        np.testing.assert_allclose(out[:-3, h].numpy().reshape(dst, dst), ref, rtol=0, atol=1e-9)
    # the centre and the +-1 offsets are source points: exact copies
    c_src, c_dst = src // 2, dst // 2
    src_grid, dst_grid = table[:-3].float().double().reshape(src, src, 2), out[:-3].reshape(dst, dst, 2)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            torch.testing.assert_close(dst_grid[c_dst + dy, c_dst + dx], src_grid[c_src + dy, c_src + dx],
                                       rtol=0, atol=1e-12)


def test_resize_identity_shapes_and_class_rows():
    table = torch.randn(27 ** 2 + 3, 16)
    assert torch.equal(resize_rel_pos_table(table, 27), table)                 # seg, same size: exact copy
    assert torch.equal(resize_rel_pos_table(table, 27, dst_extra=0), table[:-3])  # det w=14: copy without cls rows
    seg = resize_rel_pos_table(table, 111)
    det = resize_rel_pos_table(table, 111, dst_extra=0)
    assert seg.shape == (111 ** 2 + 3, 16) and det.shape == (111 ** 2, 16)   # 732 -> 12324 / 12321 rows
    assert torch.equal(seg[-3:], table[-3:])
    assert torch.equal(seg[:-3], det)
    with pytest.raises(CheckpointError, match="no class-token rows"):
        resize_rel_pos_table(table[:-3], 111, src_extra=0, dst_extra=3)


# ---------------------------------------------------------------------------------------------------------------------
# timm ViT (DeiT / AugReg / DINOv2) -> ViTAdapter
# ---------------------------------------------------------------------------------------------------------------------

def test_deit_checkpoint_into_vit_adapter(tmp_path):
    deit = timm_deit()
    path = save({"model": deit.state_dict()}, tmp_path / "deit_tiny_patch16_224-a1311bcf.pth")
    model = tiny_vit()
    gamma_before = model.blocks[0].gamma1.detach().clone()
    report = load_pretrained(model, path)

    assert report.kind == "vit"
    assert sorted(report.unexpected) == ["cls_token", "head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert {f"blocks.{i}.gamma{j}" for i in range(DEPTH) for j in (1, 2)} <= set(report.missing)
    assert all(k.startswith(("blocks.", "spm.", "interactions.", "level_embed", "up.", "norm"))
               for k in report.missing)
    assert any(k.startswith("spm.") for k in report.missing) and "level_embed" in report.missing
    assert not any(k.startswith("blocks.") and "gamma" not in k for k in report.missing)
    assert torch.equal(model.blocks[0].gamma1, gamma_before) and torch.all(gamma_before == 1)
    sd = deit.state_dict()
    for key in ["pos_embed", "patch_embed.proj.weight", "blocks.3.attn.qkv.bias", "blocks.2.mlp.fc2.weight"]:
        assert torch.equal(model.state_dict()[key], sd[key]), key
    # the loaded blocks compute what timm's blocks compute (layer scale 1)
    x = torch.randn(2, 16, DIM)
    with torch.no_grad():
        for ours, theirs in zip(model.blocks, deit.blocks):
            torch.testing.assert_close(ours(x, 4, 4), theirs(x), rtol=1e-5, atol=1e-5)
    text = str(report)
    assert "missing from the file" in text and "blocks.*.gamma1 x4" in text and "cls_token" in text


def test_constructors_read_no_files_the_builder_does(tmp_path):
    deit = timm_deit()
    path = save(deit.state_dict(), tmp_path / "raw.pth")
    for make in (tiny_vit, tiny_beit):
        with pytest.raises(TypeError, match="pretrained"):
            make(pretrained=str(path))
    with torch.device("meta"):  # what recipe validation does: nothing is allocated, nothing is read
        assert tiny_vit().blocks[0].attn.qkv.weight.is_meta
    model = create_backbone("vit_adapter_tiny", pretrained=str(path), embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                            deform_num_heads=3, conv_inplane=16, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
                            img_size=64, pretrain_size=64)
    assert torch.equal(model.blocks[1].attn.proj.weight, deit.blocks[1].attn.proj.weight)
    assert model.pretrained_report.kind == "vit" and "cls_token" in model.pretrained_report.unexpected


def test_distilled_deit_and_dinov2_style_checkpoints(tmp_path):
    deit = timm_deit(distilled=True)
    report = load_pretrained(tiny_vit(), save({"model": deit.state_dict()}, tmp_path / "d.pth"))
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= set(report.unexpected)
    assert ("pos_embed", (1, 18, DIM), (1, 17, DIM)) in report.resized

    torch.manual_seed(0)
    dino = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=DIM, depth=DEPTH,
                             num_heads=HEADS, img_size=56, init_values=0.5)
    sd = dict(dino.state_dict(), mask_token=torch.zeros(1, DIM))
    model = tiny_vit()
    report = load_pretrained(model, sd)
    assert ("blocks.0.ls1.gamma", "blocks.0.gamma1") in report.renamed
    assert torch.equal(model.blocks[2].gamma2, sd["blocks.2.ls2.gamma"])
    assert ("patch_embed.proj.weight", (DIM, 3, 14, 14), (DIM, 3, 16, 16)) in report.resized
    ref = torch.nn.functional.interpolate(sd["patch_embed.proj.weight"], size=(16, 16), mode="bilinear",
                                          align_corners=False)
    assert torch.equal(model.patch_embed.proj.weight, ref)
    assert "mask_token" in report.unexpected


def test_vit_mismatches_are_named(tmp_path):
    path = save(timm_deit(img_size=224).state_dict(), tmp_path / "deit224.pth")
    with pytest.raises(CheckpointError, match=r"14x14 patch grid \(img_size 224\).*img_size=224"):
        load_pretrained(tiny_vit(), path)
    with pytest.raises(CheckpointError, match="has 2 transformer blocks but the model has 4"):
        load_pretrained(tiny_vit(), timm_deit(depth=2).state_dict())
    with pytest.raises(CheckpointError, match="timm ViT.*BEiTAdapter.*build a ViTAdapter"):
        load_pretrained(tiny_beit(), path)
    with pytest.raises(CheckpointError, match="BEiT.*ViTAdapter.*build a BEiTAdapter"):
        load_pretrained(tiny_vit(), unilm_beit_state_dict())
    with pytest.raises(CheckpointError, match="unrecognised checkpoint"):
        load_pretrained(tiny_vit(), {"layers.0.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------------------------------
# BEiT -> BEiTAdapter
# ---------------------------------------------------------------------------------------------------------------------

def test_beit_same_size_copies_tables_and_drops_index_keys(tmp_path):
    sd = unilm_beit_state_dict(img_size=64)
    model = tiny_beit()
    report = load_pretrained(model, save({"model": sd}, tmp_path / "beit_ft.pth"))
    assert report.kind == "beit"
    assert sorted(k for k in report.dropped) == [f"blocks.{i}.attn.relative_position_index" for i in range(DEPTH)]
    assert set(report.unexpected) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert not any(k.startswith(("blocks.", "cls_token", "patch_embed")) for k in report.missing)
    for key in ["blocks.1.attn.relative_position_bias_table", "blocks.0.attn.q_bias", "blocks.3.gamma_2",
                "cls_token", "blocks.2.attn.qkv.weight"]:
        assert torch.equal(model.state_dict()[key], sd[key]), key
    assert report.resized == []


def test_beit_shared_table_is_fanned_out_and_resized(tmp_path):
    sd = unilm_beit_state_dict(img_size=48, shared=True, pretraining=True)  # 3x3 grid: side 5, 28 rows
    model = tiny_beit()                                                    # 4x4 grid: side 7, 52 rows
    report = load_pretrained(model, save(sd, tmp_path / "beit_pt22k.pth"))
    shared = sd["rel_pos_bias.relative_position_bias_table"]
    expected = resize_rel_pos_table(shared, 7)
    for i in range(DEPTH):
        table = model.blocks[i].attn.relative_position_bias_table
        assert table.shape == (52, HEADS)
        assert torch.equal(table.detach(), expected)
        assert torch.equal(table[-3:].detach(), shared[-3:])
        # the centre offset (row 3*7+3 of the 7x7 grid) is the source centre (row 2*5+2 of the 5x5 grid)
        torch.testing.assert_close(table[24].detach(), shared[12], rtol=0, atol=1e-6)
    assert [r[1:] for r in report.resized] == [((28, HEADS), (52, HEADS))] * DEPTH
    assert "rel_pos_bias.relative_position_index" in report.dropped
    assert {"mask_token", "lm_head.weight", "lm_head.bias", "norm.weight", "norm.bias"} == set(report.unexpected)
    assert any("copied to each of the 4 blocks" in n for n in report.notes)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, DIM, 16, 16)


def test_beit_into_detection_model_drops_class_rows():
    sd = unilm_beit_state_dict(img_size=48)  # side 5 + 3 cls rows
    model = tiny_beit(task="detection", window_size=[3, 3, 4, 4], window_attn=[True, True, True, False])
    report = load_pretrained(model, sd)
    for i, side in enumerate([5, 5, 7, 7]):
        table = model.blocks[i].attn.relative_position_bias_table.detach()
        assert table.shape == (side * side, HEADS)
        src = sd[f"blocks.{i}.attn.relative_position_bias_table"]
        if side == 5:
            assert torch.equal(table, src[:-3])  # 5x5 -> 5x5: a copy without the cls rows
        else:
            assert torch.equal(table, resize_rel_pos_table(src, 7, dst_extra=0))
    assert "cls_token" in report.unexpected


def test_beit_pos_embed_is_resized_bicubically():
    sd = unilm_beit_state_dict(img_size=48)
    sd["pos_embed"] = torch.randn(1, 5, DIM)
    model = tiny_beit(use_abs_pos_emb=True)
    report = load_pretrained(model, sd)
    assert ("pos_embed", (1, 5, DIM), (1, 17, DIM)) in report.resized
    grid = sd["pos_embed"][:, 1:].reshape(1, 2, 2, DIM).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.pos_embed[:, 1:].detach(), ref.flatten(2).transpose(1, 2))
    assert torch.equal(model.pos_embed[:, :1].detach(), sd["pos_embed"][:, :1])


# ---------------------------------------------------------------------------------------------------------------------
# Released segmentor checkpoints and our own state dicts
# ---------------------------------------------------------------------------------------------------------------------

def _released(model):
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    sd.update({"decode_head.conv_seg.weight": torch.randn(150, 8, 1, 1), "decode_head.conv_seg.bias": torch.zeros(150),
               "auxiliary_head.conv_seg.weight": torch.randn(150, 4, 1, 1)})
    meta = {"mmcv_version": "1.4.2", "CLASSES": ("wall", "building"), "PALETTE": [[1, 2, 3], [4, 5, 6]],
            "hook_msgs": {"best_score": np.float64(0.594), "best_ckpt": "x.pth"}, "iter": 80000}
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 2e-5, "params": [0]}]}
    return {"meta": meta, "state_dict": sd, "optimizer": optimizer}


def test_released_segmentor_checkpoint_backbone_loads_strictly(tmp_path):
    source = tiny_beit()
    path = save(_released(source), tmp_path / "mask2former_beit_adapter_large_896_80k_ade20k.pth.tar")
    sd = read_state_dict(path)
    assert detect_checkpoint_kind(sd) == "segmentor"
    parts = split_segmentor_state_dict(sd)
    assert set(parts) == {"backbone", "decode_head", "auxiliary_head"}
    assert "blocks.0.attn.relative_position_index" in parts["backbone"]
    target = tiny_beit()
    target.load_state_dict(parts["backbone"], strict=True)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k

    target = tiny_beit()
    report = load_pretrained(target, path, strict=True)
    assert report.kind == "beit-adapter" and not report.missing and not report.unexpected
    assert any("decode_head (2 tensors)" in n for n in report.notes)
    torch.testing.assert_close(target.level_embed, source.level_embed)


def test_own_state_dict_round_trip_and_index_stored_once(tmp_path):
    for make in (tiny_vit, tiny_beit):
        source = make()
        path = save(source.state_dict(), tmp_path / "own.pth")
        target = make()
        target.load_state_dict(read_state_dict(path), strict=True)
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
        report = load_pretrained(make(), path, strict=True)
        assert report.kind in ("vit-adapter", "beit-adapter")
    loaded = torch.load(path, weights_only=True)
    pointers = {loaded[f"blocks.{i}.attn.relative_position_index"].untyped_storage().data_ptr() for i in range(DEPTH)}
    assert len(pointers) == 1  # one shared index tensor in the file, not one per block


def test_wrong_relative_position_index_is_rejected(tmp_path):
    ckpt = _released(tiny_beit())
    bad = ckpt["state_dict"]["backbone.blocks.2.attn.relative_position_index"].clone()
    bad[0, 1] += 1
    ckpt["state_dict"]["backbone.blocks.2.attn.relative_position_index"] = bad
    parts = split_segmentor_state_dict(ckpt)
    with pytest.raises(RuntimeError, match="relative position index"):
        tiny_beit().load_state_dict(parts["backbone"], strict=True)
    with pytest.raises(RuntimeError, match="relative position index"):
        load_pretrained(tiny_beit(), save(ckpt, tmp_path / "bad.pth"))


def test_released_checkpoint_of_another_geometry_resizes_and_drops_stale_index():
    source = tiny_beit(img_size=48)
    report = load_pretrained(tiny_beit(img_size=64), _released(source))
    assert len([r for r in report.resized if r[0].endswith("bias_table")]) == DEPTH
    assert "blocks.0.attn.relative_position_index" in report.dropped


# ---------------------------------------------------------------------------------------------------------------------
# File kinds that need a model to check (file reading itself: tests/unit/checkpoint/test_checkpoint_reader.py)
# ---------------------------------------------------------------------------------------------------------------------

def _write_jax_npz(model, path):
    """Write a timm ViT in Google's JAX (AugReg) .npz layout: HWIO patch kernel, (in, heads, head_dim) q/k/v kernels,
    (heads, head_dim, out) output kernel, (in, out) dense kernels."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d, h = sd["cls_token"].shape[-1], model.blocks[0].attn.num_heads
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        m = p + "MultiHeadDotProductAttention_1/"
        for j, n in enumerate(("query", "key", "value")):
            w[m + n + "/kernel"] = sd[b + "attn.qkv.weight"][j * d:(j + 1) * d].T.reshape(d, h, d // h)
            w[m + n + "/bias"] = sd[b + "attn.qkv.bias"][j * d:(j + 1) * d].reshape(h, d // h)
        w[m + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(h, d // h, d)
        w[m + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + ln + "/scale"], w[p + ln + "/bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_jax_npz_and_safetensors_checkpoints(tmp_path):
    deit = timm_deit()
    _write_jax_npz(deit, tmp_path / "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz")
    model = tiny_vit()
    report = load_pretrained(model, tmp_path / "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz")
    assert report.kind == "vit" and sorted(report.unexpected) == ["cls_token", "head.bias", "head.weight",
                                                                   "norm.bias", "norm.weight"]
    for key, value in deit.state_dict().items():
        if key in model.state_dict():
            assert torch.equal(model.state_dict()[key], value), key

    from safetensors.torch import save_file
    save_file(deit.state_dict(), str(tmp_path / "model.safetensors"))
    model = tiny_vit()
    load_pretrained(model, tmp_path / "model.safetensors")
    assert torch.equal(model.blocks[3].mlp.fc1.weight, deit.blocks[3].mlp.fc1.weight)


@pytest.mark.slow
def test_official_geometry_beit_large_224_checkpoint_into_the_896_model(tmp_path):
    """BEiT-L pt22k_ft22k (224: 27x27 tables, 732 rows) into the Mask2Former 896 BEiT-Adapter-L (111x111, 12324)."""
    g = torch.Generator().manual_seed(0)
    sd = {"cls_token": torch.randn(1, 1, 1024, generator=g), "norm.weight": torch.ones(1024),
          "head.weight": torch.zeros(21841, 1024)}
    for i in range(24):
        sd[f"blocks.{i}.attn.relative_position_bias_table"] = torch.randn(732, 16, generator=g)
        sd[f"blocks.{i}.attn.relative_position_index"] = relative_position_index(14, 14, True)
    path = save({"model": sd}, tmp_path / "beit_large_patch16_224_pt22k_ft22k.pth")
    model = create_backbone("beit_adapter_large_896", pretrained=str(path))
    for i in (0, 23):
        table = model.blocks[i].attn.relative_position_bias_table.detach()
        src = sd[f"blocks.{i}.attn.relative_position_bias_table"]
        assert table.shape == (12324, 16)
        assert torch.equal(table[-3:], src[-3:])
        torch.testing.assert_close(table[55 * 111 + 55], src[13 * 27 + 13], rtol=0, atol=1e-6)  # centre offset
    assert torch.equal(model.cls_token.detach(), sd["cls_token"])
