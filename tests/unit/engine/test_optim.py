"""Layer-decay parameter groups vs the official rules (hand-written table), custom_keys vs mmengine's
DefaultOptimWrapperConstructor, and the poly + linear warm-up schedule vs hand-computed values."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vit_adapter_ds.engine.optim import build_param_groups, param_groups_from_cfg
from vit_adapter_ds.models.layer_decay import VIT_NO_WEIGHT_DECAY, layer_id, vit_layer_id, zero_layer_id
from vit_adapter_ds.engine.schedule import PolyWarmupLR, lr_at


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.gamma1 = nn.Parameter(torch.ones(4))
        self.attn = nn.Module()
        self.attn.relative_position_bias_table = nn.Parameter(torch.zeros(7, 2))


class Backbone(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 4, 2, 2)
        self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
        self.level_embed = nn.Parameter(torch.zeros(3, 4))
        self.spm = nn.Conv2d(3, 4, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(4)

    no_weight_decay_names = VIT_NO_WEIGHT_DECAY  # the layer-decay declarations of the ViT backbones

    def layer_id(self, name, num_layers):
        return vit_layer_id(name, num_layers)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.bottleneck = nn.Module()
        self.bottleneck.conv = nn.Conv2d(4, 4, 1, bias=False)
        self.bottleneck.bn = nn.BatchNorm2d(4)
        self.conv_seg = nn.Conv2d(4, 2, 1)
        self.query_feat = nn.Embedding(3, 4)

    def layer_id(self, name, num_layers):  # that of the Mask2Former head
        return zero_layer_id(name, num_layers, ("mask_embed", "cls_embed", "level_embed", "query_embed", "query_feat"))


class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.decode_head = Head()
        self.auxiliary_head = nn.Conv2d(4, 2, 1)


R = 0.9  # num_layers = 3 -> L = 5: scale(layer) = 0.9 ** (4 - layer)
# name -> (layer_id, decay under the official quirk, decay without it); written from docs/official-architecture.md §4.3
EXPECTED = {
    "backbone.pos_embed": (0, True, False),
    "backbone.cls_token": (0, True, False),
    "backbone.patch_embed.proj.weight": (0, True, True),
    "backbone.patch_embed.proj.bias": (0, False, False),
    "backbone.level_embed": (4, True, False),
    "backbone.spm.weight": (4, True, True),
    "backbone.norm1.weight": (4, False, False),
    "backbone.norm1.bias": (4, False, False),
    "decode_head.bottleneck.conv.weight": (4, True, True),
    "decode_head.bottleneck.bn.weight": (4, False, False),
    "decode_head.bottleneck.bn.bias": (4, False, False),
    "decode_head.conv_seg.weight": (4, True, True),
    "decode_head.conv_seg.bias": (4, False, False),
    "decode_head.query_feat.weight": (0, True, True),
    "auxiliary_head.weight": (4, True, True),
    "auxiliary_head.bias": (4, False, False),
}
for i in range(3):
    EXPECTED.update({
        f"backbone.blocks.{i}.norm.weight": (i + 1, False, False),
        f"backbone.blocks.{i}.norm.bias": (i + 1, False, False),
        f"backbone.blocks.{i}.fc.weight": (i + 1, True, True),
        f"backbone.blocks.{i}.fc.bias": (i + 1, False, False),
        f"backbone.blocks.{i}.gamma1": (i + 1, False, False),
        f"backbone.blocks.{i}.attn.relative_position_bias_table": (i + 1, True, False),
    })


@pytest.mark.parametrize("quirk", [True, False])
def test_layer_decay_groups_match_official_rules(quirk):
    model = Seg()
    groups = build_param_groups(model, 1e-4, 0.05, layer_decay_rate=R, num_layers=3, official_wd_quirk=quirk,
                                with_names=True)
    seen = {}
    for g in groups:
        for name, p in zip(g["param_names"], g["params"]):
            seen[name] = g
    assert set(seen) == set(EXPECTED) == {n for n, _ in model.named_parameters()}
    for name, (layer, decay_q, decay_nq) in EXPECTED.items():
        g = seen[name]
        decay = decay_q if quirk else decay_nq
        assert g["lr_scale"] == pytest.approx(R ** (4 - layer)), name
        assert g["lr"] == pytest.approx(1e-4 * R ** (4 - layer)), name
        assert g["weight_decay"] == (0.05 if decay else 0.0), name
        assert g["group_name"] == f"layer_{layer}_{'decay' if decay else 'no_decay'}", name
    # merged by (layer, decay): one group per name
    assert len({g["group_name"] for g in groups}) == len(groups)
    assert seen["backbone.blocks.2.fc.weight"]["lr_scale"] == pytest.approx(0.9)  # last block: rate ** 1
    assert seen["backbone.pos_embed"]["lr_scale"] == pytest.approx(0.6561)
    # usable by AdamW as is
    torch.optim.AdamW(build_param_groups(model, 1e-4, 0.05, layer_decay_rate=R, num_layers=3), lr=1e-4)


def test_layer_id_rules():
    seg = Seg()  # the model answers: its backbone and head declare their layers (models/layer_decay.py)
    assert layer_id(seg, "backbone.mask_token", 26) == 0
    assert layer_id(seg, "backbone.layers.7.linear1.weight", 26) == 8  # Uni-Perceiver naming
    assert layer_id(seg, "backbone.blocks.23.mlp.fc1.weight", 26) == 24
    assert layer_id(seg, "backbone.pos_embed_extra", 26) == 25  # exact names only
    assert layer_id(seg, "decode_head.level_embed.weight", 26) == 0
    assert layer_id(seg, "neck.level_embed", 26) == 25
    assert layer_id(nn.Sequential(Backbone()), "0.blocks.1.fc.weight", 26) == 2  # found below any wrapper
    assert layer_id(nn.Linear(2, 2), "weight", 26) == 25  # nothing declared: the top layer
    with pytest.raises(ValueError):
        build_param_groups(Seg(), 1e-4, 0.05, layer_decay_rate=R, num_layers=2)  # blocks.2 -> layer 3 > L-1
    with pytest.raises(ValueError):
        build_param_groups(Seg(), 1e-4, 0.05, layer_decay_rate=R, num_layers=3, custom_keys={"x": {}})


def test_frozen_params_skipped_and_single_group():
    model = Seg()
    model.backbone.pos_embed.requires_grad_(False)
    g = build_param_groups(model, 1e-3, 0.01)
    assert len(g) == 1 and g[0]["lr_scale"] == 1.0 and len(g[0]["params"]) == len(list(model.parameters())) - 1


AUGREG_B_KEYS = {"level_embed": dict(decay_mult=0.0), "pos_embed": dict(decay_mult=0.0),
                 "norm": dict(decay_mult=0.0), "bias": dict(decay_mult=0.0), "head": dict(lr_mult=10.0)}


def test_custom_keys_hand_checked():
    model = Seg()
    groups = build_param_groups(model, 2e-5, 0.05, custom_keys=AUGREG_B_KEYS, with_names=True)
    by_name = {n: g for g in groups for n in g["param_names"]}
    # 'bias' sorts before 'head' (equal length, alphabetical): head biases get lr x1, wd 0
    assert (by_name["decode_head.conv_seg.bias"]["lr"], by_name["decode_head.conv_seg.bias"]["weight_decay"]) == \
        (pytest.approx(2e-5), 0.0)
    assert by_name["decode_head.conv_seg.weight"]["lr"] == pytest.approx(2e-4)
    assert by_name["decode_head.conv_seg.weight"]["weight_decay"] == pytest.approx(0.05)
    assert by_name["decode_head.bottleneck.bn.weight"]["lr"] == pytest.approx(2e-4)  # 'bn' is not 'norm'
    assert by_name["backbone.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.norm.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.pos_embed"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.fc.weight"]["weight_decay"] == pytest.approx(0.05)
    assert by_name["backbone.blocks.0.gamma1"]["weight_decay"] == pytest.approx(0.05)  # 1-D but no key matches


def test_custom_keys_match_mmengine():
    pytest.importorskip("mmengine")
    from mmengine.optim import DefaultOptimWrapperConstructor

    model = Seg()
    ctor = DefaultOptimWrapperConstructor(dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-5,
                                                                                    weight_decay=0.05)),
                                          dict(custom_keys=AUGREG_B_KEYS))
    ref = {}
    for g in ctor(model).optimizer.param_groups:
        for p in g["params"]:
            ref[id(p)] = (g["lr"], g["weight_decay"])
    ours = {id(p): (g["lr"], g["weight_decay"]) for g in build_param_groups(model, 2e-5, 0.05,
                                                                             custom_keys=AUGREG_B_KEYS)
            for p in g["params"]}
    assert ours.keys() == ref.keys()
    for k in ours:
        assert ours[k] == pytest.approx(ref[k])


def test_param_groups_from_recipe():
    from vit_adapter_ds.config import load_recipe
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k")
    groups = param_groups_from_cfg(Seg(), cfg)  # num_layers 12: blocks 0..2 -> layers 1..3 of L=14
    scales = {g["group_name"]: g["lr_scale"] for g in groups}
    assert scales["layer_13_decay"] == 1.0 and scales["layer_0_decay"] == pytest.approx(0.95 ** 13)
    assert groups[0]["lr"] == pytest.approx(12e-5 * groups[0]["lr_scale"])


# ------------------------------------------------------------------------------------------------ schedule
KW = dict(base_lr=6e-5, max_iters=160000, warmup_iters=1500, warmup_ratio=1e-6)


def test_lr_at_hand_computed():
    assert lr_at(0, **KW) == pytest.approx(6e-11, rel=1e-9)  # 6e-5 * (1 - 0.999999)
    # 750: regular 5.971875e-05; k = 0.5 * 0.999999 -> x 0.5000005
    assert lr_at(750, **KW) == pytest.approx(2.9859404859375e-05, rel=1e-12)
    # 1499: regular 5.9437875e-05; 1 - k = 1 - 0.999999 / 1500
    assert lr_at(1499, **KW) == pytest.approx(5.9437875e-05 * (1 - 0.999999 / 1500), rel=1e-12)
    assert lr_at(1500, **KW) == pytest.approx(5.94375e-05, rel=1e-12)  # warm-up over: 6e-5 * 0.990625
    assert lr_at(80000, **KW) == pytest.approx(3e-05, rel=1e-12)
    assert lr_at(159999, **KW) == pytest.approx(3.75e-10, rel=1e-9)
    assert lr_at(160000, **KW) == 0.0
    assert lr_at(10, base_lr=1.0, max_iters=100, power=2.0, min_lr=0.1) == pytest.approx(0.9 * 0.81 + 0.1)
    with pytest.raises(ValueError):
        lr_at(-1, **KW)


def test_scheduler_object():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    opt2 = torch.optim.AdamW([{"params": [params[0]], "lr_scale": 1.0}, {"params": [params[1]], "lr_scale": 0.5}],
                             lr=1.0)
    s2 = PolyWarmupLR(opt2, **KW)
    assert s2.get_last_lr() == [pytest.approx(6e-11), pytest.approx(3e-11)]
    for _ in range(1500):
        s2.step()
    assert opt2.param_groups[1]["lr"] == pytest.approx(0.5 * 5.94375e-05)
    state = s2.state_dict()
    s3 = PolyWarmupLR(opt2, **KW)
    s3.load_state_dict(state)
    assert s3.last_iter == 1500 and opt2.param_groups[0]["lr"] == pytest.approx(5.94375e-05)
    s3.set_iter(750)  # what the engine calls before every iteration
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.9859404859375e-05, rel=1e-9)
    assert opt2.param_groups[1]["lr"] == pytest.approx(0.5 * 2.9859404859375e-05, rel=1e-9)


def test_lr_from_recipe():
    from vit_adapter_ds.config import load_recipe
    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k")
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = PolyWarmupLR.from_config(opt, cfg)
    for it, lr in ((80000, 6e-05), (0, 12e-5 * 1e-6)):  # 12e-5 / 2 at half way
        sched.set_iter(it)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    sched.set_iter(160000)
    assert math.isclose(opt.param_groups[0]["lr"], 0.0)


def test_layer_decay_on_tiny_vit_adapter_segmentor():
    """Real official parameter names (ViTAdapter + UperNet): where each family lands."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.models.registry import build_model

    cfg = load_recipe("synthetic_quickstart")  # depth 4, paramwise_cfg num_layers=4, rate 0.95
    model = build_model(cfg.model)
    groups = build_param_groups(model, 1e-3, 0.01, layer_decay_rate=0.95, num_layers=4, with_names=True)
    where = {n: g for g in groups for n in g["param_names"]}
    assert len(where) == sum(1 for _ in model.parameters())
    top = 5  # L - 1 with L = 4 + 2
    expect = {"backbone.pos_embed": "layer_0_decay", "backbone.patch_embed.proj.weight": "layer_0_decay",
              "backbone.patch_embed.proj.bias": "layer_0_no_decay",
              "backbone.blocks.0.attn.qkv.weight": "layer_1_decay", "backbone.blocks.3.gamma1": "layer_4_no_decay",
              "backbone.level_embed": f"layer_{top}_decay", "backbone.up.weight": f"layer_{top}_decay",
              "backbone.spm.stem.0.weight": f"layer_{top}_decay", "backbone.norm4.weight": f"layer_{top}_no_decay",
              "backbone.interactions.0.injector.gamma": f"layer_{top}_no_decay",
              "decode_head.conv_seg.weight": f"layer_{top}_decay",
              "auxiliary_head.convs.0.bn.weight": f"layer_{top}_no_decay"}
    for name, group in expect.items():
        assert where[name]["group_name"] == group, name
    assert where["backbone.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.95 ** 4)
    groups = param_groups_from_cfg(model, cfg)
    assert {g["group_name"] for g in groups} == {f"layer_{i}_{k}" for i in range(6) for k in ("decay", "no_decay")}


def test_optim_knows_no_model_names():
    """The models say which parameter is which layer (models/layer_decay.py); the optimizer names none."""
    from vit_adapter_ds.engine import optim

    src = Path(optim.__file__).read_text()
    for name in ("decode_head", "query_feat", "mask_embed", "patch_embed", "pos_embed", "cls_token", "blocks."):
        assert name not in src, name
