"""Sparse R-CNN (mmdet 2.22 ``SparseRCNN`` as the official sparse_rcnn_deit_adapter config sets it), each part against
a reference written here from the mmdet / mmcv source: the ``HungarianAssigner`` cost matrix (``FocalLossCost``,
``BBoxL1Cost``, ``IoUCost(giou)``) by loops in float64 and its assignment by brute force over a crowded scene,
``DynamicConv`` and one ``DIIHead`` forward in float64 by hand (mmcv ``MultiheadAttention`` / ``FFN``, LayerNorm),
the stage losses (``DIIHead.loss`` after the matching: focal / L1 on normalised boxes / GIoU over ``num_pos``) with
their weights, the stage refinement (``delta2bbox`` with stds 0.5 0.5 1 1, no clipping), the test-time top-k over
classes x proposals (``SparseRoIHead.simple_test``), the initialisation and the config refusals."""
from __future__ import annotations

import copy
import functools
import itertools
import math

import numpy as np
import pytest
import torch

from vit_adapter_ds.config.errors import ConfigError
from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign
from vit_adapter_ds.models.detectors.sparse_rcnn import (DIIHead, DynamicConv, EmbeddingRPNHead, HungarianAssigner,
                                                         SparseRCNN, SparseRoIHead)

C, NC = 16, 5


# ------------------------------------------------------------------------------------------------ references
def _giou(a, b, eps=1e-6):
    """mmdet bbox_overlaps(mode='giou') of two x1y1x2y2 boxes, plain floats."""
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    iw, ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0), max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = max(area(a) + area(b) - iw * ih, eps)
    ew, eh = max(max(a[2], b[2]) - min(a[0], b[0]), 0), max(max(a[3], b[3]) - min(a[1], b[1]), 0)
    enclose = max(ew * eh, eps)
    return iw * ih / union - (enclose - union) / enclose


def _cost_by_hand(pred_cxcywh, logits, gt, labels, hw, wc=2.0, wr=5.0, wi=2.0, alpha=0.25, gamma=2.0, eps=1e-12):
    """mmdet HungarianAssigner.assign's cost, one (query, gt) pair at a time."""
    h, w = hw
    out = np.zeros((len(pred_cxcywh), len(gt)))
    for i, (cx, cy, bw, bh) in enumerate(pred_cxcywh):
        box_n = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        box = [box_n[0] * w, box_n[1] * h, box_n[2] * w, box_n[3] * h]
        for j, (g, lab) in enumerate(zip(gt, labels)):
            p = 1 / (1 + math.exp(-logits[i][lab]))
            pos = -math.log(p + eps) * alpha * (1 - p) ** gamma
            neg = -math.log(1 - p + eps) * (1 - alpha) * p ** gamma
            g_n = [g[0] / w, g[1] / h, g[2] / w, g[3] / h]
            l1 = sum(abs(u - v) for u, v in zip(box_n, g_n))
            out[i, j] = wc * (pos - neg) + wr * l1 - wi * _giou(box, g)
    return out


def _ln(x, m):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * m.weight + m.bias


def _dynamic_conv_by_hand(dc, param, roi):
    """mmdet DynamicConv.forward: per proposal, its S*S feature vectors times the generated (C x F) matrix, LN, ReLU,
    times the (F x C) matrix, LN, ReLU, flattened, fc, LN, ReLU."""
    out = []
    for k in range(param.shape[0]):
        gen = param[k] @ dc.dynamic_layer.weight.T + dc.dynamic_layer.bias
        w_in = gen[:C * dc.feat_channels].reshape(C, dc.feat_channels)
        w_out = gen[-C * dc.feat_channels:].reshape(dc.feat_channels, C)
        x = roi[k].reshape(C, -1).T                              # (S*S, C)
        x = torch.relu(_ln(x @ w_in, dc.norm_in))
        x = torch.relu(_ln(x @ w_out, dc.norm_out))
        x = x.reshape(-1) @ dc.fc_layer.weight.T + dc.fc_layer.bias
        out.append(torch.relu(_ln(x, dc.fc_norm)))
    return torch.stack(out)


def _dii_by_hand(head, roi, feats, heads):
    """mmdet DIIHead.forward: mmcv MultiheadAttention (x + softmax(q k^T / sqrt(d)) v, per image over its proposals)
    -> LN -> x + DynamicConv -> LN -> x + FFN -> LN -> cls fcs / reg fcs -> fc_cls / fc_reg."""
    b, p, _ = feats.shape
    a = head.attention.attn
    wq, wk, wv = a.in_proj_weight.split(C)
    bq, bk, bv = a.in_proj_bias.split(C)
    d = C // heads
    attn_out = []
    for n in range(b):
        x = feats[n]
        q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
        o = torch.cat([torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), -1)
                       @ v[:, h * d:(h + 1) * d] for h in range(heads)], dim=1)
        attn_out.append(_ln(x + o @ a.out_proj.weight.T + a.out_proj.bias, head.attention_norm))
    attn = torch.stack(attn_out)
    x = attn.reshape(-1, C)
    x = _ln(x + _dynamic_conv_by_hand(head.instance_interactive_conv, x, roi), head.instance_interactive_conv_norm)
    f1, f2 = head.ffn.layers[0][0], head.ffn.layers[1]
    obj = _ln(x + torch.relu(x @ f1.weight.T + f1.bias) @ f2.weight.T + f2.bias, head.ffn_norm)

    def branch(fcs, y):
        for j in range(0, len(fcs), 3):
            y = torch.relu(_ln(y @ fcs[j].weight.T, fcs[j + 1]))
        return y
    cls = branch(head.cls_fcs, obj) @ head.fc_cls.weight.T + head.fc_cls.bias
    reg = branch(head.reg_fcs, obj) @ head.fc_reg.weight.T + head.fc_reg.bias
    return cls.view(b, p, -1), reg.view(b, p, 4), obj.view(b, p, C), attn


def _delta2bbox_by_hand(box, d, stds=(0.5, 0.5, 1.0, 1.0)):
    """mmdet delta2bbox (means 0, wh_ratio_clip 16/1000, no clipping) of one box."""
    dx, dy, dw, dh = (v * s for v, s in zip(d, stds))
    clip = abs(math.log(16 / 1000))
    dw, dh = min(max(dw, -clip), clip), min(max(dh, -clip), clip)
    px, py, pw, ph = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    gx, gy, gw, gh = px + pw * dx, py + ph * dy, pw * math.exp(dw), ph * math.exp(dh)
    return [gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2]


# ------------------------------------------------------------------------------------------------ assigner
def _crowded_scene(seed=0, queries=8, gts=4, hw=(60.0, 80.0)):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    ctr = torch.rand(gts, 2, generator=g, dtype=torch.float64) * 0.4 + 0.3   # overlapping boxes near the centre
    size = torch.rand(gts, 2, generator=g, dtype=torch.float64) * 0.3 + 0.2
    gt = torch.cat([ctr - size / 2, ctr + size / 2], 1) * torch.tensor([w, h, w, h], dtype=torch.float64)
    pred = torch.cat([torch.rand(queries, 2, generator=g, dtype=torch.float64) * 0.5 + 0.25,
                      torch.rand(queries, 2, generator=g, dtype=torch.float64) * 0.4 + 0.1], 1)
    logits = torch.randn(queries, NC, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, NC, (gts,), generator=g)
    return pred, logits, gt, labels, hw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_cost_and_assignment_against_brute_force(seed):
    pred, logits, gt, labels, hw = _crowded_scene(seed)
    a = HungarianAssigner(2.0, 0.25, 2.0, 1e-12, 5.0, "xyxy", 2.0, "giou")
    ref = _cost_by_hand(pred.tolist(), logits.tolist(), gt.tolist(), labels.tolist(), hw)
    np.testing.assert_allclose(a.cost(pred, logits, gt, labels, hw).numpy(), ref, rtol=1e-10, atol=1e-10)
    # the minimal total cost over every injective gt -> query map (brute force), and which queries take which gt
    best = min(itertools.permutations(range(len(pred)), len(gt)),
               key=lambda q: sum(ref[qi, j] for j, qi in enumerate(q)))
    expected = [-1] * len(pred)
    for j, qi in enumerate(best):
        expected[qi] = j
    assert a.assign(pred, logits, gt, labels, hw).tolist() == expected


def test_hungarian_without_ground_truth_leaves_every_query_background():
    pred, logits, _, _, hw = _crowded_scene()
    out = HungarianAssigner().assign(pred, logits, torch.zeros(0, 4, dtype=torch.float64),
                                     torch.zeros(0, dtype=torch.int64), hw)
    assert out.tolist() == [-1] * len(pred)


# ------------------------------------------------------------------------------------------------ heads
def test_dynamic_conv_and_dii_head_forward_float64_by_hand():
    torch.manual_seed(0)
    dc = DynamicConv(C, 4, C, 7).double()
    param, roi = torch.randn(6, C, dtype=torch.float64), torch.randn(6, C, 7, 7, dtype=torch.float64)
    out = dc(param, roi)
    assert out.shape == (6, C)
    torch.testing.assert_close(out, _dynamic_conv_by_hand(dc, param, roi), rtol=1e-10, atol=1e-10)

    head = DIIHead(NC, 2, 4, 1, 3, 24, C, 0.0, 4, 7).double()
    feats, roi = torch.randn(2, 3, C, dtype=torch.float64), torch.randn(6, C, 7, 7, dtype=torch.float64)
    got = head(roi, feats)
    assert [tuple(t.shape) for t in got] == [(2, 3, NC), (2, 3, 4), (2, 3, C), (2, 3, C)]
    for g, r in zip(got, _dii_by_hand(head, roi, feats, 4)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_initialisation_as_mmdet():
    torch.manual_seed(0)
    head = DIIHead(NC, 2, 4, 1, 3, 24, C, 0.0, 4, 7)
    assert torch.allclose(head.fc_cls.bias, torch.full((NC,), -math.log(99)))  # bias_init_with_prob(0.01)
    assert not head.fc_reg.bias.any() and not head.attention.attn.in_proj_bias.any()
    w = head.instance_interactive_conv.dynamic_layer.weight  # Xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= math.sqrt(6 / sum(w.shape)) and w.abs().max() > 0.9 * math.sqrt(6 / sum(w.shape))
    rpn = EmbeddingRPNHead(5, C)
    boxes, feats = rpn([(60, 80), (32, 48)])  # whole images, features expanded per image
    assert boxes.tolist() == [[[0.0, 0.0, 80.0, 60.0]] * 5, [[0.0, 0.0, 48.0, 32.0]] * 5]
    assert feats.shape == (2, 5, C) and torch.equal(feats[0], feats[1])
    boxes16, _ = rpn.to(torch.bfloat16)([(600, 1000)])  # a bf16 model keeps float32 pixel coordinates
    assert boxes16.dtype == torch.float32 and boxes16[0, 0].tolist() == [0.0, 0.0, 1000.0, 600.0]


# ------------------------------------------------------------------------------------------------ roi head
def _roi_head(weights=(1.0, 0.5), max_per_img=7):
    torch.manual_seed(0)
    return SparseRoIHead(bbox_roi_extractor=LevelRoIAlign(("0", "1", "2", "3"), 7, sampling_ratio=2),
                         bbox_heads=[DIIHead(NC, 2, 4, 1, 3, 24, C, 0.0, 4, 7) for _ in weights],
                         assigners=[HungarianAssigner() for _ in weights],
                         loss_weights=[(2.0, 0.25, 2.0, 5.0, 2.0)] * len(weights), stage_loss_weights=weights,
                         max_per_img=max_per_img)


def _features(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {str(i): torch.randn(2, C, 64 // s, 96 // s, generator=g) for i, s in enumerate((4, 8, 16, 32))}


SIZES = [(60, 90), (64, 80)]
TARGETS = [{"boxes": torch.tensor([[10.0, 8, 40, 50], [30, 20, 80, 58], [5, 30, 25, 55]]),
            "labels": torch.tensor([1, 4, 1])},
           {"boxes": torch.tensor([[20.0, 10, 60, 50]]), "labels": torch.tensor([3])}]


def _stage_losses_by_hand(cls, boxes, match, sizes, alpha=0.25, gamma=2.0):
    """mmdet DIIHead.loss after the assignment (``match``: gt index per query or -1): focal over every query x
    class, L1 of the boxes / (w, h, w, h), 1 - GIoU, each summed and divided by the number of matched queries."""
    fl = l1 = gi = 0.0
    npos, correct = 0, 0
    for k, (c, b, m, (h, w)) in enumerate(zip(cls.tolist(), boxes.tolist(), match, sizes)):
        for q in range(len(c)):
            lab = int(TARGETS[k]["labels"][m[q]]) if m[q] >= 0 else -1
            for j, x in enumerate(c[q]):
                p, t = 1 / (1 + math.exp(-x)), 1.0 if j == lab else 0.0
                bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
                pt = (1 - p) * t + p * (1 - t)
                fl += bce * (alpha * t + (1 - alpha) * (1 - t)) * pt ** gamma
            if lab >= 0:
                npos += 1
                correct += int(np.argmax(c[q]) == lab)
                g = TARGETS[k]["boxes"][m[q]].tolist()
                l1 += sum(abs(u / s - v / s) for u, v, s in zip(b[q], g, (w, h, w, h)))
                gi += 1 - _giou(b[q], g)
    return {"loss_cls": 2.0 * fl / npos, "loss_bbox": 5.0 * l1 / npos, "loss_iou": 2.0 * gi / npos,
            "pos_acc": 100.0 * correct / npos}


def test_stage_losses_weights_and_refinement_by_hand():
    head, feats = _roi_head(), _features()
    rpn = EmbeddingRPNHead(6, C)
    with torch.no_grad():  # spread the learned proposals over the images
        rpn.init_proposal_bboxes.weight.copy_(torch.rand(6, 4, generator=torch.Generator().manual_seed(3)) * 0.4
                                              + 0.3)
    boxes, obj = rpn(SIZES)
    losses = head.forward_train(feats, boxes, obj, SIZES, TARGETS)
    assert sorted(losses) == sorted(f"stage{i}_{k}" for i in range(2)
                                    for k in ("loss_cls", "loss_bbox", "loss_iou", "pos_acc"))
    # replay the stages by hand: the refined boxes of stage i are stage i + 1's proposals; match by scipy on the
    # cost of the hand reference; every entry times the stage's loss weight (pos_acc included, as mmdet)
    from scipy.optimize import linear_sum_assignment

    cur, o = boxes.detach(), obj
    for i, weight in enumerate((1.0, 0.5)):
        cls, deltas, o, _ = head.bbox_head[i](head.bbox_roi_extractor(feats, list(cur)), o)
        dec = [[_delta2bbox_by_hand(b, d) for b, d in zip(bb.tolist(), dd.tolist())] for bb, dd in zip(cur, deltas)]
        match = []
        for k, (h, w) in enumerate(SIZES):
            norm = [[(b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h]
                    for b in dec[k]]
            cost = _cost_by_hand(norm, cls[k].tolist(), TARGETS[k]["boxes"].tolist(), TARGETS[k]["labels"].tolist(),
                                 (h, w))
            rows, cols = linear_sum_assignment(cost)
            m = [-1] * len(norm)
            for r, c in zip(rows, cols):
                m[r] = int(c)
            match.append(m)
        ref = _stage_losses_by_hand(cls.detach(), torch.tensor(dec, dtype=torch.float64), match, SIZES)
        for k, v in ref.items():
            assert float(losses[f"stage{i}_{k}"].detach()) == pytest.approx(weight * v, rel=1e-4, abs=1e-5), (i, k)
        cur = torch.tensor(dec, dtype=torch.float32)
    # the learned proposal boxes get gradients through stage 0's decoding, the features through every stage
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    assert rpn.init_proposal_bboxes.weight.grad.abs().sum() > 0 and rpn.init_proposal_features.weight.grad.abs().sum()


def test_simple_test_top_k_over_classes_and_proposals():
    head, feats = _roi_head(max_per_img=7), _features()
    boxes, obj = EmbeddingRPNHead(6, C)(SIZES)
    got = head.simple_test(feats, boxes, obj)
    cur, o = boxes, obj
    for i in range(2):
        cls, dec, o = head.stage_forward(i, feats, cur, o)
        cur = dec
    for k, r in enumerate(got):
        prob = torch.sigmoid(cls[k]).tolist()
        pairs = sorted(((prob[q][c], q, c) for q in range(6) for c in range(NC)), reverse=True)[:7]
        assert r["scores"].tolist() == pytest.approx([s for s, _, _ in pairs], rel=1e-6)
        assert r["labels"].tolist() == [c for _, _, c in pairs]
        assert torch.equal(r["boxes"], cur[k][[q for _, q, _ in pairs]])


# ------------------------------------------------------------------------------------------------ config
@functools.lru_cache(maxsize=1)
def _synthetic_model_cfg():
    from vit_adapter_ds.config.keys import to_plain
    from vit_adapter_ds.config.loader import load_recipe
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    return to_plain(load_recipe(str(DETECTION_RECIPES["synthetic_sparse_rcnn"]), validate=False).model)


def _model_cfg(**changes):
    cfg = copy.deepcopy(_synthetic_model_cfg())
    for path, value in changes.items():
        node = cfg
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return cfg


@pytest.mark.parametrize("changes, msg", [
    ({"roi_head__bbox_head__0__bbox_coder__clip_border": True}, r"bbox_head\[0\].bbox_coder.clip_border=True"),
    ({"roi_head__bbox_head__1__loss_cls__use_sigmoid": False}, r"model.roi_head.bbox_head\[1\].loss_cls.use_sigmoid"),
    ({"roi_head__bbox_head__0__loss_cls": KeyError}, r"bbox_head\[0\].loss_cls must be given"),
    ({"train_cfg__rcnn__0__assigner__cls_cost__type": "ClassificationCost"},
     r"train_cfg.rcnn\[0\].assigner.cls_cost.type"),
    ({"roi_head__stage_loss_weights": [1]}, "stage_loss_weights must have 2 entries"),
    ({"rpn_head__proposal_feature_channel": 32}, "proposal_feature_channel=32 must equal"),
])
def test_config_refusals_name_the_dotted_path(changes, msg):
    with pytest.raises(ConfigError, match=msg):
        with torch.device("meta"):
            SparseRCNN.from_config(_model_cfg(**changes))


def test_predict_rescales_to_the_original_image():
    with torch.device("meta"):
        SparseRCNN.from_config(_model_cfg())  # the synthetic recipe's model dict builds
    torch.manual_seed(0)
    model = SparseRCNN.from_config(_model_cfg()).eval()
    img = torch.randn(1, 3, 96, 128)
    a = model.predict(img, [(90, 120)])[0]
    b = model.predict(img, [(90, 120)], [(180, 360)])[0]
    assert a["boxes"].shape == (20, 4) and torch.equal(a["labels"], b["labels"]) and "masks" not in a
    torch.testing.assert_close(b["boxes"], a["boxes"] * torch.tensor([3.0, 2.0, 3.0, 2.0]))


# ------------------------------------------------------------------------------------------------ key map
def _official_keys(stages=2):
    """The official mmdet Sparse R-CNN state-dict keys outside the backbone, typed from the mmdet 2.22 / mmcv 1.4.2
    modules (FPN ConvModules, EmbeddingRPNHead, DIIHead: MultiheadAttention.attn, DynamicConv, FFN.layers,
    cls_fcs / reg_fcs of Linear-LN-ReLU)."""
    keys = ["rpn_head.init_proposal_bboxes.weight", "rpn_head.init_proposal_features.weight"]
    for i in range(4):
        keys += [f"neck.{m}.{i}.conv.{p}" for m in ("lateral_convs", "fpn_convs") for p in ("weight", "bias")]
    stage = ["attention.attn.in_proj_weight", "attention.attn.in_proj_bias", "attention.attn.out_proj.weight",
             "attention.attn.out_proj.bias", "attention_norm.weight", "attention_norm.bias",
             "instance_interactive_conv.dynamic_layer.weight", "instance_interactive_conv.dynamic_layer.bias",
             "instance_interactive_conv.norm_in.weight", "instance_interactive_conv.norm_in.bias",
             "instance_interactive_conv.norm_out.weight", "instance_interactive_conv.norm_out.bias",
             "instance_interactive_conv.fc_layer.weight", "instance_interactive_conv.fc_layer.bias",
             "instance_interactive_conv.fc_norm.weight", "instance_interactive_conv.fc_norm.bias",
             "instance_interactive_conv_norm.weight", "instance_interactive_conv_norm.bias",
             "ffn.layers.0.0.weight", "ffn.layers.0.0.bias", "ffn.layers.1.weight", "ffn.layers.1.bias",
             "ffn_norm.weight", "ffn_norm.bias", "cls_fcs.0.weight", "cls_fcs.1.weight", "cls_fcs.1.bias",
             "fc_cls.weight", "fc_cls.bias", "reg_fcs.0.weight", "reg_fcs.1.weight", "reg_fcs.1.bias",
             "reg_fcs.3.weight", "reg_fcs.4.weight", "reg_fcs.4.bias", "reg_fcs.6.weight", "reg_fcs.7.weight",
             "reg_fcs.7.bias", "fc_reg.weight", "fc_reg.bias"]
    return set(keys + [f"roi_head.bbox_head.{i}.{k}" for i in range(stages) for k in stage])


def test_official_key_map_both_ways():
    from vit_adapter_ds.models.detectors.keymap import (mmdet_checkpoint_filter, sparse_from_mmdet, sparse_to_mmdet,
                                                        to_official)

    torch.manual_seed(0)
    model = SparseRCNN.from_config(_model_cfg())
    ours = model.state_dict()
    official = sparse_to_mmdet(ours)
    assert {k for k in official if not k.startswith("backbone.")} == _official_keys()
    assert official.keys() == to_official(ours, "SparseRCNN").keys()
    assert torch.equal(official["neck.fpn_convs.3.conv.weight"], ours["neck.fpn.layer_blocks.3.0.weight"])
    back = sparse_from_mmdet({"state_dict": official, "meta": {}})
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    # both layouts go through the loader's filter (this layout's rpn_head.* keys are the official names)
    for sd in (official, ours):
        fresh = SparseRCNN.from_config(_model_cfg())
        fresh.load_state_dict(mmdet_checkpoint_filter(dict(sd), fresh), strict=True)
        assert torch.equal(fresh.roi_head.bbox_head[1].fc_cls.weight, model.roi_head.bbox_head[1].fc_cls.weight)
    with pytest.raises(KeyError, match="roi_head.mask_head.0.conv_logits.weight"):
        sparse_from_mmdet({**official, "roi_head.mask_head.0.conv_logits.weight": torch.zeros(1)})


def test_export_layout_of_the_task():
    from vit_adapter_ds.tasks.detection import ObjectDetection

    torch.manual_seed(0)
    ours = SparseRCNN.from_config(_model_cfg()).state_dict()
    assert ObjectDetection.key_layout("SparseRCNN") == "SparseRCNN"
    official = ObjectDetection.official_state_dict(ours, "SparseRCNN")  # launch/export.py --format mmcv
    assert {k for k in official if not k.startswith("backbone.")} == _official_keys()
