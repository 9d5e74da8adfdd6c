"""Checks shared by the writers that read label files before sharding them (Pascal Context 59, COCO-Stuff-10k,
CHASE_DB1, ISPRS Potsdam): a label that does not fit its dataset is refused at writing time, with the file named,
instead of becoming a bad sample at training time. (The ADE20K / COCO-Stuff-164k writers store the files unread.)"""
from __future__ import annotations

import os

import numpy as np

from ..sources import source_file


def read_split_list(path, root, follow_symlinks=False):
    """The ids of a split list (one per line, blank lines ignored; ``ImageSets/.../train.txt``,
    ``imageLists/train.txt``), in file order; a repeated id is refused."""
    with open(source_file(path, root, follow_symlinks, "split list")) as f:
        ids = [ln.strip() for ln in f if ln.strip()]
    seen = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"split list {path}: id {i!r} is listed twice")
        if "/" in i or "\\" in i or i in (".", ".."):
            raise ValueError(f"split list {path}: {i!r} is not a file id (a path); refused")
        seen.add(i)
    if not ids:
        raise ValueError(f"split list {path} is empty")
    return ids


def label_values(arr, path, valid, hint=""):
    """Refuse ``arr`` (the label array read from ``path``) when it holds a value outside ``valid`` (a sorted list of
    allowed values); the error names the file and the values."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "uib":
        raise ValueError(f"label {path}: values of type {arr.dtype}, expected integers{hint}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise ValueError(f"label {path}: values {int(arr.min())}..{int(arr.max())} do not fit 0..255{hint}")
    present = np.flatnonzero(np.bincount(arr.astype(np.int64).ravel(), minlength=256))
    bad = sorted(set(present.tolist()) - set(valid))
    if bad:
        raise ValueError(f"label {path}: values {bad[:8]} are not labels of this dataset (allowed: "
                         f"{_span(valid)}){hint}")
    return arr


def _span(valid):
    v = sorted(valid)
    parts, start = [], v[0]
    for a, b in zip(v, v[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return ", ".join(parts)


def check_label_png(path, valid, image=None, hint=""):
    """Refuse the label PNG ``path`` unless it is a single-channel image (8-bit gray or palette, as the datasets'
    tools write them) whose values are all in ``valid``, of the size of ``image`` (its path, when given). ``hint``
    ends the messages (e.g. which converter writes the expected files)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ValueError(f"label {path} is a {im.format} file, expected PNG{hint}")
            if im.mode not in ("L", "P", "1"):
                raise ValueError(f"label {path} has mode {im.mode}; expected a single-channel PNG (8-bit gray or "
                                 f"palette){hint}")
            arr = np.array(im)
            size = im.size
    except ValueError:
        raise
    except Exception as e:  # PIL's errors for corrupt / truncated files
        raise ValueError(f"label {path} cannot be read: {type(e).__name__}: {e}") from e
    label_values(arr.astype(np.uint8), path, valid, hint)
    if image is not None:
        check_same_size(image, size, path)
    return path


def check_same_size(image, size, label):
    """Refuse an image whose (W, H) differs from its label's ``size``."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            isize = im.size
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"image {image} cannot be read: {type(e).__name__}: {e}") from e
    if tuple(isize) != tuple(size):
        raise ValueError(f"label {label} is {size[0]}x{size[1]} but its image {image} is {isize[0]}x{isize[1]}")


def png_bytes(arr):
    """An 8-bit gray PNG of ``arr`` (H, W) uint8 (written by the writers that convert a label format)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def existing(path, root, follow_symlinks, what):
    """``path`` checked by :func:`~vit_adapter_ds.data.sources.source_file`, or None when it does not exist."""
    if not os.path.lexists(path):
        return None
    return source_file(path, root, follow_symlinks, what)
