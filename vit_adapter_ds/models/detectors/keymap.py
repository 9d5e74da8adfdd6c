"""State-dict key mapping between official mmdet 2.x Mask R-CNN checkpoints and :class:`~.mask_rcnn.MaskRCNN`.

Released ViT-Adapter detection checkpoints are mmcv files ``{'meta', 'state_dict'[, 'optimizer']}`` whose
``state_dict`` keys are ``backbone.*`` (the backbone's own keys, identical here), ``neck.*``, ``rpn_head.*`` and
``roi_head.*``. The mapping (mmdet -> here; ``C`` = number of classes):

=============================================  ===========================================  ======================
mmdet                                          here                                         tensor change
=============================================  ===========================================  ======================
``backbone.<k>``                               ``backbone.<k>``                             --
``neck.lateral_convs.i.conv.{weight,bias}``    ``neck.fpn.inner_blocks.i.0.{weight,bias}``  --
``neck.fpn_convs.i.conv.{weight,bias}``        ``neck.fpn.layer_blocks.i.0.{weight,bias}``  --
``neck.convs.i.conv.{weight,bias}``            ``neck.convs.i.conv.{weight,bias}``          -- (no-FPN neck)
``rpn_head.rpn_conv.*``                        ``rpn.head.conv.0.0.*``                      --
``rpn_head.rpn_cls.*``                         ``rpn.head.cls_logits.*``                    -- (A = 3 sigmoid logits)
``rpn_head.rpn_reg.*``                         ``rpn.head.bbox_pred.*``                     --
``roi_head.bbox_head.shared_fcs.0.*``          ``roi_heads.box_head.fc6.*``                 --
``roi_head.bbox_head.shared_fcs.1.*``          ``roi_heads.box_head.fc7.*``                 --
``roi_head.bbox_head.fc_cls.*`` (C + 1)        ``roi_heads.box_predictor.cls_score.*``      background row moves
                                                                                            from last to first
``roi_head.bbox_head.fc_reg.*`` (4 C)          ``roi_heads.box_predictor.bbox_pred.*``      4 zero background rows
                                               (4 (C + 1))                                  prepended
``roi_head.mask_head.convs.i.conv.*``          ``roi_heads.mask_head.i.0.*``                --
``roi_head.mask_head.upsample.*``              ``roi_heads.mask_predictor.conv5_mask.*``    --
``roi_head.mask_head.conv_logits.*`` (C)       ``roi_heads.mask_predictor.mask_fcn_logits.*``  1 zero background
                                               (C + 1)                                      channel prepended
=============================================  ===========================================  ======================

The upgraded Mask R-CNN's parts (norms after the FPN and mask convs, ``rpn_head.num_convs=2``,
``Shared4Conv1FCBBoxHead``) add: ``neck.{lateral,fpn}_convs.i.bn.*`` = ``neck.fpn.{inner,layer}_blocks.i.1.*``,
``roi_head.mask_head.convs.i.bn.*`` = ``roi_heads.mask_head.i.1.*``, ``rpn_head.rpn_conv.{i}.conv.*`` (mmdet's
ConvModules when ``num_convs > 1``) = ``rpn.head.conv.{i}.0.*``, and ``roi_head.bbox_head.*`` of a
``Shared4Conv1FCBBoxHead`` (``shared_convs.i.{conv,bn}``, ``shared_fcs.0``, ``fc_cls``, ``fc_reg``) =
``roi_heads.box_head.*`` with the same names and tensors (mmdet's class order is kept there); which layout a
state dict has is read from its keys (``shared_convs`` / ``rpn_conv.1``).

The background rows of the box regressor and mask logits exist only in torchvision's layout and are never used
(regression and masks are read at the ground-truth / predicted class): export drops them, so
mmdet -> here -> mmdet is exact. The RPN's anchor order (ratio-major, per location) and the channel layout of
``rpn_cls`` / ``rpn_reg`` (``a * 4 + k``) are the same in both.
"""
from __future__ import annotations

import re

import torch

_RENAMES = [  # (mmdet regex, ours template); applied to keys after the prefix
    (r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"neck.fpn.inner_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", r"neck.fpn.layer_blocks.\1.0.\2"),
    (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
    (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1"),
    (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)", r"roi_heads.box_head.fc6.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)", r"roi_heads.box_head.fc7.\1"),
    (r"roi_head\.bbox_head\.fc_cls\.(weight|bias)", r"roi_heads.box_predictor.cls_score.\1"),
    (r"roi_head\.bbox_head\.fc_reg\.(weight|bias)", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)", r"roi_heads.mask_head.\1.0.\2"),
    (r"roi_head\.mask_head\.upsample\.(weight|bias)", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"roi_head\.mask_head\.conv_logits\.(weight|bias)", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
    # the no-FPN neck (ChannelMapperWithPooling) keeps the official names; last, so the cascade's table[:5] is unchanged
    (r"neck\.convs\.(\d+)\.conv\.(weight|bias)", r"neck.convs.\1.conv.\2"),
    # the upgraded Mask R-CNN's norms and RPN ConvModules (num_convs > 1)
    (r"neck\.lateral_convs\.(\d+)\.bn\.(\w+)", r"neck.fpn.inner_blocks.\1.1.\2"),
    (r"neck\.fpn_convs\.(\d+)\.bn\.(\w+)", r"neck.fpn.layer_blocks.\1.1.\2"),
    (r"roi_head\.mask_head\.convs\.(\d+)\.bn\.(\w+)", r"roi_heads.mask_head.\1.1.\2"),
    (r"rpn_head\.rpn_conv\.(\d+)\.conv\.(weight|bias)", r"rpn.head.conv.\1.0.\2"),
]
_CONVFC = (r"roi_head\.bbox_head\.((shared_convs|shared_fcs)\.\d+\.[\w.]+|(fc_cls|fc_reg)\.(weight|bias))",
           r"roi_heads.box_head.\1")  # Shared4Conv1FCBBoxHead: names and tensors kept
_BACK = [  # ours regex -> mmdet template
    (r"neck\.fpn\.inner_blocks\.(\d+)\.0\.(weight|bias)", r"neck.lateral_convs.\1.conv.\2"),
    (r"neck\.fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)", r"neck.fpn_convs.\1.conv.\2"),
    (r"rpn\.head\.conv\.0\.0\.(weight|bias)", r"rpn_head.rpn_conv.\1"),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn_head.rpn_cls.\1"),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn_head.rpn_reg.\1"),
    (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"roi_head.bbox_head.shared_fcs.0.\1"),
    (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"roi_head.bbox_head.shared_fcs.1.\1"),
    (r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", r"roi_head.bbox_head.fc_cls.\1"),
    (r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", r"roi_head.bbox_head.fc_reg.\1"),
    (r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)", r"roi_head.mask_head.convs.\1.conv.\2"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"roi_head.mask_head.upsample.\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"roi_head.mask_head.conv_logits.\1"),
    (r"neck\.convs\.(\d+)\.conv\.(weight|bias)", r"neck.convs.\1.conv.\2"),
    (r"neck\.fpn\.inner_blocks\.(\d+)\.1\.(\w+)", r"neck.lateral_convs.\1.bn.\2"),
    (r"neck\.fpn\.layer_blocks\.(\d+)\.1\.(\w+)", r"neck.fpn_convs.\1.bn.\2"),
    (r"roi_heads\.mask_head\.(\d+)\.1\.(\w+)", r"roi_head.mask_head.convs.\1.bn.\2"),
    (r"roi_heads\.box_head\.((shared_convs|shared_fcs)\.\d+\.[\w.]+|(fc_cls|fc_reg)\.(weight|bias))",
     r"roi_head.bbox_head.\1"),
]
_RPN_CONVS_BACK = (r"rpn\.head\.conv\.(\d+)\.0\.(weight|bias)", r"rpn_head.rpn_conv.\1.conv.\2")  # num_convs > 1


class KeyMapError(KeyError):
    """A key that belongs to neither layout (the message names it)."""

    def __str__(self):
        return str(self.args[0])


def _rename(key, table, what):
    if key.startswith("backbone."):
        return key
    for pat, rep in table:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    raise KeyMapError(f"{what} key {key!r} has no counterpart (known: backbone.*, neck, rpn_head, roi_head "
                      "bbox/mask heads of Mask R-CNN)")


def unwrap(checkpoint) -> dict:
    """The state dict of an mmcv checkpoint (``{'state_dict': ...}``) or a plain state dict; strips ``module.``."""
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def from_mmdet(state_dict: dict) -> dict:
    """Official mmdet Mask R-CNN state dict (or mmcv checkpoint) -> this package's ``MaskRCNN`` state dict."""
    out = {}
    sd = unwrap(state_dict)
    table = ([_CONVFC] if any(k.startswith("roi_head.bbox_head.shared_convs.") for k in sd) else []) + _RENAMES
    for k, v in sd.items():
        new = _rename(k, table, "mmdet")
        if new.endswith("cls_score.weight") or new.endswith("cls_score.bias"):
            v = torch.cat([v[-1:], v[:-1]], dim=0)          # [fg 0..C-1, bg] -> [bg, fg]
        elif new.endswith("bbox_pred.weight") and new.startswith("roi_heads"):
            v = torch.cat([v.new_zeros(4, *v.shape[1:]), v], dim=0)
        elif new.endswith("bbox_pred.bias") and new.startswith("roi_heads"):
            v = torch.cat([v.new_zeros(4), v], dim=0)
        elif "mask_fcn_logits" in new:
            v = torch.cat([v.new_zeros(1, *v.shape[1:]), v], dim=0)
        out[new] = v
    return out


def to_mmdet(state_dict: dict) -> dict:
    """This package's ``MaskRCNN`` state dict -> the official mmdet key layout (background rows of the box
    regressor and mask logits dropped, background class moved last)."""
    out = {}
    sd = unwrap(state_dict)
    table = ([_RPN_CONVS_BACK] if "rpn.head.conv.1.0.weight" in sd else []) + _BACK
    for k, v in sd.items():
        new = _rename(k, table, "MaskRCNN")
        if k.startswith("roi_heads.box_predictor.cls_score."):
            v = torch.cat([v[1:], v[:1]], dim=0)
        elif k.startswith("roi_heads.box_predictor.bbox_pred."):
            v = v[4:]
        elif new.startswith("roi_head.mask_head.conv_logits."):
            v = v[1:]
        out[new] = v.clone()
    return out


def load_mmdet_checkpoint(model, checkpoint, strict: bool = True):
    """Load an official mmdet Mask R-CNN checkpoint (dict, already read with ``torch.load(...,
    weights_only=True)``) into ``model``; returns ``model.load_state_dict``'s result."""
    return model.load_state_dict(from_mmdet(checkpoint), strict=strict)


# --------------------------------------------------------------------------------------------------- HTC++
_HTC_RENAMES = [
    (r"neck\.(\d+)\.lateral_convs\.(\d+)\.conv\.(weight|bias)", r"neck.\1.fpn.inner_blocks.\2.0.\3"),
    (r"neck\.(\d+)\.fpn_convs\.(\d+)\.conv\.(weight|bias)", r"neck.\1.fpn.layer_blocks.\2.0.\3"),
    # the FPN's GroupNorm (norm_cfg GN, the Objects365 -> COCO recipes): mmcv ConvModule's 'gn'
    (r"neck\.(\d+)\.lateral_convs\.(\d+)\.gn\.(weight|bias)", r"neck.\1.fpn.inner_blocks.\2.1.\3"),
    (r"neck\.(\d+)\.fpn_convs\.(\d+)\.gn\.(weight|bias)", r"neck.\1.fpn.layer_blocks.\2.1.\3"),
    (r"rpn_head\.rpn_conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
    (r"rpn_head\.rpn_cls\.(weight|bias)", r"rpn.head.cls_logits.\1"),
    (r"rpn_head\.rpn_reg\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
]
_HTC_BACK = [
    (r"neck\.(\d+)\.fpn\.inner_blocks\.(\d+)\.0\.(weight|bias)", r"neck.\1.lateral_convs.\2.conv.\3"),
    (r"neck\.(\d+)\.fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)", r"neck.\1.fpn_convs.\2.conv.\3"),
    (r"neck\.(\d+)\.fpn\.inner_blocks\.(\d+)\.1\.(weight|bias)", r"neck.\1.lateral_convs.\2.gn.\3"),
    (r"neck\.(\d+)\.fpn\.layer_blocks\.(\d+)\.1\.(weight|bias)", r"neck.\1.fpn_convs.\2.gn.\3"),
    (r"rpn\.head\.conv\.0\.0\.(weight|bias)", r"rpn_head.rpn_conv.\1"),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn_head.rpn_cls.\1"),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn_head.rpn_reg.\1"),
]
_HTC_SAME = re.compile(r"(backbone\.|neck\.\d+\.(norm1|norm2|attn|ffn|final_norm|gamma_1|gamma_2)|"
                       r"roi_head\.(bbox_head|mask_head)\.\d+\.|roi_head\.semantic_head\.)")


def _htc_rename(key, table, what):
    if _HTC_SAME.match(key):
        return key  # ExtraAttention, the cascade heads and the semantic head keep the official names
    for pat, rep in table:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    raise KeyMapError(f"{what} key {key!r} has no counterpart in the HTC++ layout")


def htc_from_mmdet(state_dict: dict) -> dict:
    """Official mmdet HTC++ state dict -> :class:`~.htc.HybridTaskCascade` (only the FPN and RPN are renamed; the
    ExtraAttention neck, the cascade heads and the semantic head use the official names and class order)."""
    return {_htc_rename(k, _HTC_RENAMES, "mmdet"): v for k, v in unwrap(state_dict).items()}


def htc_to_mmdet(state_dict: dict) -> dict:
    """:class:`~.htc.HybridTaskCascade` state dict -> the official mmdet HTC++ key layout."""
    return {_htc_rename(k, _HTC_BACK, "HybridTaskCascade"): v.clone() for k, v in unwrap(state_dict).items()}


# ------------------------------------------------------------------------------------------- Cascade Mask R-CNN
_CASCADE_SAME = re.compile(r"(backbone\.|roi_head\.(bbox_head|mask_head)\.\d+\.)")


def _cascade_rename(key, table, what):
    if _CASCADE_SAME.match(key):
        return key  # the stages' ConvFCBBoxHead / FCNMaskHead keep the official names and class order
    for pat, rep in table[:5]:  # the FPN and RPN entries of the Mask R-CNN tables
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    raise KeyMapError(f"{what} key {key!r} has no counterpart in the Cascade Mask R-CNN layout")


def cascade_from_mmdet(state_dict: dict) -> dict:
    """Official mmdet Cascade Mask R-CNN state dict -> :class:`~.cascade_mask_rcnn.CascadeRCNN` (the FPN and RPN
    renamed as for Mask R-CNN; ``roi_head.bbox_head.{i}.*`` / ``roi_head.mask_head.{i}.*`` unchanged)."""
    return {_cascade_rename(k, _RENAMES, "mmdet"): v for k, v in unwrap(state_dict).items()}


def cascade_to_mmdet(state_dict: dict) -> dict:
    """:class:`~.cascade_mask_rcnn.CascadeRCNN` state dict -> the official mmdet Cascade Mask R-CNN key layout."""
    return {_cascade_rename(k, _BACK, "CascadeRCNN"): v.clone() for k, v in unwrap(state_dict).items()}


# ------------------------------------------------------------------------------------------------- Sparse R-CNN
_SPARSE_SAME = re.compile(r"(backbone\.|rpn_head\.init_proposal_(bboxes|features)\.weight$|roi_head\.bbox_head\.\d+\.)")
_SPARSE_OURS = re.compile(r"neck\.fpn\.(inner|layer)_blocks\.\d+\.0\.(weight|bias)$")


def _sparse_rename(key, table, what, keep):
    if _SPARSE_SAME.match(key) or keep.match(key):
        return key  # EmbeddingRPNHead and the DIIHead stages keep the official names
    for pat, rep in table[:2]:  # the FPN entries of the Mask R-CNN tables
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    raise KeyMapError(f"{what} key {key!r} has no counterpart in the Sparse R-CNN layout (backbone.*, neck lateral / "
                      "fpn convs, rpn_head.init_proposal_*, roi_head.bbox_head.*)")


def sparse_from_mmdet(state_dict: dict) -> dict:
    """Official mmdet Sparse R-CNN state dict -> :class:`~.sparse_rcnn.SparseRCNN` (only the FPN renamed as for Mask
    R-CNN; a state dict already in this layout, whose ``rpn_head.*`` keys are the official ones, is unchanged)."""
    return {_sparse_rename(k, _RENAMES, "mmdet", _SPARSE_OURS): v for k, v in unwrap(state_dict).items()}


def sparse_to_mmdet(state_dict: dict) -> dict:
    """:class:`~.sparse_rcnn.SparseRCNN` state dict -> the official mmdet Sparse R-CNN key layout."""
    return {_sparse_rename(k, _BACK, "SparseRCNN", re.compile(r"neck\.(lateral|fpn)_convs\.\d+\.conv\.")): v.clone()
            for k, v in unwrap(state_dict).items()}


# --------------------------------------------------------------------------------------- one-stage (ATSS, GFL)
# backbone.* and bbox_head.* keep the official names (ATSSHead / GFLHead modules are named as mmdet's); the FPN's
# n lateral / output convs are renamed as for Mask R-CNN, its extra convs fpn_convs.{n + j} <-> extra_blocks.convs.j
_ONE_STAGE_SAME = re.compile(r"(backbone|bbox_head)\.")


def _one_stage_neck(key, n, to_ours):
    if to_ours:
        m = re.fullmatch(r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", key)
        if m and int(m.group(1)) >= n:
            return f"neck.fpn.extra_blocks.convs.{int(m.group(1)) - n}.{m.group(2)}"
        table = _RENAMES[:2]
    else:
        m = re.fullmatch(r"neck\.fpn\.extra_blocks\.convs\.(\d+)\.(weight|bias)", key)
        if m:
            return f"neck.fpn_convs.{int(m.group(1)) + n}.conv.{m.group(2)}"
        table = _BACK[:2]
    for pat, rep in table:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    raise KeyMapError(f"{'mmdet' if to_ours else 'one-stage detector'} key {key!r} has no counterpart in the "
                      "ATSS / GFL layout (backbone.*, neck lateral / fpn convs, bbox_head.*)")


def single_stage_from_mmdet(state_dict: dict) -> dict:
    """Official mmdet ATSS / GFL state dict -> :class:`~.single_stage.SingleStageDetector` (only the FPN renamed)."""
    sd = unwrap(state_dict)
    n = len({k.split(".")[2] for k in sd if k.startswith("neck.lateral_convs.")})
    return {k if _ONE_STAGE_SAME.match(k) else _one_stage_neck(k, n, True): _scale_shape(k, v, (1,))
            for k, v in sd.items()}


def single_stage_to_mmdet(state_dict: dict) -> dict:
    """:class:`~.single_stage.SingleStageDetector` state dict -> the official mmdet ATSS / GFL key layout."""
    sd = unwrap(state_dict)
    n = len({k.split(".")[3] for k in sd if k.startswith("neck.fpn.inner_blocks.")})
    return {(k if _ONE_STAGE_SAME.match(k) else _one_stage_neck(k, n, False)): _scale_shape(k, v, ()).clone()
            for k, v in sd.items()}


# --------------------------------------------------------------------------------------- Mask2Former (panoptic)
# mmdet's Mask2FormerHead and the project's head (mmseg_custom's copy) name every module alike, and the fusion head
# has no parameters: backbone.* and panoptic_head.* are the same keys both ways (mmseg's unused conv_seg is not in
# the mmdet head); a key of any other part is refused
_M2F_SAME = re.compile(r"(backbone|panoptic_head)\.")


def _m2f_same(state_dict: dict, what: str) -> dict:
    sd = unwrap(state_dict)
    bad = [k for k in sd if not _M2F_SAME.match(k) or k.startswith("panoptic_head.conv_seg.")]
    if bad:
        raise KeyMapError(f"{what} key {bad[0]!r} has no counterpart in the Mask2Former layout (backbone.*, "
                          "panoptic_head.*)")
    return dict(sd)


def m2f_panoptic_from_mmdet(state_dict: dict) -> dict:
    """Official mmdet Mask2Former (panoptic) state dict -> :class:`~.mask2former_panoptic.Mask2Former` (same keys)."""
    return _m2f_same(state_dict, "mmdet")


def m2f_panoptic_to_mmdet(state_dict: dict) -> dict:
    """:class:`~.mask2former_panoptic.Mask2Former` state dict -> the official mmdet layout (same keys)."""
    return {k: v.clone() for k, v in _m2f_same(state_dict, "Mask2Former").items()}


def _scale_shape(key, value, shape):
    """mmcv ``Scale.scale`` is 0-dim in official checkpoints, shape (1,) here (:class:`~.dense_heads.Scale`)."""
    return value.reshape(shape) if re.fullmatch(r"bbox_head\.scales\.\d+\.scale", key) else value


def _converters(model_or_type):
    """(from_mmdet, to_mmdet) for a detector (instance, class or ``model.type`` name), or None."""
    from .cascade_mask_rcnn import CascadeRCNN
    from .htc import HybridTaskCascade
    from .mask_rcnn import MaskRCNN

    if isinstance(model_or_type, str):
        from ..registry import DETECTORS
        cls = DETECTORS.get(model_or_type)
    else:
        cls = model_or_type if isinstance(model_or_type, type) else type(model_or_type)
    if cls is None:
        return None
    from .single_stage import SingleStageDetector

    if issubclass(cls, SingleStageDetector):
        return single_stage_from_mmdet, single_stage_to_mmdet
    if issubclass(cls, CascadeRCNN):
        return cascade_from_mmdet, cascade_to_mmdet
    from .sparse_rcnn import SparseRCNN

    if issubclass(cls, SparseRCNN):
        return sparse_from_mmdet, sparse_to_mmdet
    from .mask2former_panoptic import Mask2Former

    if issubclass(cls, Mask2Former):
        return m2f_panoptic_from_mmdet, m2f_panoptic_to_mmdet
    if issubclass(cls, HybridTaskCascade):  # HybridTaskCascadeAug included
        return htc_from_mmdet, htc_to_mmdet
    if issubclass(cls, MaskRCNN):
        return from_mmdet, to_mmdet
    return None


def is_mmdet_layout(state_dict: dict) -> bool:
    """A state dict in the official mmdet layout (``rpn_head.*``; one-stage detectors: ``neck.lateral_convs.*``), e.g.
    a released ViT-Adapter detection checkpoint."""
    return any(k.startswith(("rpn_head.", "neck.lateral_convs.")) for k in state_dict)


def mmdet_checkpoint_filter(state_dict: dict, model, report=None) -> dict:
    """``checkpoint.loading.load_into`` filter for detectors: a state dict in the official mmdet layout -> this package's
    keys (MaskRCNN / HybridTaskCascade and its TTA subclass / CascadeRCNN); any other state dict is returned as it
    is."""
    from ...checkpoint.reader import CheckpointError

    if not is_mmdet_layout(state_dict):
        return state_dict
    conv = _converters(model)
    if conv is None:
        raise CheckpointError(f"no mapping of official mmdet keys for {type(model).__name__}")
    try:
        out = conv[0](state_dict)
    except KeyError as e:  # KeyMapError: a key of no known part
        raise CheckpointError(e.args[0] if e.args else str(e)) from e
    if report is not None:
        report.notes.append("official mmdet key layout converted (models/detectors/keymap.py)")
    return out


def to_official(state_dict: dict, model_type: str) -> dict:
    """A detector's state dict -> the official mmdet layout (``launch/export.py --format mmcv``), by ``model.type``;
    KeyError for a type without a mapping."""
    conv = _converters(model_type)
    if conv is None:
        raise KeyError(f"no official mmdet key layout for model.type={model_type!r}")
    return conv[1](state_dict)
