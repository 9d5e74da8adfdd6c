"""Reading the images users give the inference API, the demos and ``launch/predict.py``: one rule for every input
kind, with errors that name the input.

:func:`load_rgb` takes

* a path (``str`` / ``os.PathLike``): decoded with PIL (the project's reference reader) and turned upright by its
  EXIF orientation, as mmcv's ``imread`` (OpenCV) does for the official demos;
* a ``PIL.Image.Image`` of any mode (converted to RGB, EXIF orientation applied);
* a NumPy array: ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA (alpha dropped) or ``(H, W)`` grey, ``uint8`` -- other dtypes
  are refused rather than guessed (is a float image in [0, 1] or in [0, 255]?);

and returns a C-contiguous ``(H, W, 3)`` uint8 RGB array. Failures raise :class:`ImageError` (a ``ValueError``):
a missing file, a file that is not a readable image (truncated, not an image), an image over PIL's decompression-
bomb limit (about 179 megapixels: more than the memory of most machines allows a model to run on), an empty or
wrongly shaped array.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """An input that is not a readable image; the message names it and says why."""


def describe(image) -> str:
    """A short name of an input for messages: the path, or the kind and shape of an in-memory image."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, np.ndarray):
        return f"array {image.dtype} {tuple(image.shape)}"
    return type(image).__name__


def load_rgb(image) -> np.ndarray:
    """``image`` (path, PIL image or NumPy array, see the module docstring) as an (H, W, 3) uint8 RGB array."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: no such image file" if not path.exists() else f"{path}: not a file")
        try:
            with Image.open(path) as pic:
                pic = ImageOps.exif_transpose(pic)
                rgb = np.array(pic.convert("RGB"))  # a writable array (asarray of a PIL image is read-only)
        except Image.DecompressionBombError as e:
            raise ImageError(f"{path}: image too large to run a model on ({e})") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        return np.ascontiguousarray(rgb)
    if isinstance(image, Image.Image):
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"{describe(image)}: expected uint8 pixels (0-255); convert first, e.g. "
                             "(x * 255).round().astype(np.uint8) for a float image in [0, 1]")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"{describe(image)}: expected (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageError(f"{describe(image)}: empty image")
        return np.ascontiguousarray(image)
    raise ImageError(f"{describe(image)}: give a file path, a PIL image or an (H, W, 3) uint8 NumPy array")


def list_images(paths, recursive: bool = False) -> list[Path]:
    """Files given directly, plus the image files (by suffix, sorted; with ``recursive`` also those of sub-folders)
    of the given folders. A path that does not exist raises ``FileNotFoundError``."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out += sorted(q for q in found if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or directory")
    return out
