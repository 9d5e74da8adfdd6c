"""Mask2Former panoptic detector (mmdet ``Mask2Former`` as the official coco-panoptic config sets it), each rule against
a reference written here from the mmdet source (plain Python / numpy, float64): ``Mask2FormerHead.preprocess_gt``
(things padded + one mask per stuff class present), ``MaskFormerFusionHead.panoptic_postprocess`` (object_mask_thr,
argmax of score x prob, the mask-area / original-area rule, filter_low_score, INSTANCE_OFFSET, VOID) and
``instance_postprocess`` (top-k over queries x classes, things only, mask scores, ``mask2bbox``) on hand-made scenes
that make each rule decide something; one training step of the tiny twin; the official key layout both ways (a
hand-typed key table of mmdet's ``Mask2FormerHead``); config refusals with their dotted paths."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vit_adapter_ds.config import load_recipe
from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.config.keys import to_plain
from vit_adapter_ds.models.detectors import keymap
from vit_adapter_ds.models.detectors.mask2former_panoptic import (Mask2Former, instance_postprocess,
                                                                  panoptic_postprocess, preprocess_panoptic_gt)

THINGS, STUFF = 3, 2
NC = THINGS + STUFF


# ------------------------------------------------------------------------------------------------ references
def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_panoptic(cls, masks, things, nc, thr=0.8, iou_thr=0.8, filter_low=False):
    """mmdet MaskFormerFusionHead.panoptic_postprocess, loops in float64."""
    p = _softmax(cls)
    h, w = masks.shape[1:]
    seg = np.full((h, w), nc, dtype=np.int64)
    kept = [q for q in range(cls.shape[0]) if p[q].argmax() != nc and p[q].max() > thr]
    if not kept:
        return seg
    prob = _sig(masks)
    owner = np.empty((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            vals = [p[q].max() * prob[q, y, x] for q in kept]
            owner[y, x] = int(np.argmax(vals))  # first maximum, as torch.argmax
    inst = 1
    for k, q in enumerate(kept):
        c = int(p[q].argmax())
        mine = owner == k
        area = int(mine.sum())
        original = int((prob[q] >= 0.5).sum())
        if filter_low:
            mine = mine & (prob[q] >= 0.5)
        if area > 0 and original > 0:
            if area / original < iou_thr:
                continue
            if c >= things:
                seg[mine] = c
            else:
                seg[mine] = c + inst * 1000
                inst += 1
    return seg


def ref_instance(cls, masks, things, nc, k):
    """mmdet instance_postprocess: [(label, score, box, mask)] of the top-k query x class pairs that are things."""
    s = _softmax(cls)[:, :nc]
    pairs = sorted(((s[q, c], q, c) for q in range(cls.shape[0]) for c in range(nc)), key=lambda t: -t[0])[:k]
    out = []
    for score, q, c in pairs:
        if c >= things:
            continue
        binary = masks[q] > 0
        ms = (_sig(masks[q]) * binary).sum() / (binary.sum() + 1e-6)
        ys, xs = np.nonzero(binary)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        out.append((c, score * ms, box, binary))
    return out


# ------------------------------------------------------------------------------------------------ targets
def test_preprocess_gt_things_then_present_stuff_classes():
    labels = torch.tensor([2, 0, 2])
    masks = torch.zeros(3, 5, 6, dtype=torch.uint8)  # unpadded image 5 x 6, padded to 8 x 8
    masks[0, 0:2, 0:3] = 1
    masks[1, 3:5, 4:6] = 1
    masks[2, 4, 0] = 1
    sem = torch.full((8, 8), 255)
    sem[0:2, 0:3] = 2            # a thing class in the map: no stuff target
    sem[5:, :] = 4               # stuff 4
    sem[2, :] = 3                # stuff 3 (listed before 4)
    sem[7, 7] = 9                # outside [0, num_classes): ignored
    got_l, got_m = preprocess_panoptic_gt(labels, masks, sem, THINGS, STUFF)
    exp_m = np.zeros((5, 8, 8), dtype=bool)
    exp_m[:3, :5, :6] = masks.numpy().astype(bool)
    s = sem.numpy()
    exp_m[3] = s == 3
    exp_m[4] = s == 4
    assert got_l.tolist() == [2, 0, 2, 3, 4] and got_l.dtype == torch.int64
    assert got_m.dtype == torch.bool and np.array_equal(got_m.numpy(), exp_m)
    # no semantic map: things only, padded to the given shape; no stuff present: things only
    l2, m2 = preprocess_panoptic_gt(labels, masks, None, THINGS, STUFF, pad_shape=(8, 8))
    assert l2.tolist() == [2, 0, 2] and np.array_equal(m2.numpy(), exp_m[:3])
    l3, _ = preprocess_panoptic_gt(labels, masks, torch.full((8, 8), 255), THINGS, STUFF)
    assert l3.tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="outside"):
        preprocess_panoptic_gt(torch.tensor([3]), masks[:1], sem, THINGS, STUFF)


# ------------------------------------------------------------------------------------------------ inference
def _scene(seed=0, q=9, h=12, w=14):
    """Queries that exercise every branch: no-object, below 0.8, overlapped (area / original < iou_thr), low-score
    pixels, two stuff queries of one class, things of one class twice."""
    g = np.random.default_rng(seed)
    cls = g.normal(0, 0.3, (q, NC + 1))
    masks = g.normal(-4, 0.5, (q, h, w))
    plan = [(0, 1, 8.0, (0, 5, 5, 9)), (1, 1, 8.0, (7, 11, 9, 13)), (2, 4, 9.0, (0, 12, 0, 3)),
            (3, 4, 7.0, (0, 4, 10, 14)),
            (4, 0, 7.5, (1, 11, 4, 14)),                                  # 4: mostly covered by 0/1/8 -> dropped
            (5, NC, 9.0, (0, 12, 0, 14)),                                 # no-object
            (6, 2, 1.0, (3, 9, 3, 9)),                                    # score below object_mask_thr
            (7, 3, 8.0, (8, 12, 0, 6)), (8, 2, 8.5, (4, 8, 6, 12))]
    for k, c, logit, (y0, y1, x0, x1) in plan:
        cls[k, c] = logit
        masks[k, y0:y1, x0:x1] = g.normal(1.0 if k == 4 else 4.0, 0.5, (y1 - y0, x1 - x0))
    masks[7, 10:12, 3:5] = -0.2  # owned by query 7 (others lower) but sigmoid < 0.5: filter_low_score removes them
    return cls, masks


@pytest.mark.parametrize("filter_low", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_panoptic_postprocess_matches_the_mmdet_rule(filter_low, seed):
    cls, masks = _scene(seed)
    exp = ref_panoptic(cls, masks, THINGS, NC, filter_low=filter_low)
    got = panoptic_postprocess(torch.from_numpy(cls), torch.from_numpy(masks), THINGS, NC, 0.8, 0.8, filter_low)
    assert got.dtype == torch.int32 and np.array_equal(got.numpy(), exp)
    vals = set(np.unique(exp).tolist())
    assert NC in vals and {4, 1000 + 1, 2000 + 1} <= vals  # VOID, a stuff class, two instances of thing 1
    # the overlap rule decides: with iou_thr 0 the covered thing query (class 0) appears
    loose = panoptic_postprocess(torch.from_numpy(cls), torch.from_numpy(masks), THINGS, NC, 0.8, 0.0, filter_low)
    assert np.array_equal(loose.numpy(), ref_panoptic(cls, masks, THINGS, NC, iou_thr=0.0, filter_low=filter_low))
    assert not np.array_equal(loose.numpy(), exp)
    # filter_low_score decides on this scene (the other setting gives another map)
    assert not np.array_equal(ref_panoptic(cls, masks, THINGS, NC, filter_low=not filter_low), exp)


def test_panoptic_postprocess_nothing_kept_is_all_void():
    cls = np.zeros((4, NC + 1))
    cls[:, NC] = 5.0
    got = panoptic_postprocess(torch.from_numpy(cls), torch.zeros(4, 6, 7, dtype=torch.float64), THINGS, NC)
    assert got.shape == (6, 7) and bool((got == NC).all())


def test_instance_postprocess_matches_the_mmdet_rule():
    cls, masks = _scene(3)
    masks[6] = -5.0  # an empty mask: box zeros, mask score 0
    for k in (7, 20, 45):
        exp = ref_instance(cls, masks, THINGS, NC, k)
        got = instance_postprocess(torch.from_numpy(cls), torch.from_numpy(masks), THINGS, NC, k)
        assert got["labels"].tolist() == [e[0] for e in exp]
        np.testing.assert_allclose(got["scores"].numpy(), [e[1] for e in exp], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(got["boxes"].numpy(), np.array([e[2] for e in exp], dtype=np.float32)
                                      .reshape(-1, 4))
        assert np.array_equal(got["masks"].numpy(), np.stack([e[3] for e in exp]) if exp else
                              np.zeros((0,) + masks.shape[1:], bool))
        assert len(exp) <= k and all(e[0] < THINGS for e in exp)


# ------------------------------------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def tiny_cfg():
    """The twin's model with 7 things + 2 stuff (the twin has its synthetic layout's 3 + 3): these tests' labels are
    things 0..6 and stuff 7, 8."""
    cfg = to_plain(load_recipe("synthetic_mask2former_panoptic", validate=False).model)
    for head in ("panoptic_head", "panoptic_fusion_head"):
        cfg[head].update(num_things_classes=7, num_stuff_classes=2)
    cfg["panoptic_head"]["loss_cls"]["class_weight"] = [1.0] * 9 + [0.1]
    return cfg


def test_tiny_model_trains_one_step_and_predicts(tiny_cfg):
    torch.manual_seed(0)
    model = Mask2Former.from_config(copy.deepcopy(tiny_cfg)).train()
    assert (model.num_things_classes, model.num_stuff_classes, model.num_classes) == (7, 2, 9)
    assert model.panoptic_head.criterion.class_weight == [1.0] * 9 + [0.1]
    img = torch.randn(2, 3, 64, 96)
    masks = torch.zeros(2, 50, 90, dtype=torch.uint8)
    masks[0, 5:30, 10:40] = 1
    masks[1, 20:50, 50:90] = 1
    targets = [dict(labels=torch.tensor([1, 6]), masks=masks), dict(labels=torch.tensor([0]), masks=masks[:1])]
    sem = torch.full((2, 64, 96), 255)
    sem[:, 40:] = 7
    sem[0, :10] = 8
    labels, _ = model.preprocess_gt(targets, sem, (64, 96))
    assert [t.tolist() for t in labels] == [[1, 6, 7, 8], [0, 7]]
    losses = model(img, targets, semantic_labels=sem)
    names = {"loss_cls", "loss_mask", "loss_dice"}
    assert names | {f"d{i}.{n}" for i in range(2) for n in names} | {"loss"} == set(losses)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    out = model.predict(img, [(60, 90), (64, 96)], [(120, 180), (64, 96)])
    assert out[0]["pan_results"].shape == (120, 180) and out[1]["pan_results"].dtype == torch.int32
    assert set(out[0]["ins_results"]) == {"boxes", "labels", "scores", "masks"}
    assert out[0]["ins_results"]["masks"].shape[1:] == (120, 180)


def _official_head_keys(layers_enc=2, layers_dec=2, levels=3):
    """mmdet 2.x Mask2FormerHead state-dict keys, typed from its modules (MSDeformAttnPixelDecoder's ConvModules,
    mmcv BaseTransformerLayer / DetrTransformerDecoderLayer, nn.MultiheadAttention, FFN)."""
    wb = ("weight", "bias")
    keys = [f"pixel_decoder.input_convs.{i}.{m}.{p}" for i in range(levels) for m in ("conv", "gn") for p in wb]
    for j in range(layers_enc):
        a = f"pixel_decoder.encoder.layers.{j}."
        keys += [a + f"attentions.0.{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj",
                                                       "output_proj") for p in wb]
        keys += [a + f"ffns.0.layers.{m}.{p}" for m in ("0.0", "1") for p in wb]
        keys += [a + f"norms.{n}.{p}" for n in (0, 1) for p in wb]
    keys += ["pixel_decoder.level_encoding.weight", "pixel_decoder.lateral_convs.0.conv.weight",
             "pixel_decoder.lateral_convs.0.gn.weight", "pixel_decoder.lateral_convs.0.gn.bias",
             "pixel_decoder.output_convs.0.conv.weight", "pixel_decoder.output_convs.0.gn.weight",
             "pixel_decoder.output_convs.0.gn.bias", "pixel_decoder.mask_feature.weight",
             "pixel_decoder.mask_feature.bias"]
    for j in range(layers_dec):
        a = f"transformer_decoder.layers.{j}."
        keys += [a + f"attentions.{n}.attn.{p}" for n in (0, 1) for p in ("in_proj_weight", "in_proj_bias",
                                                                          "out_proj.weight", "out_proj.bias")]
        keys += [a + f"ffns.0.layers.{m}.{p}" for m in ("0.0", "1") for p in wb]
        keys += [a + f"norms.{n}.{p}" for n in (0, 1, 2) for p in wb]
    keys += ["transformer_decoder.post_norm.weight", "transformer_decoder.post_norm.bias", "query_embed.weight",
             "query_feat.weight", "level_embed.weight", "cls_embed.weight", "cls_embed.bias"]
    keys += [f"mask_embed.{i}.{p}" for i in (0, 2, 4) for p in wb]
    return ["panoptic_head." + k for k in keys]


def test_official_key_layout_loads_strictly_and_exports_back(tiny_cfg):
    torch.manual_seed(0)
    model = Mask2Former.from_config(copy.deepcopy(tiny_cfg))
    ours = model.state_dict()
    head = sorted(k for k in ours if k.startswith("panoptic_head."))
    assert head == sorted(_official_head_keys())
    backbone = [k for k in ours if k.startswith("backbone.")]
    assert len(backbone) + len(head) == len(ours)  # the fusion head has no parameters
    official = {"state_dict": {k: torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v.clone()
                               for k, v in ours.items()}, "meta": {}}
    assert keymap._converters(model) == (keymap.m2f_panoptic_from_mmdet, keymap.m2f_panoptic_to_mmdet)
    fresh = Mask2Former.from_config(copy.deepcopy(tiny_cfg))
    fresh.load_state_dict(keymap.m2f_panoptic_from_mmdet(official), strict=True)
    back = keymap.to_official(fresh.state_dict(), "Mask2Former")
    assert set(back) == set(official["state_dict"])
    assert all(torch.equal(back[k], official["state_dict"][k]) for k in back)
    for bad in ("panoptic_head.conv_seg.weight", "roi_head.bbox_head.fc_cls.weight"):
        with pytest.raises(KeyError, match="no counterpart"):
            keymap.m2f_panoptic_from_mmdet({bad: torch.zeros(1)})


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["panoptic_head"].update(strides=[8, 16, 32, 64]), r"model\.panoptic_head\.strides"),
    (lambda c: c["panoptic_head"].pop("num_stuff_classes"), r"model\.panoptic_head\.num_stuff_classes is required"),
    (lambda c: c["panoptic_fusion_head"].update(num_stuff_classes=3),
     r"model\.panoptic_fusion_head\.num_stuff_classes=3 must equal"),
    (lambda c: c["panoptic_fusion_head"].update(type="HeuristicFusionHead"), r"model\.panoptic_fusion_head\.type"),
    (lambda c: c["test_cfg"].update(semantic_on=True), r"model\.test_cfg\.semantic_on"),
    (lambda c: c["test_cfg"].update(score_thr=0.3), r"model\.test_cfg"),
    (lambda c: c.update(neck=dict(type="FPN")), r"model\.neck"),
    (lambda c: c["panoptic_head"]["loss_cls"].update(class_weight=[1.0] * 9), r"model\.panoptic_head\.loss_cls"),
    (lambda c: c["panoptic_head"]["pixel_decoder"].update(type="PixelDecoder"),
     r"model\.panoptic_head\.pixel_decoder\.type"),
])
def test_config_refusals_name_the_key(tiny_cfg, edit, match):
    cfg = copy.deepcopy(tiny_cfg)
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        Mask2Former.from_config(cfg)


def _official_detection_layer(name, num_max_layer):
    """get_num_layer_for_vit of the official detection/mmcv_custom/layer_decay_optimizer_constructor.py."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed", "backbone.visual_embed"):
        return 0
    if name.startswith(("backbone.visual_embed", "backbone.patch_embed")):
        return 0
    if name.startswith(("backbone.blocks", "backbone.layers")):
        return int(name.split(".")[2]) + 1
    return num_max_layer - 1


def test_layer_decay_is_the_official_detection_rule(tiny_cfg):
    from vit_adapter_ds.models.layer_decay import layer_id

    model = Mask2Former.from_config(copy.deepcopy(tiny_cfg))
    total = 4 + 2  # paramwise_cfg.num_layers + 2
    got = {n: layer_id(model, n, total) for n, _ in model.named_parameters()}
    assert got == {n: _official_detection_layer(n, total) for n in got}
    # the head's embeddings are on the top layer here (layer 0 in the segmentation rule)
    assert got["panoptic_head.query_embed.weight"] == got["panoptic_head.cls_embed.weight"] == total - 1
    assert {got[n] for n in got if n.startswith("backbone.blocks.")} == {1, 2, 3, 4}


def test_step_loss_normaliser_divides_by_the_step_mean_of_matched_masks(tiny_cfg):
    """Two micro-batches of one step: inside the context each micro-batch's mask / dice terms are divided by the mean
    matched count of both (official 16-rank normalisation), i.e. its own loss x (own count / step mean)."""
    torch.manual_seed(0)
    model = Mask2Former.from_config(copy.deepcopy(tiny_cfg)).train()
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks[0, :20, :20] = masks[1, 30:, 30:] = masks[2, 10:40, 40:] = 1
    sem = torch.full((1, 64, 64), 255)
    sem[0, 50:] = 7
    sem[0, :5] = 8
    b1 = ([dict(labels=torch.tensor([0, 1, 2]), masks=masks)], sem)   # 3 things + 2 stuff = 5 pairs
    b2 = ([dict(labels=torch.tensor([4]), masks=masks[:1])], None)     # 1 pair
    assert model.num_matched_masks(*b1) == 5 and model.num_matched_masks(*b2) == 1
    img = torch.randn(1, 3, 64, 64)

    def losses(batch):
        torch.manual_seed(1)
        return model(img, batch[0], semantic_labels=batch[1])

    own = losses(b1)
    with model.step_loss_normaliser([b1, b2]):
        step = losses(b1)
    mean = (5 + 1) / 2
    for k in ("loss_mask", "loss_dice", "d0.loss_dice"):
        torch.testing.assert_close(step[k], own[k] * 5 / mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(step["loss_cls"], own["loss_cls"])  # the class loss stays per micro-batch
