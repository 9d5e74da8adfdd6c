"""Mask2Former losses (mmseg_custom ``Mask2FormerHead.loss`` / ``loss_single``), per decoder prediction::

    loss_cls  = cls_weight  * sum_q w[y_q] CE(cls_logits_q, y_q) / sum_q w[y_q]      w = class_weight (no-object 0.1)
    loss_mask = mask_weight * sum_{m,p} BCE(logit[m,p], t[m,p]) / (num_masks * num_points)
    loss_dice = dice_weight * sum_m (1 - (2 sum_p s t + eps) / (sum_p s + sum_p t + eps)) / num_masks

``y_q`` is the matched target's class, or the no-object class ``C`` for unmatched queries. Mask terms use the
matched (prediction, target) pairs at ``num_points`` importance-sampled points per pair (chosen on the detached
prediction, see :func:`~.point_sample.uncertain_point_coords`). ``num_masks`` is the number of matched pairs in
the batch averaged over the ranks (mmdet ``reduce_mean``: all-reduce / world size when torch.distributed is
initialised) and clamped to at least 1 -- with data-parallel gradient averaging this normalises by the global mask
count. With no targets at all the mask terms are 0 (with a graph). The class loss is normalised by this batch's own
weights (not reduced over the ranks, as the official head).

Gradient accumulation: an official run takes one optimizer step over 16 ranks, so its ``num_masks`` is the mean
matched-pair count of all 16 rank batches of the step. Here a step of ``A`` micro-batches on ``W`` ranks does the
same: before the step's first forward, :func:`step_num_masks` takes the matched pairs of every micro-batch of the
step (``min(num_queries, masks)`` per image, known from the targets: :func:`num_matched_masks`), sums them over the
ranks and divides by ``A * W`` (clamped to at least 1), and every micro-step divides by that
(:meth:`Mask2FormerCriterion.use_num_masks`). DeepSpeed divides each micro-step's loss by ``A`` and averages the
gradients over the ``W`` ranks, so the step's mask and dice gradients are the sums of the terms over every image of
the step divided by all its masks: the official 16-rank gradient whenever the step holds the official 16 images,
however they are split into ranks and micro-steps. (The class loss stays per micro-batch, as per official rank: it
matches with the official images per micro-batch.) With ``A = 1`` the number is bitwise the one the batch computes
itself. Outside such a block (a plain forward) ``num_masks`` is the batch's own, reduced over the ranks as above.

Targets come from semantic maps (mmseg_custom ``ToMask``): one binary mask per class present in the image
(sorted class ids, ``ignore_index`` excluded; ignored pixels are 0 in every mask).
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .matcher import HungarianMatcher
from .point_sample import point_sample, uncertain_point_coords


def semantic_to_masks(label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """(H, W) int label map -> (labels (G,) int64 sorted, masks (G, H, W) bool). Values outside
    [0, num_classes) other than ``ignore_index`` are an error."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(f"label values {classes.tolist()} outside [0, {num_classes}) (ignore_index={ignore_index})")
    return classes.long(), label[None] == classes[:, None, None]


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the ranks (identity without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.clone()
    dist.all_reduce(x.div_(dist.get_world_size()))
    return x


def num_matched_masks(label: torch.Tensor, num_queries: int, ignore_index: int = 255) -> int:
    """How many (query, target) pairs the matching of one image will make: ``min(num_queries, G)`` with ``G`` the
    number of masks :func:`semantic_to_masks` makes of ``label`` (classes present, ``ignore_index`` excluded)."""
    classes = torch.unique(label)
    return min(int(num_queries), int((classes != ignore_index).sum()))


def step_num_masks(local_masks: int, micro_steps: int = 1, device=None) -> torch.Tensor:
    """``num_masks`` of every micro-step of one optimizer step: ``local_masks`` (the matched pairs of all this rank's
    micro-batches of the step) summed over the ranks / ``(micro_steps * world size)``, clamped to at least 1: a 0-d
    float32 tensor for :meth:`Mask2FormerCriterion.use_num_masks`. Collective: every rank calls it once per step.
    With ``micro_steps=1`` it is bitwise the number ``loss_single`` computes for the batch (same float32 ops)."""
    x = torch.tensor([float(local_masks)], dtype=torch.float32, device=device)
    if micro_steps != 1:
        x = x.div_(int(micro_steps))
    return reduce_mean(x).clamp(min=1.0)[0]


class Mask2FormerCriterion:
    """Matching + losses for all decoder predictions; see the module docstring."""

    def __init__(self, num_classes: int, class_weight=None, cls_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, dice_eps: float = 1.0, naive_dice: bool = True, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 matcher: HungarianMatcher | None = None):
        self.num_classes = int(num_classes)
        if class_weight is None:
            class_weight = [1.0] * self.num_classes + [0.1]
        if len(class_weight) != self.num_classes + 1:
            raise ValueError(f"class_weight needs num_classes + 1 = {self.num_classes + 1} entries, "
                             f"got {len(class_weight)}")
        self.class_weight = [float(w) for w in class_weight]
        self.cls_weight = float(cls_weight)
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.dice_eps = float(dice_eps)
        self.naive_dice = bool(naive_dice)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.matcher = matcher or HungarianMatcher(cls_weight, mask_weight, dice_weight, dice_eps)
        self._step_num_masks: torch.Tensor | None = None  # set by use_num_masks() for one optimizer step

    @contextlib.contextmanager
    def use_num_masks(self, num_masks: torch.Tensor):
        """Within the block, every ``loss_single`` divides the mask and dice terms by ``num_masks`` (the step's,
        from :func:`step_num_masks`) instead of reducing its own batch's count; see the module docstring."""
        if self._step_num_masks is not None:
            raise RuntimeError("Mask2FormerCriterion.use_num_masks: already inside an optimizer step's block")
        self._step_num_masks = num_masks.detach().reshape(()).float()
        try:
            yield self
        finally:
            self._step_num_masks = None

    # ------------------------------------------------------------------ one prediction
    def match(self, cls_logits, mask_logits, gt_labels, gt_masks):
        """Per image: uniform points shared by prediction and target (mmdet samples ``num_points`` of them per
        image), then Hungarian matching. Returns a list of (query indices, target indices)."""
        out = []
        for cls_i, mask_i, labels, masks in zip(cls_logits, mask_logits, gt_labels, gt_masks):
            q, g = mask_i.shape[0], labels.shape[0]
            coords = torch.rand((1, self.num_points, 2), device=cls_i.device)
            pred_points = point_sample(mask_i[:, None].detach().float(), coords.expand(q, -1, -1))[:, 0]
            tgt_points = point_sample(masks[:, None].float(), coords.expand(g, -1, -1))[:, 0]
            out.append(self.matcher(cls_i.detach(), pred_points, labels, tgt_points))
        return out

    def dice_loss(self, pred_points: torch.Tensor, tgt_points: torch.Tensor) -> torch.Tensor:
        """Summed over masks (the caller divides by num_masks)."""
        s = pred_points.sigmoid()
        inter = (s * tgt_points).sum(-1)
        if self.naive_dice:
            loss = 1 - (2 * inter + self.dice_eps) / (s.sum(-1) + tgt_points.sum(-1) + self.dice_eps)
        else:
            loss = 1 - 2 * inter / ((s * s).sum(-1) + self.dice_eps + (tgt_points * tgt_points).sum(-1)
                                    + self.dice_eps)
        return loss.sum()

    def loss_single(self, cls_logits, mask_logits, gt_labels, gt_masks):
        """cls_logits (N, Q, C+1), mask_logits (N, Q, h, w); lists of (G_i,) labels and (G_i, H, W) masks.
        Returns (loss_cls, loss_mask, loss_dice) for this prediction."""
        cls_logits, mask_logits = cls_logits.float(), mask_logits.float()
        n, q = cls_logits.shape[:2]
        matches = self.match(cls_logits, mask_logits, gt_labels, gt_masks)
        labels = cls_logits.new_full((n, q), self.num_classes, dtype=torch.long)
        preds, targets = [], []
        for i, (qi, gi) in enumerate(matches):
            labels[i, qi] = gt_labels[i][gi]
            preds.append(mask_logits[i, qi])
            targets.append(gt_masks[i][gi])
        weight = cls_logits.new_tensor(self.class_weight)
        ce = F.cross_entropy(cls_logits.flatten(0, 1), labels.flatten(), weight=weight, reduction="sum")
        loss_cls = self.cls_weight * ce / weight[labels.flatten()].sum()

        num_pos = sum(int(qi.numel()) for qi, _ in matches)
        if self._step_num_masks is not None:  # the optimizer step's mean over all its micro-batches and ranks
            num_masks = self._step_num_masks.to(cls_logits.device)
        else:
            num_masks = reduce_mean(cls_logits.new_tensor([float(num_pos)])).clamp(min=1.0)[0]
        preds = torch.cat(preds) if preds else mask_logits.new_zeros((0,) + mask_logits.shape[2:])
        if preds.shape[0] == 0:
            zero = mask_logits.sum() * 0.0
            return loss_cls, zero, zero
        targets = torch.cat(targets).float()
        with torch.no_grad():
            coords = uncertain_point_coords(preds[:, None].detach(), self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            tgt_points = point_sample(targets[:, None], coords)[:, 0]
        pred_points = point_sample(preds[:, None], coords)[:, 0]
        loss_dice = self.dice_weight * self.dice_loss(pred_points, tgt_points) / num_masks
        bce = F.binary_cross_entropy_with_logits(pred_points, tgt_points, reduction="sum")
        loss_mask = self.mask_weight * bce / (num_masks * self.num_points)
        return loss_cls, loss_mask, loss_dice

    # ------------------------------------------------------------------ all predictions
    def __call__(self, all_cls_logits, all_mask_logits, gt_labels, gt_masks) -> dict[str, torch.Tensor]:
        """Lists over decoder predictions (the last one is the final output). Keys as mmdet: ``loss_cls``,
        ``loss_mask``, ``loss_dice`` for the last prediction and ``d{i}.loss_*`` for the earlier ones."""
        per_layer = [self.loss_single(c, m, gt_labels, gt_masks) for c, m in zip(all_cls_logits, all_mask_logits)]
        if not per_layer:
            raise ValueError("no decoder predictions")
        names = ("loss_cls", "loss_mask", "loss_dice")
        losses = dict(zip(names, per_layer[-1]))
        for i, values in enumerate(per_layer[:-1]):
            losses.update({f"d{i}.{k}": v for k, v in zip(names, values)})
        return losses
