"""UniPerceiverAdapter beside the parity goldens (tests/unit/models/test_official_parity.py: outputs, gradients and the
state-dict key list against the official segmentation and detection classes): the released Uni-Perceiver weights
through the official converter's rules (detection/mmcv_custom/uniperceiver_converter.py at fd64a51), typed here on a
hand-made state dict with the released key names; the checkpoint kinds; layer decay against the official
``get_num_layer_for_vit`` (detection/ and segmentation/mmcv_custom/layer_decay_optimizer_constructor.py, typed below);
the official constructor's arguments and the differences between its two copies."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vit_adapter_ds.checkpoint.reader import CheckpointError
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.engine.optim import build_param_groups
from vit_adapter_ds.models.backbones import UniPerceiverAdapter, ViTAdapter
from vit_adapter_ds.models.factory import create_backbone, detect_checkpoint_kind, load_pretrained

DIM, DEPTH, HEADS = 32, 4, 2
I4 = [[0, 0], [1, 1], [2, 2], [3, 3]]


def tiny(**kw):
    cfg = dict(img_size=64, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, deform_num_heads=HEADS, conv_inplane=8,
               interaction_indexes=I4)
    cfg.update(kw)
    return UniPerceiverAdapter(**cfg)


def released_state_dict(img_size=64, depth=DEPTH, dim=DIM):
    """A Uni-Perceiver pre-training checkpoint's ``model`` dict in the released key format (fundamentalvision/
    Uni-Perceiver: ``fused_encoder`` layers with nn.MultiheadAttention's ``in_proj_weight`` / ``in_proj_bias``,
    ``video_embed`` with its conv ``embeddings`` and ``embeddings_st_pos`` tables, plus the text embedding and the
    losses' parameters)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {}
    for i in range(depth):
        p = f"fused_encoder.layers.{i}."
        sd.update({p + "self_attn.in_proj_weight": r(3 * dim, dim), p + "self_attn.in_proj_bias": r(3 * dim),
                   p + "self_attn.out_proj.weight": r(dim, dim), p + "self_attn.out_proj.bias": r(dim),
                   p + "linear1.weight": r(4 * dim, dim), p + "linear1.bias": r(4 * dim),
                   p + "linear2.weight": r(dim, 4 * dim), p + "linear2.bias": r(dim),
                   p + "norm1.weight": r(dim), p + "norm1.bias": r(dim), p + "norm2.weight": r(dim),
                   p + "norm2.bias": r(dim), p + "gamma_1": r(dim), p + "gamma_2": r(dim)})
    n = (img_size // 16) ** 2
    sd.update({"video_embed.embeddings.weight": r(dim, 3, 16, 16), "video_embed.embeddings.bias": r(dim),
               "video_embed.embeddings_norm.weight": r(dim), "video_embed.embeddings_norm.bias": r(dim),
               "video_embed.embeddings_st_pos.spatial_pos_embed.weight": r(n, dim),
               "video_embed.embeddings_st_pos.temporal_pos_embed.weight": r(8, dim),
               "video_embed.embeddings_type.weight": r(1, dim),
               "token_embed.embeddings.weight": r(50, dim), "token_embed.embeddings_norm.weight": r(dim),
               "token_embed.embeddings_norm.bias": r(dim), "token_embed.embeddings_type.weight": r(1, dim),
               "loss_prepare.logit_scale": r(1), "loss_prepare.vocab_proj.weight": r(50, dim)})
    return sd


# the official converter's result for the keys above, typed from its rules (module docstring)
CONVERTED_NAMES = {
    "fused_encoder.layers.0.self_attn.in_proj_weight": "layers.0.self_attn.in_proj.weight",
    "fused_encoder.layers.0.self_attn.in_proj_bias": "layers.0.self_attn.in_proj.bias",
    "fused_encoder.layers.3.self_attn.out_proj.weight": "layers.3.self_attn.out_proj.weight",
    "fused_encoder.layers.2.linear1.weight": "layers.2.linear1.weight",
    "fused_encoder.layers.1.gamma_2": "layers.1.gamma_2",
    "video_embed.embeddings.weight": "visual_embed.patch_embed.proj.weight",
    "video_embed.embeddings.bias": "visual_embed.patch_embed.proj.bias",
    "video_embed.embeddings_norm.weight": "visual_embed.embeddings_norm.weight",
    "video_embed.embeddings_st_pos.spatial_pos_embed.weight": "visual_embed.patch_embed.spatial_pos_embed.weight",
    "video_embed.embeddings_st_pos.temporal_pos_embed.weight": "visual_embed.patch_embed.temporal_pos_embed.weight",
    "video_embed.embeddings_type.weight": "visual_embed.embeddings_type.weight",  # kept; the model has none
}
DROPPED = {"token_embed.embeddings.weight", "token_embed.embeddings_norm.weight", "token_embed.embeddings_norm.bias",
           "token_embed.embeddings_type.weight", "loss_prepare.logit_scale", "loss_prepare.vocab_proj.weight"}
ADAPTER_PREFIXES = ("level_embed", "spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.")


def test_checkpoint_filter_is_the_official_converter():
    sd = released_state_dict()
    model = tiny()
    out = UniPerceiverAdapter.checkpoint_filter_fn(sd, model)
    for old, new in CONVERTED_NAMES.items():
        assert out[new] is sd[old], old
    assert not DROPPED & set(out) and len(out) == len(sd) - len(DROPPED)
    assert set(out) - {"visual_embed.embeddings_type.weight"} <= set(model.state_dict())
    # a converted file (the released *_converted.pth) passes unchanged
    again = UniPerceiverAdapter.checkpoint_filter_fn(out, model)
    assert list(again) == list(out) and all(again[k] is out[k] for k in out)


def test_released_checkpoint_loads_into_the_backbone():
    sd = released_state_dict()
    model = tiny()
    report = load_pretrained(model, {"model": sd})  # the released file: {'model': ...}
    assert report.kind == "uniperceiver"
    assert report.unexpected == ["visual_embed.embeddings_type.weight"]  # ignored, as the official non-strict load
    assert sorted(report.dropped) == sorted(DROPPED)
    assert report.missing and all(k.startswith(ADAPTER_PREFIXES) for k in report.missing)
    assert not any(k.startswith(("layers.", "visual_embed.")) for k in report.missing)
    own = model.state_dict()
    for old, new in CONVERTED_NAMES.items():
        if new in own:
            assert torch.equal(own[new], sd[old]), new
    # the converted file loads the same
    converted = tiny()
    load_pretrained(converted, UniPerceiverAdapter.checkpoint_filter_fn(sd, converted))
    assert all(torch.equal(v, converted.state_dict()[k]) for k, v in own.items() if k.startswith(("layers.",
                                                                                                    "visual_embed.")))


def test_released_detector_and_own_state_dicts_load_strictly(tmp_path):
    src = tiny(task="detection")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    released = {"meta": {}, "state_dict": {**{f"backbone.{k}": v for k, v in src.state_dict().items()},
                                           "neck.lateral_convs.0.conv.weight": torch.zeros(4, DIM, 1, 1)}}
    assert detect_checkpoint_kind(released["state_dict"]) == "segmentor"
    assert detect_checkpoint_kind(src.state_dict()) == "uniperceiver-adapter"
    dst = tiny(task="detection")
    report = load_pretrained(dst, released, strict=True)
    assert report.kind == "uniperceiver-adapter" and not report.renamed and not report.dropped
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    path = tmp_path / "own.pth"
    torch.save(src.state_dict(), path)
    assert load_pretrained(tiny(task="detection"), path, strict=True).kind == "uniperceiver-adapter"


def test_checkpoint_kinds_and_refusals():
    sd = released_state_dict()
    assert detect_checkpoint_kind(sd) == "uniperceiver"  # gamma_1 / gamma_2 as in BEiT, but not a BEiT file
    converted = UniPerceiverAdapter.checkpoint_filter_fn(sd, tiny())
    assert detect_checkpoint_kind(converted) == "uniperceiver"
    vit = ViTAdapter(img_size=64, pretrain_size=64, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, deform_num_heads=2,
                     conv_inplane=8, interaction_indexes=I4)
    with pytest.raises(CheckpointError, match="UniPerceiverAdapter, which needs Uni-Perceiver weights"):
        load_pretrained(tiny(), {k: v for k, v in vit.state_dict().items() if k.startswith(("blocks", "patch"))})
    with pytest.raises(CheckpointError, match="is a Uni-Perceiver checkpoint"):
        load_pretrained(vit, {"model": sd})
    with pytest.raises(CheckpointError, match="embed_dim 32 but the model has 64"):
        load_pretrained(tiny(embed_dim=64, num_heads=4, deform_num_heads=4), sd)
    with pytest.raises(CheckpointError, match="4 layers but the model has 5"):
        load_pretrained(tiny(depth=5), sd)
    with pytest.raises(CheckpointError, match=r"covers 16 patches \(img_size 64\).*img_size=64"):
        load_pretrained(tiny(img_size=224), sd)


# ----------------------------------------------------------------------------------------------- layer decay
def official_num_layer(var_name, num_max_layer):
    """get_num_layer_for_vit of detection/mmcv_custom/layer_decay_optimizer_constructor.py (fd64a51), the backbone
    branches (the segmentation copy adds only decode_head.* embeddings)."""
    if var_name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed", "backbone.visual_embed"):
        return 0
    elif var_name.startswith("backbone.visual_embed"):
        return 0
    elif var_name.startswith("backbone.patch_embed"):
        return 0
    elif var_name.startswith("backbone.blocks") or var_name.startswith("backbone.layers"):
        return int(var_name.split(".")[2]) + 1
    return num_max_layer - 1


class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = tiny()
        self.decode_head = nn.Conv2d(DIM, 3, 1)


@pytest.mark.parametrize("quirk", [True, False])
def test_layer_decay_follows_the_official_rule(quirk):
    model = Seg()
    groups = build_param_groups(model, 1e-4, 0.05, layer_decay_rate=0.8, num_layers=DEPTH, official_wd_quirk=quirk,
                                with_names=True)
    total = DEPTH + 2
    seen = {n: g for g in groups for n in g["param_names"]}
    assert set(seen) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        layer = official_num_layer(name, total)
        assert seen[name]["group_name"].startswith(f"layer_{layer}_"), name
        assert seen[name]["lr_scale"] == pytest.approx(0.8 ** (total - layer - 1)), name
        # official: 1-D / bias -> no decay; its ('pos_embed', 'cls_token', 'visual_embed') never matches a name
        official_no_decay = p.ndim == 1 or name.endswith(".bias")
        intended = name.startswith("backbone.visual_embed.") or name == "backbone.level_embed"
        no_decay = official_no_decay or (not quirk and intended)
        assert seen[name]["weight_decay"] == (0.0 if no_decay else 0.05), name
    # a few names spelled out
    expect = {"backbone.visual_embed.patch_embed.proj.weight": 0,
              "backbone.visual_embed.patch_embed.spatial_pos_embed.weight": 0,
              "backbone.visual_embed.patch_embed.temporal_pos_embed.weight": 0,
              "backbone.visual_embed.embeddings_norm.bias": 0, "backbone.layers.0.self_attn.in_proj.weight": 1,
              "backbone.layers.3.gamma_2": 4, "backbone.level_embed": 5, "backbone.spm.fc1.weight": 5,
              "backbone.interactions.0.injector.gamma": 5, "backbone.norm4.weight": 5, "decode_head.weight": 5}
    assert {n: int(seen[n]["group_name"].split("_")[1]) for n in expect} == expect
    assert seen["backbone.visual_embed.patch_embed.spatial_pos_embed.weight"]["weight_decay"] == (0.05 if quirk
                                                                                                  else 0.0)


# ------------------------------------------------------------------------------------------ the constructor
def test_official_arguments_and_presets():
    from vit_adapter_ds.models import PRESETS

    base = dict(type="UniPerceiverAdapter", img_size=64, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                deform_num_heads=HEADS, conv_inplane=8, interaction_indexes=I4, pretrained=None)
    model = UniPerceiverAdapter.from_config(dict(base, window_attn=[True, False] * 2, window_size=[2, None] * 2))
    assert [layer.self_attn.window_size for layer in model.layers] == [2, None, 2, None]
    # the official class has no use_extra_extractor: the last interaction always has the two extra extractors
    with pytest.raises(ConfigError, match="use_extra_extractor"):
        UniPerceiverAdapter.from_config(dict(base, use_extra_extractor=False))
    assert model.interactions[-1].extra_extractors is not None
    with pytest.raises(ValueError, match="patch_size must be 16"):
        tiny(patch_size=8)
    with pytest.raises(ValueError, match="layer 1 has windowed attention but window_size None"):
        tiny(window_attn=[False, True, False, False], window_size=[None] * 4)
    with pytest.raises(TypeError, match="construct"):
        tiny(pretrained="pretrained/uni-perceiver-large-L24-H1024-224size-pretrained_converted.pth")
    # LayerNorms of the official nn.LayerNorm default (eps 1e-5), adapter included
    assert {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}
    assert model.layers[0].gamma_1.abs().sum() == 0  # zero layer scales until the pretrained weights set them
    names = [n for n in PRESETS if PRESETS[n][0] is UniPerceiverAdapter]
    assert sorted(names) == ["uniperceiver_adapter_base_det", "uniperceiver_adapter_large",
                             "uniperceiver_adapter_large_det"]
    with torch.device("meta"):
        det = create_backbone("uniperceiver_adapter_base_det")
    assert det.task == "detection" and sum(p.numel() for p in det.parameters()) == 99_502_304


def test_task_selects_the_official_copy():
    """Detection copy: with_cp also checkpoints the interactions and the last interaction's tokens are added to every
    level; segmentation copy: only the layers are checkpointed and level k gets interaction k's tokens."""
    seg, det = tiny(with_cp=True), tiny(with_cp=True, task="detection")
    assert [type(m).__name__ for m in seg.modules() if getattr(m, "with_cp", False)] == ["BertLayer"] * DEPTH
    assert {type(m).__name__ for m in det.modules() if getattr(m, "with_cp", False)} == \
        {"BertLayer", "Injector", "Extractor"}
    det.load_state_dict(seg.state_dict())
    with torch.no_grad():
        for layer in seg.layers:  # non-zero layer scales, so that each interaction changes the tokens
            layer.gamma_1.fill_(0.5), layer.gamma_2.fill_(0.5)
        det.load_state_dict(seg.state_dict())
    seg.eval(), det.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = seg(x), det(x)
    assert torch.equal(a[3], b[3])  # stride 32: both add the last interaction's tokens
    assert all((a[k] - b[k]).abs().max() > 1e-3 for k in range(3))
