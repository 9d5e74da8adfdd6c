"""Pictures of predictions: colourised segmentation masks (palettes, label -> RGB, indexed PNG files) and drawn
detections (boxes, class names, scores and instance masks).

:func:`save_mask_png` writes a palette ("P" mode) PNG: its pixel values are the class ids (exactly, so the file is
also a machine-readable prediction) and image viewers show the palette colours; ``ignore_index`` (255) is black.
:func:`draw_detections` draws the detections at or above a score threshold over an image (torchvision's
``draw_segmentation_masks`` / ``draw_bounding_boxes``, one colour per class); nothing above it: the image unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


from ..utils.vis import as_colours, colorize, label_array, make_palette  # noqa: F401  (the one palette / colorize)


def overlay(image_rgb: np.ndarray, label, num_classes: int, palette=None, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised mask over an (H, W, 3) uint8 image (mmseg ``show_result`` opacity ``alpha``)."""
    col = colorize(label, num_classes, palette).astype(np.float32)
    return (image_rgb.astype(np.float32) * (1 - alpha) + col * alpha).round().clip(0, 255).astype(np.uint8)


def save_mask_png(path, label, num_classes: int, palette=None) -> Path:
    """Write an indexed PNG (values = class ids, colours = palette; 255 black). More than 255 classes: RGB."""
    from PIL import Image

    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    label = label_array(label)
    if num_classes > 255:
        Image.fromarray(colorize(label, num_classes, palette)).save(path)
        return path
    pal = np.zeros((256, 3), np.uint8)
    pal[:num_classes] = as_colours(palette, num_classes)[:num_classes]
    idx = np.ascontiguousarray(np.where((label >= 0) & (label < 256), label, 255).astype(np.uint8))
    img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.tobytes())
    img.putpalette(pal.reshape(-1).tolist())
    img.save(path)
    return path


def save_rgb_png(path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path


def draw_detections(image, pred: dict, score_thr: float = 0.3, class_names=None, palette=None,
                    mask_alpha: float = 0.4, width: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 picture of ``image`` ((H, W, 3) uint8 array or (3, H, W) uint8 tensor) with the detections
    whose score is ``>= score_thr``: the instance masks (``pred['masks']`` (K, H, W), when present) blended with
    ``mask_alpha``, the boxes (``pred['boxes']`` (K, 4) x1y1x2y2 pixels) and ``"<class name> <score>"`` labels
    (``class_names[label]``, else the class index). Colours: ``palette[label]`` (default :func:`~vit_adapter_ds.utils.vis.make_palette`)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    img = torch.as_tensor(image)
    if img.ndim != 3 or img.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) or (3, H, W) image, got {tuple(img.shape)} {img.dtype}")
    if img.shape[0] != 3 and img.shape[-1] == 3:
        img = img.permute(2, 0, 1)
    img = img.contiguous()
    scores = torch.as_tensor(pred["scores"]).detach().float().cpu().reshape(-1)
    keep = scores >= score_thr
    if not bool(keep.any()):
        return img.permute(1, 2, 0).contiguous().numpy()
    labels = torch.as_tensor(pred["labels"]).detach().cpu().reshape(-1)[keep].tolist()
    boxes = torch.as_tensor(pred["boxes"]).detach().float().cpu().reshape(-1, 4)[keep]
    n = max(max(labels) + 1, len(class_names) if class_names is not None else 0)
    pal = as_colours(palette, n)
    colors = [tuple(int(c) for c in pal[int(k)]) for k in labels]
    out = img
    if pred.get("masks") is not None:
        masks = torch.as_tensor(pred["masks"]).detach().cpu()[keep].bool().reshape(-1, *img.shape[-2:])
        out = draw_segmentation_masks(out, masks, alpha=mask_alpha, colors=colors)
    names = [str(class_names[int(k)]) if class_names is not None and int(k) < len(class_names) else str(int(k))
             for k in labels]
    text = [f"{name} {float(s):.2f}" for name, s in zip(names, scores[keep].tolist())]
    out = draw_bounding_boxes(out, boxes, labels=text, colors=colors, width=width)
    return out.permute(1, 2, 0).contiguous().numpy()


def draw_panoptic(image, ids, segments, categories, palette=None, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 picture of ``image`` ((H, W, 3) uint8 array or (3, H, W) uint8 tensor) with its panoptic
    segments (``ids``: (H, W) segment id map, 0 = void, left as it is; ``segments``: ``{"id", "category_id"}`` each,
    as :func:`~vit_adapter_ds.evaluation.panoptic.panoptic_segments` gives them) blended with ``alpha`` in their
    category's colour (``palette[label]``, label = the category's index in ``categories``), thing instances of one
    class in shades of it, every segment outlined in white and named (``categories[label]['name']``) at its
    centre."""
    from PIL import Image, ImageDraw

    img = image if torch.is_tensor(image) else torch.from_numpy(np.array(image))
    if img.ndim != 3 or img.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) or (3, H, W) image, got {tuple(img.shape)} {img.dtype}")
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    rgb = img.contiguous().numpy().astype(np.float32)
    ids = np.asarray(ids)
    if ids.shape != rgb.shape[:2]:
        raise ValueError(f"segment map {ids.shape} and image {rgb.shape[:2]} differ in size")
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    pal = as_colours(palette, len(categories)).astype(np.float32)
    out = rgb.copy()
    seen = {}
    for s in segments:
        label = label_of[s["category_id"]]
        shade = 1.0 - 0.25 * (seen.get(label, 0) % 3)  # the n-th instance of a class a little darker
        seen[label] = seen.get(label, 0) + 1
        m = ids == s["id"]
        out[m] = rgb[m] * (1 - alpha) + pal[label] * shade * alpha
    edge = np.zeros(ids.shape, bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edge] = 255
    pic = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        k = len(ys) // 2  # a pixel of the segment (its centroid may lie outside it)
        order = np.lexsort((xs, ys))
        name = str(categories[label_of[s["category_id"]]]["name"])
        x = min(int(xs[order[k]]), max(0, pic.width - int(draw.textlength(name))))  # inside the picture
        draw.text((x, int(ys[order[k]])), name, fill=(255, 255, 255))
    return np.asarray(pic)


def save_image(path, rgb: np.ndarray, quality: int = 95) -> Path:
    """Write an (H, W, 3) uint8 picture; the format follows the suffix (``.png`` lossless, ``.jpg`` / ``.jpeg``
    JPEG at ``quality``)."""
    from PIL import Image

    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    kw = {"quality": int(quality)} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, **kw)
    return path
