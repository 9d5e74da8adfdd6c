"""InstaBoost (mmdet 2.x ``InstaBoost`` transform, the HTC++ train pipeline's first augmentation) through the
``instaboostfast`` library, on the detection loader's parsed annotations.

What mmdet does, and this module mirrors:

1. the instances (non-crowd, as ``ann_info``) become COCO-style annotations ``{'category_id': label,
   'segmentation': <the annotation's segmentation>, 'bbox': [x1, y1, x2 - x1, y2 - y1]}``;
2. with probability ``aug_ratio``: ``anns, img = instaboostfast.get_new_data(anns, img_bgr, InstaBoostConfig(
   action_candidate, action_prob, scale, dx, dy, theta, color_prob, hflag), background=None)`` (the image is BGR
   uint8, as mmdet's ``LoadImageFromFile`` gives it; the library's colour jitter converts BGR -> RGB itself);
3. back to boxes ``[x, y, x + w, y + h]``, labels and segmentations, dropping instances with ``w <= 0`` or
   ``h <= 0`` (those the transform moved out of the image).

Crowd regions (``ignore_boxes``) and the semantic map are left as they are: mmdet's InstaBoost touches neither
(``LoadAnnotations(with_seg=True)`` reads the map after it).

Differences, all for inputs on which mmdet crashes or the library misreads (never for valid COCO polygons):
polygons with fewer than 3 points are dropped first (mmdet's ``process_polygons`` does so later anyway), a
compressed RLE is passed as the equivalent uncompressed RLE (the library refuses compressed RLE), an instance
without any usable segmentation is passed as an empty mask (the library then drops it: its box becomes 0 x 0), and
if the library raises on an image the sample stays unchanged.

Randomness: the library draws from the *global* ``numpy.random`` and ``random`` states. :func:`apply` takes its
draws from the per-sample numpy Generator (``rng.random() < aug_ratio``, then a 32-bit seed
``rng.integers(0, 2**32)``), seeds both global states with that seed for the call and restores them afterwards
(:func:`seeded_global_random`), so a sample stays a pure function of (seed, epoch, slot) and the caller's global
random streams are untouched.
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch

log = logging.getLogger(__name__)
_failures = 0  # per process: the first few library failures are logged as warnings

ACTIONS = ("normal", "horizontal", "vertical", "skip")
INSTALL_HINT = "pip install .[htc]"


def require_instaboostfast():
    """Import and return ``instaboostfast``; a clear ImportError naming the extra if it is missing."""
    try:
        import instaboostfast
    except ImportError as e:
        raise ImportError("the InstaBoost step of the train pipeline (HTC++) needs the instaboostfast library: "
                          f"install the project's htc extra with `{INSTALL_HINT}` (instaboostfast + "
                          f"scikit-image); import failed: {e}") from e
    return instaboostfast


@dataclass(frozen=True)
class InstaBoostParams:
    """mmdet ``InstaBoost`` arguments (defaults are mmdet's and the HTC++ config's)."""

    action_candidate: tuple = ("normal", "horizontal", "skip")
    action_prob: tuple = (1, 0, 0)
    scale: tuple = (0.8, 1.2)
    dx: float = 15
    dy: float = 15
    theta: tuple = (-1, 1)
    color_prob: float = 0.5
    hflag: bool = False
    aug_ratio: float = 0.5

    def config(self):
        """The library's ``InstaBoostConfig``."""
        ib = require_instaboostfast()
        return ib.InstaBoostConfig(tuple(self.action_candidate), tuple(self.action_prob), tuple(self.scale),
                                   self.dx, self.dy, tuple(self.theta), self.color_prob, self.hflag)


@contextlib.contextmanager
def seeded_global_random(seed: int):
    """Seed ``numpy.random`` and ``random`` with ``seed`` inside the block; restore both states afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(int(seed))
    random.seed(int(seed))
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Binary (h, w) mask -> COCO uncompressed RLE (column-major run lengths, starting with a zero run)."""
    counts = []
    for i, (value, run) in enumerate(groupby(np.asarray(mask, np.uint8).ravel(order="F"))):
        if i == 0 and value == 1:
            counts.append(0)
        counts.append(sum(1 for _ in run))
    if not counts:
        counts = [0]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def library_segmentation(seg, height: int, width: int):
    """A COCO segmentation in a form the library reads (see the module docstring): valid polygons (>= 3 points) as
    they are, uncompressed RLE of the image size as it is, compressed RLE as uncompressed RLE, anything else an
    empty uncompressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polys = [[float(v) for v in p] for p in seg
                 if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0 and all(_finite(v) for v in p)]
        if polys:
            return polys
    elif isinstance(seg, dict) and "counts" in seg and list(seg.get("size", ())) == [height, width]:
        if isinstance(seg["counts"], list):
            return {"counts": [int(c) for c in seg["counts"]], "size": [height, width]}
        try:
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            m = mask_utils.decode({"size": [height, width], "counts": counts})
            return _uncompressed_rle(m.reshape(height, width))
        except Exception:  # noqa: BLE001 -- malformed RLE: an empty mask
            pass
    return _uncompressed_rle(np.zeros((height, width), np.uint8))


def to_coco_anns(parsed: dict, height: int, width: int) -> list:
    """Parsed instances (``boxes`` xyxy, ``labels``, ``segmentations``) -> mmdet's ``_load_anns`` list."""
    anns = []
    for box, label, seg in zip(parsed["boxes"].tolist(), parsed["labels"].tolist(), parsed["segmentations"]):
        x1, y1, x2, y2 = box
        anns.append({"category_id": int(label), "segmentation": library_segmentation(seg, height, width),
                     "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return anns


def from_coco_anns(anns: list, parsed: dict) -> dict:
    """mmdet's ``_parse_anns``: instances with ``w > 0`` and ``h > 0`` back to ``boxes`` / ``labels`` /
    ``segmentations``; the other fields of ``parsed`` (``ignore_boxes``, ...) are kept."""
    boxes, labels, segs = [], [], []
    for a in anns:
        x1, y1, w, h = a["bbox"]
        if w <= 0 or h <= 0:
            continue
        boxes.append([x1, y1, x1 + w, y1 + h])
        labels.append(a["category_id"])
        segs.append(a["segmentation"])
    return dict(parsed, boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int64),
                segmentations=segs)


def get_new_data(anns: list, img_bgr: np.ndarray, params: InstaBoostParams, seed: int):
    """``instaboostfast.get_new_data(anns, img_bgr, params.config(), background=None)`` with the global random
    states seeded by ``seed`` (and restored afterwards). Returns ``(anns, img_bgr)``."""
    ib = require_instaboostfast()
    cfg = params.config()
    with seeded_global_random(seed):
        return ib.get_new_data(anns, img_bgr, cfg, background=None)


def apply(img: torch.Tensor, parsed: dict, rng, params: InstaBoostParams):
    """mmdet ``InstaBoost`` on a uint8 RGB (3, H, W) image and :func:`~.detection.parse_annotations` output;
    returns ``(img, parsed)`` (the inputs themselves when not applied)."""
    if not rng.random() < params.aug_ratio:
        return img, parsed
    seed = int(rng.integers(0, 2 ** 32))
    h, w = int(img.shape[-2]), int(img.shape[-1])
    bgr = np.ascontiguousarray(img.permute(1, 2, 0).numpy()[:, :, ::-1])
    try:
        anns, out = get_new_data(to_coco_anns(parsed, h, w), bgr, params, seed)
    except Exception as e:  # noqa: BLE001 -- e.g. boxes outside the image: the sample stays unchanged
        global _failures
        _failures += 1
        (log.warning if _failures <= 5 else log.debug)(
            "InstaBoost failed on an image (left unchanged; failure %d in this process): %s: %s", _failures,
            type(e).__name__, e)
        return img, parsed
    rgb = torch.from_numpy(np.ascontiguousarray(np.asarray(out, np.uint8)[:, :, ::-1].transpose(2, 0, 1)))
    return rgb, from_coco_anns(anns, parsed)
