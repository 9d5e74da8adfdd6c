"""Random-access reading of samples from tar shards and safe, exact decoding of JPEG/PNG images and PNG labels.

A sample is located by the manifest's member index (byte offset and size of each tar member's data), so reading
it is one ``seek`` + ``read`` per member; nothing is unpickled or executed. Every problem with one sample raises
:class:`BadSample` with a reason; the loader counts and skips those.

Decoding (the file type is taken from the bytes, not the member name):

* **PNG** (images and labels): the container is checked first (:func:`check_png`: signature, every chunk's length
  and CRC-32, IHDR fields, PLTE for palette images, contiguous IDATs, IEND; size limit), then PIL decodes it
  (zlib + Pillow's own unfiltering, no libpng: a bad zlib stream is an exception, never a crash; torchvision's
  ``decode_png`` segfaults on some corrupt data and mis-reads 1/2/4-bit files, so it is not used). A flipped byte
  anywhere after the signature fails a CRC, so a corrupt PNG is always a bad sample, never wrong pixels.
* **JPEG** (images): the marker segments up to the frame header are checked (:func:`jpeg_size`: SOI, segment
  lengths, an SOF with 8-bit precision, 1, 3 or 4 components, a size within the limit), then
  ``torchvision.io.decode_jpeg`` (libjpeg-turbo, the same output as PIL's ``convert('RGB')`` for gray, YCbCr,
  CMYK/YCCK, baseline and progressive files) decodes it.

Images come back as uint8 RGB (3, H, W): gray is replicated, alpha dropped, palette images expanded through the
palette; **16-bit samples are reduced to 8 bits by keeping the high byte (``v >> 8``)**, as PIL does for 16-bit
RGB/RGBA/gray+alpha PNGs and OpenCV's ``imread`` does for colour reads (PIL's own ``I;16 -> RGB`` conversion clips
at 255 instead, so 16-bit gray is shifted here). Labels come back as class indices uint8 (H, W), never rescaled:
the palette index for palette PNGs, the raw gray value for 1/2/4/8-bit gray (a 1-bit mask's 1 stays 1) and for
16-bit gray (values above 255 do not fit the 256-entry label map and make the sample bad).
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from .remote import RangeIgnoredError, open_shard

IMAGE_EXTS = ("jpg", "jpeg", "png")
MAX_PIXELS = 1 << 26  # 67M pixels (8192 x 8192): larger files are refused (below PIL's decompression-bomb warning)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> allowed bit depths
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
# JPEG start-of-frame markers (all but DHT C4, JPG C8, DAC CC in C0..CF)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class BadSample(Exception):
    """One unusable sample (truncated member, undecodable image, missing/mismatched/out-of-range mask)."""


class ShardReader:
    """Reads samples of one shard set by global id (manifest order) or by (shard, index).

    The manifest's member index is converted once into compact numpy arrays (keys, shard of each sample,
    (offset, size) per member type), so forked DataLoader workers do not carry (and copy-on-write) the
    manifest's Python objects: about 10 MB instead of ~75 MB for COCO-Stuff's 118k samples. One open file per
    shard is kept per process.
    """

    def __init__(self, manifest):
        self.dir = manifest["shard_dir"]
        shards = manifest["shards"]
        self.names = [s["name"] for s in shards]
        counts = [int(s["num_samples"]) for s in shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.exts = sorted({e for s in shards for _, mem in s["samples"] for e in mem})
        col = {e: j for j, e in enumerate(self.exts)}
        self.keys = np.array([k for s in shards for k, _ in s["samples"]], dtype=str)
        self.shard_of = np.repeat(np.arange(len(shards), dtype=np.int32), counts)
        flat = np.full((len(self.keys), len(self.exts), 2), -1, dtype=np.int64)
        i = 0
        for s in shards:
            for _, mem in s["samples"]:
                for e, (off, size) in mem.items():
                    flat[i, col[e]] = (off, size)
                i += 1
        self.members = flat
        self._files = {}

    def __len__(self):
        return len(self.keys)

    def __getstate__(self):  # open files are per process
        d = dict(self.__dict__)
        d["_files"] = {}
        return d

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}

    def global_id(self, shard, index):
        return int(self.starts[shard]) + int(index)

    def key(self, shard, index):
        return str(self.keys[self.global_id(shard, index)])

    def shard_name(self, i):
        """Name of the shard holding global sample ``i``."""
        return self.names[int(self.shard_of[i])]

    def read(self, shard, index):
        """Return ``{ext: bytes}`` of sample ``index`` of shard number ``shard``; raises :class:`BadSample`."""
        return self.read_global(self.global_id(shard, index))

    def read_global(self, i):
        """Return ``{ext: bytes}`` of global sample ``i`` (manifest order); raises :class:`BadSample`."""
        shard = int(self.shard_of[i])
        key = str(self.keys[i])
        f = self._files.get(shard)
        if f is None:
            path = os.path.join(self.dir, self.names[shard])
            try:
                f = self._files[shard] = open_shard(path)  # a URL: ranged reads (data/remote.py)
            except OSError as e:
                raise BadSample(f"cannot open shard: {e}") from e
        out = {}
        for ext, (offset, size) in zip(self.exts, self.members[i].tolist()):
            if offset < 0:
                continue
            try:
                f.seek(offset)
                data = f.read(size)
            except RangeIgnoredError:
                raise  # the server's fault, not the sample's: every read would fetch a whole shard, so stop
            except OSError as e:
                raise BadSample(f"read error in member {key}.{ext}: {e}") from e
            if len(data) != size:
                raise BadSample(f"member {key}.{ext} truncated ({len(data)} of {size} bytes; truncated tar?)")
            out[ext] = data
        return out


def _reason(e):
    """First line of a decoder error without torchvision's C++ source location."""
    msg = str(e).splitlines()[0] if str(e) else repr(e)
    return re.sub(r"^.*\.cpp:\d+, ", "", msg)[:200]


def check_png(data):
    """Check the PNG container before any decoder sees it; return ``(width, height, bit_depth, colour_type)``.

    Checks the signature, every chunk's length, type and CRC-32 (``zlib.crc32``), the IHDR fields (size within
    :data:`MAX_PIXELS`, a valid bit depth / colour type pair, compression, filter and interlace methods), a PLTE
    (of at most 256 entries) before the image data of palette images, one run of consecutive IDAT chunks, no
    unknown critical chunk, and IEND. Raises :class:`BadSample`.
    """
    if len(data) < 8 or data[:8] != PNG_SIGNATURE:
        raise BadSample("not a PNG (bad signature)")
    view = memoryview(data)
    pos, n, ihdr, seen, idat_done = 8, len(data), None, [], False
    while True:
        if pos + 12 > n:
            raise BadSample(f"truncated PNG: no IEND chunk (file ends at byte {n})")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > n - pos - 12:
            raise BadSample(f"truncated PNG: chunk {kind!r} at byte {pos} claims {length} bytes")
        if not kind.isalpha() or not kind.isascii():
            raise BadSample(f"corrupt PNG: invalid chunk type {kind!r} at byte {pos}")
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(view[pos + 4:pos + 8 + length]) != crc:
            raise BadSample(f"corrupt PNG: CRC mismatch in chunk {kind.decode()} at byte {pos}")
        if not seen:
            if kind != b"IHDR" or length != 13:
                raise BadSample("corrupt PNG: the first chunk is not a 13-byte IHDR")
            ihdr = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IHDR":
            raise BadSample("corrupt PNG: a second IHDR chunk")
        if kind == b"IDAT":
            if idat_done:
                raise BadSample("corrupt PNG: IDAT chunks are not consecutive")
        elif seen and seen[-1] == b"IDAT":
            idat_done = True
        if kind == b"PLTE" and (b"IDAT" in seen or length % 3 or not 0 < length <= 768):
            raise BadSample(f"corrupt PNG: PLTE of {length} bytes" + (" after IDAT" if b"IDAT" in seen else ""))
        if kind[0] < 97 and kind not in _PNG_CRITICAL:  # upper-case first letter: critical, unknown
            raise BadSample(f"corrupt PNG: unknown critical chunk {kind!r}")
        seen.append(kind)
        pos += 12 + length
        if kind == b"IEND":
            break
    width, height, depth, ctype, comp, filt, interlace = ihdr
    if not (0 < width < 1 << 31 and 0 < height < 1 << 31) or width * height > MAX_PIXELS:
        raise BadSample(f"PNG size {width}x{height} is zero or above MAX_PIXELS={MAX_PIXELS}")
    if depth not in _PNG_DEPTHS.get(ctype, ()):
        raise BadSample(f"corrupt PNG: bit depth {depth} with colour type {ctype}")
    if comp or filt or interlace > 1:
        raise BadSample(f"corrupt PNG: compression/filter/interlace method {comp}/{filt}/{interlace}")
    if b"IDAT" not in seen:
        raise BadSample("corrupt PNG: no IDAT chunk")
    if ctype == 3 and b"PLTE" not in seen:
        raise BadSample("corrupt PNG: palette image without PLTE")
    return width, height, depth, ctype


def jpeg_size(data):
    """Walk a JPEG's marker segments up to the frame header; return ``(width, height, components)``.

    Checks SOI, that every segment starts with 0xFF and fits in the file, and that the frame header (SOF) has
    8-bit precision, 1, 3 or 4 components and a size within :data:`MAX_PIXELS`. Raises :class:`BadSample`.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise BadSample("not a JPEG (no SOI marker)")
    pos = 2
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise BadSample(f"corrupt JPEG: no marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 2 >= n:
            raise BadSample("truncated JPEG: no frame header")
        marker = data[pos]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos += 1
            continue
        if marker in (0xD8, 0xD9, 0xDA, 0x00):
            raise BadSample(f"corrupt JPEG: marker 0x{marker:02X} before the frame header")
        (length,) = struct.unpack_from(">H", data, pos + 1)
        if length < 2 or pos + 1 + length > n:
            raise BadSample(f"corrupt JPEG: segment 0x{marker:02X} at byte {pos} has length {length}")
        if marker in _JPEG_SOF:
            if length < 8:
                raise BadSample(f"corrupt JPEG: frame header of {length} bytes")
            precision, height, width, comps = struct.unpack_from(">BHHB", data, pos + 3)
            if precision != 8 or comps not in (1, 3, 4):
                raise BadSample(f"unsupported JPEG: {precision}-bit precision, {comps} components")
            if not width or not height or width * height > MAX_PIXELS:
                raise BadSample(f"JPEG size {width}x{height} is zero or above MAX_PIXELS={MAX_PIXELS}")
            return width, height, comps
        pos += 1 + length


def _open_png(data, image):
    """Check and decode a PNG with PIL; return ``(PIL mode, numpy array, bit depth)``. Raises BadSample.

    ``image=True``: the array is (H, W, 3) uint8 RGB, or (H, W) 16-bit for 16-bit gray; else PIL's own array
    (palette indices, gray values, bool for 1-bit, ...)."""
    _, _, depth, _ = check_png(data)
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as im:
            im.load()
            mode = im.mode
            if not image or mode.startswith("I") or mode == "RGB":
                arr = np.array(im)
            else:  # 1/L (PIL scales 1/2/4-bit gray to 0..255), P (through the palette), LA/RGBA (alpha dropped)
                im.info.pop("transparency", None)  # ignored for RGB; PIL would warn about palette transparency
                arr = np.array(im.convert("RGB"))
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/zlib.error/EOFError on bad data
        raise BadSample(f"{type(e).__name__}: {_reason(e)}") from e
    return mode, arr, depth


def _png_image(data):
    mode, arr, _ = _open_png(data, image=True)
    if arr.ndim == 2:  # 16-bit gray: keep the high byte, replicate
        arr = np.repeat((arr.astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def decode_image(data, ext=None):
    """Encoded JPEG/PNG bytes -> uint8 tensor (3, H, W), RGB (see the module docstring for the conversions).
    The type is taken from the bytes; ``ext`` (the member name's extension) only names it in errors."""
    data = bytes(data)
    what = ext or "image"
    if data[:8] == PNG_SIGNATURE:
        try:
            return _png_image(data)
        except BadSample as e:
            raise BadSample(f"corrupt {what} image: {e}") from None
    if data[:2] == b"\xff\xd8":
        try:
            jpeg_size(data)
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except BadSample as e:
            raise BadSample(f"corrupt {what} image: {e}") from None
        except Exception as e:  # torchvision raises RuntimeError on corrupt data
            raise BadSample(f"corrupt {what} image: {_reason(e)}") from e
    raise BadSample(f"corrupt {what} image: neither JPEG nor PNG (starts with {data[:8]!r})")


def decode_label(data, lut=None):
    """PNG label bytes -> class indices uint8 (H, W), mapped through ``lut`` (uint8 tensor (256,)) if given.

    Accepts gray (1/2/4/8/16-bit: the raw value) and palette (the index) PNGs; anything else (RGB, gray+alpha,
    JPEG), a 16-bit value above 255, or a corrupt file raises :class:`BadSample`."""
    data = bytes(data)
    if data[:8] != PNG_SIGNATURE:
        raise BadSample(f"corrupt label png: not a PNG (starts with {data[:8]!r})")
    try:
        mode, arr, depth = _open_png(data, image=False)
    except BadSample as e:
        raise BadSample(f"corrupt label png: {e}") from None
    if mode in ("L", "1", "P") or mode.startswith("I"):
        if mode == "L" and depth < 8:  # PIL scales 2/4-bit gray by 85/17: undo (exact)
            arr = arr // (255 // ((1 << depth) - 1))
        elif mode.startswith("I"):
            top = int(arr.max()) if arr.size else 0
            if top > 255 or int(arr.min()) < 0:
                raise BadSample(f"16-bit label value {top} does not fit the 256-entry label map")
        lab = torch.from_numpy(arr.astype(np.uint8))
    else:
        raise BadSample(f"label png must be single-channel (gray or palette), got {mode} with shape "
                        f"{tuple(arr.shape)}")
    if lut is not None:
        lab = lut[lab.long()]
    return lab


def image_member(sample):
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext
    return None


def decode_seg_sample(sample, lut, num_classes, ignore_index=255):
    """``{ext: bytes}`` -> (image uint8 (3, H, W), label uint8 (H, W) of train ids / ignore); raises BadSample
    for a missing image or mask, a corrupt file, a size mismatch or labels outside [0, num_classes) + {ignore}."""
    ext = image_member(sample)
    if ext is None:
        raise BadSample(f"no image member (has {sorted(sample)})")
    if "seg.png" not in sample:
        raise BadSample("missing mask (no seg.png member)")
    img = decode_image(sample[ext], ext)
    lab = decode_label(sample["seg.png"], lut)
    if tuple(img.shape[1:]) != tuple(lab.shape):
        raise BadSample(f"image size {tuple(img.shape[1:])} != mask size {tuple(lab.shape)}")
    if ignore_index == 255 and num_classes <= 255:  # fast path: uint8 wrap-around maps 255 -> 0
        ok = int((lab + 1).max()) <= num_classes if lab.numel() else True
    else:
        ok = not bool(((lab >= num_classes) & (lab != ignore_index)).any())
    if not ok:
        bad = (lab >= num_classes) & (lab != ignore_index)
        vals = torch.unique(lab[bad]).tolist()[:8]
        raise BadSample(f"labels {vals} outside [0, {num_classes}) and != {ignore_index}")
    return img, lab
