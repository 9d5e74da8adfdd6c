"""The detectors' training targets against mmdet 2.22 / mmcv 1.4.2 rules, on crowded synthetic scenes.

Each reference below is written here from reading mmdet 2.22.0 / mmcv 1.4.2 (numpy, plain loops; nothing of the
package is called): ``MaxIoUAssigner.assign_wrt_overlaps`` (``match_low_quality=True``, ``gt_max_assign_all=True``),
``AnchorHead._get_targets_single`` (``anchor_inside_flags``: anchors outside are removed before the assignment),
``AnchorGenerator.valid_flags`` of each image's ``pad_shape``, ``mask_target_single`` +
``BitmapMasks.crop_and_resize`` (bitmaps zero-padded by the ``Pad`` step to the image's ``pad_shape``, the RoIs
clipped to it, mmcv ``roi_align(aligned=True)``, ``>= 0.5``) and mmcv's ``softnms_cpu`` kernel. IoUs and
``roi_align`` are computed in float32 in the operation order of mmdet / mmcv (as they run), so that exact ties
(a box's best IoU shared by several anchors, an IoU equal to a threshold, a sample at exactly 0.5) are the same
ties. The model side is what training runs: the RPN's ``forward`` and the detectors' ``forward`` with spies on
the anchor assignment and on the mask targets.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList

from vit_adapter_ds.models.detectors import mask_rcnn as mrcnn
from vit_adapter_ds.models.detectors.mask_rcnn import RPN, FixedStrideAnchorGenerator, MaskRCNN, MaxIoUMatcher
from vit_adapter_ds.models.detectors.soft_nms import soft_nms

STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
F32 = np.float32


# ------------------------------------------------------------------------------------------------ references
def ref_iou(a, b):
    """mmdet ``bbox_overlaps(mode='iou', eps=1e-6)`` of (G, 4) and (N, 4) in float32 -> (G, N)."""
    a, b = a.astype(F32), b.astype(F32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt_x, lt_y = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    rb_x, rb_y = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    overlap = np.maximum(rb_x - lt_x, F32(0)) * np.maximum(rb_y - lt_y, F32(0))
    union = np.maximum(area_a[:, None] + area_b[None, :] - overlap, F32(1e-6))
    return overlap / union


def ref_assign(overlaps, pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality=True):
    """mmdet ``MaxIoUAssigner.assign_wrt_overlaps`` -> ``assigned_gt_inds`` (N,): -1 ignored, 0 negative,
    ``i + 1`` box ``i``."""
    num_gts, num_boxes = overlaps.shape
    gt_inds = np.full(num_boxes, -1, dtype=np.int64)
    if num_gts == 0 or num_boxes == 0:
        if num_gts == 0:
            gt_inds[:] = 0
        return gt_inds
    max_ov = overlaps.max(axis=0)
    argmax_ov = overlaps.argmax(axis=0)  # first maximum, as torch.max
    gt_max = overlaps.max(axis=1)
    gt_inds[(max_ov >= 0) & (max_ov < neg_iou_thr)] = 0
    pos = max_ov >= pos_iou_thr
    gt_inds[pos] = argmax_ov[pos] + 1
    if match_low_quality:
        for i in range(num_gts):
            if gt_max[i] >= min_pos_iou:
                gt_inds[overlaps[i, :] == gt_max[i]] = i + 1
    return gt_inds


def ref_anchors(grid_sizes):
    """mmdet ``AnchorGenerator(strides, ratios, scales=[8]).grid_priors`` (float32, ``center_offset=0``)."""
    out = []
    for (fh, fw), s in zip(grid_sizes, STRIDES):
        w = h = F32(s)
        h_ratios = np.sqrt(np.asarray(RATIOS, dtype=F32))
        w_ratios = F32(1) / h_ratios
        ws = w * w_ratios * F32(8)
        hs = h * h_ratios * F32(8)
        base = np.stack([-F32(0.5) * ws, -F32(0.5) * hs, F32(0.5) * ws, F32(0.5) * hs], axis=1)
        sx = np.arange(fw, dtype=F32) * F32(s)
        sy = np.arange(fh, dtype=F32) * F32(s)
        xx, yy = np.tile(sx, fh), np.repeat(sy, fw)
        shifts = np.stack([xx, yy, xx, yy], axis=1)
        out.append((base[None] + shifts[:, None]).reshape(-1, 4))
    return np.concatenate(out)


def ref_valid_flags(grid_sizes, pad_shape):
    """mmdet ``AnchorGenerator.valid_flags(featmap_sizes, pad_shape)``."""
    out = []
    for (fh, fw), s in zip(grid_sizes, STRIDES):
        vh, vw = min(int(np.ceil(pad_shape[0] / s)), fh), min(int(np.ceil(pad_shape[1] / s)), fw)
        valid = np.zeros((fh, fw), dtype=bool)
        valid[:vh, :vw] = True
        out.append(np.repeat(valid.reshape(-1), len(RATIOS)))
    return np.concatenate(out)


def ref_rpn_targets(anchors, valid, img_shape, gts, allowed_border, pos=0.7, neg=0.3, min_pos=0.3):
    """mmdet ``AnchorHead._get_targets_single`` up to the sampler: (labels (N,) 1 / 0 / -1 = positive / negative /
    neither, assigned box index (N,), -1 where none)."""
    h, w = img_shape
    if allowed_border >= 0:
        inside = valid & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) & \
            (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border)
    else:
        inside = valid
    labels = np.full(len(anchors), -1, dtype=np.int64)
    gt_idx = np.full(len(anchors), -1, dtype=np.int64)
    inds = ref_assign(ref_iou(gts, anchors[inside]), pos, neg, min_pos)
    sub_labels = np.where(inds > 0, 1, np.where(inds == 0, 0, -1))
    labels[inside] = sub_labels
    gt_idx[inside] = np.where(inds > 0, inds - 1, -1)
    return labels, gt_idx


def ref_roi_align_binarised(mask, roi, size):
    """mmcv 1.4.2 ``roi_align`` CPU kernel (``aligned=True``, ``sampling_ratio=0``, avg, spatial scale 1) of one
    (H, W) bitmap in float32, then ``>= 0.5`` (``BitmapMasks.crop_and_resize(binarize=True)``)."""
    height, width = mask.shape
    img = mask.astype(F32).reshape(-1)
    x1, y1, x2, y2 = (F32(v) for v in roi)
    start_w, start_h = x1 - F32(0.5), y1 - F32(0.5)
    end_w, end_h = x2 - F32(0.5), y2 - F32(0.5)
    roi_w, roi_h = end_w - start_w, end_h - start_h
    bin_h, bin_w = roi_h / F32(size), roi_w / F32(size)
    grid_h, grid_w = int(math.ceil(roi_h / F32(size))), int(math.ceil(roi_w / F32(size)))
    count = F32(max(grid_h * grid_w, 1))

    def axis(start, bins, grid):  # the sample coordinates of each bin, (size, grid)
        ph = np.arange(size, dtype=F32)[:, None]
        it = np.arange(grid, dtype=F32)[None, :]
        return start + ph * bins + (it + F32(0.5)) * bins / F32(grid)

    ys, xs = axis(start_h, bin_h, grid_h), axis(start_w, bin_w, grid_w)
    # samples (size_h, size_w, grid_h * grid_w) in the kernel's order: iy outer, ix inner
    y = np.broadcast_to(np.repeat(ys, grid_w, axis=1)[:, None, :], (size, size, grid_h * grid_w))
    x = np.broadcast_to(np.tile(xs, (1, grid_h))[None, :, :], (size, size, grid_h * grid_w))
    empty = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y = np.where(y <= 0, F32(0), y)
    x = np.where(x <= 0, F32(0), x)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low = np.where(y_edge, height - 1, y_low)
    x_low = np.where(x_edge, width - 1, x_low)
    y_high = np.where(y_edge, y_low, y_low + 1)
    x_high = np.where(x_edge, x_low, x_low + 1)
    y = np.where(y_edge, y_low.astype(F32), y)
    x = np.where(x_edge, x_low.astype(F32), x)
    ly, lx = y - y_low.astype(F32), x - x_low.astype(F32)
    hy, hx = F32(1) - ly, F32(1) - lx
    w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
    val = w1 * img[y_low * width + x_low] + w2 * img[y_low * width + x_high] + \
        w3 * img[y_high * width + x_low] + w4 * img[y_high * width + x_high]
    val = np.where(empty, F32(0), val).astype(F32)
    acc = np.zeros((size, size), dtype=F32)
    for j in range(val.shape[-1]):  # the kernel's sequential float32 sum, sample by sample
        acc = acc + val[..., j]
    return acc / count >= 0.5


def ref_mask_targets(mask_bitmaps, img_shape, boxes, gt_inds, size=28):
    """mmdet ``Pad(size_divisor=32)`` of the (N, h, w) bitmaps, then ``mask_target_single``."""
    ph, pw = (int(np.ceil(v / 32) * 32) for v in img_shape)
    padded = np.zeros((len(mask_bitmaps), ph, pw), dtype=np.uint8)
    padded[:, :img_shape[0], :img_shape[1]] = mask_bitmaps[:, :img_shape[0], :img_shape[1]]
    rois = boxes.astype(F32).copy()
    rois[:, [0, 2]] = np.clip(rois[:, [0, 2]], 0, pw)
    rois[:, [1, 3]] = np.clip(rois[:, [1, 3]], 0, ph)
    return np.stack([ref_roi_align_binarised(padded[g], r, size) for r, g in zip(rois, gt_inds)]).astype(F32)


def ref_soft_nms(boxes, scores, iou_threshold, sigma=0.5, min_score=1e-3, method="linear"):
    """mmcv 1.4.2 ``softnms_cpu`` (``offset=0``): swap the best remaining box to the front, decay the rest,
    drop (swap with the last) those below ``min_score`` -> (indices in selection order, their scores)."""
    m = {"naive": 0, "linear": 1, "gaussian": 2}[method]
    x1, y1, x2, y2 = (boxes[:, k].astype(F32).copy() for k in range(4))
    sc = scores.astype(F32).copy()
    areas = (x2 - x1) * (y2 - y1)
    inds = np.arange(len(sc))
    thr, sig, low = F32(iou_threshold), F32(sigma), F32(min_score)
    n, dets, decays_at_thr = len(sc), [], 0
    i = 0
    while i < n:
        max_pos = i
        for pos in range(i + 1, n):
            if sc[max_pos] < sc[pos]:
                max_pos = pos
        for arr in (x1, y1, x2, y2, sc, areas, inds):
            arr[i], arr[max_pos] = arr[max_pos], arr[i]
        dets.append(sc[i])
        pos = i + 1
        while pos < n:
            w = max(F32(0), min(x2[i], x2[pos]) - max(x1[i], x1[pos]))
            h = max(F32(0), min(y2[i], y2[pos]) - max(y1[i], y1[pos]))
            inter = F32(w * h)
            ovr = F32(inter / F32(areas[i] + areas[pos] - inter))
            weight = F32(1)
            if m == 0 and ovr >= thr:
                weight = F32(0)
            elif m == 1 and ovr >= thr:
                weight = F32(1) - ovr
            elif m == 2:
                weight = F32(np.exp(-(ovr * ovr) / sig))
            decays_at_thr += int(ovr == thr)
            sc[pos] = F32(sc[pos] * weight)
            if sc[pos] < low:
                for arr in (x1, y1, x2, y2, sc, areas, inds):
                    arr[pos] = arr[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return inds[:n].copy(), np.asarray(dets[:n], dtype=F32), decays_at_thr


# ------------------------------------------------------------------------------------------------ scenes
def crowded_boxes(rng, h, w, n):
    """``n`` boxes in an (h, w) image: overlapping clusters, grid-aligned boxes (exact IoU ties between anchors),
    exact duplicates (ties between boxes), boxes touching each border, tiny and huge ones; float32 (n, 4)."""
    out = []
    centres = rng.uniform([0, 0], [w, h], size=(max(1, n // 12), 2))
    while len(out) < n:
        kind = rng.integers(0, 6)
        if kind == 0:  # grid-aligned
            s = int(rng.choice([8, 16, 32, 64]))
            bw, bh = s * int(rng.integers(1, 5)), s * int(rng.integers(1, 5))
            x = s * int(rng.integers(0, max(1, (w - bw) // s + 1)))
            y = s * int(rng.integers(0, max(1, (h - bh) // s + 1)))
            b = [x, y, x + bw, y + bh]
        elif kind == 1 and out:  # duplicate
            b = list(out[int(rng.integers(0, len(out)))])
        elif kind == 2:  # touching the right and / or bottom border
            bw, bh = rng.uniform(4, min(200, w - 2)), rng.uniform(4, min(200, h - 2))
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            r = rng.random()
            b = [x1, y1, x1 + bw, y1 + bh]
            if r < 0.7:
                b[0], b[2] = w - bw, w
            if r > 0.4:
                b[1], b[3] = h - bh, h
        elif kind == 3:  # touching the left / top border
            bw, bh = rng.uniform(4, min(200, w - 2)), rng.uniform(4, min(200, h - 2))
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            b = [0, y1, bw, y1 + bh] if rng.random() < 0.5 else [x1, 0, x1 + bw, bh]
        else:  # cluster around a centre
            cx, cy = centres[int(rng.integers(0, len(centres)))] + rng.normal(0, 12, size=2)
            bw, bh = np.exp(rng.uniform(np.log(6), np.log(min(h, w) * 0.9), size=2))
            b = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
            if kind == 5:
                b = [round(v) for v in b]
        b = [min(max(b[0], 0), w - 2), min(max(b[1], 0), h - 2), min(b[2], w), min(b[3], h)]
        b[2], b[3] = max(b[2], b[0] + 2), max(b[3], b[1] + 2)
        out.append(b)
    return np.asarray(out, dtype=F32)


def grid_sizes_of(batch_hw):
    h, w = batch_hw
    sizes = [(h // s, w // s) for s in STRIDES[:4]]
    return sizes + [((sizes[-1][0] - 1) // 2 + 1, (sizes[-1][1] - 1) // 2 + 1)]  # FPN max-pool level


def run_rpn(img_shapes, batch_hw, boxes, allowed_border, pad_shapes=None):
    """The RPN's training forward on zero features; returns what its anchor assignment gave per image."""
    torch.manual_seed(0)
    rpn = RPN(4, anchor_generator=FixedStrideAnchorGenerator(), allowed_border=allowed_border).train()
    seen = []
    assign = rpn.assign_targets_to_anchors

    def spy(anchors, targets):
        out = assign(anchors, targets)
        seen.append((anchors, out))
        return out

    rpn.assign_targets_to_anchors = spy
    n = len(img_shapes)
    feats = {str(i): torch.zeros(n, 4, fh, fw) for i, (fh, fw) in enumerate(grid_sizes_of(batch_hw))}
    targets = [{"boxes": torch.from_numpy(b), "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    if pad_shapes is not None:
        for t, p in zip(targets, pad_shapes):
            t["pad_shape"] = p
    with torch.no_grad():
        rpn(ImageList(torch.zeros(n, 3, *batch_hw), list(img_shapes)), feats, targets)
    (anchors, (labels, matched)), = seen
    return anchors, labels, matched


def compare_rpn(img_shapes, batch_hw, boxes, allowed_border, pad_shapes=None):
    anchors, labels, matched = run_rpn(img_shapes, batch_hw, boxes, allowed_border, pad_shapes)
    ref_a = ref_anchors(grid_sizes_of(batch_hw))
    stats = dict(labels=0, targets=0, pos=0, invalid=0)
    for i, (shape, gts) in enumerate(zip(img_shapes, boxes)):
        a = anchors[i].numpy()
        assert np.array_equal(a, ref_a)
        pad = pad_shapes[i] if pad_shapes is not None else tuple(int(np.ceil(v / 32) * 32) for v in shape)
        valid = ref_valid_flags(grid_sizes_of(batch_hw), pad)
        ref_labels, ref_gt = ref_rpn_targets(ref_a, valid, shape, gts, allowed_border)
        ours = labels[i].numpy().astype(np.int64)
        stats["labels"] += int((ours != ref_labels).sum())
        pos = ref_labels == 1
        stats["pos"] += int(pos.sum())
        stats["invalid"] += int((~valid).sum())
        same_box = (matched[i].numpy()[pos] == gts[ref_gt[pos]]).all(axis=1)
        stats["targets"] += int((~same_box).sum())
    return stats


# ------------------------------------------------------------------------------------------------ item 1
@pytest.mark.parametrize("allowed_border", [0, 16])
def test_rpn_removes_anchors_beyond_the_border_before_assigning(allowed_border):
    """mmdet ``anchor_inside_flags`` (HTC++: ``allowed_border=0``): anchors beyond the image by more than
    ``allowed_border`` take no part in the assignment, so the low-quality step never hands them a box."""
    rng = np.random.default_rng(1)
    shapes = [(512, 640)] * 2
    boxes = [crowded_boxes(rng, 512, 640, 200) for _ in shapes]
    stats = compare_rpn(shapes, (512, 640), boxes, allowed_border)
    assert stats["pos"] > 1000
    assert stats["labels"] == 0 and stats["targets"] == 0, stats


# ------------------------------------------------------------------------------------------------ item 2
def test_rpn_low_quality_matches_give_each_box_its_best_anchors():
    """``allowed_border=-1`` (Mask R-CNN): every anchor at a box's best IoU goes to that box, the later box of
    several winning; the positive's regression target is that box."""
    rng = np.random.default_rng(2)
    shapes = [(512, 640)] * 2
    boxes = [crowded_boxes(rng, 512, 640, 200) for _ in shapes]
    stats = compare_rpn(shapes, (512, 640), boxes, -1)
    assert stats["pos"] > 1000
    assert stats["labels"] == 0 and stats["targets"] == 0, stats


@pytest.mark.parametrize("thr,low_quality", [(0.5, True), (0.6, True), (0.7, True), (0.5, False)])
def test_rcnn_assigner_follows_max_iou_assigner(thr, low_quality):
    """The R-CNN / cascade-stage assigner (``pos = neg = min_pos_iou = thr``, the ground truth added as proposals
    first, as mmdet's sampler does) on jittered crowded proposals, with the config's ``match_low_quality``."""
    rng = np.random.default_rng(3)
    diffs = 0
    for _ in range(3):
        gts = crowded_boxes(rng, 512, 640, 250)
        jitter = gts[rng.integers(0, len(gts), 1500)] + rng.normal(0, 6, size=(1500, 4)).astype(F32)
        jitter[::7] = np.round(jitter[::7] / 4) * 4
        props = np.concatenate([gts, jitter.astype(F32)])
        props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 1)
        ref = ref_assign(ref_iou(gts, props), thr, thr, thr, low_quality)
        m = MaxIoUMatcher(thr, thr, thr, low_quality)(torchvision_iou(gts, props)).numpy()
        ours = np.where(m >= 0, m + 1, np.where(m == -1, 0, -1))
        diffs += int((ours != ref).sum())
    assert diffs == 0


def torchvision_iou(a, b):
    from torchvision.ops import box_iou
    return box_iou(torch.from_numpy(a), torch.from_numpy(b))


def test_cascade_stages_take_match_low_quality_from_the_config():
    from mmengine import Config

    from vit_adapter_ds.models.detectors.htc import HybridTaskCascade
    from vit_adapter_ds.recipes.detection import DETECTION_RECIPES

    c = Config.fromfile(str(DETECTION_RECIPES["synthetic_htc"])).model.to_dict()
    c["train_cfg"]["rcnn"][1]["assigner"]["match_low_quality"] = False
    with torch.device("meta"):
        model = HybridTaskCascade.from_config(c)
    assert [s.matcher.allow_low_quality_matches for s in model.roi_head.stages] == [True, False, True]


# ------------------------------------------------------------------------------------------------ item 3
@pytest.mark.parametrize("allowed_border", [-1, 0])
def test_anchor_valid_flags_of_each_images_own_padded_size(allowed_border):
    """Images of different sizes in one 512 x 640 batch: anchors beyond an image's own ``pad_shape`` (its size
    rounded up to 32) are neither positive nor negative and never matched."""
    rng = np.random.default_rng(4)
    shapes = [(500, 600), (480, 630), (333, 417), (512, 300)]
    boxes = [crowded_boxes(rng, h, w, 120) for h, w in shapes]
    stats = compare_rpn(shapes, (512, 640), boxes, allowed_border)
    assert stats["invalid"] > 10000 and stats["pos"] > 500
    assert stats["labels"] == 0 and stats["targets"] == 0, stats


def test_anchor_valid_flags_read_a_given_pad_shape():
    rng = np.random.default_rng(5)
    shapes, pads = [(300, 400), (300, 400)], [(320, 416), (512, 640)]  # the second as if padded further
    boxes = [crowded_boxes(rng, h, w, 100) for h, w in shapes]
    stats = compare_rpn(shapes, (512, 640), boxes, -1, pad_shapes=pads)
    assert stats["labels"] == 0 and stats["targets"] == 0, stats


# ------------------------------------------------------------------------------------------------ item 4
class _Backbone(nn.Module):
    """4 maps at strides 4-32 (average pools of one conv): a cheap stand-in, the targets do not depend on it."""

    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return [F.avg_pool2d(y, s) for s in (4, 8, 16, 32)]


def _scene_with_masks(rng, shapes, n):
    targets = []
    for h, w in shapes:
        boxes = crowded_boxes(rng, h, w, n)
        masks = np.zeros((n, h, w), dtype=np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            xa, ya, xb, yb = int(x1), int(y1), int(math.ceil(x2)), int(math.ceil(y2))
            masks[k, ya:yb, xa:xb] = rng.random((yb - ya, xb - xa)) < 0.8  # ragged, reaching the box's border
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(rng.integers(0, 3, n)),
                        "masks": torch.from_numpy(masks), "img_shape": (h, w)})
    return targets


def _spy_mask_targets(monkeypatch, module):
    seen = []
    orig = module.mask_targets

    def spy(gt_masks, boxes, matched, size):
        out = orig(gt_masks, boxes, matched, size)
        seen.append((boxes.detach().clone(), matched.clone(), out))
        return out

    monkeypatch.setattr(module, "mask_targets", spy)
    return seen


def _compare_mask_targets(seen, targets):
    """The spied calls come image by image (stage by stage for HTC)."""
    diff = checked = edge = 0
    for k, (boxes, matched, out) in enumerate(seen):
        t = targets[k % len(targets)]
        h, w = t["img_shape"]
        ref = ref_mask_targets(t["masks"].numpy(), (h, w), boxes.numpy(), matched.numpy())
        diff += int((out.numpy() != ref).sum())
        checked += len(boxes)
        edge += int(((boxes[:, 2] >= w - 1) | (boxes[:, 3] >= h - 1)).sum())
    return diff, checked, edge


def test_mask_rcnn_mask_targets_from_bitmaps_padded_to_pad_shape(monkeypatch):
    """Mask R-CNN training on images of different sizes (one a multiple of 32, unpadded by its own ``Pad``): the
    mask targets of the sampled positives equal mmdet's, RoIs at the bottom / right border included."""
    rng = np.random.default_rng(6)
    shapes = [(250, 310), (256, 320), (200, 150)]
    targets = _scene_with_masks(rng, shapes, 40)
    torch.manual_seed(0)
    model = MaskRCNN.build(_Backbone(), num_classes=3, in_channels=(8,) * 4, out_channels=16, fc_out_channels=32,
                           mask_convs=1).train()
    seen = _spy_mask_targets(monkeypatch, mrcnn)
    model(torch.randn(3, 3, 256, 320), targets)
    assert len(seen) == 3
    diff, checked, edge = _compare_mask_targets(seen, targets)
    assert checked > 60 and edge > 10
    assert diff == 0


def test_mask_targets_of_border_rois_and_rois_beyond_the_padding():
    """Hundreds of RoIs at / beyond the bottom-right border (clipped to the padded bitmap, as mmdet) on images
    whose size is, or is not, a multiple of 32."""
    rng = np.random.default_rng(9)
    diff = 0
    for h, w in [(250, 310), (256, 320), (97, 33)]:
        t = _scene_with_masks(rng, [(h, w)], 30)[0]
        boxes = t["boxes"].numpy()
        gt = rng.integers(0, len(boxes), 120)
        rois = boxes[gt] + rng.normal(0, 3, size=(120, 4)).astype(F32)
        rois[::2, 2] = w + rng.uniform(-1, 40, size=60).astype(F32)
        rois[::3, 3] = h + rng.uniform(-1, 40, size=40).astype(F32)
        rois[:, :2] = np.clip(rois[:, :2], -5, None)
        rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
        bitmaps = mrcnn.pad_gt_masks(t["masks"], (h, w), mrcnn.padded_shape((h, w)))
        ours = mrcnn.mask_targets(bitmaps, torch.from_numpy(rois), torch.from_numpy(gt), 28).numpy()
        diff += int((ours != ref_mask_targets(t["masks"].numpy(), (h, w), rois, gt)).sum())
    assert diff == 0


def test_htc_mask_targets_from_bitmaps_padded_to_pad_shape(monkeypatch):
    from vit_adapter_ds.models.detectors import htc
    from vit_adapter_ds.models.detectors.fpn import FPN
    from vit_adapter_ds.models.detectors.htc_heads import HTCMaskHead, Shared4Conv1FCBBoxHead
    from vit_adapter_ds.models.detectors.roi_extractor import LevelRoIAlign

    rng = np.random.default_rng(7)
    shapes = [(250, 310), (256, 320)]
    targets = _scene_with_masks(rng, shapes, 30)
    torch.manual_seed(0)
    c, nc, names = 16, 3, ("0", "1", "2", "3")
    rpn = RPN(c, anchor_generator=FixedStrideAnchorGenerator(), smooth_l1_beta=1 / 9, allowed_border=0)
    roi = htc.HybridTaskCascadeRoIHead(
        bbox_roi_extractor=LevelRoIAlign(names, 7), mask_roi_extractor=LevelRoIAlign(names, 14),
        bbox_heads=[Shared4Conv1FCBBoxHead(c, c, 32, 7, nc) for _ in range(3)],
        mask_heads=[HTCMaskHead(i > 0, 1, c, c, nc) for i in range(3)],
        stages=[htc.CascadeStage(iou, target_stds=stds) for iou, stds in htc.HTC_PLUS_PLUS_STAGES], num_classes=nc)
    model = htc.HybridTaskCascade(_Backbone(), [FPN([8] * 4, c, 5)], rpn, roi).train()
    seen = _spy_mask_targets(monkeypatch, htc)
    model(torch.randn(2, 3, 256, 320), targets)
    assert len(seen) == 3 * 2  # stage by stage, image by image
    diff, checked, edge = _compare_mask_targets(seen, targets)
    assert checked > 60 and edge > 10
    assert diff == 0


# ------------------------------------------------------------------------------------------------ item 5
def _boxes_at_exact_ious(rng, n):
    """Boxes on an integer grid where many pairs have IoU exactly 1/2 or 1/3 in float32 (a 10 x 10 box and
    its top half; two 10 x 10 boxes shifted by 5)."""
    out = []
    for _ in range(n // 3):
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        out += [[x, y, x + 10, y + 10], [x, y, x + 10, y + 5], [x + 5, y, x + 15, y + 10]]
    return np.asarray(out, dtype=F32)


@pytest.mark.parametrize("method,thr", [("linear", 0.5), ("linear", 1 / 3), ("naive", 0.5), ("gaussian", 0.5)])
def test_soft_nms_decays_at_iou_equal_to_the_threshold(method, thr):
    rng = np.random.default_rng(8)
    boxes = _boxes_at_exact_ious(rng, 240)
    scores = rng.permutation(len(boxes)).astype(F32) / len(boxes) + F32(0.01)  # distinct: no tie-break question
    ref_keep, ref_scores, at_thr = ref_soft_nms(boxes, scores, thr, method=method)
    keep, s = soft_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou_threshold=thr, method=method)
    assert at_thr > 20
    assert keep.tolist() == ref_keep.tolist()
    assert np.array_equal(s.numpy(), ref_scores)
