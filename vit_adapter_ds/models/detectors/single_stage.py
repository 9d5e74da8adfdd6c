"""One-stage detectors (mmdet 2.22 ``SingleStageDetector``): backbone -> :class:`~.fpn.FPN` -> a dense head of
:mod:`.dense_heads`, registered under the official types ``'ATSS'`` (:class:`ATSS`, ``ATSSHead``) and ``'GFL'``
(:class:`GFL`, ``GFLHead``). They predict boxes only (``with_mask = False``: the detection task evaluates
``'bbox'``; their train pipeline need not collect ``gt_masks``).

Train: ``model(images, targets)`` with ``images`` (B, 3, H, W) normalised and padded and ``targets`` a list of dicts
``boxes`` (N, 4) x1y1x2y2 input pixels, ``labels`` (N,) 0-based and optionally ``img_shape`` / ``pad_shape``
(:class:`~.mask_rcnn.MaskRCNN`'s convention; the anchors that take part are the valid ones of ``pad_shape``) ->
the head's losses and their sum ``loss``. Eval: :meth:`SingleStageDetector.predict` -> per image ``boxes``,
``labels``, ``scores`` in original-image pixels when ``ori_shapes`` is given.

State-dict keys: ``backbone.*`` and ``bbox_head.*`` are the official ones, the FPN torchvision's
(:func:`~.keymap.single_stage_from_mmdet` translates).
"""
from __future__ import annotations

import torch
from torch import nn

from ...config.errors import ConfigError
from ...config.keys import Fixed, Param, Raw, parse
from ..registry import DETECTORS, build_detection_backbone
from .dense_heads import ATSSHead, GFLHead
from .fpn import FPN
from .mask_rcnn import FixedStrideAnchorGenerator, MaskRCNN, padded_shape

_ANCHORS = {"type": Fixed("AnchorGenerator"), "ratios": Fixed([1.0]),
            "octave_base_scale": Param("octave_base_scale", (int,), 8, minimum=1), "scales_per_octave": Fixed(1),
            "strides": Param("anchor_strides", (list, tuple)), "center_offset": Fixed(0.0)}
_NORM = {"type": Fixed("GN"), "num_groups": Param("gn_groups", (int,), 32, minimum=1), "requires_grad": Fixed(True)}
_HEAD_COMMON = {
    "num_classes": Param("num_classes", (int,), minimum=1), "in_channels": Param("head_in_channels", (int,)),
    "stacked_convs": Param("stacked_convs", (int,), 4, minimum=0),
    "feat_channels": Param("feat_channels", (int,), 256, minimum=1),
    "conv_cfg": Fixed(None), "norm_cfg": _NORM, "anchor_generator": _ANCHORS, "init_cfg": Fixed(None),
    "loss_bbox": {"type": Fixed("GIoULoss"), "loss_weight": Param("loss_bbox_weight", (float,), 2.0),
                  "eps": Fixed(1e-6), "reduction": Fixed("mean")},
}
_ATSS_HEAD = dict(_HEAD_COMMON, **{
    "type": Fixed("ATSSHead"), "pred_kernel_size": Fixed(3), "reg_decoded_bbox": Fixed(True),
    "bbox_coder": {"type": Fixed("DeltaXYWHBBoxCoder"), "target_means": Fixed([0.0] * 4),
                   "target_stds": Param("target_stds", (list, tuple), (0.1, 0.1, 0.2, 0.2)),
                   "clip_border": Fixed(True), "add_ctr_clamp": Fixed(False)},
    "loss_cls": {"type": Fixed("FocalLoss"), "use_sigmoid": Fixed(True), "gamma": Param("gamma", (float,), 2.0),
                 "alpha": Param("alpha", (float,), 0.25), "loss_weight": Param("loss_cls_weight", (float,), 1.0),
                 "reduction": Fixed("mean")},
    "loss_centerness": {"type": Fixed("CrossEntropyLoss"), "use_sigmoid": Fixed(True),
                        "loss_weight": Param("loss_centerness_weight", (float,), 1.0), "reduction": Fixed("mean")},
})
_GFL_HEAD = dict(_HEAD_COMMON, **{
    "type": Fixed("GFLHead"), "reg_max": Param("reg_max", (int,), 16, minimum=1),
    "bbox_coder": {"type": Fixed("DistancePointBBoxCoder"), "clip_border": Fixed(True)},
    "loss_cls": {"type": Fixed("QualityFocalLoss"), "use_sigmoid": Fixed(True), "beta": Param("beta", (float,), 2.0),
                 "loss_weight": Param("loss_cls_weight", (float,), 1.0), "reduction": Fixed("mean"),
                 "activated": Fixed(False)},
    "loss_dfl": {"type": Fixed("DistributionFocalLoss"), "loss_weight": Param("loss_dfl_weight", (float,), 0.25),
                 "reduction": Fixed("mean")},
})
_TRAIN = {"assigner": {"type": Fixed("ATSSAssigner"), "topk": Param("topk", (int,), 9, minimum=1),
                       "ignore_iof_thr": Fixed(-1), "iou_calculator": Fixed({"type": "BboxOverlaps2D"})},
          "allowed_border": Fixed(-1), "pos_weight": Fixed(-1), "debug": Fixed(False)}
_TEST = {"nms_pre": Param("nms_pre", (int,), 1000, minimum=1), "min_bbox_size": Fixed(0),
         "score_thr": Param("score_thr", (float,), 0.05),
         "nms": {"type": Fixed("nms"), "iou_threshold": Param("nms_iou", (float,), 0.6)},
         "max_per_img": Param("max_per_img", (int,), 100, minimum=1)}


def _spec(kind: str, head: dict) -> dict:
    return {"type": Fixed(kind), "backbone": Raw("backbone"), "neck": Raw("neck"), "bbox_head": head,
            "pretrained": Param("pretrained", (str, type(None)), None), "init_cfg": Fixed(None),
            "train_cfg": _TRAIN, "test_cfg": _TEST}


class SingleStageDetector(nn.Module):
    """Backbone (4 maps, strides 4-32) -> FPN -> dense head; see the module docstring. Subclasses say their official
    ``type`` (class name), head spec (``HEAD_SPEC``) and build the head (:meth:`_head`)."""

    task = "detection"  # the task that trains it (models.registry.task_of)
    with_mask = False   # boxes only: evaluation.metric 'bbox'
    HEAD_SPEC: dict = {}

    def __init__(self, backbone: nn.Module, neck: FPN, bbox_head: nn.Module, anchor_generator, pretrained=None):
        super().__init__()
        self.backbone, self.neck, self.bbox_head = backbone, neck, bbox_head
        self.anchor_generator = anchor_generator
        self.num_classes = bbox_head.num_classes
        self.pretrained = pretrained

    @classmethod
    def _head(cls, p: dict, num_levels: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: dict, where: str = "model"):
        """Build from the official mmdet ``model=dict(type=..., backbone, neck, bbox_head, train_cfg, test_cfg)``:
        every key checked, the dotted path named in errors; official keys without a knob here are accepted only
        with their official value. The backbone's ``pretrained`` file is recorded (read by the builder)."""
        p = parse(cfg, _spec(cls.__name__, cls.HEAD_SPEC), where)
        b = p["backbone"]
        backbone, pretrained = build_detection_backbone(b, p["pretrained"], where)
        neck_cfg = p["neck"]
        if not isinstance(neck_cfg, dict) or neck_cfg.get("type", "FPN") != "FPN":
            raise ConfigError(f"recipe: {where}.neck must be dict(type='FPN', ...) for {cls.__name__}")
        neck = FPN.from_config(neck_cfg, f"{where}.neck")
        hw = f"{where}.bbox_head"
        if p["head_in_channels"] != neck.out_channels:
            raise ConfigError(f"recipe: {hw}.in_channels={p['head_in_channels']} must equal the neck's "
                              f"out_channels {neck.out_channels}")
        strides = [int(s) for s in p["anchor_strides"]]
        expect = [4 * 2 ** (neck.start_level + j) for j in range(len(neck.names))]
        if strides != expect:
            raise ConfigError(f"recipe: {hw}.anchor_generator.strides={strides} must be the strides of the neck's "
                              f"{len(neck.names)} levels {expect} (backbone strides 4-32, neck start_level "
                              f"{neck.start_level})")
        if p["feat_channels"] % p["gn_groups"]:
            raise ConfigError(f"recipe: {hw}.feat_channels={p['feat_channels']} is not a multiple of "
                              f"norm_cfg.num_groups={p['gn_groups']}")
        if len(p.get("target_stds", (0,) * 4)) != 4:
            raise ConfigError(f"recipe: {hw}.bbox_coder.target_stds must have 4 values")
        anchors = FixedStrideAnchorGenerator(strides, (p["octave_base_scale"],), (1.0,))
        return cls(backbone, neck, cls._head(p, len(strides)), anchors, pretrained=pretrained)

    # ----------------------------------------------------------------------------------------------------------
    def extract_feat(self, images):
        return list(self.neck(self.backbone(images)).values())

    def level_anchors(self, feats) -> list[torch.Tensor]:
        """Per level (H W, 4) float32 anchors of the feature maps (mmdet ``grid_priors``, (h, w) order)."""
        gen, device = self.anchor_generator, feats[0].device
        gen.set_cell_anchors(torch.float32, device)
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in gen.strides]
        return [a.float() for a in gen.grid_anchors([list(f.shape[-2:]) for f in feats], strides)]

    def forward(self, images, targets=None, image_sizes=None):
        """Train mode: the loss dict (module docstring); eval mode: :meth:`predict`."""
        if not self.training:
            return self.predict(images, image_sizes)
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError("training needs one target dict per image")
        sizes = MaskRCNN._image_sizes(images, targets, image_sizes)
        feats = self.extract_feat(images)
        outs = self.bbox_head(feats)
        levels = self.level_anchors(feats)
        grid = [tuple(f.shape[-2:]) for f in feats]
        valid, tg = [], []
        for t, size in zip(targets, sizes):
            pad = tuple(int(v) for v in t["pad_shape"][:2]) if t.get("pad_shape") is not None else padded_shape(size)
            valid.append(self.anchor_generator.valid_flags(grid, pad, images.device))
            tg.append({"boxes": t["boxes"].to(images.device, torch.float32).reshape(-1, 4),
                       "labels": t["labels"].to(images.device, torch.int64).reshape(-1)})
        losses = self.bbox_head.loss(outs, torch.cat(levels), torch.stack(valid), [len(a) for a in levels], tg)
        losses["loss"] = sum(losses.values())
        return losses

    @torch.no_grad()
    def predict(self, images, image_sizes=None, ori_shapes=None):
        """Detections per image: ``boxes`` (K, 4), ``labels`` (K,) 0-based, ``scores`` (K,); ``image_sizes``:
        unpadded (h, w) of each resized image (default: padded size); ``ori_shapes``: original (h, w) the boxes
        are scaled to (default: ``image_sizes``)."""
        sizes = MaskRCNN._image_sizes(images, None, image_sizes)
        oris = ori_shapes if ori_shapes is not None else sizes
        feats = self.extract_feat(images)
        outs = self.bbox_head(feats)
        factors = [(w / float(ow), h / float(oh)) for (h, w), (oh, ow) in zip(sizes, oris)]
        out = []
        for boxes, scores, labels in self.bbox_head.predict(outs, self.level_anchors(feats), sizes, factors):
            out.append({"boxes": boxes.float(), "labels": labels, "scores": scores.float()})
        return out


@DETECTORS.register()
class ATSS(SingleStageDetector):
    """mmdet ``ATSS``: :class:`SingleStageDetector` with :class:`~.dense_heads.ATSSHead`."""

    HEAD_SPEC = _ATSS_HEAD

    @classmethod
    def _head(cls, p, num_levels):
        return ATSSHead(p["num_classes"], p["head_in_channels"], p["feat_channels"], p["stacked_convs"], num_levels,
                        topk=p["topk"], target_stds=p["target_stds"], gamma=p["gamma"], alpha=p["alpha"],
                        loss_cls_weight=p["loss_cls_weight"], loss_bbox_weight=p["loss_bbox_weight"],
                        loss_centerness_weight=p["loss_centerness_weight"], score_thr=p["score_thr"],
                        nms_pre=p["nms_pre"], nms_iou=p["nms_iou"], max_per_img=p["max_per_img"],
                        gn_groups=p["gn_groups"])


@DETECTORS.register()
class GFL(SingleStageDetector):
    """mmdet ``GFL``: :class:`SingleStageDetector` with :class:`~.dense_heads.GFLHead`."""

    HEAD_SPEC = _GFL_HEAD

    @classmethod
    def _head(cls, p, num_levels):
        return GFLHead(p["num_classes"], p["head_in_channels"], p["feat_channels"], p["stacked_convs"],
                       tuple(p["anchor_strides"]), topk=p["topk"], reg_max=p["reg_max"], beta=p["beta"],
                       loss_cls_weight=p["loss_cls_weight"], loss_bbox_weight=p["loss_bbox_weight"],
                       loss_dfl_weight=p["loss_dfl_weight"], score_thr=p["score_thr"], nms_pre=p["nms_pre"],
                       nms_iou=p["nms_iou"], max_per_img=p["max_per_img"], gn_groups=p["gn_groups"])


__all__ = ["ATSS", "GFL", "SingleStageDetector"]
