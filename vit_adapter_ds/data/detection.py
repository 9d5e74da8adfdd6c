"""Detection (instance segmentation) train / val loaders over the COCO instance shards.

Shards (``python -m vit_adapter_ds.data.make_shards coco ...`` or ``make_shards synthetic --layout coco``) hold
per sample the original image bytes and ``{key}.json`` = ``{"image": <COCO image entry>, "annotations": [...]}``.
Reading, the epoch order and the exact-resume position reuse :mod:`.decode` (``ShardReader``) and
:func:`.loader.epoch_order` (see ``shards/README.md``): a batch is a pure function of (seed, epoch, position,
rank, world size, batch size), independent of the number of workers; a sample's augmentation is drawn from
``numpy.random.default_rng([seed, epoch, slot])``; ``state_dict()`` / ``load_state_dict()`` restore the position
exactly.

Train batches are grouped by orientation as mmdet 2.x's ``GroupSampler`` / ``DistributedGroupSampler`` group
them: each rank's batch holds only landscape (``width / height > 1``) or only portrait / square images, the
orientation read from each sample's json (its COCO image entry, as mmdet's ``img_info``) when the loader is built,
without decoding an image. The epoch order is taken group by group in chunks of ``batch_size``, each group padded
to a multiple of ``world_size * batch_size`` by repeating its first samples (:func:`grouped_chunks`,
:class:`DetectionTrainLoader`); ``group_by_aspect_ratio=False`` restores the global order of mixed batches.

Annotations are read as mmdet 2.x ``CocoDataset._parse_ann_info`` does:

* skipped: ``ignore`` set; no overlap with the image (``inter_w * inter_h == 0``); ``area <= 0``; ``w < 1`` or
  ``h < 1``; a category not in the manifest; and (never a crash) a missing or non-numeric ``bbox``;
* ``iscrowd`` -> an *ignored region* (``ignore_boxes``; Mask R-CNN's ``ignore_iof_thr=-1`` never uses them);
* boxes ``[x, y, x + w, y + h]`` (not clipped here; the transforms clip);
* masks rasterised with pycocotools (polygons, compressed or uncompressed RLE); polygons with fewer than 3 points
  are dropped (mmdet's ``process_polygons``) and an instance left without a usable segmentation keeps its box with
  an empty mask.

Images without annotations: the train loader leaves out images with no annotation of a known category (crowd
included) and images smaller than 32 pixels (mmdet ``filter_empty_gt=True``, ``min_size=32``), so the epoch order
runs over the remaining ones; the val loader keeps every image (mmdet test mode). A sample whose image or json
cannot be read, or whose image size differs from its json entry, is a bad sample (replaced by the next one of the
epoch order, of its orientation group, in training; dropped in validation, counted over all ranks, at most ``max_bad_fraction`` of the epoch
(:func:`.loader.bad_sample_budget`); failures raise on every rank at the same batch).

Train batches: ``img`` float32 (B, 3, H, W) normalised and zero-padded to a multiple of 32; ``targets`` a list of
dicts ``boxes`` (N, 4) float32, ``labels`` (N,) int64 class indices, ``masks`` (N, h, w) uint8 at the unpadded
size, ``ignore_boxes`` (M, 4), ``img_shape`` (h, w); ``meta`` (keys, shards, image_ids, slots, epoch, step, bad).
With semantic maps (a pipeline with ``LoadAnnotations(with_seg=True)``, HTC++) also ``semantic_seg``: int64
(B, int(H * f + 0.5), int(W * f + 0.5)), ``f`` the ``SegRescale`` factor (1 without it; HTC++: 1/8, so
(B, H / 8, W / 8)), 255 = ignore (padding included).

Semantic maps (COCO-Stuff ``stuffthingmaps``: values 0..181, 255 unlabelled) live in the instance shards as the
optional member ``{key}.seg.png`` (8-bit gray or palette PNG, the image's size; ``make_shards coco --stuff-maps
DIR``, ``make_shards synthetic --layout coco``), recorded in the manifest as ``semantic_seg`` =
``{"num_classes", "ignore_index"}``. They are decoded with :func:`.decode.decode_label` (checked PNG) and
left unmapped; a map of another size or with values outside ``[0, num_classes)`` and ``!= 255`` makes the sample
bad. A pipeline that loads maps over a shard set without them is refused when the loader is built.

InstaBoost (HTC++; :mod:`.instaboost`) runs on the decoded image and the parsed annotations before the masks are
rasterised, with its randomness drawn first from the sample's generator.
Val batches (one image): ``img`` (1, 3, H, W) resized to the test scale, normalised, padded; ``img_shape``,
``ori_shape``, ``image`` (COCO entry), ``annotations`` (raw, for :class:`~vit_adapter_ds.evaluation.coco.
CocoEvaluator`), ``meta``.
"""
from __future__ import annotations

import json
import logging
import math
import numbers

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import det_transforms as T
from . import instaboost
from ..utils.redact import redact_url
from .decode import BadSample, ShardReader, decode_image, decode_label, image_member
from .loader import (BatchStream, EpochLoader, TooManyBadSamples, _BadCounter, agreed_pass, epoch_order,
                     iterate_batches)
from .transforms import IMAGENET_MEAN, IMAGENET_STD
from .manifest import ShardSetError, read_manifest, verify_shards

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------------ annotations
def _number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def parse_annotations(image: dict, anns, cat2label: dict) -> dict:
    """mmdet ``_parse_ann_info`` (see module docstring) -> ``boxes`` (N, 4) float32 numpy, ``labels`` (N,) int64,
    ``segmentations`` (N,) list, ``ignore_boxes`` (M, 4), ``skipped`` (number of annotations left out)."""
    img_h, img_w = image["height"], image["width"]
    boxes, labels, segs, ignore, skipped = [], [], [], [], 0
    for a in anns:
        bbox = a.get("bbox")
        if a.get("ignore", False) or not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or \
                not all(_number(v) for v in bbox):
            skipped += 1
            continue
        x1, y1, w, h = (float(v) for v in bbox)
        inter_w = max(0.0, min(x1 + w, img_w) - max(x1, 0.0))
        inter_h = max(0.0, min(y1 + h, img_h) - max(y1, 0.0))
        area = a.get("area", w * h)
        if inter_w * inter_h == 0 or not _number(area) or area <= 0 or w < 1 or h < 1 or \
                a.get("category_id") not in cat2label:
            skipped += 1
            continue
        box = [x1, y1, x1 + w, y1 + h]
        if a.get("iscrowd", False):
            ignore.append(box)
        else:
            boxes.append(box)
            labels.append(cat2label[a["category_id"]])
            segs.append(a.get("segmentation"))
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64),
            "segmentations": segs, "ignore_boxes": np.asarray(ignore, np.float32).reshape(-1, 4),
            "skipped": skipped}


def segmentation_to_mask(seg, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE with str/bytes or list counts) -> uint8 (h, w) mask; polygons with
    fewer than 3 points are dropped; anything unusable gives an empty mask."""
    from pycocotools import mask as mask_utils

    empty = np.zeros((height, width), np.uint8)
    try:
        if isinstance(seg, list):
            polys = [[float(v) for v in p] for p in seg
                     if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0 and
                     all(_number(v) for v in p)]
            if not polys:
                return empty
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if list(seg["size"]) != [height, width]:
                return empty
            if isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
                rle = {"size": [height, width], "counts": counts}
        else:
            return empty
        m = mask_utils.decode(rle)
        return np.ascontiguousarray(m.reshape(height, width).astype(np.uint8))
    except Exception:  # noqa: BLE001 -- malformed annotation: an empty mask, never a crash
        return empty


def decode_det_sample(sample: dict, cat2label: dict):
    """``{ext: bytes}`` -> (image uint8 (3, H, W), parsed annotations (:func:`parse_annotations`), record
    ``{"image", "annotations"}``); raises BadSample for a missing/corrupt image or json or a size mismatch."""
    ext = image_member(sample)
    if ext is None:
        raise BadSample(f"no image member (has {sorted(sample)})")
    if "json" not in sample:
        raise BadSample("missing annotations (no json member)")
    try:
        rec = json.loads(sample["json"])
        image, anns = rec["image"], rec.get("annotations") or []
        int(image["height"]), int(image["width"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadSample(f"unreadable annotation json: {e}") from e
    img = decode_image(sample[ext], ext)
    if tuple(img.shape[1:]) != (int(image["height"]), int(image["width"])):
        raise BadSample(f"image size {tuple(img.shape[1:])} != annotation size ({image['height']}, "
                        f"{image['width']})")
    return img, parse_annotations(image, anns, cat2label), rec


def decode_semantic_map(sample: dict, size, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """The ``seg.png`` member -> uint8 (H, W) semantic map (raw values); raises BadSample when it is missing,
    corrupt, of another size than ``size`` or holds values outside ``[0, num_classes)`` and ``!= ignore_index``."""
    if "seg.png" not in sample:
        raise BadSample("missing semantic map (no seg.png member)")
    try:
        seg = decode_label(sample["seg.png"])
    except BadSample as e:
        raise BadSample(f"semantic map: {e}") from None
    if tuple(seg.shape) != tuple(size):
        raise BadSample(f"semantic map size {tuple(seg.shape)} != image size {tuple(size)}")
    bad = (seg >= num_classes) & (seg != ignore_index)
    if bool(bad.any()):
        raise BadSample(f"semantic map values {torch.unique(seg[bad]).tolist()[:8]} outside [0, {num_classes}) "
                        f"and != {ignore_index}")
    return seg


def to_sample(img, parsed, seg=None) -> dict:
    """Image + parsed annotations (+ semantic map) -> a :mod:`.det_transforms` sample (masks rasterised)."""
    h, w = img.shape[-2:]
    masks = [segmentation_to_mask(s, h, w) for s in parsed["segmentations"]]
    masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8)
    return T.make_sample(img, torch.from_numpy(parsed["boxes"]), torch.from_numpy(parsed["labels"]), masks,
                         torch.from_numpy(parsed["ignore_boxes"]), seg)


def train_sample(img, parsed, seg, rng, ops) -> dict:
    """One augmented train sample: the leading ``instaboost`` ops on the image and the annotations
    (:func:`.instaboost.apply`), then the masks rasterised, then the other ops (:func:`.det_transforms.apply_ops`);
    all randomness from ``rng``, in that order."""
    ann_ops, sample_ops = T.split_annotation_ops(ops)
    for _, params in ann_ops:
        img, parsed = instaboost.apply(img, parsed, rng, params)
    return T.apply_ops(to_sample(img, parsed, seg), rng, sample_ops)


# ------------------------------------------------------------------------------------------------ shard set
def open_detection_set(shard_dir, split, verify="size", num_classes=None, task="detection"):
    """Read and check a detection (or ``task``: panoptic) shard set; return (manifest without the per-sample index,
    reader, cat2label)."""
    m = read_manifest(shard_dir, split)
    if m.get("task") != task:
        layout = "coco" if task == "detection" else "coco_panoptic"
        raise ShardSetError(f"{redact_url(m['shard_dir'])} holds {m.get('task', 'segmentation')!r} shards, not "
                            f"{task} (write them with `make_shards {layout}` or `make_shards synthetic --layout "
                            f"{layout}`)")
    verify_shards(m["shard_dir"], m, verify)
    cats = m.get("categories") or []
    if not cats:
        raise ShardSetError(f"{redact_url(m['shard_dir'])}: the manifest lists no categories")
    if num_classes is not None and int(num_classes) != len(cats):
        raise ShardSetError(f"{redact_url(m['shard_dir'])}: the manifest has {len(cats)} categories, the "
                            f"model/recipe {num_classes}")
    reader = ShardReader(m)
    light = dict(m, shards=[{k: v for k, v in s.items() if k != "samples"} for s in m["shards"]])
    return light, reader, {int(c["id"]): i for i, c in enumerate(cats)}


def orientation_flag(image: dict) -> int:
    """mmdet's ``CustomDataset._set_group_flag`` for one COCO image entry: 1 if ``width / height > 1`` (landscape),
    else 0 (portrait or square)."""
    return 1 if float(image["width"]) / float(image["height"]) > 1 else 0


def train_index(reader: ShardReader, cat2label: dict, min_size: int = 32, filter_empty_gt: bool = True):
    """One pass over the samples' json members (no image is decoded) -> (``ids``, ``flags``).

    ``ids``: the global ids of the samples mmdet's ``filter_empty_gt`` keeps (some annotation of a known category,
    crowd included, and ``min(width, height) >= min_size``), or all of them without ``filter_empty_gt``;
    ``flags``: int8 per global id, the orientation group :func:`orientation_flag` from the json's image entry (the
    width and height of mmdet's ``img_info``). A sample whose json cannot be read is kept with flag 0: it fails
    later as a bad sample and is replaced by the next sample of its group."""
    keep, flags = [], np.zeros(len(reader), dtype=np.int8)
    for i in range(len(reader)):
        try:
            rec = json.loads(reader.read_global(i)["json"])
            im = rec["image"]
            anns = rec.get("annotations") or []
            flags[i] = orientation_flag(im)
            ok = not filter_empty_gt or (any(a.get("category_id") in cat2label for a in anns) and
                                         min(im["width"], im["height"]) >= min_size)
        except (BadSample, ValueError, KeyError, TypeError, ZeroDivisionError):
            ok = True
        if ok:
            keep.append(i)
    reader.close()
    return np.asarray(keep, dtype=np.int64), flags


def trainable_ids(reader: ShardReader, cat2label: dict, min_size: int = 32) -> np.ndarray:
    """The ids of :func:`train_index` (mmdet's ``filter_empty_gt``)."""
    return train_index(reader, cat2label, min_size)[0]


NUM_GROUPS = 2  # orientation flags 0 (portrait / square) and 1 (landscape)


def group_lists(order: np.ndarray, flags: np.ndarray):
    """The epoch's samples of each orientation group in epoch order: (``lists``, ``positions``), ``lists[g]`` the
    global ids of group g in the order ``order`` has them, ``positions[g]`` their positions in ``order``."""
    f = flags[order]
    positions = [np.flatnonzero(f == g) for g in range(NUM_GROUPS)]
    return [order[p] for p in positions], positions


def group_epoch_len(sizes, batch_size: int, world_size: int) -> int:
    """Batches per rank in an epoch grouped by orientation: ``sum_g ceil(n_g / (W * B))`` (mmdet's
    ``DistributedGroupSampler``; ``GroupSampler`` for W = 1)."""
    gb = batch_size * world_size
    return int(sum(math.ceil(int(n) / gb) for n in sizes))


def grouped_chunks(positions, num_samples: int, consumed, batch_size: int, world_size: int) -> np.ndarray:
    """The rest of an epoch grouped by orientation, as chunks of ``batch_size`` samples of one group: an int64
    array (C, 2) of rows ``(group, start)``, the chunk holding items ``start, ..., start + B - 1`` of the group's
    list taken cyclically (``lists[g][k % n_g]``); C is a multiple of ``world_size``.

    ``positions``: :func:`group_lists`; ``consumed[g]``: items of group g already handed out this epoch. The
    next chunk is always the group whose next item comes first in the epoch order (items of the cyclic
    continuation after all of the order), among the groups with fewer than ``ceil(n_g / (W B)) W B`` items handed
    out (mmdet's per-group padding); then, only after a change of batch size or world size within the epoch,
    chunks by the same rule over all groups until C is a multiple of W. So the chunk sequence is a pure function
    of (epoch order, ``consumed``, B), the same for every world size until the padding at the end of the epoch;
    a group's last, partial chunk is filled from the start of its list (as mmdet pads)."""
    B, W = int(batch_size), int(world_size)
    sizes = [len(p) for p in positions]
    target = [math.ceil(n / (B * W)) * B * W for n in sizes]
    c = [int(v) for v in consumed]

    def next_pos(g):
        return int(positions[g][c[g] % sizes[g]]) + (c[g] // sizes[g]) * num_samples

    groups = [g for g in range(len(sizes)) if sizes[g]]
    chunks = []
    while True:
        live = [g for g in groups if c[g] < target[g]]
        if not live:
            break
        g = min(live, key=next_pos)
        chunks.append((g, c[g]))
        c[g] += B
    while len(chunks) % W:
        g = min(groups, key=next_pos)
        chunks.append((g, c[g]))
        c[g] += B
    return np.asarray(chunks, dtype=np.int64).reshape(-1, 2)


def pad_semantic_maps(maps) -> torch.Tensor:
    """Stack (h_i, w_i) maps into int64 (B, H, W) padded at the bottom / right with 255 to the largest (mmdet's
    ``gt_semantic_seg`` collate)."""
    H, W = max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps)
    return torch.stack([torch.nn.functional.pad(m.as_subclass(torch.Tensor).long(),
                                                (0, W - m.shape[-1], 0, H - m.shape[-2]), value=T.SEG_IGNORE)
                        for m in maps])


def _collate(samples, mean, std):
    imgs = [T.normalize(s["img"], mean, std) for s in samples]
    # Pad(size=(h, w)) (the ``pad_to`` op): the normalised image zero-padded to its pad_shape, which the target carries
    imgs = [im if "pad_shape" not in s else torch.nn.functional.pad(
        im, (0, s["pad_shape"][1] - im.shape[-1], 0, s["pad_shape"][0] - im.shape[-2])) for im, s in zip(imgs, samples)]
    targets = [{"boxes": s["boxes"].as_subclass(torch.Tensor).contiguous(), "labels": s["labels"],
                "masks": s["masks"].as_subclass(torch.Tensor).contiguous(),
                "ignore_boxes": s["ignore_boxes"].as_subclass(torch.Tensor).contiguous(),
                "img_shape": tuple(int(v) for v in s["img"].shape[-2:]),
                **({"pad_shape": tuple(s["pad_shape"])} if "pad_shape" in s else {})} for s in samples]
    out = {"img": T.pad_batch(imgs, 32), "targets": targets}
    if "seg" in samples[0]:
        out["semantic_seg"] = pad_semantic_maps([s["seg"] for s in samples])
    return out


# ------------------------------------------------------------------------------------------------ train
class _DetTrainStream(BatchStream):
    """The rank's batches of the rest of an epoch from global slot ``start``. Without ``chunks`` rank r's batch at
    step s holds slots ``start + s W B + r B + j`` (sample ``order[slot mod N]``); with ``chunks``
    (:func:`grouped_chunks` over ``lists``, :func:`group_lists`) it is chunk ``s W + r``: items of one
    orientation group, at slots ``start + (s W + r) B + j``. A bad sample is replaced by the next sample of the
    epoch order (of its group, with chunks)."""

    def __init__(self, reader, order, cat2label, *, epoch, start, num_batches, rank, world_size, batch_size, seed,
                 mean, std, ops, semantic_classes=None, max_substitutes=32, lists=None, chunks=None):
        super().__init__()
        self.reader, self.order, self.cat2label = reader, order, cat2label
        self.epoch, self.start, self.num_batches = epoch, start, num_batches
        self.rank, self.world_size, self.batch_size, self.seed = rank, world_size, batch_size, seed
        self.mean, self.std, self.ops, self.max_substitutes = mean, std, ops, max_substitutes
        self.semantic_classes = semantic_classes  # None: no semantic maps read
        self.lists, self.chunks = lists, chunks

    def decode(self, raw):
        """A shard sample -> ``(inputs of :meth:`augment`, record with the COCO ``image`` entry)``; BadSample."""
        img, parsed, rec = decode_det_sample(raw, self.cat2label)
        seg = None if self.semantic_classes is None else decode_semantic_map(raw, img.shape[-2:],
                                                                             self.semantic_classes)
        return (img, parsed, seg), rec

    def augment(self, inputs, rng):
        return train_sample(*inputs, rng, self.ops)

    def _load(self, seq, first, g, bad, rng):
        """The first decodable sample of ``seq[first], seq[first + 1], ...`` (cyclic) for slot ``g`` that the
        pipeline keeps, augmented with ``rng``: a sample the pipeline drops (:class:`~.det_transforms.DroppedSample`,
        mmdet ``FilterAnnotations`` leaving no box, where mmdet's dataset retries with a random image of the group)
        is replaced like a bad one, without counting as bad."""
        n = len(seq)
        last = None
        for k in range(self.max_substitutes + 1):
            i = int(seq[(first + k) % n])
            try:
                inputs, rec = self.decode(self.reader.read_global(i))
            except BadSample as e:
                bad.append((self.reader.shard_name(i), str(self.reader.keys[i]), str(e)))
                last = bad[-1]
                continue
            try:
                return self.augment(inputs, rng), rec, i
            except T.DroppedSample as e:
                last = (self.reader.shard_name(i), str(self.reader.keys[i]), str(e))
        raise TooManyBadSamples(f"{self.max_substitutes + 1} consecutive samples of the epoch order from slot {g} "
                                f"are bad or dropped by the pipeline, last: {last}")

    def make_batch(self, step):
        if self.chunks is None:
            base = self.start + step * self.world_size * self.batch_size + self.rank * self.batch_size
            group, seq, first = None, self.order, base
        else:
            j = step * self.world_size + self.rank
            group, first = (int(v) for v in self.chunks[j])
            base, seq = self.start + j * self.batch_size, self.lists[group]
        slots = list(range(base, base + self.batch_size))
        samples, keys, shards, ids, bad = [], [], [], [], []
        for t, g in enumerate(slots):
            rng = np.random.default_rng([int(self.seed), int(self.epoch), int(g)])
            try:
                sample, rec, i = self._load(seq, first + t, g, bad, rng)
            except TooManyBadSamples as e:  # reported to all ranks by the loader, which raises everywhere
                return {"fatal": str(e), "meta": {"bad": bad}}
            samples.append(sample)
            keys.append(str(self.reader.keys[i]))
            shards.append(self.reader.shard_name(i))
            ids.append(int(rec["image"]["id"]))
        return {**_collate(samples, self.mean, self.std),
                "meta": {"keys": keys, "shards": shards, "image_ids": ids, "slots": slots, "epoch": self.epoch,
                         "step": step, "group": group, "bad": bad}}


class DetectionTrainLoader(EpochLoader):
    """Infinite, exactly resumable detection train loader (``next(loader)``; see module docstring).

    The augmentation is ``ops`` (from :func:`.pipeline.train_ops_from_pipeline` of a recipe's
    ``train_pipeline``) or else :func:`.det_transforms.official_train_ops` with ``transform_kw`` (``scales``,
    ``crop_scales``, ``crop_range``, ``final_crop``, ``flip_ratio``); the defaults are the official pipeline.

    ``group_by_aspect_ratio`` (default True, as mmdet's ``GroupSampler`` / ``DistributedGroupSampler`` in every
    official training): every rank's batch holds images of one orientation (:func:`orientation_flag` of the
    json's width and height, read when the loader is built; no image is decoded). An epoch takes each group's
    samples in the epoch order, in chunks of ``batch_size`` (:func:`grouped_chunks`): group g's
    ``n_g`` samples are padded by repeating its first ones to ``ceil(n_g / (W B)) W B`` (mmdet's rule), so an epoch
    is ``len_per_epoch = sum_g ceil(n_g / (W B))`` batches per rank. The position adds ``group_consumed`` (items of
    each group handed out) to the state; resuming reproduces an uninterrupted run exactly with the same world size
    and batch size (any number of workers), and with another world size the same chunk sequence continues from the
    same slot (only the padding at the end of the epoch differs); after a batch-size change each group continues
    where it stopped, so no sample of the epoch is repeated or skipped. A state saved without ``group_consumed``
    (the global order, ``group_by_aspect_ratio=False``) continues with the groups' samples after the first
    ``samples_consumed_in_epoch`` of the epoch order. ``False``: the global order of :func:`.loader.epoch_order`,
    batches of mixed orientations.

    ``seg_prefix`` (the official HTC++ ``data.train`` key) is accepted for the recipe's sake and not read: the
    semantic maps are in the shards (``make_shards coco --stuff-maps DIR`` reads them from that folder); ops that
    load maps over shards without them raise :class:`~.manifest.ShardSetError` here.
    """

    # the shard task, the stream and the trainable-sample index: the panoptic loader (data/panoptic.py) changes them
    task, stream_class, index_fn = "detection", _DetTrainStream, staticmethod(train_index)

    def __init__(self, shard_dir, *, batch_size, num_workers=0, seed=0, rank=0, world_size=1, num_classes=None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, max_bad_fraction=0.01, shuffle="global", window_shards=4,
                 split=None, verify="size", worker_timeout=300.0, filter_empty_gt=True, min_size=32,
                 transform_kw=None, ops=None, seg_prefix=None, group_by_aspect_ratio=True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.manifest, self.reader, self.cat2label = open_detection_set(shard_dir, split, verify, num_classes,
                                                                        self.task)
        self.shard_dir = self.manifest["shard_dir"]
        self.valid, self.flags = self.index_fn(self.reader, self.cat2label, min_size, filter_empty_gt)
        if len(self.valid) == 0:
            raise ShardSetError(f"{redact_url(self.shard_dir)}: no image with annotations to train on")
        self._valid_mask = np.zeros(len(self.reader), dtype=bool)
        self._valid_mask[self.valid] = True
        self.num_samples = int(len(self.valid))
        self.group_by_aspect_ratio = bool(group_by_aspect_ratio)
        self.group_sizes = [int((self.flags[self.valid] == g).sum()) for g in range(NUM_GROUPS)]
        self.batch_size, self.rank, self.world_size, self.seed = int(batch_size), rank, world_size, int(seed)
        self.num_workers, self.worker_timeout = int(num_workers), worker_timeout
        self.mean, self.std = tuple(mean), tuple(std)
        self.shuffle, self.window_shards = shuffle, window_shards
        if ops is not None and transform_kw:
            raise ValueError("give either ops or transform_kw")
        self.ops = list(ops) if ops is not None else T.official_train_ops(**(transform_kw or {}))
        self.seg_prefix = seg_prefix
        self.semantic_classes = None
        if T.loads_semantic_seg(self.ops) and self.task == "detection":  # panoptic: the maps of the PNGs
            sem = self.manifest.get("semantic_seg")
            if not sem:
                raise ShardSetError(
                    f"{redact_url(self.shard_dir)}: the train pipeline loads semantic maps "
                    "(LoadAnnotations(with_seg=True), HTC++) but this shard set has none; write it with `python -m vit_adapter_ds.data.make_shards "
                    "coco --root data/coco --stuff-maps data/coco/stuffthingmaps` (COCO-Stuff stuffthingmaps, "
                    "one PNG per image in train2017/ and val2017/)")
            self.semantic_classes = int(sem["num_classes"])
        self.max_bad_fraction = max_bad_fraction
        epoch_order(self.manifest, 0, 0, shuffle, window_shards)  # validates ``shuffle``
        self.bad = _BadCounter(max_bad_fraction, f"detection train loader (rank {rank})")
        self._plan = None  # grouped: (position key, chunks of the rest of the epoch, group lists)
        self._start_position()

    def order(self, epoch):
        """The epoch's order over the trainable samples (global ids): :func:`.loader.epoch_order` restricted to
        them."""
        full = epoch_order(self.manifest, self.seed, epoch, self.shuffle, self.window_shards)
        return full[self._valid_mask[full]]

    # -------------------------------------------------------------- position (orientation groups)
    @property
    def len_per_epoch(self):
        """Batches per rank in a full epoch: ``sum_g ceil(n_g / (W B))`` grouped by orientation, else
        ``ceil(N / (W B))``."""
        if not self.group_by_aspect_ratio:
            return math.ceil(self.num_samples / self.global_batch)
        return group_epoch_len(self.group_sizes, self.batch_size, self.world_size)

    def _reset_position(self, epoch):
        super()._reset_position(epoch)
        self.group_consumed = [0] * NUM_GROUPS

    def _position_key(self):
        return (self.epoch, self.samples_consumed_in_epoch, tuple(self.group_consumed), self.batch_size,
                self.world_size)

    def _grouped_plan(self):
        """(chunks of the rest of the epoch from the current position, the epoch's group lists)."""
        key = self._position_key()
        if self._plan is None or self._plan[0] != key:
            lists, positions = group_lists(self.order(self.epoch), self.flags)
            chunks = grouped_chunks(positions, self.num_samples, self.group_consumed, self.batch_size,
                                    self.world_size)
            self._plan = (key, chunks, lists)
        return self._plan[1], self._plan[2]

    def remaining_in_epoch(self):
        if not self.group_by_aspect_ratio:
            return super().remaining_in_epoch()
        return len(self._grouped_plan()[0]) // self.world_size

    def _advance(self):
        if not self.group_by_aspect_ratio:
            return super()._advance()
        chunks, lists = self._grouped_plan()
        for g, _ in chunks[:self.world_size]:
            self.group_consumed[int(g)] += self.batch_size
        super()._advance()
        self._plan = (self._position_key(), chunks[self.world_size:], lists)

    def state_dict(self):
        state = super().state_dict()
        if self.group_by_aspect_ratio:
            state["group_consumed"] = list(self.group_consumed) if state["samples_consumed_in_epoch"] else \
                [0] * NUM_GROUPS
        return state

    def load_state_dict(self, state):
        """:meth:`EpochLoader.load_state_dict` plus the groups' positions (``group_consumed``; derived from the
        epoch order for a state saved without them, see the class docstring)."""
        super().load_state_dict(state)
        pos = self.samples_consumed_in_epoch
        saved = state.get("group_consumed")
        if not self.group_by_aspect_ratio:
            if saved is not None and pos:
                log.warning("resuming a position saved with batches grouped by orientation without grouping: the "
                            "epoch continues from slot %d of the global order (some samples of this epoch may be "
                            "repeated or skipped)", pos)
            return
        if saved is None:
            f = self.flags[self.order(self.epoch)[:min(pos, self.num_samples)]]
            saved = [int((f == g).sum()) for g in range(NUM_GROUPS)]
        if len(saved) != NUM_GROUPS or any(int(v) < 0 for v in saved):
            raise ValueError(f"loader state: group_consumed must be {NUM_GROUPS} counts >= 0, got {saved!r}")
        self.group_consumed = [int(v) for v in saved]

    def _stream(self):
        lists = chunks = None
        if self.group_by_aspect_ratio:
            chunks, lists = self._grouped_plan()
        return self.stream_class(self.reader, self.order(self.epoch), self.cat2label, epoch=self.epoch,
                               start=self.samples_consumed_in_epoch, num_batches=self.remaining_in_epoch(),
                               rank=self.rank, world_size=self.world_size, batch_size=self.batch_size,
                               seed=self.seed, mean=self.mean, std=self.std, ops=self.ops,
                               semantic_classes=self.semantic_classes, lists=lists, chunks=chunks)


# ------------------------------------------------------------------------------------------------ val
class _DetValStream(IterableDataset):
    def __init__(self, reader, indices, cat2label, scale, mean, std):
        super().__init__()
        self.reader, self.indices, self.cat2label = reader, indices, cat2label
        self.scale, self.mean, self.std = scale, mean, std

    def decode(self, raw):
        """A shard sample -> (image, the item's ground truth: the COCO ``image`` entry and ``annotations``)."""
        img, _, rec = decode_det_sample(raw, self.cat2label)
        return img, {"image": rec["image"], "annotations": rec.get("annotations") or []}

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            for j in range(wid, len(self.indices), nw):
                i = int(self.indices[j])
                key, shard = str(self.reader.keys[i]), self.reader.shard_name(i)
                try:
                    img, extra = self.decode(self.reader.read_global(i))
                except BadSample as e:
                    yield {"bad": [(shard, key, str(e))]}
                    continue
                x = T.test_transform(img, self.scale) if self.scale is not None else img
                yield {"img": T.pad_batch([T.normalize(x, self.mean, self.std)], 32),
                       "img_shape": tuple(int(v) for v in x.shape[-2:]),
                       "ori_shape": tuple(int(v) for v in img.shape[-2:]), **extra,
                       "meta": {"keys": [key], "shards": [shard], "index": i}}
        finally:
            self.reader.close()


class DetectionValLoader:
    """Each image exactly once across ranks (rank r: the contiguous block ``[r N / W, (r + 1) N / W)``), batch
    size 1, resized to ``scale`` (official test ``(1333, 800)``; ``None`` keeps the size), normalised, padded to 32."""

    task, stream_class = "detection", _DetValStream  # the panoptic loaders (data/panoptic.py) change them

    def __init__(self, shard_dir, *, rank=0, world_size=1, num_workers=0, scale=(1333, 800), mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, num_classes=None, max_bad_fraction=0.01, split="val", verify="size",
                 worker_timeout=300.0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        self.manifest, self.reader, self.cat2label = open_detection_set(shard_dir, split, verify, num_classes,
                                                                        self.task)
        self.categories = self.manifest["categories"]
        n = int(self.manifest["num_samples"])
        self.indices = np.arange(rank * n // world_size, (rank + 1) * n // world_size)
        self.num_workers, self.worker_timeout = num_workers, worker_timeout
        self.scale = tuple(scale) if scale is not None else None
        self.mean, self.std, self.rank, self.world_size = tuple(mean), tuple(std), rank, world_size
        self.bad = _BadCounter(max_bad_fraction, f"detection val loader (rank {rank})")

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        """Yield this rank's images; at the end the ranks sum their bad-sample counts and failures (when a process
        group is initialised), so that a failure raises on every rank."""
        ds = self.stream_class(self.reader, self.indices, self.cat2label, self.scale, self.mean, self.std)
        it = iterate_batches(ds, self.num_workers, self.worker_timeout)
        yield from agreed_pass(it, self.bad, int(self.manifest["num_samples"]), self.world_size)
