"""Cascade Mask R-CNN (mmdet 2.22 ``CascadeRoIHead`` as the official cascade_mask_rcnn_deit_adapter configs set it):
one stage's RoI assignment, GIoU box loss on decoded boxes, classification loss and refinement compared with a numpy
reference written here from mmdet's rules (``MaxIoUAssigner`` with ``match_low_quality=False``, ``RandomSampler``
with the ground truth added, ``BBoxHead.loss`` with ``reg_decoded_bbox``, ``delta2bbox``, ``giou_loss``,
``refine_bboxes``), the test-time stage averaging of scores and masks, and the official checkpoint key map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_adapter_ds.models.detectors.cascade_mask_rcnn import CascadeRCNN, CascadeRoIHead, ConvFCBBoxHead
from vit_adapter_ds.models.detectors.htc import CascadeStage
from vit_adapter_ds.models.detectors.htc_heads import HTCMaskHead
from vit_adapter_ds.models.detectors.mask_rcnn import train_targets
from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign

from test_detection_model import _targets

C, NC = 16, 7
STAGES = ((0.5, (0.1, 0.1, 0.2, 0.2)), (0.6, (0.05, 0.05, 0.1, 0.1)), (0.7, (0.033, 0.033, 0.067, 0.067)))
SIZES = [(120, 150), (128, 160)]


def tiny_roi_head(num=512):
    torch.manual_seed(0)
    names = ("0", "1", "2", "3")
    return CascadeRoIHead(
        bbox_roi_extractor=LevelRoIAlign(names, 7), mask_roi_extractor=LevelRoIAlign(names, 14),
        bbox_heads=[ConvFCBBoxHead(C, C, 32, 7, NC, 2, 1, False, "syncbn") for _ in STAGES],
        mask_heads=[HTCMaskHead(False, 2, C, C, NC) for _ in STAGES],
        stages=[CascadeStage(iou, num=num, target_stds=stds, match_low_quality=False) for iou, stds in STAGES],
        target_stds=[stds for _, stds in STAGES], loss_bbox=[("giou", 10.0)] * 3, num_classes=NC)


def _features(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {str(i): torch.randn(2, C, 128 // s, 160 // s, generator=g) for i, s in enumerate((4, 8, 16, 32))}


def _proposals(targets, seed=2):
    """Per image: jittered copies of the ground truth (many above 0.5 IoU) and random boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t, (h, w) in zip(targets, SIZES):
        gt = t["boxes"]
        jit = gt.repeat(6, 1) + torch.randn(6 * len(gt), 4, generator=g) * 6
        xy = torch.rand(20, 2, generator=g) * torch.tensor([w - 20.0, h - 20.0])
        wh = 8 + torch.rand(20, 2, generator=g) * 50
        rnd = torch.cat([xy, xy + wh], 1)
        p = torch.cat([jit, rnd])
        p[:, 0::2] = p[:, 0::2].clamp(0, w)
        p[:, 1::2] = p[:, 1::2].clamp(0, h)
        out.append(p)
    return out


# ----------------------------------------------------------------------------------------- numpy mmdet reference
def np_iou(a, b):
    """mmdet ``bbox_overlaps`` (mode 'iou', no +1, union floored at 1e-6): (n, m)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-6)


def np_assign(gt, gt_labels, proposals, thr):
    """``MaxIoUAssigner(pos=neg=min_pos=thr, match_low_quality=False)`` on ``[gt; proposals]`` (mmdet's sampler adds
    the ground truth first): per box its label (NC = background) and matched gt (-1 for negatives)."""
    boxes = np.concatenate([gt, proposals])
    ov = np_iou(gt, boxes)
    best, arg = ov.max(0), ov.argmax(0)
    pos = best >= thr
    labels = np.where(pos, gt_labels[arg], NC)
    return boxes, labels, np.where(pos, arg, -1), np.arange(len(boxes)) < len(gt)


def np_delta2bbox(rois, deltas, stds, max_shape=None):
    """mmdet ``delta2bbox`` (means 0, wh_ratio_clip 16/1000) of (n, 4) deltas."""
    d = deltas * np.asarray(stds)
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    m = abs(np.log(16 / 1000))
    dw, dh = np.clip(d[:, 2], -m, m), np.clip(d[:, 3], -m, m)
    gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
    gw, gh = pw * np.exp(dw), ph * np.exp(dh)
    out = np.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], 1)
    if max_shape is not None:
        out[:, 0::2] = np.clip(out[:, 0::2], 0, max_shape[1])
        out[:, 1::2] = np.clip(out[:, 1::2], 0, max_shape[0])
    return out


def np_giou_loss(p, t, eps=1e-6):
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    wh = np.clip(np.minimum(p[:, 2:], t[:, 2:]) - np.maximum(p[:, :2], t[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = np.maximum(area_p + area_t - inter, eps)
    ewh = np.clip(np.maximum(p[:, 2:], t[:, 2:]) - np.minimum(p[:, :2], t[:, :2]), 0, None)
    enclose = np.maximum(ewh[:, 0] * ewh[:, 1], eps)
    return 1 - (inter / union - (enclose - union) / enclose)


def _rows(a):
    """Rows sorted lexicographically (the sampler's order is random; the set of RoIs is what mmdet defines)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    return a[np.lexsort(a.T[::-1])]


def test_first_stage_targets_loss_and_refinement_match_the_mmdet_rules():
    head = tiny_roi_head().eval()  # BN on running statistics: every RoI's output is independent of the others
    images = torch.zeros(2, 3, 128, 160)
    targets = train_targets(images, _targets(), SIZES)
    proposals = _proposals(targets)
    feats = _features()
    refined = []
    refine = head.refine
    head.refine = lambda *a: refined.append(refine(*a)) or refined[-1]
    losses = head.forward_train(feats, proposals, SIZES, targets)
    ce_sum = giou_sum = correct = 0.0
    count = 0
    for j, (t, p, size) in enumerate(zip(targets, proposals, SIZES)):
        gt, gl = t["boxes"].numpy().astype(np.float64), t["labels"].numpy()
        boxes, labels, matched, is_gt = np_assign(gt, gl, p.numpy().astype(np.float64), 0.5)
        with torch.no_grad():  # the network itself is not under test: its outputs for exactly these RoIs
            rois = [torch.zeros(0, 4)] * 2
            rois[j] = torch.as_tensor(boxes, dtype=torch.float32)
            cls, reg = head.bbox_head[0](head.bbox_roi_extractor(feats, rois))
        cls, reg = cls.double().numpy(), reg.double().numpy().reshape(len(boxes), NC, 4)
        top = cls.max(1, keepdims=True)
        logp = cls - top - np.log(np.exp(cls - top).sum(1, keepdims=True))
        ce_sum += -logp[np.arange(len(boxes)), labels].sum()
        correct += (cls.argmax(1) == labels).sum()
        pos = labels < NC
        pred = np_delta2bbox(boxes[pos], reg[pos, labels[pos]], STAGES[0][1])  # reg_decoded_bbox, no clipping
        giou_sum += np_giou_loss(pred, gt[matched[pos]]).sum()
        count += len(boxes)
        # refine_bboxes: regress at the label (negatives: argmax over the foreground logits), clip, drop gt RoIs
        lab = np.where(pos, labels, cls[:, :-1].argmax(1))
        new = np_delta2bbox(boxes, reg[np.arange(len(boxes)), lab], STAGES[0][1], max_shape=size)
        keep = ~(pos & is_gt)
        np.testing.assert_allclose(_rows(refined[0][j].numpy()), _rows(new[keep]), rtol=1e-5, atol=1e-3)
    assert giou_sum > 0  # positives in both images
    # every RoI sampled (few positives, num=512)
    assert count == sum(len(t["boxes"]) + len(p) for t, p in zip(targets, proposals))
    np.testing.assert_allclose(losses["s0.loss_cls"].item(), ce_sum / count, rtol=1e-5)
    np.testing.assert_allclose(losses["s0.loss_bbox"].item(), 10.0 * giou_sum / count, rtol=1e-5)
    np.testing.assert_allclose(losses["s0.acc"].item(), 100.0 * correct / count, rtol=1e-5)
    # the later stages: their own thresholds on the refined proposals and the stage loss weights 0.5 / 0.25
    assert set(losses) == {f"s{i}.{k}" for i in range(3) for k in ("loss_cls", "loss_bbox", "acc", "loss_mask")}
    assert len(refined) == 2 and all(torch.isfinite(v) for v in losses.values())


def test_stage_loss_weights_and_one_step_per_stage():
    head = tiny_roi_head().train()
    images = torch.zeros(2, 3, 128, 160)
    targets = train_targets(images, _targets(), SIZES)
    proposals, feats = _proposals(targets), _features()
    torch.manual_seed(3)
    losses = head.forward_train(feats, proposals, SIZES, targets)
    for i in range(3):
        head.zero_grad()
        torch.manual_seed(3)
        again = head.forward_train(feats, proposals, SIZES, targets)
        assert torch.equal(again[f"s{i}.loss_cls"], losses[f"s{i}.loss_cls"])
        (again[f"s{i}.loss_cls"] + again[f"s{i}.loss_bbox"] + again[f"s{i}.loss_mask"]).backward()
        assert head.bbox_head[i].fc_cls.weight.grad.abs().sum() > 0
        assert head.mask_head[i].conv_logits.weight.grad.abs().sum() > 0  # mmdet trains every stage's mask head
        assert head.bbox_head[i].shared_convs[0].bn.weight.grad is not None
        others = [j for j in range(3) if j != i]
        assert all(head.bbox_head[j].fc_cls.weight.grad is None or head.bbox_head[j].fc_cls.weight.grad.abs().sum()
                   == 0 for j in others)  # no gradient through the refinement into another stage
    # the stage weights multiply the losses: stage 1's classification loss is half its unweighted CE
    head.stage_loss_weights = [1.0, 1.0, 1.0]
    torch.manual_seed(3)
    unweighted = head.forward_train(feats, proposals, SIZES, targets)
    for i, w in enumerate((1.0, 0.5, 0.25)):
        for k in ("loss_cls", "loss_bbox", "loss_mask"):
            torch.testing.assert_close(losses[f"s{i}.{k}"], w * unweighted[f"s{i}.{k}"])
        torch.testing.assert_close(losses[f"s{i}.acc"], unweighted[f"s{i}.acc"])


def test_test_time_stage_averaging_of_scores_boxes_and_masks():
    """mmdet ``CascadeRoIHead.simple_test``: each stage refines at its own argmax class; the logits of the 3 stages
    are averaged before the softmax; the last stage decodes the class-specific boxes; masks are the mean of the
    stages' sigmoids."""
    head = tiny_roi_head().eval()
    for hd in head.bbox_head:  # non-trivial regressions, so that the stages' RoIs differ
        torch.nn.init.normal_(hd.fc_reg.weight, std=0.05)
    targets = train_targets(torch.zeros(2, 3, 128, 160), _targets(), SIZES)
    proposals, feats = _proposals(targets), _features()
    got = head.cascade_boxes(feats, proposals, SIZES)
    for j, size in enumerate(SIZES):
        rois = proposals[j].double().numpy()
        logits = []
        for i, (_, stds) in enumerate(STAGES):
            r = [torch.zeros(0, 4)] * 2
            r[j] = torch.as_tensor(rois, dtype=torch.float32)
            with torch.no_grad():
                cls, reg = head.bbox_head[i](head.bbox_roi_extractor(feats, r))
            cls, reg = cls.double().numpy(), reg.double().numpy().reshape(len(rois), NC, 4)
            logits.append(cls)
            if i < 2:
                rois = np_delta2bbox(rois, reg[np.arange(len(rois)), cls[:, :-1].argmax(1)], stds, max_shape=size)
        mean = sum(logits) / 3
        prob = np.exp(mean - mean.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        boxes = np_delta2bbox(np.repeat(rois, NC, 0), reg.reshape(-1, 4), STAGES[2][1], max_shape=size)
        b, p = got[j]
        np.testing.assert_allclose(p.numpy(), prob, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b.numpy().reshape(-1, 4), boxes, rtol=1e-4, atol=1e-3)
        last_only = np.exp(logits[-1]) / np.exp(logits[-1]).sum(1, keepdims=True)
        assert not np.allclose(p.numpy(), last_only, atol=1e-4)  # the average, not the last stage
    # masks: the mean of the three stages' sigmoids
    det = [proposals[0][:5], proposals[1][:3]]
    probs = head.mask_probs(feats, det)
    with torch.no_grad():
        x = head.mask_roi_extractor(feats, det)
        stages = [torch.sigmoid(head.mask_head[i](x, return_feat=False)) for i in range(3)]
    torch.testing.assert_close(torch.cat(probs), sum(stages) / 3)
    assert not torch.allclose(torch.cat(probs), stages[-1])
    # the detections are (box of its class, class, averaged probability) triples above score_thr
    res = head.simple_test(feats, proposals, SIZES)
    for r, (b, p) in zip(res, got):
        assert len(r["boxes"]) <= 100 and r["mask_probs"].shape == (len(r["boxes"]), 28, 28)
        for box, lab, score in zip(r["boxes"][:10], r["labels"][:10], r["scores"][:10]):
            k = torch.where((p[:, lab] == score))[0]
            assert len(k) and any(torch.equal(b[i, lab], box) for i in k)


def test_box_head_keys_and_init_are_mmdets():
    h = ConvFCBBoxHead(256, 256, 1024, 7, 80, 4, 1, False, "syncbn")
    keys = set(h.state_dict())
    assert {"shared_convs.3.conv.weight", "shared_convs.3.bn.running_var", "shared_convs.0.bn.num_batches_tracked",
            "shared_fcs.0.weight", "fc_cls.weight", "fc_reg.bias"} <= keys
    assert "shared_convs.0.conv.bias" not in keys  # ConvModule with a norm: no conv bias (mmcv bias='auto')
    assert h.fc_cls.out_features == 81 and h.fc_reg.out_features == 320 and h.shared_fcs[0].in_features == 12544
    assert type(h.shared_convs[0].bn).__name__ == "DistributedBatchNorm2d"  # SyncBN under NCCL (models/norm.py)
    assert h.fc_reg.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert h.fc_cls.weight.std().item() == pytest.approx(0.01, rel=0.1)
    x = torch.randn(3, 256, 7, 7)
    cls, reg = h.eval()(x)
    assert cls.shape == (3, 81) and reg.shape == (3, 320)


# ----------------------------------------------------------------------------------------------- official key map
def _official_table(d=384, nc=80):
    """The official mmdet keys and shapes of cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco's neck and heads
    (typed from mmdet's modules: ConvModule conv + bn, ConvFCBBoxHead, FCNMaskHead)."""
    t = {}
    for i in range(4):
        t.update({f"neck.lateral_convs.{i}.conv.weight": (256, d, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,),
                  f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)})
    t.update({"rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
              "rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,),
              "rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,)})
    for s in range(3):
        b, m = f"roi_head.bbox_head.{s}.", f"roi_head.mask_head.{s}."
        for j in range(4):
            t[f"{b}shared_convs.{j}.conv.weight"] = (256, 256, 3, 3)
            for k in ("weight", "bias", "running_mean", "running_var"):
                t[f"{b}shared_convs.{j}.bn.{k}"] = (256,)
            t[f"{b}shared_convs.{j}.bn.num_batches_tracked"] = ()
            t[f"{m}convs.{j}.conv.weight"] = (256, 256, 3, 3)
            t[f"{m}convs.{j}.conv.bias"] = (256,)
        t.update({f"{b}shared_fcs.0.weight": (1024, 12544), f"{b}shared_fcs.0.bias": (1024,),
                  f"{b}fc_cls.weight": (nc + 1, 1024), f"{b}fc_cls.bias": (nc + 1,),
                  f"{b}fc_reg.weight": (4 * nc, 1024), f"{b}fc_reg.bias": (4 * nc,),
                  f"{m}upsample.weight": (256, 256, 2, 2), f"{m}upsample.bias": (256,),
                  f"{m}conv_logits.weight": (nc, 256, 1, 1), f"{m}conv_logits.bias": (nc,)})
    return t


@pytest.fixture(scope="module")
def official_heads_model():
    """The official recipe's detector with its backbone cut to 2 blocks (the heads at their official sizes)."""
    from vit_adapter_ds.config import load_recipe
    from vit_adapter_ds.config.keys import to_plain

    cfg = to_plain(load_recipe("cascade_mask_rcnn_deit_adapter_small_fpn_3x_coco", validate=False).model)
    cfg["backbone"].update(depth=2, interaction_indexes=[[0, 0], [0, 0], [1, 1], [1, 1]], window_attn=[True, False],
                           window_size=[14, None], pretrained=None)
    torch.manual_seed(0)
    return CascadeRCNN.from_config(cfg)


def test_official_checkpoint_loads_strictly_and_exports_back(official_heads_model):
    from vit_adapter_ds.models.detectors.keymap import (cascade_from_mmdet, mmdet_checkpoint_filter,
                                                        to_official)

    model = official_heads_model
    table = _official_table()
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked") else
              torch.randn(s, generator=g)) for k, s in table.items()}
    sd.update({"backbone." + k: v.clone() for k, v in model.backbone.state_dict().items()})
    ckpt = {"meta": {}, "state_dict": sd}
    res = model.load_state_dict(mmdet_checkpoint_filter(ckpt["state_dict"], model), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    ours = model.state_dict()
    assert torch.equal(ours["neck.fpn.inner_blocks.2.0.weight"], sd["neck.lateral_convs.2.conv.weight"])
    assert torch.equal(ours["rpn.head.conv.0.0.weight"], sd["rpn_head.rpn_conv.weight"])
    assert torch.equal(ours["roi_head.bbox_head.2.fc_cls.weight"], sd["roi_head.bbox_head.2.fc_cls.weight"])
    assert torch.equal(ours["roi_head.mask_head.1.upsample.weight"], sd["roi_head.mask_head.1.upsample.weight"])
    back = to_official(ours, "CascadeRCNN")
    assert set(back) == set(sd)
    assert all(back[k].shape == sd[k].shape and torch.equal(back[k], sd[k]) for k in sd)
    assert set(cascade_from_mmdet(back)) == set(ours)
    from vit_adapter_ds.tasks.detection import ObjectDetection

    assert ObjectDetection.key_layout("CascadeRCNN") == "CascadeRCNN"


def test_unknown_official_keys_are_named():
    from vit_adapter_ds.models.detectors.keymap import KeyMapError, cascade_from_mmdet, cascade_to_mmdet

    with pytest.raises(KeyMapError, match="roi_head.semantic_head.x"):
        cascade_from_mmdet({"roi_head.semantic_head.x": torch.zeros(1)})
    with pytest.raises(KeyMapError, match="roi_heads.box_head.fc6.weight"):
        cascade_to_mmdet({"roi_heads.box_head.fc6.weight": torch.zeros(1)})


def test_images_without_proposals_or_boxes():
    head = tiny_roi_head()
    feats = _features()
    res = head.eval().simple_test(feats, [torch.zeros(0, 4), torch.tensor([[10.0, 10, 50, 60]])], SIZES)
    assert res[0]["boxes"].shape == (0, 4) and res[0]["mask_probs"].shape == (0, 28, 28)
    assert len(res[1]["boxes"]) == len(res[1]["labels"]) == len(res[1]["mask_probs"])
    # training: an image without ground truth (all RoIs negative) next to one with boxes
    targets = train_targets(torch.zeros(2, 3, 128, 160), _targets(), SIZES)
    targets[1] = dict(targets[1], boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                      masks=targets[1]["masks"][:0])
    losses = head.train().forward_train(feats, _proposals(targets), SIZES, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and len(losses) == 12
