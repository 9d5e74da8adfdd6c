"""BEiTBaseline, the plain segmentation BEiT of the official upernet_beit_large_512_160k_ade20k configs
(segmentation/mmseg_custom/models/backbones/beit_baseline.py). Its outputs and gradients are compared with the
official code in tests/unit/models/test_official_parity.py (variant beit_large_baseline); here: the official
state-dict keys, the pyramid, the input-size rule, layer decay and pretrained loading."""
from __future__ import annotations

import pytest
import torch

from vit_adapter_ds.models.backbones import BEiTBaseline
from vit_adapter_ds.models.pretrained import load_pretrained

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4, qkv_bias=True,
            use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6, out_indices=[0, 1, 2, 3])


def test_official_keys_and_pyramid():
    model = BEiTBaseline(**TINY).eval()
    keys = set(model.state_dict())
    # official: fpn1 = ConvTranspose2d, SyncBatchNorm, GELU, ConvTranspose2d; fpn2 = ConvTranspose2d; no final norm
    assert {"fpn1.0.weight", "fpn1.0.bias", "fpn1.1.weight", "fpn1.1.running_mean", "fpn1.1.num_batches_tracked",
            "fpn1.3.weight", "fpn2.0.weight", "cls_token", "patch_embed.proj.weight"} <= keys
    assert not any(k.startswith(("norm", "fpn3", "fpn4", "pos_embed", "rel_pos_bias", "spm", "interactions"))
                   for k in keys)
    assert model.state_dict()["blocks.0.attn.relative_position_bias_table"].shape == ((2 * 4 - 1) ** 2 + 3, 4)
    assert model.state_dict()["blocks.3.attn.relative_position_index"].shape == (17, 17)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    with pytest.raises(ValueError, match="exactly img_size"):
        model(torch.randn(1, 3, 96, 64))


def test_refusals_and_layer_decay():
    with pytest.raises(TypeError, match="read no files"):
        BEiTBaseline(pretrained="x.pth", **TINY)
    with pytest.raises(ValueError, match="use_shared_rel_pos_bias"):
        BEiTBaseline(use_shared_rel_pos_bias=True, **TINY)
    with pytest.raises(ValueError, match="out_indices"):
        BEiTBaseline(**dict(TINY, out_indices=[0, 1, 2, 4]))
    model = BEiTBaseline(**TINY)
    L = 4 + 2  # the official num_layers + 2
    assert [model.layer_id(n, L) for n in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.q_bias",
                                           "blocks.3.gamma_2", "fpn1.0.weight", "fpn2.0.bias")] == [0, 0, 1, 4, 5, 5]


def test_loads_a_beit_checkpoint_and_its_own_strictly():
    torch.manual_seed(0)
    src = BEiTBaseline(**dict(TINY, img_size=48)).state_dict()  # 3x3 patches: tables of 5^2 + 3 rows
    beit = {k: v for k, v in src.items() if not k.startswith("fpn") and not k.endswith("relative_position_index")}
    beit["head.weight"], beit["fc_norm.weight"] = torch.zeros(10, 64), torch.ones(64)  # a BEiT ft22k file's extras
    model = BEiTBaseline(**TINY)
    report = load_pretrained(model, beit)
    assert report.kind == "beit"
    assert any(k == "blocks.0.attn.relative_position_bias_table" and old == (28, 4) and new == (52, 4)
               for k, old, new in report.resized)
    assert torch.equal(model.blocks[1].attn.q_bias, src["blocks.1.attn.q_bias"])
    assert {"head.weight", "fc_norm.weight"} <= set(report.unexpected)
    assert {k for k in report.missing if not k.startswith("fpn")} == set()
    own = BEiTBaseline(**TINY)
    assert not load_pretrained(own, model.state_dict(), strict=True).missing
    assert torch.equal(own.fpn1[1].running_var, model.fpn1[1].running_var)
