"""GFL (mmdet 2.22 ``GFL`` / ``GFLHead``, ``QualityFocalLoss``, ``DistributionFocalLoss``) against the mmdet rules
re-derived here by hand in float64 (the ATSS anchors, valid flags and assignment of test_detection_atss):

* QFL on hand-made inputs and over a batch: ``BCE(x, 0) sigmoid(x)^beta`` for every class but the positive's,
  ``BCE(x, q) |q - sigmoid(x)|^beta`` there, ``q`` the IoU of the (detached) decoded prediction with the box;
* DFL: the two bins around the continuous target ``clamp(distance / stride, 0, reg_max - 0.1)`` weighted by the
  distance to the other; the box from the expectation of each side's softmax (``Integral``);
* GIoU x 2 and DFL x 0.25 / 4 weighted by the best class score, both divided by its sum; QFL / sum max(#pos, 1);
* the test path (distances x stride from the anchor centres, clipped, no centerness) and the official keys.
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from vit_adapter_ds.models.detectors.dense_heads import GFLHead, distribution_focal_loss, quality_focal_loss

from test_detection_atss import (SIZES, crowded_scene, ctr, giou, iou, nms_ref, ref_anchors, ref_assign, ref_valid,
                                 sig)

STRIDES = (8, 16, 32, 64, 128)
RM = 16  # reg_max


def ce(logits, k):
    m = max(logits)
    return -(logits[k] - m - math.log(sum(math.exp(v - m) for v in logits)))


def expectation(bins):
    m = max(bins)
    e = [math.exp(v - m) for v in bins]
    return sum(i * v for i, v in enumerate(e)) / sum(e)


def test_qfl_and_dfl_on_hand_made_inputs():
    x = torch.tensor([[0.3, -1.2, 2.0], [-0.5, 0.1, 0.0]], dtype=torch.float64)
    labels, score = torch.tensor([2, 3]), torch.tensor([0.6, 0.0], dtype=torch.float64)  # 3 = background
    got = quality_focal_loss(x, labels, score, 2.0).tolist()
    exp0 = sum(-math.log(1 - sig(v)) * sig(v) ** 2 for v in (0.3, -1.2))
    p = sig(2.0)
    exp0 += -(0.6 * math.log(p) + 0.4 * math.log(1 - p)) * abs(0.6 - p) ** 2
    exp1 = sum(-math.log(1 - sig(v)) * sig(v) ** 2 for v in (-0.5, 0.1, 0.0))
    assert got == pytest.approx([exp0, exp1], rel=1e-12)
    pred = torch.tensor([[0.1 * i for i in range(RM + 1)], [(-1) ** i * 0.2 for i in range(RM + 1)]],
                        dtype=torch.float64)
    target = torch.tensor([3.3, 15.9], dtype=torch.float64)
    got = distribution_focal_loss(pred, target).tolist()
    rows = pred.tolist()
    assert got == pytest.approx([0.7 * ce(rows[0], 3) + 0.3 * ce(rows[0], 4),
                                 0.1 * ce(rows[1], 15) + 0.9 * ce(rows[1], 16)], rel=1e-12)


def _head(nc=3, **kw):
    torch.manual_seed(0)
    return GFLHead(nc, 8, 8, 1, STRIDES, gn_groups=4, **kw)


def _outputs(b, c, seed=0, cls_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, c, h, w, generator=g) * 2 + cls_shift, torch.randn(b, 4 * (RM + 1), h, w, generator=g))
            for h, w in SIZES]


def _flat_ref(outs, b):
    cls, reg, lvl_stride = [], [], []
    for (c, r), s in zip(outs, STRIDES):
        cls += c[b].permute(1, 2, 0).reshape(-1, c.shape[1]).double().tolist()
        reg += r[b].permute(1, 2, 0).reshape(-1, 4, RM + 1).double().tolist()
        lvl_stride += [s] * (c.shape[2] * c.shape[3])
    return cls, reg, lvl_stride


def test_losses_equal_mmdet_by_hand():
    rng = random.Random(2)
    nc, head = 3, _head()
    levels = ref_anchors(SIZES)
    anchors = [a for lvl in levels for a in lvl]
    nlev = [len(lvl) for lvl in levels]
    scenes = [crowded_scene(rng, 12, 120, 150), [], crowded_scene(rng, 6, 90, 100)]
    pads = [(128, 160), (128, 160), (96, 128)]
    targets = [{"boxes": torch.tensor(g, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([rng.randrange(nc) for _ in g], dtype=torch.long)} for g in scenes]
    outs = _outputs(3, nc)
    valid = torch.stack([torch.tensor(ref_valid(SIZES, p)) for p in pads])
    got = head.loss(outs, torch.tensor(anchors), valid, nlev, targets)

    num_total, qfl, boxl, dfl, wsum = 0, 0.0, 0.0, 0.0, 0.0
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
        cls, reg, strides = _flat_ref(outs, b)
        npos = 0
        for i in vidx:
            j = assigned[i] - 1
            q, lab = 0.0, -1
            if j >= 0:
                npos += 1
                s = strides[i]
                cx, cy = (v / s for v in ctr(anchors[i]))
                d = [expectation(side) for side in reg[i]]
                pred = [cx - d[0], cy - d[1], cx + d[2], cy + d[3]]
                tgt = [v / s for v in gts32[j]]
                q, lab = iou(pred, tgt), labels[j]
                w = max(sig(v) for v in cls[i])
                wsum += w
                boxl += w * (1 - giou(pred, tgt))
                dist = [cx - tgt[0], cy - tgt[1], tgt[2] - cx, tgt[3] - cy]
                for side, t in zip(reg[i], dist):
                    t = min(max(t, 0.0), RM - 0.1)
                    lo = int(t)
                    dfl += w * ((lo + 1 - t) * ce(side, lo) + (t - lo) * ce(side, lo + 1))
            for c in range(nc):
                p = sig(cls[i][c])
                if c == lab:
                    qfl += -(q * math.log(p) + (1 - q) * math.log(1 - p)) * abs(q - p) ** 2
                else:
                    qfl += -math.log(1 - p) * p ** 2
        num_total += max(npos, 1)
    avg = max(wsum, 1.0)
    ref = {"loss_cls": qfl / num_total, "loss_bbox": 2 * boxl / avg, "loss_dfl": 0.25 * dfl / 4 / avg}
    for k, v in ref.items():
        assert float(got[k]) == pytest.approx(v, rel=5e-5), k


def test_test_path_equals_mmdet_by_hand():
    nc = 3
    head = _head(nc, score_thr=0.3, nms_pre=25, nms_iou=0.5, max_per_img=40)
    outs = _outputs(2, nc, seed=4, cls_shift=-0.5)
    levels = ref_anchors(SIZES)
    flat = [a for lv in levels for a in lv]
    sizes, factors = [(120, 150), (128, 160)], [(0.5, 0.4), (1.0, 1.0)]
    got = head.predict(outs, [torch.tensor(lv) for lv in levels], sizes, factors)
    for b in range(2):
        dets, start = [], 0
        cls, reg, strides = _flat_ref(outs, b)
        h, w = sizes[b]
        for lvl in levels:
            pairs = [(sig(cls[start + i][c]), start + i, c) for i in range(len(lvl)) for c in range(nc)
                     if sig(cls[start + i][c]) > 0.3]
            for s, i, c in sorted(pairs, key=lambda t: -t[0])[:25]:
                cx, cy = ctr(flat[i])
                d = [expectation(side) * strides[i] for side in reg[i]]
                box = [min(max(cx - d[0], 0), w), min(max(cy - d[1], 0), h), min(max(cx + d[2], 0), w),
                       min(max(cy + d[3], 0), h)]
                fx, fy = factors[b]
                dets.append(([box[0] / fx, box[1] / fy, box[2] / fx, box[3] / fy], s, c))
            start += len(lvl)
        ref = nms_ref(dets, 0.5)[:40]
        boxes, scores, labels = got[b]
        assert len(ref) == len(scores) >= 8 and len(dets) > 40  # NMS removed most of the 50 candidates
        for (rb, rs, rc), gb, gs, gl in zip(ref, boxes.tolist(), scores.tolist(), labels.tolist()):
            assert (gl, gs) == (rc, pytest.approx(rs, rel=1e-5)) and gb == pytest.approx(rb, rel=1e-5, abs=1e-4)


OFFICIAL_HEAD_KEYS = sorted(
    [f"neck.lateral_convs.{i}.conv.{p}" for i in range(3) for p in ("weight", "bias")]
    + [f"neck.fpn_convs.{i}.conv.{p}" for i in range(5) for p in ("weight", "bias")]
    + [f"bbox_head.{t}_convs.{i}.{m}" for t in ("cls", "reg") for i in range(2)
       for m in ("conv.weight", "gn.weight", "gn.bias")]
    + [f"bbox_head.{n}.{p}" for n in ("gfl_cls", "gfl_reg") for p in ("weight", "bias")]
    + [f"bbox_head.scales.{i}.scale" for i in range(5)] + ["bbox_head.integral.project"])


def test_official_keys_both_ways_and_a_train_and_predict_step():
    from mmengine import Config

    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.models.detectors.keymap import mmdet_checkpoint_filter, to_official
    from vit_adapter_ds.models.detectors.single_stage import GFL
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    torch.manual_seed(0)
    model = GFL.from_config(to_plain(Config.fromfile(str(DETECTION_RECIPES["synthetic_gfl"])).model))
    sd = model.state_dict()
    off = to_official(sd, "GFL")
    assert sorted(k for k in off if not k.startswith("backbone.")) == OFFICIAL_HEAD_KEYS
    assert off["bbox_head.integral.project"].tolist() == [float(i) for i in range(RM + 1)]
    assert off["bbox_head.gfl_reg.weight"].shape[0] == 4 * (RM + 1) and off["bbox_head.scales.0.scale"].shape == ()
    back = mmdet_checkpoint_filter(off, model)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    model.train()
    img = torch.randn(2, 3, 128, 160)
    targets = [{"boxes": torch.tensor([[10., 20, 80, 90], [50, 30, 150, 120]]), "labels": torch.tensor([1, 6])},
               {"boxes": torch.tensor([[0., 0, 40, 30]]), "labels": torch.tensor([0])}]
    losses = model(img, targets)
    assert set(losses) == {"loss", "loss_cls", "loss_bbox", "loss_dfl"}
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("neck.", "bbox_head.")))
    model.eval()
    model.bbox_head.score_thr = 0.0
    pred = model.predict(img, [(120, 160), (128, 160)], [(240, 320), (128, 160)])
    assert set(pred[0]) == {"boxes", "labels", "scores"} and 0 < len(pred[0]["scores"]) <= 100
    assert float(pred[0]["boxes"][:, 2].max()) <= 320 and float(pred[0]["boxes"][:, 3].max()) <= 240


def test_integral_is_the_softmax_expectation():
    from vit_adapter_ds.models.detectors.dense_heads import Integral

    x = torch.randn(3, 4 * (RM + 1), dtype=torch.float64)
    ref = (F.softmax(x.reshape(3, 4, RM + 1), -1) * torch.arange(RM + 1, dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(Integral(RM).double()(x), ref)
