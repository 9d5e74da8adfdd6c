"""ATSS (mmdet 2.22 ``ATSS`` / ``ATSSHead`` / ``ATSSAssigner``) against the mmdet rules re-derived here by hand, in
float64 with plain Python loops, on crowded synthetic scenes:

* anchors (``AnchorGenerator(ratios=[1.0], octave_base_scale=8, scales_per_octave=1)``: one ``8 s`` square per
  location centred on ``(x s, y s)``) and their valid flags of each image's ``pad_shape``;
* the assignment: per level the ``topk`` anchors nearest to each box centre, IoU threshold mean + unbiased std of
  the candidates, candidate centre > 0.01 inside the box, the box of highest IoU for an anchor claimed twice (the
  first box on a tie), nothing for an image without boxes;
* the losses: sigmoid focal loss written as mmcv's CUDA kernel writes it (``-alpha (1 - p)^gamma log p`` for the
  class, ``-(1 - alpha) p^gamma log(1 - p)`` otherwise) over the valid anchors / ``sum max(#pos, 1)``; the
  centerness target; GIoU x 2 of ``delta2bbox``-decoded boxes weighted by the centerness target / its sum; the
  centerness BCE;
* the test path: sigmoid scores, per level ``nms_pre`` best pairs above ``score_thr``, boxes decoded and clipped,
  rescaled, times the sigmoid centerness, greedy class-wise NMS, ``max_per_img``;
* the official checkpoint keys (typed here), ``from_config`` refusals naming the dotted path.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors.dense_heads import ATSSHead
from vit_adapter_ds.models.detectors.mask_rcnn import FixedStrideAnchorGenerator

STRIDES = (8, 16, 32, 64, 128)
STDS = (0.1, 0.1, 0.2, 0.2)


# ------------------------------------------------------------------------------------------------ hand references
def ref_anchors(sizes, octave=8):
    out = []
    for (h, w), s in zip(sizes, STRIDES):
        half = octave * s / 2
        out.append([(x * s - half, y * s - half, x * s + half, y * s + half) for y in range(h) for x in range(w)])
    return out


def ref_valid(sizes, pad):
    flags = []
    for (h, w), s in zip(sizes, STRIDES):
        vh, vw = min(math.ceil(pad[0] / s), h), min(math.ceil(pad[1] / s), w)
        flags += [y < vh and x < vw for y in range(h) for x in range(w)]
    return flags


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def giou(a, b):
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = max(u - iw * ih, 1e-6)
    ew = max(0.0, max(a[2], b[2]) - min(a[0], b[0]))
    eh = max(0.0, max(a[3], b[3]) - min(a[1], b[1]))
    enc = max(ew * eh, 1e-6)
    return iw * ih / union - (enc - union) / enc


def ctr(b):
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)


def ref_assign(anchors, nlev, gts, topk=9, ddof=1, inside=0.01):
    """mmdet ATSSAssigner.assign by hand: 0 negative, j + 1 box j (``ddof`` / ``inside``: the std's and the
    centre rule's constants, varied to show that the scenes tell them apart)."""
    n = len(anchors)
    if not gts:
        return [0] * n
    pos_of = [set() for _ in gts]
    for j, g in enumerate(gts):
        gc = ctr(g)
        cands, start = [], 0
        for k in nlev:
            idx = sorted(range(start, start + k), key=lambda i: math.dist(ctr(anchors[i]), gc))[:min(topk, k)]
            cands += idx
            start += k
        ious = [iou(anchors[i], g) for i in cands]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - ddof))
        for i, v in zip(cands, ious):
            cx, cy = ctr(anchors[i])
            if v >= mean + std and min(cx - g[0], cy - g[1], g[2] - cx, g[3] - cy) > inside:
                pos_of[j].add(i)
    out = []
    for i in range(n):
        claims = [j for j in range(len(gts)) if i in pos_of[j]]
        out.append(0 if not claims else max(claims, key=lambda j: (iou(anchors[i], gts[j]), -j)) + 1)
    return out


def decode(a, d, max_shape=None):
    clip = abs(math.log(16 / 1000))
    dx, dy, dw, dh = (v * s for v, s in zip(d, STDS))
    dw, dh = max(-clip, min(clip, dw)), max(-clip, min(clip, dh))
    (px, py), pw, ph = ctr(a), a[2] - a[0], a[3] - a[1]
    gx, gy, gw, gh = px + pw * dx, py + ph * dy, pw * math.exp(dw), ph * math.exp(dh)
    b = [gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2]
    if max_shape is not None:
        h, w = max_shape
        b = [min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)]
    return b


def centerness(a, g):
    cx, cy = ctr(a)
    l_, r_, t_, b_ = cx - g[0], g[2] - cx, cy - g[1], g[3] - cy
    return math.sqrt(min(l_, r_) / max(l_, r_) * min(t_, b_) / max(t_, b_))


def sig(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ scenes
def crowded_scene(rng, n, h, w):
    boxes = []
    for _ in range(n):
        bw, bh = rng.uniform(8, 0.7 * w), rng.uniform(8, 0.7 * h)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        boxes.append((x, y, x + bw, y + bh))
    return boxes


SIZES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]  # a 128 x 160 batch through the FPN (strides 8..128)


def test_anchors_and_valid_flags_are_mmdet_grid_priors():
    gen = FixedStrideAnchorGenerator(STRIDES, (8,), (1.0,))
    gen.set_cell_anchors(torch.float32, torch.device("cpu"))
    strides = [[torch.tensor(s)] * 2 for s in STRIDES]
    got = [a.tolist() for a in gen.grid_anchors([list(s) for s in SIZES], strides)]
    assert got == [[list(b) for b in lvl] for lvl in ref_anchors(SIZES)]
    for pad in ((128, 160), (96, 128), (64, 32)):
        assert gen.valid_flags(SIZES, pad).tolist() == ref_valid(SIZES, pad)


def test_assignment_on_crowded_scenes_equals_mmdet_rule():
    from vit_adapter_ds.models.detectors.dense_heads import atss_assign

    rng = random.Random(0)
    anchors = [a for lvl in ref_anchors(SIZES) for a in lvl]
    nlev = [h * w for h, w in SIZES]
    at = torch.tensor(anchors, dtype=torch.float64)
    npos = 0
    for trial in range(6):
        gts = crowded_scene(rng, [14, 25, 3, 1, 0, 40][trial], 128, 160)
        got = atss_assign(at, nlev, torch.tensor(gts, dtype=torch.float64).reshape(-1, 4), 9).tolist()
        assert got == ref_assign(anchors, nlev, gts), trial
        npos += sum(v > 0 for v in got)
        if len(gts) > 10:  # crowded: anchors claimed by several boxes resolved by IoU
            assert len({v for v in got if v}) > 5
    assert npos > 100
    # a small topk (2 per level) and a level with fewer anchors than topk (1 x 2)
    gts = crowded_scene(rng, 8, 128, 160)
    got = atss_assign(at, nlev, torch.tensor(gts, dtype=torch.float64), 2).tolist()
    assert got == ref_assign(anchors, nlev, gts, 2)
    # scenes where the rule's constants matter: the unbiased std (single boxes found by search), the centre more
    # than 0.01 inside the box (edges 0.005 from anchor centres)
    for seed, k in ((20, 9), (244, 3), (369, 3)):
        gts = crowded_scene(random.Random(seed), 1, 128, 160)
        got = atss_assign(at, nlev, torch.tensor(gts, dtype=torch.float64), k).tolist()
        assert got == ref_assign(anchors, nlev, gts, k) != ref_assign(anchors, nlev, gts, k, ddof=0)
    for g in ((60.0, 39.995, 76.0, 47.995), (40.0, 40.0, 64.005, 88.0)):
        got = atss_assign(at, nlev, torch.tensor([g], dtype=torch.float64)).tolist()
        assert got == ref_assign(anchors, nlev, [g]) != ref_assign(anchors, nlev, [g], inside=0.0)


def _head(num_classes=3, **kw):
    torch.manual_seed(0)
    return ATSSHead(num_classes, 8, 8, 1, 5, gn_groups=4, **kw)


def _outputs(b, c, seed=0, cls_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, c, h, w, generator=g) * 2 + cls_shift, torch.randn(b, 4, h, w, generator=g),
             torch.randn(b, 1, h, w, generator=g)) for h, w in SIZES]


def _flat_ref(outs, b):
    """Per image: per anchor (level-major, (h, w) order) its class logits, deltas and centerness logit."""
    cls, reg, cen = [], [], []
    for c, r, z in outs:
        cls += c[b].permute(1, 2, 0).reshape(-1, c.shape[1]).double().tolist()
        reg += r[b].permute(1, 2, 0).reshape(-1, 4).double().tolist()
        cen += z[b].reshape(-1).double().tolist()
    return cls, reg, cen


def test_losses_equal_mmdet_by_hand():
    rng = random.Random(1)
    nc, head = 3, _head()
    levels = ref_anchors(SIZES)
    anchors = [a for lvl in levels for a in lvl]
    nlev = [len(lvl) for lvl in levels]
    scenes = [crowded_scene(rng, 12, 120, 150), [], crowded_scene(rng, 5, 90, 100)]
    pads = [(128, 160), (128, 160), (96, 128)]
    targets = [{"boxes": torch.tensor(g, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([rng.randrange(nc) for _ in g], dtype=torch.long)} for g in scenes]
    outs = _outputs(3, nc)
    valid = torch.stack([torch.tensor(ref_valid(SIZES, p)) for p in pads])
    got = head.loss(outs, torch.tensor(anchors), valid, nlev, targets)

    # by hand (float64)
    num_total, fl, boxl, cenl, csum = 0, 0.0, 0.0, 0.0, 0.0
    for b, (gts, pad) in enumerate(zip(scenes, pads)):
        vflags = ref_valid(SIZES, pad)
        vidx = [i for i, v in enumerate(vflags) if v]
        vnlev, start = [], 0
        for k in nlev:
            vnlev.append(sum(vflags[start:start + k]))
            start += k
        gts32 = [tuple(float(torch.tensor(v, dtype=torch.float32)) for v in g) for g in gts]
        assigned = dict(zip(vidx, ref_assign([anchors[i] for i in vidx], vnlev, gts32)))
        labels = targets[b]["labels"].tolist()
        cls, reg, cen = _flat_ref(outs, b)
        npos = 0
        for i in vidx:
            j = assigned[i] - 1
            for c in range(nc):
                p = sig(cls[i][c])
                fl += (-0.25 * (1 - p) ** 2 * math.log(p) if j >= 0 and labels[j] == c
                       else -0.75 * p ** 2 * math.log(1 - p))
            if j >= 0:
                npos += 1
                t = centerness(anchors[i], gts32[j])
                boxl += t * (1 - giou(decode(anchors[i], reg[i]), gts32[j]))
                cenl += -(t * math.log(sig(cen[i])) + (1 - t) * math.log(1 - sig(cen[i])))
                csum += t
        num_total += max(npos, 1)
    assert num_total > 30
    ref = {"loss_cls": fl / num_total, "loss_bbox": 2 * boxl / max(csum, 1), "loss_centerness": cenl / num_total}
    for k, v in ref.items():
        assert float(got[k]) == pytest.approx(v, rel=2e-5), k


def test_no_positive_anywhere_gives_zero_box_losses_with_graph():
    head = _head()
    levels = ref_anchors(SIZES)
    outs = [(c.requires_grad_(), r.requires_grad_(), z.requires_grad_()) for c, r, z in _outputs(1, 3)]
    valid = torch.ones(1, sum(len(lv) for lv in levels), dtype=torch.bool)
    got = head.loss(outs, torch.tensor([a for lv in levels for a in lv]), valid, [len(lv) for lv in levels],
                    [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert float(got["loss_bbox"].detach()) == 0 and float(got["loss_centerness"].detach()) == 0
    assert float(got["loss_cls"].detach()) > 0
    sum(got.values()).backward()  # every output in the graph (mmdet's `x.sum() * 0`)
    assert all(t.grad is not None for o in outs for t in o)


def nms_ref(dets, thr):
    keep = []
    for d in sorted(dets, key=lambda d: -d[1]):
        if all(k[2] != d[2] or iou(k[0], d[0]) <= thr for k in keep):
            keep.append(d)
    return keep


def test_test_path_equals_mmdet_by_hand():
    nc = 3
    head = _head(nc, score_thr=0.3, nms_pre=25, nms_iou=0.5, max_per_img=40)
    outs = _outputs(2, nc, seed=3, cls_shift=-0.5)
    levels = ref_anchors(SIZES)
    flat = [a for lv in levels for a in lv]
    sizes, factors = [(120, 150), (128, 160)], [(0.5, 0.4), (1.0, 1.0)]
    got = head.predict(outs, [torch.tensor(lv) for lv in levels], sizes, factors)
    for b in range(2):
        dets, start = [], 0
        cls, reg, cen = _flat_ref(outs, b)
        for lvl in levels:
            pairs = [(sig(cls[start + i][c]), start + i, c) for i in range(len(lvl)) for c in range(nc)
                     if sig(cls[start + i][c]) > 0.3]
            for s, i, c in sorted(pairs, key=lambda t: -t[0])[:25]:
                box = decode(flat[i], reg[i], sizes[b])
                fx, fy = factors[b]
                dets.append(([box[0] / fx, box[1] / fy, box[2] / fx, box[3] / fy], s * sig(cen[i]), c))
            start += len(lvl)
        ref = nms_ref(dets, 0.5)[:40]
        boxes, scores, labels = got[b]
        assert len(ref) == len(scores) > 10
        for (rb, rs, rc), gb, gs, gl in zip(ref, boxes.tolist(), scores.tolist(), labels.tolist()):
            assert (gl, gs) == (rc, pytest.approx(rs, rel=1e-5)) and gb == pytest.approx(rb, rel=1e-5, abs=1e-4)


# ------------------------------------------------------------------------------------------------ model / config
def _tiny_cfg():
    from mmengine import Config

    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    return to_plain(Config.fromfile(str(DETECTION_RECIPES["synthetic_atss"])).model)


# the official mmdet ATSS state-dict keys besides backbone.* for the tiny twin's sizes (3 inputs from start_level 1,
# 2 extra convs, 2 convs per tower), as mmdet names them
OFFICIAL_HEAD_KEYS = sorted(
    [f"neck.lateral_convs.{i}.conv.{p}" for i in range(3) for p in ("weight", "bias")]
    + [f"neck.fpn_convs.{i}.conv.{p}" for i in range(5) for p in ("weight", "bias")]
    + [f"bbox_head.{t}_convs.{i}.{m}" for t in ("cls", "reg") for i in range(2)
       for m in ("conv.weight", "gn.weight", "gn.bias")]
    + [f"bbox_head.{n}.{p}" for n in ("atss_cls", "atss_reg", "atss_centerness") for p in ("weight", "bias")]
    + [f"bbox_head.scales.{i}.scale" for i in range(5)])


def test_official_keys_both_ways_and_a_train_and_predict_step():
    from vit_adapter_ds.models.detectors.keymap import is_mmdet_layout, mmdet_checkpoint_filter, to_official
    from vit_adapter_ds.models.detectors.single_stage import ATSS

    torch.manual_seed(0)
    model = ATSS.from_config(_tiny_cfg())
    sd = model.state_dict()
    off = to_official(sd, "ATSS")
    assert sorted(k for k in off if not k.startswith("backbone.")) == OFFICIAL_HEAD_KEYS
    assert off["neck.fpn_convs.3.conv.weight"] is not sd["neck.fpn.extra_blocks.convs.0.weight"]
    assert torch.equal(off["neck.fpn_convs.4.conv.bias"], sd["neck.fpn.extra_blocks.convs.1.bias"])
    assert off["bbox_head.scales.2.scale"].shape == () and sd["bbox_head.scales.2.scale"].shape == (1,)  # mmcv 0-dim
    assert is_mmdet_layout(off) and not is_mmdet_layout(sd)
    back = mmdet_checkpoint_filter(off, model)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert mmdet_checkpoint_filter(sd, model) is sd
    # one step: the losses, finite gradients everywhere but the backbone's unused stride-4 output (as mmdet's
    # find_unused_parameters=True), predictions in original-image pixels, boxes only
    model.train()
    img = torch.randn(2, 3, 128, 160)
    targets = [{"boxes": torch.tensor([[10., 20, 80, 90], [50, 30, 150, 120]]), "labels": torch.tensor([1, 6]),
                "img_shape": (120, 160)}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(img, targets)
    assert set(losses) == {"loss", "loss_cls", "loss_bbox", "loss_centerness"}
    losses["loss"].backward()
    nograd = {n for n, p in model.named_parameters() if p.grad is None}
    assert nograd == {"backbone.spm.fc1.weight", "backbone.spm.fc1.bias", "backbone.up.weight", "backbone.up.bias",
                      "backbone.norm1.weight", "backbone.norm1.bias"}
    model.eval()
    model.bbox_head.score_thr = 0.0
    pred = model.predict(img, [(120, 160), (128, 160)], [(240, 320), (128, 160)])
    assert set(pred[0]) == {"boxes", "labels", "scores"} and len(pred[0]["scores"]) == 100
    assert float(pred[0]["boxes"][:, 2].max()) <= 320 and float(pred[0]["boxes"][:, 3].max()) <= 240
    assert not model.with_mask


@pytest.mark.parametrize("path, value, match", [
    ("bbox_head.loss_cls.type", "QualityFocalLoss", "model.bbox_head.loss_cls.type"),
    ("bbox_head.in_channels", 32, "model.bbox_head.in_channels=32 must equal the neck's out_channels 64"),
    ("bbox_head.anchor_generator.strides", [4, 8, 16, 32, 64], "model.bbox_head.anchor_generator.strides"),
    ("bbox_head.anchor_generator.ratios", [0.5, 1.0, 2.0], "model.bbox_head.anchor_generator.ratios"),
    ("train_cfg.assigner.type", "MaxIoUAssigner", "model.train_cfg.assigner.type"),
    ("test_cfg.nms.type", "soft_nms", "model.test_cfg.nms.type"),
    ("test_cfg.nms_pre", -1, "model.test_cfg.nms_pre"),
    ("neck.type", "ChannelMapperWithPooling", "model.neck must be dict"),
    ("bbox_head.reg_decoded_bbox", False, "model.bbox_head.reg_decoded_bbox"),
    ("bbox_head.norm_cfg.type", "BN", "model.bbox_head.norm_cfg.type"),
    ("bbox_head.foo", 1, "model.bbox_head.foo"),
])
def test_config_errors_name_the_dotted_path(path, value, match):
    from vit_adapter_ds.models.detectors.single_stage import ATSS

    cfg = _tiny_cfg()
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    with torch.device("meta"), pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        ATSS.from_config(cfg)
