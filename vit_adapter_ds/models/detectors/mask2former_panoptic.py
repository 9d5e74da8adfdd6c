"""Mask2Former for COCO panoptic segmentation (mmdet ``Mask2Former`` = ``MaskFormer`` detector with
``Mask2FormerHead`` + ``MaskFormerFusionHead``), the official ViT-Adapter
``detection/configs/mask2former/mask2former_beitv2_adapter_large_16x1_3x_coco-panoptic.py``.

The network is the project's Mask2Former head (:class:`~..heads.mask2former.Mask2FormerHead`, mmseg_custom's copy
of mmdet's ``Mask2FormerHead``: same modules, same key names); what the detector adds:

* training targets (mmdet ``Mask2FormerHead.preprocess_gt`` / ``preprocess_panoptic_gt``): per image the thing
  instances (``labels`` in ``[0, num_things)``, ``masks`` zero-padded at the bottom/right to the batch image) followed
  by one mask per stuff class present in the semantic map (values in ``[num_things, num_classes)``, ascending; thing
  values, ``255`` and anything else are not targets). Losses: :class:`~..heads.mask2former.Mask2FormerCriterion`
  (Hungarian matching, class weight 0.1 for no-object, mask / dice on importance-sampled points).
* inference (mmdet ``MaskFormerHead.simple_test`` + ``MaskFormerFusionHead.simple_test``): the last prediction's mask
  logits resized bilinearly to the padded batch image, cropped to ``img_shape``, resized to ``ori_shape``; then
  :func:`panoptic_postprocess` (``pan_results``: ``class + instance_id * INSTANCE_OFFSET`` for things, ``class`` for
  stuff, ``num_classes`` = VOID) and :func:`instance_postprocess` (``ins_results``: top-``max_per_image`` over
  queries x classes, things only, score x mask score, boxes of the binary masks).

State dict: ``backbone.*`` and ``panoptic_head.*`` exactly as the official checkpoint (the fusion head has no
parameters); :mod:`.keymap` (``m2f_panoptic_from_mmdet`` / ``m2f_panoptic_to_mmdet``) checks the layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config.errors import ConfigError
from ...config.keys import check_keys, take
from ..heads.mask2former import Mask2FormerHead
from ..layer_decay import layer_id as _layer_id
from ..registry import DETECTORS, build_detection_backbone

INSTANCE_OFFSET = 1000  # mmdet.core.evaluation.panoptic_utils

MODEL_KEYS = {"type", "backbone", "neck", "panoptic_head", "panoptic_fusion_head", "train_cfg", "test_cfg",
              "init_cfg", "pretrained"}
FUSION_KEYS = {"type", "num_things_classes", "num_stuff_classes", "loss_panoptic", "init_cfg", "test_cfg"}
TEST_KEYS = {"panoptic_on", "semantic_on", "instance_on", "max_per_image", "iou_thr", "filter_low_score",
             "object_mask_thr"}


def check_thing_labels(labels: torch.Tensor, num_things: int) -> None:
    """ValueError for a thing label outside ``[0, num_things)``."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_things):
        raise ValueError(f"thing labels {labels.tolist()} outside [0, {num_things})")


def present_stuff(semantic: torch.Tensor, num_things: int, num_classes: int) -> torch.Tensor:
    """The stuff classes (``num_things <= c < num_classes``) present in a semantic map, ascending (int64)."""
    present = torch.unique(semantic.long())
    return present[(present >= num_things) & (present < num_classes)]


def preprocess_panoptic_gt(labels: torch.Tensor, masks: torch.Tensor, semantic: torch.Tensor | None,
                           num_things: int, num_stuff: int, pad_shape=None):
    """One image: thing ``labels`` (G,), ``masks`` (G, h, w), ``semantic`` (H, W) or None -> (labels (K,) int64,
    masks (K, H, W) bool): the things (masks zero-padded to ``pad_shape`` / the semantic map's size) then one mask
    per stuff class present in ``semantic`` (ascending)."""
    num_classes = num_things + num_stuff
    labels = labels.reshape(-1).long()
    if semantic is not None:
        semantic = semantic.reshape(semantic.shape[-2:])
        pad_shape = tuple(semantic.shape) if pad_shape is None else tuple(pad_shape)
    if pad_shape is None:
        pad_shape = tuple(masks.shape[-2:])
    masks = masks.reshape(-1, *masks.shape[-2:]).bool()
    h, w = masks.shape[-2:]
    if h > pad_shape[0] or w > pad_shape[1]:
        raise ValueError(f"instance masks {h}x{w} are larger than the padded image {pad_shape}")
    things = masks.new_zeros((masks.shape[0],) + tuple(pad_shape))
    things[:, :h, :w] = masks
    if labels.numel() != things.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {things.shape[0]} masks")
    check_thing_labels(labels, num_things)
    if semantic is None:
        return labels, things
    if tuple(semantic.shape) != tuple(pad_shape):
        raise ValueError(f"semantic map {tuple(semantic.shape)} differs from the padded image {tuple(pad_shape)}")
    stuff = present_stuff(semantic, num_things, num_classes).to(labels.device)
    stuff_masks = semantic.long()[None] == stuff.to(semantic.device)[:, None, None]
    return torch.cat([labels, stuff]), torch.cat([things, stuff_masks.to(things.device)])


def panoptic_postprocess(mask_cls: torch.Tensor, mask_pred: torch.Tensor, num_things: int, num_classes: int,
                         object_mask_thr: float = 0.8, iou_thr: float = 0.8, filter_low_score: bool = False):
    """One image: (Q, C+1) logits, (Q, H, W) mask logits -> (H, W) int32 panoptic map (mmdet rule: queries kept
    when their best class is not no-object and scores above ``object_mask_thr``; each pixel goes to the kept query of
    highest ``score * sigmoid(mask)``; a query whose pixels are fewer than ``iou_thr`` x its ``sigmoid >= 0.5`` area
    is dropped; with ``filter_low_score`` its pixels must also have ``sigmoid >= 0.5``)."""
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    probs = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_thr)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], probs[keep]
    h, w = mask_pred.shape[-2:]
    seg = torch.full((h, w), num_classes, dtype=torch.int32, device=mask_pred.device)
    if cur_masks.shape[0] == 0:
        return seg
    ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    instance_id = 1
    for k in range(cur_classes.shape[0]):
        cls = int(cur_classes[k])
        mask = ids == k
        area = int(mask.sum())
        original = int((cur_masks[k] >= 0.5).sum())
        if filter_low_score:
            mask = mask & (cur_masks[k] >= 0.5)
        if area > 0 and original > 0:
            if area / original < iou_thr:
                continue
            if cls >= num_things:  # stuff: one segment per class, instance id 0
                seg[mask] = cls
            else:
                seg[mask] = cls + instance_id * INSTANCE_OFFSET
                instance_id += 1
    return seg


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K, 4) float32 ``x1, y1, x2 + 1, y2 + 1`` of each mask (zeros for an empty mask)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    cols, rows = masks.any(1), masks.any(2)
    for i in range(masks.shape[0]):
        x, y = torch.nonzero(cols[i])[:, 0], torch.nonzero(rows[i])[:, 0]
        if x.numel() and y.numel():
            boxes[i] = torch.stack([x[0], y[0], x[-1] + 1, y[-1] + 1]).float()
    return boxes


def instance_postprocess(mask_cls: torch.Tensor, mask_pred: torch.Tensor, num_things: int, num_classes: int,
                         max_per_image: int = 100) -> dict:
    """One image -> ``boxes`` (K, 4), ``labels`` (K,), ``scores`` (K,), ``masks`` (K, H, W) bool (mmdet rule: the
    top ``max_per_image`` of softmax(cls)[:, :C] over queries x classes, things only; score = class score x mean
    sigmoid of the mask over its ``logit > 0`` pixels). Sorted by class score (mmdet leaves the top-k unsorted)."""
    q = mask_cls.shape[0]
    scores = F.softmax(mask_cls, dim=-1)[:, :-1].flatten()
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(q)
    top, idx = scores.topk(min(int(max_per_image), scores.numel()), sorted=True)
    labels = labels[idx]
    masks = mask_pred[torch.div(idx, num_classes, rounding_mode="floor")]
    thing = labels < num_things
    top, labels, masks = top[thing], labels[thing], masks[thing]
    binary = (masks > 0).to(masks.dtype)
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    binary = binary.bool()
    return {"boxes": mask_boxes(binary), "labels": labels, "scores": top * mask_scores, "masks": binary}


@DETECTORS.register()
class Mask2Former(nn.Module):
    """Backbone (4 maps, strides 4-32) -> :class:`Mask2FormerHead` (``panoptic_head``); see the module docstring.

    Train: ``model(images, targets, semantic_labels=None)``: ``targets`` per image ``labels`` (0-based thing classes)
    and ``masks`` (G, h, w); ``semantic_labels`` (N, [1,] H, W) the panoptic semantic map (stuff classes
    ``num_things .. num_classes - 1``, 255 ignored; None: things only) -> ``loss_cls``, ``loss_mask``,
    ``loss_dice``, ``d{i}.loss_*`` and their sum ``loss``. Eval: :meth:`predict`.
    """

    task = "detection"  # the task that trains it (models.registry.task_of)
    with_mask = True  # instance masks are read in training (tasks/detection.py)

    def __init__(self, backbone: nn.Module, panoptic_head: Mask2FormerHead, num_things_classes: int,
                 num_stuff_classes: int, test_cfg: dict | None = None, pretrained: str | None = None):
        super().__init__()
        if num_things_classes + num_stuff_classes != panoptic_head.num_classes:
            raise ValueError("num_things_classes + num_stuff_classes must equal the head's num_classes")
        self.backbone, self.panoptic_head = backbone, panoptic_head
        self.num_things_classes, self.num_stuff_classes = int(num_things_classes), int(num_stuff_classes)
        self.num_classes = panoptic_head.num_classes
        tc = dict(test_cfg or {})
        self.test_cfg = {"panoptic_on": bool(tc.get("panoptic_on", True)),
                         "instance_on": bool(tc.get("instance_on", False)),
                         "max_per_image": int(tc.get("max_per_image", 100)),
                         "iou_thr": float(tc.get("iou_thr", 0.8)),
                         "object_mask_thr": float(tc.get("object_mask_thr", 0.8)),
                         "filter_low_score": bool(tc.get("filter_low_score", False))}
        self.pretrained = pretrained

    def layer_id(self, name: str, num_layers: int) -> int:
        """Layer decay, the official detection rule (``detection/mmcv_custom/layer_decay_optimizer_constructor.py``):
        the backbone's own layers; every ``panoptic_head`` parameter (its query / level / class / mask embeddings
        included) is the top layer L - 1 -- the segmentation rule that puts those embeddings at layer 0
        (:meth:`Mask2FormerHead.layer_id`) is not the detection one."""
        if name.startswith("backbone."):
            return _layer_id(self.backbone, name[len("backbone."):], num_layers)
        return num_layers - 1

    # ------------------------------------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, cfg: dict, where: str = "model") -> "Mask2Former":
        """Build from the official mmdet ``model=dict(type='Mask2Former', ...)``; every key checked, unsupported
        values refused with their dotted path."""
        check_keys(cfg, MODEL_KEYS, where)
        if cfg.get("type", "Mask2Former") != "Mask2Former":
            raise ConfigError(f"recipe: {where}.type={cfg['type']!r}: this builds Mask2Former")
        for k in ("neck", "init_cfg"):
            if cfg.get(k) is not None:
                raise ConfigError(f"recipe: {where}.{k}={cfg[k]!r} is not supported by Mask2Former (only None)")
        head = dict(cfg.get("panoptic_head") or {})
        if not head:
            raise ConfigError(f"recipe: {where}.panoptic_head is required")
        hw = f"{where}.panoptic_head"
        strides = head.pop("strides", [4, 8, 16, 32])
        if list(strides) != [4, 8, 16, 32]:
            raise ConfigError(f"recipe: {hw}.strides={strides!r} is not supported; only [4, 8, 16, 32]")
        for k in ("num_things_classes", "num_stuff_classes"):
            if k not in head:
                raise ConfigError(f"recipe: {hw}.{k} is required")
        things = take(head, "num_things_classes", int, hw)
        stuff = take(head, "num_stuff_classes", int, hw)
        if things < 0 or stuff < 0 or things + stuff < 1:
            raise ConfigError(f"recipe: {hw}.num_things_classes / num_stuff_classes must be >= 0 with a positive sum")
        head.pop("test_cfg", None)  # mmdet gives the detector's test_cfg to the head; read below
        if cfg.get("train_cfg") is not None:
            head["train_cfg"] = cfg["train_cfg"]
        panoptic_head = Mask2FormerHead.from_config(head, hw)
        fusion = dict(cfg.get("panoptic_fusion_head") or {"type": "MaskFormerFusionHead"})
        fw = f"{where}.panoptic_fusion_head"
        check_keys(fusion, FUSION_KEYS, fw)
        if fusion.get("type") != "MaskFormerFusionHead":
            raise ConfigError(f"recipe: {fw}.type={fusion.get('type')!r} is not supported; only "
                              "'MaskFormerFusionHead'")
        for k, v in (("num_things_classes", things), ("num_stuff_classes", stuff)):
            if take(fusion, k, int, fw, default=(80, 53)[k == "num_stuff_classes"]) != v:
                raise ConfigError(f"recipe: {fw}.{k}={fusion.get(k, (80, 53)[k == 'num_stuff_classes'])} must "
                                  f"equal {hw}.{k}={v}")
        for k in ("loss_panoptic", "init_cfg"):
            if fusion.get(k) is not None:
                raise ConfigError(f"recipe: {fw}.{k}={fusion[k]!r} is not supported (only None)")
        test_cfg = dict(cfg.get("test_cfg") or {})
        tw = f"{where}.test_cfg"
        check_keys(test_cfg, TEST_KEYS, tw)
        for k, t in (("panoptic_on", bool), ("semantic_on", bool), ("instance_on", bool), ("filter_low_score", bool),
                     ("max_per_image", int), ("iou_thr", float), ("object_mask_thr", float)):
            if k in test_cfg:
                test_cfg[k] = take(test_cfg, k, t, tw)
        if test_cfg.get("semantic_on", False):
            raise ConfigError(f"recipe: {tw}.semantic_on=True is not supported (mmdet raises NotImplementedError)")
        if test_cfg.get("max_per_image", 100) < 1:
            raise ConfigError(f"recipe: {tw}.max_per_image must be >= 1")
        backbone, pretrained = build_detection_backbone(cfg.get("backbone"), cfg.get("pretrained"), where)
        return cls(backbone, panoptic_head, things, stuff, test_cfg=test_cfg, pretrained=pretrained)

    # ------------------------------------------------------------------------------------------------ train
    def extract_feat(self, images):
        return self.backbone(images)

    def preprocess_gt(self, targets, semantic_labels, pad_shape):
        labels, masks = [], []
        for i, t in enumerate(targets):
            sem = None if semantic_labels is None else semantic_labels[i]
            lab, msk = preprocess_panoptic_gt(t["labels"], t["masks"], sem, self.num_things_classes,
                                              self.num_stuff_classes, pad_shape)
            labels.append(lab)
            masks.append(msk)
        return labels, masks

    def forward(self, images, targets=None, semantic_labels=None, image_sizes=None):
        """Train mode: the loss dict (class docstring); eval mode: :meth:`predict`."""
        if not self.training:
            return self.predict(images, image_sizes)
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError("training needs one target dict per image")
        dev = images.device
        targets = [{"labels": t["labels"].to(dev), "masks": t["masks"].to(dev)} for t in targets]
        if semantic_labels is not None:
            semantic_labels = semantic_labels.to(dev)
        labels, masks = self.preprocess_gt(targets, semantic_labels, tuple(images.shape[-2:]))
        cls_list, mask_list = self.panoptic_head(self.extract_feat(images))
        losses = self.panoptic_head.criterion(cls_list, mask_list, labels, masks)
        losses["loss"] = sum(losses.values())
        return losses

    def num_matched_masks(self, targets, semantic_labels=None) -> int:
        """The (query, target) pairs the matching of this batch will make, from the targets alone: per image
        ``min(num_queries, things + stuff classes present)`` (the targets of :meth:`preprocess_gt`)."""
        q, n = self.panoptic_head.num_queries, 0
        for i, t in enumerate(targets):
            g = int(t["labels"].numel())
            if semantic_labels is not None:
                present = torch.unique(semantic_labels[i])
                g += int(((present >= self.num_things_classes) & (present < self.num_classes)).sum())
            n += min(q, g)
        return n

    def step_loss_normaliser(self, batches):
        """A context for the micro-steps of one optimizer step, given ``(targets, semantic_labels)`` of every
        micro-batch of the step on this rank: inside it the mask and dice losses are divided by the mean matched-mask
        count over all micro-batches of the step on all ranks (the official 16-rank normalisation under gradient
        accumulation, :mod:`~..heads.mask2former.criterion`). Collective: every rank calls it once per step."""
        from ..heads.mask2former.criterion import step_num_masks

        local = sum(self.num_matched_masks(t, s) for t, s in batches)
        device = next(self.parameters()).device
        return self.panoptic_head.criterion.use_num_masks(step_num_masks(local, len(batches), device))

    # ------------------------------------------------------------------------------------------------ test
    @torch.no_grad()
    def predict(self, images, image_sizes=None, ori_shapes=None):
        """Per image ``pan_results`` ((h, w) int32, when ``panoptic_on``) and ``ins_results`` (``boxes``,
        ``labels``, ``scores``, ``masks``, when ``instance_on``) at ``ori_shapes`` (default ``image_sizes``, default
        the padded size)."""
        pad = tuple(images.shape[-2:])
        sizes = list(image_sizes) if image_sizes is not None else [pad] * images.shape[0]
        cls_list, mask_list = self.panoptic_head(self.extract_feat(images))
        mask_cls = cls_list[-1].float()
        masks = F.interpolate(mask_list[-1].float(), size=pad, mode="bilinear", align_corners=False)
        tc, out = self.test_cfg, []
        for i, (h, w) in enumerate(sizes):
            m = masks[i, :, :int(h), :int(w)]
            if ori_shapes is not None:
                m = F.interpolate(m[:, None], size=tuple(int(s) for s in ori_shapes[i][:2]), mode="bilinear",
                                  align_corners=False)[:, 0]
            r = {}
            if tc["panoptic_on"]:
                r["pan_results"] = panoptic_postprocess(mask_cls[i], m, self.num_things_classes, self.num_classes,
                                                        tc["object_mask_thr"], tc["iou_thr"], tc["filter_low_score"])
            if tc["instance_on"]:
                r["ins_results"] = instance_postprocess(mask_cls[i], m, self.num_things_classes, self.num_classes,
                                                        tc["max_per_image"])
            out.append(r)
        return out


__all__ = ["Mask2Former", "preprocess_panoptic_gt", "panoptic_postprocess", "instance_postprocess", "mask_boxes",
           "INSTANCE_OFFSET"]
