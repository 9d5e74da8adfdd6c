"""The official (mmseg) semantic-segmentation training pipeline on tensors, with explicit randomness.

Images are uint8 tensors (3, H, W) in RGB, labels uint8 tensors (H, W) of train ids with 255 = ignore. Every
random choice is drawn from the ``rng`` argument (a ``numpy.random.Generator``), which the loader seeds from
``(seed, epoch, global sample slot)``, so a sample's augmentation is reproducible and independent of which
process computes it. The pipeline (ViT-Adapter ADE20K/COCO-Stuff configs, mmseg semantics)::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)            # horizontal
    PhotoMetricDistortion()         # brightness 32, contrast 0.5-1.5, saturation 0.5-1.5, hue 18
    Normalize(ImageNet mean/std, RGB) then Pad to crop_size (image 0, label 255), bottom/right

Differences from mmseg/mmcv, all sub-pixel or +-1 grey level: resizing uses torchvision (bilinear without
antialias for images, like cv2.INTER_LINEAR; nearest for labels) instead of OpenCV's fixed-point resize, and
the HSV round trip of saturation/hue is OpenCV's algorithm re-implemented in torch (RGB->HSV bit-exact,
HSV->RGB within 1 grey level). The random draws happen in the same order as mmseg's (tests check the outputs
against mmseg's own transforms given the same numpy seed).
"""
from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ..utils.image_ops import rescale_size  # noqa: F401  (mmcv's keep-ratio rule, one for all pipelines)

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def resize(img, lab, size):
    """Resize image (bilinear, no antialias) and label (nearest) to ``size`` = (h, w)."""
    size = [int(size[0]), int(size[1])]
    img = TF.resize(img, size, interpolation=InterpolationMode.BILINEAR, antialias=False)
    if lab is not None:
        lab = TF.resize(lab[None], size, interpolation=InterpolationMode.NEAREST)[0]
    return img, lab


def random_resize(img, lab, rng, scale=(2048, 512), ratio_range=(0.5, 2.0)):
    """mmseg ``RandomResize(scale, ratio_range, keep_ratio=True)``: ratio ~ U(ratio_range), target scale
    ``(int(scale[0] * ratio), int(scale[1] * ratio))``, then keep-ratio rescale."""
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return resize(img, lab, rescale_size(img.shape[-2], img.shape[-1], target))


def crop_bbox(lab, rng, crop_size, cat_max_ratio=0.75, ignore_index=255):
    """mmseg ``RandomCrop.crop_bbox``: a random window of ``crop_size`` = (h, w) (clipped to the image); with
    ``cat_max_ratio < 1`` re-drawn up to 10 times until the window holds more than one class (ignore excluded)
    and no class covers ``cat_max_ratio`` or more of its labelled pixels. Returns (y1, y2, x1, x2)."""
    h, w = lab.shape[-2:]

    def gen():
        oy = int(rng.integers(0, max(h - crop_size[0], 0) + 1))
        ox = int(rng.integers(0, max(w - crop_size[1], 0) + 1))
        return oy, oy + crop_size[0], ox, ox + crop_size[1]

    box = gen()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            cnt = torch.bincount(lab[y1:y2, x1:x2].reshape(-1).long(), minlength=256)
            cnt[ignore_index] = 0
            cnt = cnt[cnt > 0]
            if len(cnt) > 1 and cnt.max().item() / cnt.sum().item() < cat_max_ratio:
                break
            box = gen()
    return box


def random_crop(img, lab, rng, crop_size, cat_max_ratio=0.75, ignore_index=255):
    y1, y2, x1, x2 = crop_bbox(lab, rng, crop_size, cat_max_ratio, ignore_index)
    return img[:, y1:y2, x1:x2], lab[y1:y2, x1:x2]


def random_flip(img, lab, rng, prob=0.5):
    if rng.random() < prob:
        return TF.horizontal_flip(img), TF.horizontal_flip(lab)
    return img, lab


def _convert(x, alpha=1.0, beta=0.0):
    """mmseg ``PhotoMetricDistortion.convert``: x * alpha + beta, clipped to [0, 255], truncated to uint8."""
    return (x.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


_HSV_SHIFT = 12  # OpenCV's 8-bit RGB->HSV fixed-point tables (values fit in int32)
_SDIV = torch.tensor([0] + [round((255 << _HSV_SHIFT) / i) for i in range(1, 256)], dtype=torch.int32)
_HDIV = torch.tensor([0] + [round((180 << _HSV_SHIFT) / (6.0 * i)) for i in range(1, 256)], dtype=torch.int32)


def rgb_to_hsv8(img):
    """uint8 RGB (3, H, W) -> uint8 HSV with OpenCV's 8-bit convention and integer arithmetic: H in [0, 180)
    (degrees / 2), S and V in [0, 255] (bit-exact with ``cv2.cvtColor(..., COLOR_RGB2HSV)``)."""
    x = img.to(torch.int32)
    r, g, b = x[0], x[1], x[2]
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    h = torch.where(h < 0, h + 180, h)
    return torch.stack([h, s, v]).to(torch.uint8)


def hsv8_to_rgb(hsv):
    """Inverse of :func:`rgb_to_hsv8`: channel ``n`` in (5, 3, 1) for (R, G, B) is
    ``V * (1 - S * clamp(min(k, 4 - k), 0, 1))`` with ``k = (n + H / 30) mod 6`` (OpenCV's sector formula written
    without branches), in float32, truncated to uint8 as the installed OpenCV 5 does; differs from
    ``cv2.cvtColor(..., COLOR_HSV2RGB)`` by 1 in < 1 % of values."""
    x = hsv.float()
    h6 = x[0] * (6.0 / 180.0)
    v, s = x[2], x[1] * (1.0 / 255.0)
    out = torch.empty(x.shape, dtype=torch.float32)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(h6 + n, 6.0)
        w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        out[c] = v * (1.0 - s * w)
    return out.floor_().clamp_(0, 255).to(torch.uint8)


def photometric_distortion(img, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg ``PhotoMetricDistortion`` on uint8 RGB (3, H, W): each step applied with probability 0.5,
    brightness first, contrast either second or last (random mode), then saturation and hue (in HSV)."""
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = rgb_to_hsv8(img)
        hsv[1] = _convert(hsv[1], alpha=rng.uniform(*saturation_range))
        img = hsv8_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv8(img)
        hsv[0] = torch.remainder(hsv[0].long() + int(rng.integers(-hue_delta, hue_delta)), 180).to(torch.uint8)
        img = hsv8_to_rgb(hsv)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


def normalize(img, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 RGB (3, H, W) -> float32 (img - mean) / std."""
    return TF.normalize(img.float(), list(mean), list(std))


def pad_to(img, lab, size, img_value=0.0, lab_value=255):
    """Pad bottom/right to at least ``size`` = (h, w): image with ``img_value``, label with ``lab_value``."""
    ph, pw = max(size[0] - img.shape[-2], 0), max(size[1] - img.shape[-1], 0)
    if ph or pw:
        img = TF.pad(img, [0, 0, pw, ph], fill=img_value)
        lab = TF.pad(lab[None], [0, 0, pw, ph], fill=lab_value)[0]
    return img, lab


def train_transform(img, lab, rng, crop_size, scale=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                    flip_prob=0.5, photometric=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, ignore_index=255):
    """The full training pipeline: uint8 image (3, H, W), uint8 label (H, W) -> float32 (3, ch, cw) normalised
    image and int64 (ch, cw) label, ``crop_size`` = (ch, cw)."""
    img, lab = random_resize(img, lab, rng, scale, ratio_range)
    img, lab = random_crop(img, lab, rng, crop_size, cat_max_ratio, ignore_index)
    img, lab = random_flip(img, lab, rng, flip_prob)
    if photometric:
        img = photometric_distortion(img, rng)
    x = normalize(img, mean, std)
    x, lab = pad_to(x, lab, crop_size, 0.0, ignore_index)
    return x.contiguous(), lab.long().contiguous()
