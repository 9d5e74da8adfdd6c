"""ViTBaseline, the plain detection ViT of the official mask_rcnn_deit_{tiny,small,base} / augreg_large and
cascade_mask_rcnn_deit_base configs (detection/mmdet_custom/models/backbones/vit_baseline.py). Its outputs and
gradients are compared with the official code in tests/unit/models/test_official_parity.py (variant
vit_baseline_small_det); here: the official state-dict key list (loaded strictly), the pyramid, the ViTDet form,
refusals, layer decay, the presets and pretrained DeiT loading."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.backbones import ViTBaseline
from vit_adapter_ds.models.pretrained import load_pretrained

GOLDEN = Path(__file__).resolve().parents[2] / "helpers" / "parity" / "goldens" / "vit_baseline_small_det.pt"
TINY = dict(patch_size=16, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4, out_indices=[0, 1, 2, 3],
            window_attn=[True, True, False, True], window_size=[2, 2, None, 2])


def test_loads_the_official_key_list_strictly():
    golden = torch.load(GOLDEN, weights_only=True)
    official = {}
    for row in golden["state_keys"]:  # "name:[shape]:dtype" of the official ViTBaseline's state_dict()
        name, shape, dtype = row.split(":")
        official[name] = torch.full(eval(shape), 0.5, dtype=getattr(torch, dtype))
    model = ViTBaseline(**golden["kwargs"])
    assert sorted(model.state_dict()) == sorted(official)
    report = load_pretrained(model, official, strict=True)
    assert not report.missing and not report.unexpected
    assert torch.equal(model.up1[1].weight, torch.full((384,), 0.5))


def test_official_keys_and_pyramid():
    model = ViTBaseline(**TINY).eval()
    keys = set(model.state_dict())
    # official: cls_token set to None, one norm per output, up1 = ConvT, GroupNorm, GELU, ConvT; up2 = ConvT
    assert {"pos_embed", "patch_embed.proj.weight", "blocks.0.gamma1", "blocks.3.attn.qkv.bias", "norm1.weight",
            "norm4.bias", "up1.0.weight", "up1.1.weight", "up1.3.bias", "up2.weight"} <= keys
    assert not any(k.startswith(("cls_token", "norm.", "up3", "up4", "spm", "interactions", "level_embed"))
                   for k in keys)
    assert model.pos_embed.shape == (1, 14 * 14 + 1, 64)  # the official class-token slot (unused)
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 96, 160))  # 6x10 grid: 2-windows, pos_embed resized from 14x14
    assert [tuple(o.shape) for o in outs] == [(2, 64, 24, 40), (2, 64, 12, 20), (2, 64, 6, 10), (2, 64, 3, 5)]


def test_vitdet_form_one_output_feeds_every_level():
    torch.manual_seed(0)
    model = ViTBaseline(**dict(TINY, out_indices=[3])).eval()
    same = ViTBaseline(**dict(TINY, out_indices=[3, 3, 3, 3])).eval()  # official: block 3 appended once, too
    same.load_state_dict(model.state_dict())
    seen = []
    model.blocks[3].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs, again = model(x), same(x)
        top = model.norm3(seen[0]).transpose(1, 2).reshape(1, 64, 4, 4)
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4), (1, 64, 2, 2)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert torch.equal(outs[2], top)


def test_refusals_and_layer_decay():
    with pytest.raises(TypeError, match="read no files"):
        ViTBaseline(pretrained="x.pth", **TINY)
    with pytest.raises(ValueError, match="out_indices is required"):
        ViTBaseline(**dict(TINY, out_indices=None))
    with pytest.raises(ValueError, match="out_indices"):
        ViTBaseline(**dict(TINY, out_indices=[0, 1, 2, 4]))
    with pytest.raises(ValueError, match="detection baseline"):
        ViTBaseline(task="segmentation", **TINY)
    with pytest.raises(ValueError, match="residual_indices"):
        ViTBaseline(residual_indices=[1], **TINY)
    with pytest.raises(ValueError, match="window_attn"):
        ViTBaseline(**dict(TINY, window_attn=[True] * 3))
    with pytest.raises(ConfigError, match="model.backbone"):
        ViTBaseline.from_config(dict(type="ViTBaseline", layer_decay=0.9, **TINY))
    model = ViTBaseline.from_config(dict(type="ViTBaseline", pretrained=None, **TINY))
    L = 4 + 2  # the official num_layers + 2
    names = ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.3.gamma2", "norm1.weight",
             "up1.1.bias", "up2.weight")
    assert [model.layer_id(n, L) for n in names] == [0, 0, 1, 4, 5, 5, 5]
    assert "pos_embed" in ViTBaseline.no_weight_decay_names


@pytest.mark.parametrize("name,dim,depth,blocks", [("vit_baseline_tiny_det", 192, 12, [2, 5, 8, 11]),
                                                    ("vit_baseline_base_det", 768, 12, [2, 5, 8, 11]),
                                                    ("vit_baseline_large_det", 1024, 24, [5, 11, 17, 23])])
def test_presets_are_the_official_backbones(name, dim, depth, blocks):
    kw = ViTBaseline.presets[name]
    assert (kw["embed_dim"], kw["depth"], kw["out_indices"]) == (dim, depth, blocks)
    assert kw["drop_path_rate"] == (0.4 if depth == 24 else 0.1)
    assert [s is None for s in kw["window_size"]] == [not w for w in kw["window_attn"]]
    with torch.device("meta"):
        model = ViTBaseline(**kw)
    assert model.pos_embed.shape[1] == (kw.get("img_size", 224) // 16) ** 2 + 1


def test_loads_a_deit_checkpoint_and_its_own_strictly():
    torch.manual_seed(0)
    src = ViTBaseline(**TINY).state_dict()
    deit = {k: v for k, v in src.items()
            if not k.startswith(("norm1", "norm2", "norm3", "norm4", "up")) and not k.endswith(("gamma1", "gamma2"))}
    deit["cls_token"], deit["norm.weight"], deit["head.weight"] = torch.zeros(1, 1, 64), torch.ones(64), \
        torch.zeros(10, 64)  # a DeiT file's extras
    model = ViTBaseline(**TINY)
    report = load_pretrained(model, deit)
    assert report.kind == "vit"
    assert torch.equal(model.blocks[1].attn.qkv.weight, src["blocks.1.attn.qkv.weight"])
    assert {"cls_token", "norm.weight", "head.weight"} <= set(report.unexpected)
    assert {k for k in report.missing if not k.startswith(("norm", "up")) and "gamma" not in k} == set()
    own = ViTBaseline(**TINY)
    assert not load_pretrained(own, model.state_dict(), strict=True).missing
    assert torch.equal(own.up1[1].weight, model.up1[1].weight)
