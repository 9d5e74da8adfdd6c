"""The model registries (issue 19, item 3): every registered backbone, neck, head, segmentor and detector is built
from a small config and takes one forward/backward step -- parametrised over the registries, so a new registration
is covered here without a new test file -- and a backbone and a head registered inside a test file are built from a
recipe without editing any project file.

The small configs come from the built-in ``synthetic*`` recipes (the models the CPU tests train): each recipe's
``model`` gives its segmentor/detector, and its ``backbone`` / ``neck`` / ``decode_head`` / ``auxiliary_head``
entries the parts. A class that no synthetic recipe uses needs an entry in ``EXTRA`` below.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.models.heads.common import BaseDecodeHead
from vit_adapter_ds.models.registry import (BACKBONES, DETECTORS, FAMILIES, HEADS, SEGMENTORS, build_model,
                                            model_types, task_of)
from vit_adapter_ds.recipes import RECIPES
from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

from test_detection_model import _targets

# small configs of registered classes that no synthetic recipe uses: family -> type -> config
EXTRA: dict[str, dict[str, dict]] = {
    "backbone": {"BEiTBaseline": dict(type="BEiTBaseline", img_size=64, embed_dim=64, depth=4, num_heads=4,
                                      qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-6,
                                      out_indices=[0, 1, 2, 3]),
                 "ViTBaseline": dict(type="ViTBaseline", embed_dim=64, depth=4, num_heads=4, out_indices=[0, 1, 2, 3],
                                     window_attn=[True, False] * 2, window_size=[2, None] * 2),
                 "UniPerceiverAdapter": dict(type="UniPerceiverAdapter", img_size=64, embed_dim=64, depth=4,
                                             num_heads=4, deform_num_heads=4, conv_inplane=16,
                                             interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
                                             window_attn=[True, False] * 2, window_size=[2, None] * 2)},
    "neck": {"ChannelMapperWithPooling": dict(type="ChannelMapperWithPooling", in_channels=[16, 16, 16, 16],
                                              out_channels=8, num_outs=5)},
    "head": {"FPNHead": dict(type="FPNHead", in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3],
                             feature_strides=[4, 8, 16, 32], channels=8, dropout_ratio=0.1, num_classes=5)},
}


def _small_configs() -> dict[str, dict[str, dict]]:
    """family -> official type -> a small config of it (the first synthetic recipe that uses it)."""
    found: dict[str, dict[str, dict]] = {family: {} for family in FAMILIES}

    def add(family, cfg, **defaults):
        if isinstance(cfg, dict) and cfg.get("type") is not None:
            cfg = {k: v for k, v in cfg.items() if k not in ("pretrained", "_delete_")}
            found[family].setdefault(cfg["type"], {**defaults, **cfg})

    for name in sorted({**RECIPES, **DETECTION_RECIPES}):
        if not name.startswith("synthetic"):
            continue
        model = to_plain(load_recipe(name, validate=False).model)
        family = {"segmentation": "segmentor", "detection": "detector"}.get(task_of(model.get("type")))
        if family is None:
            continue
        add(family, model)
        # a detector's backbone is its detection copy (the detectors build it with task='detection')
        add("backbone", model.get("backbone"), **({"task": "detection"} if family == "detector" else {}))
        necks = model.get("neck")
        for neck in necks if isinstance(necks, list) else [necks]:
            add("neck", neck)
        for key in ("decode_head", "auxiliary_head"):
            add("head", model.get(key))
    for family, extra in EXTRA.items():
        for kind, cfg in extra.items():
            found[family].setdefault(kind, cfg)
    # the official _ms segmentor: the synthetic Mask2Former under its name, sliding (where it differs)
    m2f = found["segmentor"].get("EncoderDecoderMask2Former")
    if m2f is not None:
        found["segmentor"].setdefault("EncoderDecoderMask2FormerAug", dict(
            m2f, type="EncoderDecoderMask2FormerAug", test_cfg=dict(mode="slide", crop_size=(64, 64), stride=(32, 32))))
    return found


SMALL = _small_configs()
ENTRIES = [(family, kind) for family, registry in FAMILIES.items() for kind in registry]


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


def _maps(channels, size=64, n=2):
    """4 maps at strides 4..32 of a ``size`` image, ``channels`` an int or one per level."""
    cs = channels if isinstance(channels, (list, tuple)) else [channels] * 4
    return [torch.randn(n, c, size // s, size // s) for c, s in zip(cs, (4, 8, 16, 32))]


def _step(family, kind, cfg):
    """Build ``cfg`` and return (model, scalar loss) of one forward pass in train mode (batches of 2: batch norm)."""
    registry = FAMILIES[family]
    where = f"model.{family}"
    if family == "segmentor":
        model = build_model(cfg, load_pretrained=False).train()
        nc = int(model.num_classes)
        img, gt = torch.randn(2, 3, 64, 64), torch.randint(0, nc, (2, 1, 64, 64))
        return model, model(img, gt)["loss"]
    if family == "detector":
        model = registry[kind].from_config(cfg, "model").train()
        kwargs = {}
        if getattr(getattr(model, "roi_head", None), "semantic_head", None) is not None:
            kwargs["semantic_labels"] = torch.randint(0, 11, (2, 16, 20))
        targets = _targets()  # labels 0..6; a detector with fewer (thing) classes gets them modulo its count
        things = int(getattr(model, "num_things_classes", 7))
        for t in targets:
            t["labels"] = t["labels"] % things
        return model, model(torch.randn(2, 3, 128, 160), targets, **kwargs)["loss"]
    model = registry.build(cfg, where).train()
    if family == "backbone":
        out = model(torch.randn(2, 3, 64, 64))
        assert len(out) == 4
    elif family == "neck":
        out = model(_maps(cfg["in_channels"]))
    else:  # a head: its input maps (one level for a single-input head such as FCNHead)
        channels = cfg["in_channels"]
        if isinstance(channels, int):
            idx = cfg.get("in_index", 0)
            maps = [torch.randn(2, channels, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
            maps = [m if i == idx else m[:, :1] for i, m in enumerate(maps)]
        else:
            maps = _maps(channels)
        out = model(maps)
    return model, sum(t.float().mean() for t in _tensors(out))


def test_every_family_has_entries_and_every_entry_a_small_config():
    assert all(len(registry) for registry in FAMILIES.values())
    missing = [f"{family}:{kind}" for family, kind in ENTRIES if kind not in SMALL[family]]
    assert not missing, f"no small config for {missing}: use it in a synthetic recipe or add it to EXTRA"


@pytest.mark.parametrize("family,kind", ENTRIES, ids=[f"{f}-{k}" for f, k in ENTRIES])
def test_registered_entry_builds_and_takes_a_step(family, kind):
    if kind not in SMALL[family]:
        pytest.fail(f"no small config for {family} {kind!r}: use it in a synthetic recipe or add it to EXTRA")
    torch.manual_seed(0)
    model, loss = _step(family, kind, copy.deepcopy(SMALL[family][kind]))
    assert type(model) is FAMILIES[family][kind]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_task_is_a_class_attribute_of_segmentors_and_detectors():
    assert {task_of(t) for t in SEGMENTORS} == {"segmentation"}
    assert {task_of(t) for t in DETECTORS} == {"detection"}
    assert task_of("NoSuchModel") is None and task_of(None) is None
    assert model_types("detection") == sorted(DETECTORS)
    from vit_adapter_ds.tasks import TASKS, ObjectDetection, SemanticSegmentation

    assert dict(TASKS) == {**{t: SemanticSegmentation for t in SEGMENTORS}, **{t: ObjectDetection for t in DETECTORS}}


def test_presets_and_checkpoint_filters_are_attributes_of_the_registered_backbones():
    from vit_adapter_ds.models import PRESETS

    owners = {name: cls for name, (cls, _) in PRESETS.items()}
    assert {cls.__name__ for cls in owners.values()} == set(BACKBONES)
    for name, cls in owners.items():
        assert PRESETS[name][1] == cls.presets[name]
    assert all(callable(cls.checkpoint_filter_fn) for cls in BACKBONES.classes())


def test_registry_refuses_a_second_class_under_a_taken_name():
    class ViTAdapter(nn.Module):  # another class of the same name
        pass

    with pytest.raises(KeyError, match="already registered"):
        BACKBONES.register(ViTAdapter)
    with pytest.raises(ConfigError, match=r"model.backbone.type='Nope' is not supported; choose one of \['BEiTAdapter'"):
        BACKBONES.lookup({"type": "Nope"}, "model.backbone")


# ---------------------------------------------------------------------------------------------------------------------
# a backbone and a head registered here, built from a recipe (no project file names them)
# ---------------------------------------------------------------------------------------------------------------------
class TinyConvBackbone(nn.Module):
    """4 strided convs: maps at strides 4, 8, 16, 32 with ``dim`` channels."""

    presets = {"tiny_conv_backbone_4": dict(dim=4)}  # create_backbone("tiny_conv_backbone_4")

    def __init__(self, dim: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.downs = nn.ModuleList(nn.Conv2d(dim, dim, 3, stride=2, padding=1) for _ in range(3))

    @classmethod
    def from_config(cls, cfg, where="model.backbone"):
        return cls(dim=int(cfg.get("dim", 8)))

    def forward(self, x):
        outs = [self.stem(x)]
        for down in self.downs:
            outs.append(down(outs[-1]))
        return outs


class TinyLinearHead(BaseDecodeHead):
    """A 1x1 classifier on the finest map."""

    def __init__(self, in_channels: int = 8, *, num_classes: int):
        super().__init__(in_channels, in_channels, num_classes=num_classes, in_index=0, dropout_ratio=0.0)
        self.loss_weight, self.avg_non_ignore, self.ignore_index = 1.0, False, 255

    @classmethod
    def from_config(cls, cfg, where="model.decode_head"):
        return cls(int(cfg["in_channels"]), num_classes=int(cfg["num_classes"]))

    def forward(self, inputs):
        return self.cls_seg(self._select(inputs))


@pytest.fixture
def tiny_registered():
    BACKBONES.register()(TinyConvBackbone)
    HEADS.register()(TinyLinearHead)
    try:
        yield
    finally:
        BACKBONES.unregister("TinyConvBackbone")
        HEADS.unregister("TinyLinearHead")


TINY_MODEL = dict(type="EncoderDecoder", backbone=dict(type="TinyConvBackbone", dim=8),
                  decode_head=dict(type="TinyLinearHead", in_channels=8, num_classes=8), test_cfg=dict(mode="whole"))


def test_a_backbone_and_head_registered_in_a_test_file_build_from_a_recipe(tiny_registered):
    model = build_model(TINY_MODEL)
    assert isinstance(model.backbone, TinyConvBackbone) and isinstance(model.decode_head, TinyLinearHead)
    model.train()
    loss = model(torch.randn(2, 3, 64, 64), torch.randint(0, 8, (2, 1, 64, 64)))["loss"]
    loss.backward()
    assert model.backbone.stem.weight.grad.abs().sum() > 0
    # the segmentation task validates (meta device) and builds the same recipe
    from vit_adapter_ds.tasks import SemanticSegmentation, task_for

    cfg = load_recipe("synthetic_quickstart", validate=False)
    cfg.model = copy.deepcopy(TINY_MODEL)
    task = task_for(cfg)
    assert isinstance(task, SemanticSegmentation)
    meta = task.validate()
    assert isinstance(meta.backbone, TinyConvBackbone) and next(meta.parameters()).device.type == "meta"
    built = task.build_model(load_pretrained=False)
    assert isinstance(built.decode_head, TinyLinearHead) and task.num_classes == 8


def test_presets_of_a_backbone_registered_in_a_test_file(tiny_registered):
    from vit_adapter_ds.models import PRESETS, create_backbone

    assert PRESETS["tiny_conv_backbone_4"] == (TinyConvBackbone, {"dim": 4})
    model = create_backbone("tiny_conv_backbone_4")
    assert isinstance(model, TinyConvBackbone) and model.stem.out_channels == 4
    assert create_backbone("tiny_conv_backbone_4", dim=6).stem.out_channels == 6


def test_unregistered_types_are_refused_with_the_registered_names():
    from vit_adapter_ds.models import PRESETS

    assert "tiny_conv_backbone_4" not in PRESETS
    with pytest.raises(ConfigError, match=r"model.backbone.type='TinyConvBackbone' is not supported"):
        build_model(TINY_MODEL, device="meta")
