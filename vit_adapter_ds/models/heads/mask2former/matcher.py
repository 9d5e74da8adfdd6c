"""Hungarian matching of Mask2Former queries to ground-truth masks (mmdet ``MaskHungarianAssigner`` with
``ClassificationCost``, ``CrossEntropyLossCost(use_sigmoid=True)`` and ``DiceCost(pred_act=True)``).

All costs are computed on the same point samples of predictions and targets::

    cls_cost[q, g]  = -softmax(cls_logits[q])[label[g]] * cls_weight
    mask_cost[q, g] = mean_p BCE-with-logits(mask_logits[q, p], target[g, p]) * mask_weight
    dice_cost[q, g] = (1 - (2 sum_p s[q,p] t[g,p] + eps) / (sum_p s[q,p] + sum_p t[g,p] + eps)) * dice_weight,
                      s = sigmoid(mask_logits)

and ``scipy.optimize.linear_sum_assignment`` minimises their sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def classification_cost(cls_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(Q, C+1) logits, (G,) labels -> (Q, G) = -softmax probability of each target's class."""
    return -cls_logits.softmax(-1)[:, labels]


def sigmoid_bce_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (G, P) targets in [0, 1] -> (Q, G) mean binary cross entropy over the points."""
    mask_logits, targets = mask_logits.float(), targets.float()
    pos = F.binary_cross_entropy_with_logits(mask_logits, torch.ones_like(mask_logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(mask_logits, torch.zeros_like(mask_logits), reduction="none")
    cost = torch.einsum("qp,gp->qg", pos, targets) + torch.einsum("qp,gp->qg", neg, 1 - targets)
    return cost / mask_logits.shape[1]


def dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(Q, P) logits, (G, P) targets -> (Q, G) naive dice loss of sigmoid(logits) against every target."""
    s = mask_logits.float().sigmoid()
    t = targets.float()
    numerator = 2 * torch.einsum("qp,gp->qg", s, t)
    denominator = s.sum(-1)[:, None] + t.sum(-1)[None, :]
    return 1 - (numerator + eps) / (denominator + eps)


class HungarianMatcher:
    """Weights of the three costs (official: 2.0, 5.0, 5.0; dice eps 1.0)."""

    def __init__(self, cls_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 dice_eps: float = 1.0):
        self.cls_weight = float(cls_weight)
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.dice_eps = float(dice_eps)

    def cost_matrix(self, cls_logits, mask_point_logits, labels, target_points) -> torch.Tensor:
        """(Q, G) total cost; zero-weight terms are skipped as in mmdet."""
        cost = cls_logits.new_zeros((cls_logits.shape[0], labels.shape[0]), dtype=torch.float32)
        if self.cls_weight != 0:
            cost = cost + self.cls_weight * classification_cost(cls_logits.float(), labels)
        if self.mask_weight != 0:
            cost = cost + self.mask_weight * sigmoid_bce_cost(mask_point_logits, target_points)
        if self.dice_weight != 0:
            cost = cost + self.dice_weight * dice_cost(mask_point_logits, target_points, self.dice_eps)
        return cost

    @torch.no_grad()
    def __call__(self, cls_logits, mask_point_logits, labels, target_points):
        """One image: (Q, C+1), (Q, P), (G,), (G, P) -> (query indices, target indices), int64 tensors on the
        input device, each of length min(Q, G), sorted by query index."""
        if labels.numel() == 0:
            empty = torch.empty(0, dtype=torch.long, device=cls_logits.device)
            return empty, empty
        cost = self.cost_matrix(cls_logits, mask_point_logits, labels, target_points)
        rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
        dev = cls_logits.device
        return torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)
