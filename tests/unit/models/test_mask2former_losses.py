"""Mask2Former matching, losses and point sampling against independent float64 NumPy references."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vit_adapter_ds.models.heads.mask2former import (HungarianMatcher, Mask2FormerCriterion, point_sample,
                                                     semantic_to_masks, uncertain_point_coords)
from vit_adapter_ds.models.heads.mask2former.matcher import classification_cost, dice_cost, sigmoid_bce_cost


# ----------------------------------------------------------------------------------------------- numpy references
def np_bilinear(img: np.ndarray, x: float, y: float) -> float:
    """Bilinear sample of an (H, W) map at normalised (x, y), pixel centres at (i + 0.5) / size, zeros outside."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * float(img[yy, xx])
    return out


def np_sample(maps: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """maps (M, H, W), coords (M, P, 2) or (P, 2) shared -> (M, P)."""
    out = np.zeros((maps.shape[0], coords.shape[-2]))
    for m in range(maps.shape[0]):
        c = coords[m] if coords.ndim == 3 else coords
        for p in range(c.shape[0]):
            out[m, p] = np_bilinear(maps[m], c[p, 0], c[p, 1])
    return out


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_bce(logit, t):
    return np.maximum(logit, 0) - logit * t + np.log1p(np.exp(-np.abs(logit)))


def np_costs(cls_logits, mask_points, labels, tgt_points, wc=2.0, wm=5.0, wd=5.0, eps=1.0):
    e = np.exp(cls_logits - cls_logits.max(-1, keepdims=True))
    prob = e / e.sum(-1, keepdims=True)
    q, g = mask_points.shape[0], tgt_points.shape[0]
    cost = np.zeros((q, g))
    for i in range(q):
        s = np_sigmoid(mask_points[i])
        for j in range(g):
            t = tgt_points[j]
            c_cls = -prob[i, labels[j]]
            c_mask = np.mean(np_bce(mask_points[i], t))
            c_dice = 1 - (2 * (s * t).sum() + eps) / (s.sum() + t.sum() + eps)
            cost[i, j] = wc * c_cls + wm * c_mask + wd * c_dice
    return cost


def brute_force_assignment(cost: np.ndarray):
    """Minimum total cost over all injective maps of targets (columns) to queries (rows)."""
    q, g = cost.shape
    best, best_rows = np.inf, None
    for rows in itertools.permutations(range(q), g):
        total = sum(cost[r, j] for j, r in enumerate(rows))
        if total < best - 1e-12:
            best, best_rows = total, rows
    return best, best_rows


# ----------------------------------------------------------------------------------------------- matching
@pytest.mark.parametrize("q,g,seed", [(3, 3, 0), (5, 2, 1), (6, 4, 2), (4, 1, 3), (6, 3, 4)])
def test_matcher_matches_brute_force(q, g, seed):
    rng = np.random.default_rng(seed)
    num_classes, p = 5, 40
    cls_logits = rng.normal(size=(q, num_classes + 1)) * 2
    mask_points = rng.normal(size=(q, p)) * 3
    labels = rng.choice(num_classes, size=g, replace=False)
    tgt_points = (rng.random((g, p)) > 0.5).astype(np.float64) * rng.random((g, p))
    ref_cost = np_costs(cls_logits, mask_points, labels, tgt_points)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, 1.0)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    cost = matcher.cost_matrix(t(cls_logits), t(mask_points), torch.tensor(labels), t(tgt_points))
    np.testing.assert_allclose(cost.double().numpy(), ref_cost, rtol=1e-5, atol=1e-5)
    rows, cols = matcher(t(cls_logits), t(mask_points), torch.tensor(labels), t(tgt_points))
    assert len(rows) == len(cols) == g and len(set(rows.tolist())) == g and sorted(cols.tolist()) == list(range(g))
    total = sum(ref_cost[r, c] for r, c in zip(rows.tolist(), cols.tolist()))
    best, _ = brute_force_assignment(ref_cost)
    assert total == pytest.approx(best, abs=1e-6)


def test_cost_terms_are_the_official_formulas():
    cls = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    p = torch.softmax(cls, -1)
    assert torch.allclose(classification_cost(cls, torch.tensor([1, 0])), -p[:, [1, 0]])
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    tgt = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    bce = np.mean(np_bce(x.numpy()[0], tgt.numpy()[0]))
    assert sigmoid_bce_cost(x, tgt).item() == pytest.approx(bce, rel=1e-6)
    s = np_sigmoid(x.numpy()[0])
    dice = 1 - (2 * (s * tgt.numpy()[0]).sum() + 1) / (s.sum() + tgt.numpy()[0].sum() + 1)
    assert dice_cost(x, tgt, eps=1.0).item() == pytest.approx(dice, rel=1e-6)


def test_matcher_without_targets():
    rows, cols = HungarianMatcher()(torch.randn(4, 3), torch.randn(4, 10), torch.zeros(0, dtype=torch.long),
                                    torch.zeros(0, 10))
    assert rows.numel() == cols.numel() == 0


# ----------------------------------------------------------------------------------------------- targets
def test_semantic_to_masks():
    label = torch.tensor([[3, 3, 255], [0, 3, 255]])
    labels, masks = semantic_to_masks(label, num_classes=4)
    assert labels.tolist() == [0, 3]
    assert masks.tolist() == [[[False, False, False], [True, False, False]],
                              [[True, True, False], [False, True, False]]]
    labels, masks = semantic_to_masks(torch.full((2, 2), 255), num_classes=4)
    assert labels.numel() == 0 and masks.shape == (0, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        semantic_to_masks(torch.tensor([[4]]), num_classes=4)


# ----------------------------------------------------------------------------------------------- point sampling
def test_point_sample_is_bilinear_with_zero_padding():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 5, 7))
    coords = rng.random((2, 30, 2))
    coords[0, :4] = [[0.0, 0.0], [1.0, 1.0], [0.02, 0.5], [0.5, 0.99]]  # border points blend with zeros
    ref = np_sample(maps, coords)
    out = point_sample(torch.tensor(maps)[:, None], torch.tensor(coords))[:, 0]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_importance_sampling_statistics():
    # left half uncertain (logit ~ 0), right half confident (|logit| = 20)
    h = w = 64
    logits = torch.full((1, 1, h, w), 20.0)
    logits[..., : w // 2] = 0.01
    torch.manual_seed(0)
    n, ratio, imp = 4000, 3.0, 0.75
    coords = uncertain_point_coords(logits.repeat(3, 1, 1, 1), n, ratio, imp)
    assert coords.shape == (3, n, 2)
    k = int(imp * n)
    # uncertain part: 3 * 4000 candidates, ~6000 in the left half >= 3000 needed -> all chosen there
    assert (coords[:, :k, 0] < 0.5 + 1.0 / w).float().mean() == 1.0
    # random part: uniform over the unit square
    rest = coords[:, k:].reshape(-1, 2)
    assert rest.shape[0] == 3 * (n - k)
    assert abs((rest[:, 0] < 0.5).float().mean().item() - 0.5) < 0.05
    assert abs(rest.mean().item() - 0.5) < 0.02 and rest.min() >= 0 and rest.max() <= 1
    assert abs(rest.var(0).mean().item() - 1 / 12) < 0.01
    # no importance: all uniform
    coords = uncertain_point_coords(logits, n, ratio, 0.0)
    assert abs((coords[0, :, 0] < 0.5).float().mean().item() - 0.5) < 0.05


def test_importance_sampling_replays_the_official_rng_sequence():
    """Candidates = torch.rand(N, S, 2), kept = top-k of -|logit| (NumPy argsort here), then torch.rand(N, R, 2)."""
    torch.manual_seed(5)
    logits = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    gen_state = torch.get_rng_state()
    coords = uncertain_point_coords(logits, 20, 3.0, 0.75)
    torch.set_rng_state(gen_state)
    cand = torch.rand(2, 60, 2).double().numpy()
    extra = torch.rand(2, 5, 2).double().numpy()
    for i in range(2):
        unc = -np.abs(np_sample(logits[i].numpy(), cand[i])[0])
        keep = np.argsort(-unc, kind="stable")[:15]
        expected = np.concatenate([cand[i][keep], extra[i]])
        got = coords[i].numpy()
        np.testing.assert_allclose(np.sort(got[:15], axis=0), np.sort(expected[:15], axis=0), rtol=1e-6)
        np.testing.assert_allclose(got[15:], expected[15:], rtol=1e-6)


# ----------------------------------------------------------------------------------------------- the losses
def np_reference_loss_single(cls_logits, mask_logits, gt_labels, gt_masks, rng_state, num_classes, class_weight,
                             num_points, oversample, importance):
    """The official loss_single in float64 NumPy, replaying the torch RNG draws (per image: rand(1, P, 2) for the
    matching points; then rand(M, S, 2) and rand(M, R, 2) for the importance sampling of the matched masks)."""
    torch.set_rng_state(rng_state)
    n, q = cls_logits.shape[:2]
    labels = np.full((n, q), num_classes)
    preds, targets = [], []
    for i in range(n):
        coords = torch.rand(1, num_points, 2).double().numpy()[0]
        g = len(gt_labels[i])
        if g == 0:
            continue
        pp = np_sample(mask_logits[i], coords)
        tp = np_sample(gt_masks[i].astype(np.float64), coords)
        cost = np_costs(cls_logits[i], pp, gt_labels[i], tp)
        _, rows = brute_force_assignment(cost)
        for j, r in enumerate(rows):
            labels[i, r] = gt_labels[i][j]
        for r, j in sorted((r, j) for j, r in enumerate(rows)):
            preds.append(mask_logits[i, r])
            targets.append(gt_masks[i][j].astype(np.float64))
    # classification: weighted mean CE
    w = np.asarray(class_weight)
    z = cls_logits.reshape(n * q, -1)
    logp = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    y = labels.reshape(-1)
    loss_cls = 2.0 * (-(w[y] * logp[np.arange(n * q), y]).sum() / w[y].sum())
    m = len(preds)
    if m == 0:
        return loss_cls, 0.0, 0.0
    preds, targets = np.stack(preds), np.stack(targets)
    s_count = int(num_points * oversample)
    k = int(importance * num_points)
    cand = torch.rand(m, s_count, 2).double().numpy()
    extra = torch.rand(m, num_points - k, 2).double().numpy()
    coords = []
    for j in range(m):
        unc = -np.abs(np_sample(preds[j][None], cand[j])[0])
        coords.append(np.concatenate([cand[j][np.argsort(-unc, kind="stable")[:k]], extra[j]]))
    coords = np.stack(coords)
    pp = np_sample(preds, coords)
    tp = np_sample(targets, coords)
    s = np_sigmoid(pp)
    dice = 1 - (2 * (s * tp).sum(-1) + 1.0) / (s.sum(-1) + tp.sum(-1) + 1.0)
    loss_dice = 5.0 * dice.sum() / m
    loss_mask = 5.0 * np_bce(pp, tp).sum() / (m * num_points)
    return loss_cls, loss_mask, loss_dice


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_single_against_float64_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes, q, h, w, num_points = 4, 5, 6, 6, 24
    cls_logits = rng.normal(size=(2, q, num_classes + 1))
    mask_logits = rng.normal(size=(2, q, h, w)) * 2
    sem = [rng.integers(0, num_classes, size=(12, 12)), np.full((12, 12), 255)]
    sem[0][:3] = 255                                          # ignored pixels: 0 in every target mask
    sem[1][2:8, 2:8] = 1                                      # second image: one class + ignore
    gt_labels, gt_masks = [], []
    for s_ in sem:
        lab, msk = semantic_to_masks(torch.tensor(s_), num_classes)
        gt_labels.append(lab)
        gt_masks.append(msk)
    class_weight = [1.0] * num_classes + [0.1]
    crit = Mask2FormerCriterion(num_classes, class_weight, num_points=num_points, oversample_ratio=3.0,
                                importance_sample_ratio=0.75)
    torch.manual_seed(100 + seed)
    state = torch.get_rng_state()
    lc, lm, ld = crit.loss_single(torch.tensor(cls_logits), torch.tensor(mask_logits), gt_labels, gt_masks)
    ref = np_reference_loss_single(cls_logits, mask_logits, [g.numpy() for g in gt_labels],
                                   [m.numpy() for m in gt_masks], state, num_classes, class_weight, num_points,
                                   3.0, 0.75)
    assert lc.item() == pytest.approx(ref[0], rel=1e-5)
    assert lm.item() == pytest.approx(ref[1], rel=1e-5)
    assert ld.item() == pytest.approx(ref[2], rel=1e-5)


def test_no_targets_gives_zero_mask_losses_with_graph():
    crit = Mask2FormerCriterion(3, num_points=16)
    cls = torch.randn(1, 4, 4, requires_grad=True)
    masks = torch.randn(1, 4, 5, 5, requires_grad=True)
    lc, lm, ld = crit.loss_single(cls, masks, [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, 10, 10).bool()])
    assert lm.item() == 0 and ld.item() == 0
    (lc + lm + ld).backward()
    assert masks.grad is not None and torch.all(masks.grad == 0)
    # only no-object targets: CE of class 3 (weight cancels in the weighted mean)
    expected = 2.0 * torch.nn.functional.cross_entropy(cls.detach()[0], torch.full((4,), 3))
    assert lc.item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_keys_follow_mmdet():
    crit = Mask2FormerCriterion(3, num_points=16)
    cls = [torch.randn(1, 4, 4) for _ in range(3)]
    masks = [torch.randn(1, 4, 5, 5) for _ in range(3)]
    labels, gtm = semantic_to_masks(torch.randint(0, 3, (10, 10)), 3)
    losses = crit(cls, masks, [labels], [gtm])
    assert list(losses) == ["loss_cls", "loss_mask", "loss_dice", "d0.loss_cls", "d0.loss_mask", "d0.loss_dice",
                            "d1.loss_cls", "d1.loss_mask", "d1.loss_dice"]


def test_num_masks_is_reduced_over_ranks(monkeypatch):
    """With a process group, loss_mask / loss_dice divide by all_reduce(num_masks / world) (mmdet reduce_mean);
    here a fake 2-rank group whose other rank holds 6 masks."""
    import torch.distributed as dist
    calls = []

    def fake_all_reduce(t, op=None):
        calls.append(t.clone())
        t.add_(6.0 / 2)                                       # the other rank's share

    labels, gtm = semantic_to_masks(torch.tensor([[0, 1], [2, 2]]).repeat_interleave(4, 0).repeat_interleave(4, 1), 3)
    cls, masks = torch.randn(1, 5, 4), torch.randn(1, 5, 6, 6)
    crit = Mask2FormerCriterion(3, num_points=16)
    torch.manual_seed(0)
    local = crit.loss_single(cls, masks, [labels], [gtm])
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    torch.manual_seed(0)
    reduced = crit.loss_single(cls, masks, [labels], [gtm])
    assert len(calls) == 1 and calls[0].item() == pytest.approx(3 / 2)
    mean = (3 + 6) / 2
    assert reduced[0].item() == pytest.approx(local[0].item())
    assert reduced[1].item() == pytest.approx(local[1].item() * 3 / mean, rel=1e-6)
    assert reduced[2].item() == pytest.approx(local[2].item() * 3 / mean, rel=1e-6)
