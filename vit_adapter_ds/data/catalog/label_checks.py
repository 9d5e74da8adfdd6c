"""Checks shared by the writers that read label files before sharding them: a label that does not fit its dataset
is refused at writing time, with the file named, instead of becoming a bad sample at training time. (The ADE20K /
COCO-Stuff-164k writers store the files unread.)

* :func:`check_label_png` (PIL, one file at a time): Pascal Context 59, COCO-Stuff-10k, CHASE_DB1, ISPRS Potsdam;
* :func:`check_labels` / :func:`write_checked` (PNG headers and the loader's own label decoder, over a process pool
  for the tens of thousands of Mapillary labels): Cityscapes, Mapillary Vistas.
"""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

from ..sources import png_header, source_file


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


# ---------------------------------------------------------------------- label checks (Cityscapes, Mapillary)
def image_size(path):
    """``(height, width)`` of a PNG or JPEG file from its header (ValueError naming the file otherwise)."""
    from ..decode import BadSample, jpeg_size

    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89PNG\r\n\x1a\n":
        w, h, _, _ = png_header(path)
        return h, w
    with open(path, "rb") as f:
        data = f.read()
    try:
        w, h, _ = jpeg_size(data)
    except BadSample as e:
        raise ValueError(f"image {path}: {e}") from None
    return h, w


def check_label(job):
    """Refuse the label of ``job = (image, label, valid values, the values in words)`` unless it is an 8-bit (or
    less) gray or palette PNG of the image's size whose values (gray value / palette index) are all valid."""
    from ..decode import BadSample, decode_label

    image, label, valid, words = job
    w, h, depth, ctype = png_header(label)
    if ctype not in (0, 3) or depth > 8:
        raise ValueError(f"label {label}: must be an 8-bit gray or palette PNG (colour type {ctype}, {depth}-bit)")
    ih, iw = image_size(image)
    if (h, w) != (ih, iw):
        raise ValueError(f"label {label} is {h}x{w}, the image {image} {ih}x{iw}")
    with open(label, "rb") as f:
        try:
            lab = decode_label(f.read()).numpy()
        except BadSample as e:
            raise ValueError(f"label {label}: {e}") from None
    ok = np.zeros(256, bool)
    ok[list(valid)] = True
    vals = np.unique(lab)
    bad = vals[~ok[vals]]
    if bad.size:
        raise ValueError(f"label {label} holds values {bad[:8].tolist()} outside {words}")


def check_labels(samples, valid, words, num_workers=None):
    """:func:`check_label` on every ``(key, {img: path, 'seg.png': path})`` sample (a process pool of
    ``num_workers``, default all CPUs); the first refused label raises."""
    jobs = []
    for _, files in samples:
        img = next(p for e, p in files.items() if e != "seg.png")
        jobs.append((img, files["seg.png"], tuple(valid), words))
    n = min(len(jobs), num_workers or os.cpu_count() or 1)
    if n <= 1:
        for job in jobs:
            check_label(job)
        return
    with mp.get_context("fork").Pool(n) as pool:
        for _ in pool.imap_unordered(check_label, jobs, chunksize=8):
            pass


def write_checked(entry, samples, out, split, root, valid, words, **kw):
    """Check ``samples``' labels (:func:`check_labels`), then write them as ``entry``'s shards."""
    from ..shard_writer import write_shards

    check_labels(samples, valid, words, kw.get("num_workers"))
    return write_shards(samples, out, entry.meta(split, os.path.abspath(root)), **kw)
