"""The official-pipeline translator: an mmdet / mmseg recipe's ``pipeline`` step list -> what this package's
loaders and test-time code take, for every task (the detection loaders, the test-time augmentation settings; the
``img_norm_cfg`` of the segmentation recipes). Every step, key or value that is not implemented raises ConfigError
naming it (``recipe: data.train.pipeline[3].crop_size ...``). Plain Python: no torch.

* :func:`train_ops_from_pipeline`: a detection train pipeline -> ``{'ops', 'mean', 'std'}``
  (the ops are :func:`~vit_adapter_ds.data.det_transforms.apply_ops`'s);
* :func:`test_cfg_from_pipeline`: a single-scale test pipeline -> ``{'scale', 'mean', 'std'}``;
* :func:`tta_from_pipeline`: a test pipeline's test-time augmentation (several scales, flip) or None;
* :func:`has_semantic_maps`: whether a train pipeline loads the semantic maps (HTC++);
* :func:`seg_train_kwargs_from_pipeline`: an mmseg train pipeline -> the segmentation TrainLoader's arguments;
* :func:`seg_test_settings_from_pipeline`: an mmseg test pipeline -> the segmentation evaluation settings (test
  scale, ResizeToMultiple, ratios, flip, PadShortSide, SETR_Resize, mean / std);
* :func:`norm_cfg`: ``Normalize`` / ``img_norm_cfg`` -> ``(mean, std)``.
"""
from __future__ import annotations

from ..config.errors import ConfigError

SEG_IGNORE = 255  # semantic-map padding / ignore value (mmdet's seg pad value, the HTC semantic head's ignore_index)


def _keys(step, allowed, where):
    unknown = sorted(k for k in step if k not in allowed and k != "type")
    if unknown:
        raise ConfigError(f"recipe: {where}.{unknown[0]}: unknown or unsupported key (valid: {sorted(allowed)})")


def _fixed(step, key, value, where, default=None):
    v = step.get(key, default)
    if v != value and not (isinstance(v, (list, tuple)) and isinstance(value, (list, tuple)) and
                           list(v) == list(value)):
        raise ConfigError(f"recipe: {where}.{key}={v!r} is not supported; only {value!r}")


def _load_image(step, where):
    """mmdet ``LoadImageFromFile``: ``file_client_args`` only as ``dict(backend='disk')`` (the HTC++ Objects365 ->
    COCO recipes write it out; the images come from the shards either way)."""
    _keys(step, {"file_client_args", "to_float32"}, where)
    if not isinstance(step.get("to_float32", False), bool):  # the dtype only: Normalize gives float either way
        raise ConfigError(f"recipe: {where}.to_float32 must be a bool")
    fca = step.get("file_client_args")
    if fca is not None and dict(fca) != {"backend": "disk"}:
        raise ConfigError(f"recipe: {where}.file_client_args={fca!r}: only dict(backend='disk') (images are read "
                          "from the shards)")


def _scales(v, where):
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return ((int(v[0]), int(v[1])),)
    if isinstance(v, list) and v and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
        return tuple((int(x[0]), int(x[1])) for x in v)
    raise ConfigError(f"recipe: {where} must be a (long, short) tuple or a list of them, got {v!r}")


def _resize_op(step, where, resized):
    _keys(step, {"img_scale", "multiscale_mode", "keep_ratio", "override", "bbox_clip_border", "ratio_range"}, where)
    _fixed(step, "keep_ratio", True, where, True)
    _fixed(step, "bbox_clip_border", True, where, True)
    scales = _scales(step.get("img_scale"), where + ".img_scale")
    if resized and not step.get("override", False):
        raise ConfigError(f"recipe: {where}: a second Resize needs override=True (mmdet refuses it otherwise)")
    mode = step.get("multiscale_mode", "range")
    if mode not in ("range", "value"):
        raise ConfigError(f"recipe: {where}.multiscale_mode={mode!r} is not supported; only 'value' or 'range'")
    rr = step.get("ratio_range")
    if rr is not None:  # mmdet random_sample_ratio of the one scale (multiscale_mode is then not used)
        if len(scales) != 1:
            raise ConfigError(f"recipe: {where}.img_scale: ratio_range takes exactly one scale (mmdet asserts it)")
        if not (isinstance(rr, (list, tuple)) and len(rr) == 2 and
                all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rr) and 0 < rr[0] <= rr[1]):
            raise ConfigError(f"recipe: {where}.ratio_range must be (min, max) with 0 < min <= max, got {rr!r}")
        return ("resize_ratio", (scales[0], (float(rr[0]), float(rr[1]))))
    if len(scales) > 1 and mode == "range":
        if len(scales) != 2:
            raise ConfigError(f"recipe: {where}.img_scale: multiscale_mode='range' takes exactly 2 scales")
        return ("resize_range", scales)
    return ("resize", scales)


def _crop_op(step, where):
    _keys(step, {"crop_type", "crop_size", "allow_negative_crop", "bbox_clip_border", "recompute_bbox"}, where)
    _fixed(step, "crop_type", "absolute_range", where, "absolute")
    _fixed(step, "allow_negative_crop", True, where, False)
    _fixed(step, "bbox_clip_border", True, where, True)
    recompute = step.get("recompute_bbox", False)
    if not isinstance(recompute, bool):
        raise ConfigError(f"recipe: {where}.recompute_bbox must be True or False, got {recompute!r}")
    size = step.get("crop_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(x, int) for x in size)
            and 0 < size[0] <= size[1]):
        raise ConfigError(f"recipe: {where}.crop_size must be (min, max) integers, got {size!r}")
    return ("crop_recompute" if recompute else "crop", (int(size[0]), int(size[1])))


def norm_cfg(step, where):
    """``Normalize(mean, std, to_rgb=True)`` (or an ``img_norm_cfg``) -> ``(mean, std)`` tuples of floats."""
    _keys(step, {"mean", "std", "to_rgb"}, where)
    _fixed(step, "to_rgb", True, where, True)
    mean, std = step.get("mean"), step.get("std")
    if not all(isinstance(v, (list, tuple)) and len(v) == 3 and
               all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) for v in (mean, std)):
        raise ConfigError(f"recipe: {where}: mean and std must be 3 numbers each, got mean={mean!r}, std={std!r}")
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


def _pad(step, where, sized=False):
    """``Pad(size_divisor=32)`` -> None; with ``sized`` (a train pipeline) also ``Pad(size=(h, w))`` -> ``("pad_to",
    (h, w))`` (mmdet pads to that size; the batch is then padded to a multiple of 32 as well, a no-op for sizes that
    are multiples of 32)."""
    _keys(step, {"size_divisor", "pad_val"} | ({"size"} if sized else set()), where)
    op = None
    if sized and "size" in step:
        if "size_divisor" in step:
            raise ConfigError(f"recipe: {where}: size and size_divisor are exclusive (mmdet asserts it)")
        size = step["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and
                all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)):
            raise ConfigError(f"recipe: {where}.size must be (h, w) positive integers, got {size!r}")
        op = ("pad_to", (int(size[0]), int(size[1])))
    else:
        _fixed(step, "size_divisor", 32, where)
    pad_val = step.get("pad_val", 0)
    if pad_val != 0 and pad_val != {"img": 0, "masks": 0, "seg": SEG_IGNORE}:
        raise ConfigError(f"recipe: {where}.pad_val={pad_val!r} is not supported; only 0 or "
                          f"dict(img=0, masks=0, seg={SEG_IGNORE}) (mmdet's default)")
    return op


def _filter_op(step, where):
    """``FilterAnnotations(min_gt_bbox_wh=(w, h))`` (``keep_empty=True``, mmdet's default) -> ``("filter_annotations",
    (w, h))``."""
    _keys(step, {"min_gt_bbox_wh", "keep_empty"}, where)
    _fixed(step, "keep_empty", True, where, True)
    wh = step.get("min_gt_bbox_wh")
    if not (isinstance(wh, (list, tuple)) and len(wh) == 2 and
            all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in wh)):
        raise ConfigError(f"recipe: {where}.min_gt_bbox_wh must be (w, h) non-negative numbers, got {wh!r}")
    return ("filter_annotations", (float(wh[0]), float(wh[1])))


def _instaboost_op(step, where):
    from .instaboost import ACTIONS, InstaBoostParams, require_instaboostfast

    fields = InstaBoostParams.__dataclass_fields__
    _keys(step, set(fields), where)
    kw = {k: step[k] for k in fields if k in step}
    for k in ("action_candidate", "action_prob", "scale", "theta"):
        if k in kw:
            if not isinstance(kw[k], (list, tuple)):
                raise ConfigError(f"recipe: {where}.{k} must be a tuple, got {kw[k]!r}")
            kw[k] = tuple(kw[k])
    p = InstaBoostParams(**kw)
    if not p.action_candidate or any(a not in ACTIONS for a in p.action_candidate):
        raise ConfigError(f"recipe: {where}.action_candidate={p.action_candidate!r}: actions are {ACTIONS}")
    if len(p.action_prob) != len(p.action_candidate) or sum(p.action_prob) != 1 or min(p.action_prob) < 0:
        raise ConfigError(f"recipe: {where}.action_prob={p.action_prob!r}: one probability per action, summing to 1")
    for k in ("scale", "theta"):
        v = getattr(p, k)
        if len(v) != 2 or not all(isinstance(x, (int, float)) for x in v) or v[0] > v[1]:
            raise ConfigError(f"recipe: {where}.{k}={v!r} must be (min, max)")
    if not (isinstance(p.theta[0], int) and isinstance(p.theta[1], int)):
        raise ConfigError(f"recipe: {where}.theta={p.theta!r}: the library draws integer degrees (random.randint)")
    for k in ("dx", "dy"):
        if not isinstance(getattr(p, k), (int, float)) or getattr(p, k) <= 0:
            raise ConfigError(f"recipe: {where}.{k} must be a positive number")
    for k in ("color_prob", "aug_ratio"):
        if not isinstance(getattr(p, k), (int, float)) or not 0 <= getattr(p, k) <= 1:
            raise ConfigError(f"recipe: {where}.{k} must be a probability in [0, 1]")
    if not isinstance(p.hflag, bool):
        raise ConfigError(f"recipe: {where}.hflag must be a bool")
    require_instaboostfast()
    return ("instaboost", p)


def _seg_rescale_op(step, where):
    _keys(step, {"scale_factor", "backend"}, where)
    _fixed(step, "backend", "cv2", where, "cv2")
    f = step.get("scale_factor", 1)
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise ConfigError(f"recipe: {where}.scale_factor={f!r} must be a number in (0, 1]")
    return ("seg_rescale", float(f))


def train_ops_from_pipeline(pipeline, where: str = "train_pipeline") -> dict:
    """Translate an official mmdet train pipeline (list of step dicts) into ``{'ops', 'mean', 'std'}`` for the
    detection loader; every step, key or value this package does not implement raises ConfigError naming it.

    ``InstaBoost`` must directly follow ``LoadImageFromFile`` (it rewrites the annotations that ``LoadAnnotations``
    turns into masks); ``LoadAnnotations(with_seg=True)`` adds the ``load_seg`` marker (the loader then needs shards
    with semantic maps), the ``Pad`` after it ``pad_seg`` and ``SegRescale`` (after ``Pad``, as in HTC)
    ``seg_rescale``; ``Collect`` must then collect ``gt_semantic_seg``."""
    if not isinstance(pipeline, (list, tuple)) or not pipeline:
        raise ConfigError(f"recipe: {where} must be a non-empty list of pipeline steps")
    ops, norm, resized, seen, with_seg, padded = [], None, False, [], False, False
    for i, step in enumerate(pipeline):
        w = f"{where}[{i}]"
        if not isinstance(step, dict) or "type" not in step:
            raise ConfigError(f"recipe: {w} must be a dict with a 'type'")
        t = step["type"]
        seen.append(t)
        if t == "LoadImageFromFile":
            _load_image(step, w)
        elif t == "InstaBoost":
            if seen[:-1] != ["LoadImageFromFile"]:
                raise ConfigError(f"recipe: {w}: InstaBoost must directly follow LoadImageFromFile (before "
                                  "LoadAnnotations, as in mmdet)")
            ops.append(_instaboost_op(step, w))
        elif t == "LoadAnnotations":
            _keys(step, {"with_bbox", "with_mask", "with_label", "poly2mask", "with_seg"}, w)
            for k in ("with_bbox", "with_mask", "with_label", "poly2mask"):
                _fixed(step, k, True, w, True)
            with_seg = step.get("with_seg", False)
            if not isinstance(with_seg, bool):
                raise ConfigError(f"recipe: {w}.with_seg must be a bool")
            if with_seg:
                ops.append(("load_seg", None))
        elif t == "LoadPanopticAnnotations":  # panoptic shards (data/panoptic_loader.py): maps from the PNGs
            _keys(step, {"with_bbox", "with_mask", "with_seg"}, w)
            for k in ("with_bbox", "with_mask", "with_seg"):
                _fixed(step, k, True, w, True)
            with_seg = True
            ops.append(("load_seg", None))
        elif t == "RandomFlip":
            _keys(step, {"flip_ratio", "direction"}, w)
            _fixed(step, "direction", "horizontal", w, "horizontal")
            ops.append(("flip", float(step.get("flip_ratio", 0.5))))
        elif t == "Resize":
            ops.append(_resize_op(step, w, resized))
            resized = True
        elif t == "RandomCrop":
            ops.append(_crop_op(step, w))
        elif t == "AutoAugment":
            _keys(step, {"policies"}, w)
            policies = step.get("policies")
            if not isinstance(policies, (list, tuple)) or not policies:
                raise ConfigError(f"recipe: {w}.policies must be a non-empty list of step lists")
            branches = []
            for j, pol in enumerate(policies):
                branch, r = [], resized
                for k, sub in enumerate(pol):
                    sw = f"{w}.policies[{j}][{k}]"
                    if not isinstance(sub, dict):
                        raise ConfigError(f"recipe: {sw} must be a dict")
                    if sub.get("type") == "Resize":
                        branch.append(_resize_op(sub, sw, r))
                        r = True
                    elif sub.get("type") == "RandomCrop":
                        branch.append(_crop_op(sub, sw))
                    else:
                        raise ConfigError(f"recipe: {sw}.type={sub.get('type')!r} is not supported in AutoAugment "
                                          "here (Resize, RandomCrop)")
                if not r:
                    raise ConfigError(f"recipe: {w}.policies[{j}] must resize the image")
                branches.append(branch)
            ops.append(("autoaugment", tuple(branches)))
            resized = True
        elif t == "Normalize":
            norm = norm_cfg(step, w)
        elif t == "Pad":
            op = _pad(step, w, sized=True)
            padded = True
            if op is not None:
                if with_seg:
                    raise ConfigError(f"recipe: {w}.size: Pad(size) with semantic maps is not implemented")
                ops.append(op)
            if with_seg:
                ops.append(("pad_seg", 32))
        elif t == "FilterAnnotations":
            ops.append(_filter_op(step, w))
        elif t == "SegRescale":
            if not with_seg:
                raise ConfigError(f"recipe: {w}: SegRescale without semantic maps; set "
                                  "LoadAnnotations(with_seg=True) before it")
            if not padded:
                raise ConfigError(f"recipe: {w}: SegRescale must come after Pad (the map is padded like the image, "
                                  "then rescaled, as in mmdet's HTC configs)")
            ops.append(_seg_rescale_op(step, w))
        elif t == "DefaultFormatBundle":
            _keys(step, {"img_to_float"}, w)
            _fixed(step, "img_to_float", True, w, True)  # the loader's images are float after Normalize
        elif t == "Collect":
            _keys(step, {"keys", "meta_keys"}, w)
            keys = set(step.get("keys", ()))
            base = {"img", "gt_bboxes", "gt_labels"}  # + gt_masks for the detectors that predict masks
            if not base <= keys <= base | {"gt_masks", "gt_bboxes_ignore", "gt_semantic_seg"}:
                raise ConfigError(f"recipe: {w}.keys={sorted(keys)}: detection training collects img, gt_bboxes, "
                                  "gt_labels (and gt_masks, gt_bboxes_ignore, gt_semantic_seg)")
            if ("gt_semantic_seg" in keys) != with_seg:
                raise ConfigError(f"recipe: {w}.keys: gt_semantic_seg is collected if and only if "
                                  "LoadAnnotations(with_seg=True) loads it")
        else:
            raise ConfigError(f"recipe: {w}.type={t!r} is not supported by the detection loader")
    if norm is None or "Pad" not in seen:
        raise ConfigError(f"recipe: {where} needs Normalize and Pad(size_divisor=32)")
    if not resized:
        raise ConfigError(f"recipe: {where} never resizes the image")
    if any(op == "pad_to" for op, _ in ops[:-1]):
        raise ConfigError(f"recipe: {where}: Pad(size) must come after every resize, crop, flip and filter step")
    return {"ops": ops, "mean": norm[0], "std": norm[1]}


def test_cfg_from_pipeline(pipeline, where: str = "test_pipeline") -> dict:
    """Translate the official test pipeline (``LoadImageFromFile``, ``MultiScaleFlipAug(img_scale, flip=False,
    transforms=[Resize(keep_ratio), RandomFlip, Normalize, Pad(32), ImageToTensor, Collect])``) into
    ``{'scale', 'mean', 'std'}``."""
    if not isinstance(pipeline, (list, tuple)) or len(pipeline) != 2:
        raise ConfigError(f"recipe: {where} must be [LoadImageFromFile, MultiScaleFlipAug(...)]")
    if not isinstance(pipeline[0], dict) or pipeline[0].get("type") != "LoadImageFromFile":
        raise ConfigError(f"recipe: {where}[0] must be LoadImageFromFile")
    _load_image(pipeline[0], f"{where}[0]")
    aug, w = pipeline[1], f"{where}[1]"
    if not isinstance(aug, dict) or aug.get("type") != "MultiScaleFlipAug":
        raise ConfigError(f"recipe: {w} must be MultiScaleFlipAug")
    _keys(aug, {"img_scale", "flip", "transforms", "scale_factor", "flip_direction"}, w)
    _fixed(aug, "flip", False, w, False)
    scales = _scales(aug.get("img_scale"), w + ".img_scale")
    if len(scales) != 1:
        raise ConfigError(f"recipe: {w}.img_scale: only single-scale testing is supported here")
    norm, kinds = None, []
    for i, step in enumerate(aug.get("transforms") or []):
        sw = f"{w}.transforms[{i}]"
        t = step.get("type") if isinstance(step, dict) else None
        kinds.append(t)
        if t == "Resize":
            _keys(step, {"keep_ratio"}, sw)
            _fixed(step, "keep_ratio", True, sw, True)
        elif t == "RandomFlip":
            _keys(step, set(), sw)
        elif t == "Normalize":
            norm = norm_cfg(step, sw)
        elif t == "Pad":
            _pad(step, sw)
        elif t in ("ImageToTensor", "Collect", "DefaultFormatBundle"):
            _keys(step, {"keys", "meta_keys"}, sw)
        else:
            raise ConfigError(f"recipe: {sw}.type={t!r} is not supported in the test pipeline")
    if norm is None or "Resize" not in kinds or "Pad" not in kinds:
        raise ConfigError(f"recipe: {w}.transforms need Resize(keep_ratio=True), Normalize and Pad(size_divisor=32)")
    return {"scale": scales[0], "mean": norm[0], "std": norm[1]}


def tta_from_pipeline(pipeline, where: str = "test_pipeline"):
    """``{'scales': [(long, short), ...], 'flip': bool}`` of a test pipeline's ``MultiScaleFlipAug`` when it asks
    for test-time augmentation (several ``img_scale`` or ``flip=True``, mmdet's ``aug_test`` case), else None."""
    aug = pipeline[1] if isinstance(pipeline, (list, tuple)) and len(pipeline) == 2 else None
    if not isinstance(aug, dict) or aug.get("type") != "MultiScaleFlipAug":
        return None  # test_cfg_from_pipeline names the problem
    scales, flip = aug.get("img_scale"), aug.get("flip", False)
    if not isinstance(flip, bool):
        raise ConfigError(f"recipe: {where}[1].flip must be True or False, got {flip!r}")
    if isinstance(scales, tuple):
        scales = [scales]
    if not (isinstance(scales, list) and scales and all(
            isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, int) for v in x) for x in scales)):
        raise ConfigError(f"recipe: {where}[1].img_scale must be a (long, short) tuple or a list of them, got "
                          f"{scales!r}")
    if aug.get("flip_direction", "horizontal") != "horizontal":
        raise ConfigError(f"recipe: {where}[1].flip_direction={aug['flip_direction']!r}: only 'horizontal'")
    if len(scales) == 1 and not flip:
        return None
    return {"scales": [(int(x[0]), int(x[1])) for x in scales], "flip": flip}


def collects_masks(pipeline) -> bool:
    """Whether an official detection train pipeline collects the instance masks (``Collect`` with ``gt_masks``):
    a detector that predicts masks trains on them; a box-only one (ATSS, GFL, Sparse R-CNN) needs none."""
    return any(isinstance(s, dict) and s.get("type") == "Collect" and "gt_masks" in (s.get("keys") or ())
               for s in pipeline or ())


def has_semantic_maps(pipeline) -> bool:
    """Whether an official train pipeline loads the semantic maps (``LoadAnnotations(with_seg=True)`` or
    ``SegRescale``)."""
    return any(isinstance(s, dict) and (s.get("type") == "SegRescale" or
                                        (s.get("type") == "LoadAnnotations" and s.get("with_seg", False)))
               for s in pipeline or ())


# the mmseg train pipeline's steps, in order (PhotoMetricDistortion may be left out; ToMask, the Mask2Former
# recipes' step that turns the semantic map into one mask per class, may be added after Pad; MapillaryHack, the
# official Mapillary recipes' label mapping, may follow LoadAnnotations)
SEG_TRAIN_STEPS = ("LoadImageFromFile", "LoadAnnotations", "MapillaryHack", "Resize", "RandomCrop", "RandomFlip",
                   "PhotoMetricDistortion", "Normalize", "Pad", "ToMask", "DefaultFormatBundle", "Collect")
SEG_OPTIONAL_STEPS = ("MapillaryHack", "PhotoMetricDistortion", "ToMask")
SEG_COLLECT_KEYS = ["img", "gt_semantic_seg"]
MASK_COLLECT_KEYS = ["img", "gt_semantic_seg", "gt_masks", "gt_labels"]  # with ToMask (mmseg_custom)
# the TrainLoader arguments a segmentation train pipeline gives: never recipe keys of data.train
SEG_PIPELINE_KWARGS = ("crop_size", "scale", "ratio_range", "cat_max_ratio", "photometric", "mean", "std",
                       "label_remap")


def mapillary_hack():
    """The official ``MapillaryHack`` step (mmseg_custom/datasets/pipelines/transform.py) as the train loader's
    ``label_remap``: a 256-entry table from the 66 Mapillary Vistas ids to the 19 Cityscapes train ids (the other
    ids -> 255), applied to the labels after the manifest's ``label_map``."""
    from . import classes as C

    return {"name": "MapillaryHack", "lut": C.mapillary_hack_label_map(), "in_classes": len(C.MAPILLARY_CLASSES),
            "num_classes": len(C.MAPILLARY_TO_CITYSCAPES)}


def _int_pair(v, where):
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)):
        raise ConfigError(f"recipe: {where} must be 2 positive integers, got {v!r}")
    return (int(v[0]), int(v[1]))


def seg_train_kwargs_from_pipeline(pipeline, where: str = "train_pipeline", ignore_index: int = SEG_IGNORE) -> dict:
    """Translate an official mmseg train pipeline (``LoadImageFromFile``, ``LoadAnnotations``, ``Resize(img_scale,
    ratio_range)``, ``RandomCrop(crop_size, cat_max_ratio)``, ``RandomFlip(prob=0.5)``, optionally
    ``PhotoMetricDistortion()``, ``Normalize``, ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``, optionally
    ``ToMask(ignore_index=255)`` (the Mask2Former recipes: one binary mask per class present, which the Mask2Former
    criterion builds from the semantic map the same way), ``DefaultFormatBundle``, ``Collect(keys=['img',
    'gt_semantic_seg'])``, with ``'gt_masks', 'gt_labels'`` added after ``ToMask``) into the segmentation
    :class:`~vit_adapter_ds.data.loader.TrainLoader`'s ``crop_size``, ``scale``, ``ratio_range``,
    ``cat_max_ratio``, ``photometric``, ``mean`` and ``std``. ``LoadAnnotations.reduce_zero_label`` is accepted as
    written: the shards' manifest ``label_map`` (written by the dataset's catalog entry) is what maps the labels.
    ``MapillaryHack()`` right after ``LoadAnnotations`` (the official Mapillary recipes) gives ``label_remap``
    (:func:`mapillary_hack`: 66 Mapillary ids -> 19 Cityscapes train ids, which the loader applies after the
    manifest's map and which only Mapillary shards accept).
    Any other step, order, key or value raises ConfigError naming it."""
    if not isinstance(pipeline, (list, tuple)):
        raise ConfigError(f"recipe: {where} must be a list of steps")
    kinds = [s.get("type") if isinstance(s, dict) else None for s in pipeline]
    expected = [k for k in SEG_TRAIN_STEPS if k not in SEG_OPTIONAL_STEPS or k in kinds]
    if kinds != expected:
        raise ConfigError(f"recipe: {where}: the steps must be {expected} (mmseg's train pipeline, "
                          f"MapillaryHack, PhotoMetricDistortion and ToMask optional), got {kinds}")
    out = {"photometric": "PhotoMetricDistortion" in kinds}
    for i, (kind, step) in enumerate(zip(kinds, pipeline)):
        w = f"{where}[{i}]"
        if kind == "LoadAnnotations":
            _keys(step, {"reduce_zero_label"}, w)
            if not isinstance(step.get("reduce_zero_label", False), bool):
                raise ConfigError(f"recipe: {w}.reduce_zero_label must be True or False")
        elif kind == "Resize":
            _keys(step, {"img_scale", "ratio_range", "keep_ratio"}, w)
            _fixed(step, "keep_ratio", True, w, True)
            out["scale"] = _int_pair(step.get("img_scale"), f"{w}.img_scale")
            rr = step.get("ratio_range")
            if not (isinstance(rr, (list, tuple)) and len(rr) == 2 and
                    all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rr) and 0 < rr[0] <= rr[1]):
                raise ConfigError(f"recipe: {w}.ratio_range must be (min, max) with 0 < min <= max, got {rr!r}")
            out["ratio_range"] = (float(rr[0]), float(rr[1]))
        elif kind == "RandomCrop":
            _keys(step, {"crop_size", "cat_max_ratio", "ignore_index"}, w)
            _fixed(step, "ignore_index", ignore_index, w, ignore_index)
            out["crop_size"] = _int_pair(step.get("crop_size"), f"{w}.crop_size")
            r = step.get("cat_max_ratio", 1.0)  # mmseg's default: no category limit
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
                raise ConfigError(f"recipe: {w}.cat_max_ratio must be a number in (0, 1], got {r!r}")
            out["cat_max_ratio"] = float(r)
        elif kind == "RandomFlip":
            _keys(step, {"prob", "flip_ratio", "direction"}, w)
            _fixed(step, "prob" if "prob" in step else "flip_ratio", 0.5, w, 0.5)
            _fixed(step, "direction", "horizontal", w, "horizontal")
        elif kind == "Normalize":
            out["mean"], out["std"] = norm_cfg(step, w)
        elif kind == "Pad":
            _keys(step, {"size", "pad_val", "seg_pad_val"}, w)
            _fixed(step, "size", out["crop_size"], w)
            _fixed(step, "pad_val", 0, w, 0)
            _fixed(step, "seg_pad_val", ignore_index, w, 255)
        elif kind == "MapillaryHack":
            _keys(step, set(), w)
            out["label_remap"] = mapillary_hack()
        elif kind == "ToMask":
            _keys(step, {"ignore_index"}, w)
            _fixed(step, "ignore_index", ignore_index, w, 255)
        elif kind == "Collect":
            _keys(step, {"keys", "meta_keys"}, w)
            _fixed(step, "keys", MASK_COLLECT_KEYS if "ToMask" in kinds else SEG_COLLECT_KEYS, w)
        else:  # LoadImageFromFile, PhotoMetricDistortion (its defaults), DefaultFormatBundle
            _keys(step, set(), w)
    return out


# the evaluation settings a segmentation test pipeline gives (a recipe sets them there or in ``evaluation``, not both)
SEG_TEST_KEYS = ("img_scale", "size_divisor", "img_ratios", "flip", "pad_short_side")
SEG_TEST_STEPS = ("RandomFlip", "Normalize", "ImageToTensor", "Collect")  # after the resize, optional steps aside


def _ratios(v, where):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]  # mmseg's MultiScaleFlipAug takes one float too
    if not (isinstance(v, (list, tuple)) and v and
            all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)):
        raise ConfigError(f"recipe: {where} must be a non-empty list of positive numbers, got {v!r}")
    return [float(x) for x in v]


def seg_test_settings_from_pipeline(pipeline, where: str = "test_pipeline", ignore_index: int = SEG_IGNORE) -> dict:
    """Translate an official mmseg test pipeline (``LoadImageFromFile``, ``MultiScaleFlipAug(img_scale, img_ratios,
    flip, transforms=[Resize(keep_ratio=True) or SETR_Resize(keep_ratio=True, crop_size, setr_multi_scale=True),
    ResizeToMultiple(size_divisor)?, RandomFlip, PadShortSide(size, pad_val=0, seg_pad_val=255)?, Normalize,
    PadShortSide?, ImageToTensor, Collect(keys=['img'])])``) into the evaluation settings the segmentation evaluator
    takes: ``img_scale``, ``size_divisor`` (None without ``ResizeToMultiple``), ``img_ratios`` (None: single scale),
    ``flip``, ``pad_short_side`` (``dict(size, before_normalize)`` or None), ``ms_resize`` (the ``SETR_Resize`` of
    a multi-scale test, or None) and ``mean`` / ``std``. Any other step, order, key or value raises ConfigError
    naming it."""
    if not isinstance(pipeline, (list, tuple)) or len(pipeline) != 2:
        raise ConfigError(f"recipe: {where} must be [LoadImageFromFile, MultiScaleFlipAug(...)]")
    if not isinstance(pipeline[0], dict) or pipeline[0].get("type") != "LoadImageFromFile":
        raise ConfigError(f"recipe: {where}[0] must be LoadImageFromFile")
    _keys(pipeline[0], set(), f"{where}[0]")
    aug, w = pipeline[1], f"{where}[1]"
    if not isinstance(aug, dict) or aug.get("type") != "MultiScaleFlipAug":
        raise ConfigError(f"recipe: {w} must be MultiScaleFlipAug")
    _keys(aug, {"img_scale", "img_ratios", "flip", "flip_direction", "transforms"}, w)
    out = {"img_scale": _int_pair(aug.get("img_scale"), f"{w}.img_scale"), "size_divisor": None,
           "img_ratios": None if aug.get("img_ratios") is None else _ratios(aug["img_ratios"], f"{w}.img_ratios"),
           "flip": aug.get("flip", False), "pad_short_side": None, "ms_resize": None}
    if not isinstance(out["flip"], bool):
        raise ConfigError(f"recipe: {w}.flip must be True or False, got {out['flip']!r}")
    _fixed(aug, "flip_direction", "horizontal", w, "horizontal")
    transforms = aug.get("transforms")
    if not isinstance(transforms, (list, tuple)) or not all(isinstance(s, dict) for s in transforms):
        raise ConfigError(f"recipe: {w}.transforms must be a list of step dicts")
    kinds = [s.get("type") for s in transforms]
    core = [k for k in kinds if k not in ("ResizeToMultiple", "PadShortSide")]
    if core[1:] != list(SEG_TEST_STEPS) or core[0] not in ("Resize", "SETR_Resize") or \
            kinds[:1] != core[:1] or kinds.count("PadShortSide") > 1 or \
            ("ResizeToMultiple" in kinds and kinds[1] != "ResizeToMultiple") or \
            ("PadShortSide" in kinds and not
             kinds.index("RandomFlip") < kinds.index("PadShortSide") < kinds.index("ImageToTensor")):
        raise ConfigError(f"recipe: {w}.transforms: the steps must be [Resize or SETR_Resize, ResizeToMultiple "
                          "(optional), RandomFlip, Normalize, ImageToTensor, Collect] with an optional PadShortSide "
                          f"after RandomFlip (mmseg's test pipeline), got {kinds}")
    for i, (kind, step) in enumerate(zip(kinds, transforms)):
        sw = f"{w}.transforms[{i}]"
        if kind == "Resize":
            _keys(step, {"keep_ratio"}, sw)
            _fixed(step, "keep_ratio", True, sw, True)
        elif kind == "SETR_Resize":
            _keys(step, {"keep_ratio", "crop_size", "setr_multi_scale"}, sw)
            _fixed(step, "keep_ratio", True, sw, True)
            _fixed(step, "setr_multi_scale", True, sw, False)
            if out["img_ratios"] is None:
                raise ConfigError(f"recipe: {sw}: SETR_Resize is implemented for multi-scale tests only (give "
                                  f"{w}.img_ratios, or use Resize(keep_ratio=True))")
            out["ms_resize"] = {"type": "SETR_Resize", "crop_size": _int_pair(step.get("crop_size"),
                                                                              f"{sw}.crop_size")}
        elif kind == "ResizeToMultiple":
            _keys(step, {"size_divisor"}, sw)
            d = step.get("size_divisor", 32)
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise ConfigError(f"recipe: {sw}.size_divisor must be a positive integer, got {d!r}")
            if kinds[0] == "SETR_Resize":
                raise ConfigError(f"recipe: {sw}: ResizeToMultiple after SETR_Resize is not implemented")
            out["size_divisor"] = d
        elif kind == "RandomFlip":
            _keys(step, set(), sw)
        elif kind == "PadShortSide":
            _keys(step, {"size", "pad_val", "seg_pad_val"}, sw)
            _fixed(step, "pad_val", 0, sw, 0)
            _fixed(step, "seg_pad_val", ignore_index, sw, 255)
            size = step.get("size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(f"recipe: {sw}.size must be a positive integer, got {size!r}")
            out["pad_short_side"] = {"size": size, "before_normalize": i < kinds.index("Normalize")}
        elif kind == "Normalize":
            out["mean"], out["std"] = norm_cfg(step, sw)
        elif kind == "ImageToTensor":
            _keys(step, {"keys"}, sw)
            _fixed(step, "keys", ["img"], sw)
        else:  # Collect
            _keys(step, {"keys", "meta_keys"}, sw)
            _fixed(step, "keys", ["img"], sw)
    return out
