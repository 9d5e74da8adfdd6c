"""What every shard writer shares: reading dataset source files safely and pairing images with masks.

Source files are data and are checked before they are read (:func:`source_file`): a file outside its dataset root
is refused, whether a name leads out (``../..``, an absolute path) or a symlink resolves outside; ``follow_symlinks``
allows symlinks that resolve outside the root (never ``..`` or absolute names). Devices, FIFOs and sockets are always
refused. The error names the file and the root.
"""
from __future__ import annotations

import os
import re
import stat

IMG_EXTS = (".jpg", ".jpeg", ".png")


class UnsafeSourceError(ValueError):
    """A dataset file that is not read: outside its dataset root, or not a regular file."""


def _inside(path, root):
    return os.path.commonpath([path, root]) == root


def require_regular_file(path, what="file"):
    """Refuse ``path`` unless it is a regular file once symlinks are resolved: reading a device (``/dev/zero``), a
    FIFO or a socket blocks or never ends. A missing file raises ``FileNotFoundError``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if not stat.S_ISREG(mode):
        raise UnsafeSourceError(f"{what} {path} is not a regular file (a folder, device, FIFO or socket); refused")
    return path


def source_file(path, root, follow_symlinks=False, what="file"):
    """``path`` if it may be read into a shard: inside the dataset folder ``root`` as written (no ``..`` or absolute
    path leading out), inside ``root`` once symlinks are resolved (unless ``follow_symlinks``) and a regular file
    (:func:`require_regular_file`). Raises :class:`UnsafeSourceError` naming the file and the root."""
    if not _inside(os.path.abspath(path), os.path.abspath(root)):
        raise UnsafeSourceError(f"{what} {path} lies outside the dataset root {root} (an absolute path or '..'); "
                                "refused")
    real = os.path.realpath(path)
    if not follow_symlinks and not _inside(real, os.path.realpath(root)):
        raise UnsafeSourceError(f"{what} {path} resolves to {real}, outside the dataset root {root}; refused "
                                "(pass --follow-symlinks to read symlinks that lead out of the root)")
    return require_regular_file(path, what)


def stems(folder, exts, root, follow_symlinks=False):
    """``{stem: path}`` of the files in ``folder`` with one of ``exts``, each checked by :func:`source_file`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder}")
    out = {}
    for fn in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fn)
        if ext.lower() in exts:
            if stem in out:
                raise ValueError(f"{folder}: two images with stem {stem!r}")
            out[stem] = source_file(os.path.join(folder, fn), root, follow_symlinks)
    return out


def img_ext(path):
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def safe_key(stem):
    return re.sub(r"[^A-Za-z0-9_\-]", "_", stem)


def pair(images, masks, skip_missing):
    """Samples ``(key, {img_ext: path, 'seg.png': path})`` for images with a same-stem mask, sorted by key."""
    samples, missing, keys = [], [], {}
    for stem, ipath in images.items():
        mpath = masks.get(stem)
        if mpath is None:
            missing.append(stem)
            continue
        key = safe_key(stem)
        if key in keys:
            raise ValueError(f"stems {keys[key]!r} and {stem!r} give the same key {key!r}")
        keys[key] = stem
        samples.append((key, {img_ext(ipath): ipath, "seg.png": mpath}))
    if missing and not skip_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no mask, e.g. {missing[:5]}; "
                                "pass --skip-missing to leave them out")
    if not samples:
        raise FileNotFoundError("no image/mask pairs found")
    return sorted(samples)


def seg_meta(dataset, split, classes, label_map, label_map_name, palette=None, source="", ignore_index=255):
    """A segmentation shard set's manifest fields (``shard_writer.write_shards`` adds the shards and counts)."""
    from ..utils.vis import make_palette

    return {"dataset": dataset, "split": split, "task": "segmentation", "classes": list(classes),
            "num_classes": len(classes), "palette": palette or make_palette(len(classes)),
            "ignore_index": ignore_index, "label_map": label_map, "label_map_name": label_map_name, "source": source}


def png_header(path):
    """``(width, height, bit_depth, colour_type)`` from a PNG file's IHDR (the first 33 bytes)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"not a PNG file: {path}")
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return w, h, depth, ctype


def read_class_file(path):
    """One class name per line (blank lines and lines starting with '#' ignored)."""
    with open(require_regular_file(path, "class file")) as f:
        names = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"no class names in {path}")
    return names
