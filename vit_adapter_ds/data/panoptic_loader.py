"""The COCO panoptic train / val loaders (``task='panoptic'`` shards, :mod:`.catalog.coco_panoptic`): the detection
loaders' machinery (:mod:`.detection`: the resumable sampler, orientation groups, the bad-sample rule, the
official-pipeline ops of :func:`.pipeline.train_ops_from_pipeline`) over samples decoded by
:func:`.panoptic.decode_panoptic_sample`.

Train batches are the detection loader's (``img``, ``targets`` with ``boxes`` / ``labels`` / ``masks`` of the
things that are not crowd) plus ``semantic_seg``: mmdet's ``gt_semantic_seg`` of ``LoadPanopticAnnotations`` (every
kept segment's label on its pixels, 255 elsewhere), transformed with the image and padded with 255 (``Pad``). Val
items are the detection val loader's plus ``gt_pan_ids`` (the PNG's segment ids at the original size) and
``segments_info``, what :func:`~vit_adapter_ds.evaluation.panoptic.evaluate_panoptic` reads.

The trainable images (mmdet's ``CocoPanopticDataset._filter_imgs`` with ``filter_empty_gt``): some segment of a
known category and ``min(width, height) >= min_size``; the orientation group is the json's image entry's.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from . import det_transforms as T
from .decode import BadSample
from .detection import DetectionTrainLoader, DetectionValLoader, _DetTrainStream, _DetValStream, orientation_flag
from .panoptic import decode_panoptic_sample


def panoptic_train_index(reader, cat2label: dict, min_size: int = 32, filter_empty_gt: bool = True):
    """``(ids, flags)`` as :func:`.detection.train_index`, from the panoptic json members (``image``,
    ``segments_info``)."""
    keep, flags = [], np.zeros(len(reader), dtype=np.int8)
    for i in range(len(reader)):
        try:
            rec = json.loads(reader.read_global(i)["json"])
            im = rec["image"]
            flags[i] = orientation_flag(im)
            ok = not filter_empty_gt or (any(s.get("category_id") in cat2label for s in rec["segments_info"]) and
                                         min(im["width"], im["height"]) >= min_size)
        except (BadSample, ValueError, KeyError, TypeError, ZeroDivisionError):
            ok = True  # fails later as a bad sample
        if ok:
            keep.append(i)
    reader.close()
    return np.asarray(keep, dtype=np.int64), flags


class _PanTrainStream(_DetTrainStream):
    def decode(self, raw):
        d = decode_panoptic_sample(raw, self.categories)
        return d, {"image": d["image"]}

    def augment(self, d, rng):
        sample = T.make_sample(d["img"], torch.from_numpy(d["gt_bboxes"]), torch.from_numpy(d["gt_labels"]),
                               torch.from_numpy(d["gt_masks"]), None, torch.from_numpy(d["gt_semantic_seg"]))
        return T.apply_ops(sample, rng, self.ops)


class _PanValStream(_DetValStream):
    def decode(self, raw):
        d = decode_panoptic_sample(raw, self.categories)
        return d["img"], {"image": d["image"], "gt_pan_ids": d["gt_pan_ids"], "segments_info": d["segments_info"]}


class PanopticTrainLoader(DetectionTrainLoader):
    """:class:`~.detection.DetectionTrainLoader` over panoptic shards (module docstring); the train pipeline must
    load the panoptic annotations (``LoadPanopticAnnotations``: the ops carry ``load_seg``)."""

    task, index_fn = "panoptic", staticmethod(panoptic_train_index)

    def __init__(self, shard_dir, **kw):
        super().__init__(shard_dir, **kw)
        if not T.loads_semantic_seg(self.ops):
            raise ValueError("the panoptic train pipeline must have LoadPanopticAnnotations(with_seg=True)")

    def stream_class(self, *args, **kw):
        stream = _PanTrainStream(*args, **kw)
        stream.categories = self.manifest["categories"]
        return stream


class PanopticValLoader(DetectionValLoader):
    """:class:`~.detection.DetectionValLoader` over panoptic shards; items carry ``gt_pan_ids`` and
    ``segments_info``."""

    task = "panoptic"

    def stream_class(self, *args):
        stream = _PanValStream(*args)
        stream.categories = self.categories
        return stream
