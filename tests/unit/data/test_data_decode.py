"""Decoding: every valid PNG/JPEG reads exactly what its pixels are (PNG: the array it was written from; JPEG:
what PIL decodes), labels as class indices never rescaled; a corrupt file (byte flips at every position,
truncation at every length) is a BadSample, never a crash, a hang or wrong pixels.

PNGs are written by a small numpy/zlib encoder below (independent of the decoder: every colour type, bit depth,
Adam7 interlacing, tRNS); PIL is the reference reader for JPEG and the second reference for PNG. PNG decoding is
lossless, so PNG pixels are compared exactly; JPEG pixels are compared with PIL within the tolerance that the JPEG
standard leaves to decoders (:func:`jpeg_mismatch`), since torchvision and Pillow each bundle their own
libjpeg(-turbo) build.
"""
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vit_adapter_ds.data.decode import MAX_PIXELS, BadSample, decode_image, decode_label, decode_seg_sample

ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
pytestmark = [pytest.mark.timeout(180),  # the reference's own convert('RGB') of palette PNGs with tRNS warns
              pytest.mark.filterwarnings("ignore:Palette images with Transparency")]


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _scanlines(arr, bits):
    """(h, w[, c]) integer array -> PNG scanlines with filter type 0 (samples packed MSB first, big-endian)."""
    h = arr.shape[0]
    flat = arr.reshape(h, -1)
    if bits == 16:
        raw = flat.astype(">u2").view(np.uint8).reshape(h, -1)
    elif bits == 8:
        raw = flat.astype(np.uint8)
    else:
        per = 8 // bits
        padded = np.concatenate([flat, np.zeros((h, -flat.shape[1] % per), flat.dtype)], 1).astype(np.uint8)
        shifts = (8 - bits * (np.arange(per) + 1)).astype(np.uint8)
        raw = (padded.reshape(h, -1, per) << shifts).sum(-1).astype(np.uint8)
    return b"".join(b"\x00" + row.tobytes() for row in raw)


def write_png(arr, color_type, bits, palette=None, interlace=False, trns=None):
    """Encode ``arr`` ((h, w) or (h, w, c) of raw sample values) as a PNG; the IDAT stream is split in two."""
    h, w = arr.shape[:2]
    if interlace:
        data = b"".join(_scanlines(arr[y0::dy, x0::dx], bits) for y0, x0, dy, dx in ADAM7
                        if len(range(y0, h, dy)) and len(range(x0, w, dx)))
    else:
        data = _scanlines(arr, bits)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, color_type, 0, 0,
                                                              int(interlace)))
    out += _chunk(b"tEXt", b"Comment\x00test")
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    z = zlib.compress(data, 9)
    return out + _chunk(b"IDAT", z[:len(z) // 2]) + _chunk(b"IDAT", z[len(z) // 2:]) + _chunk(b"IEND", b"")


def png_case(color_type, bits, interlace=False, shape=(7, 13), seed=0, trns=False, max_value=None):
    """(png bytes, raw sample array, palette or None) for random content of that format."""
    rng = np.random.default_rng([color_type, bits, seed])
    c = CHANNELS[color_type]
    top = (1 << bits) if max_value is None else max_value + 1
    arr = rng.integers(0, top, shape + ((c,) if c > 1 else ())).astype(np.uint16 if bits == 16 else np.uint8)
    palette = rng.integers(0, 256, (1 << bits, 3)) if color_type == 3 else None
    t = None
    if trns:
        if color_type == 0:
            t = struct.pack(">H", int(arr.flat[0]))
        elif color_type == 2:
            t = struct.pack(">HHH", *map(int, arr[0, 0]))
        elif color_type == 3:
            t = bytes(range(0, 256, 37))
    return write_png(arr, color_type, bits, palette, interlace, t), arr, palette


def expected_rgb(color_type, bits, arr, palette):
    """The documented image rule from the raw samples: 16-bit -> high byte, 1/2/4-bit gray -> full 8-bit range
    (v * 255 / (2^bits - 1)), gray replicated, alpha dropped, palette expanded."""
    a = arr.astype(np.int64)
    if color_type == 3:
        return np.asarray(palette, np.uint8)[a]
    a = a >> 8 if bits == 16 else a * (255 // ((1 << bits) - 1))
    if color_type in (0, 4):
        g = a if color_type == 0 else a[..., 0]
        a = np.repeat(g[..., None], 3, axis=2)
    return a[..., :3].astype(np.uint8)


def _hwc(t):
    return t.permute(1, 2, 0).numpy()


def _pil(data):
    return Image.open(io.BytesIO(data))


# JPEG: the product decodes with torchvision.io.decode_jpeg (its own bundled libjpeg-turbo), the reference reader
# is PIL (another libjpeg-turbo build, pinned in constraints/references.txt). The JPEG standard does not fix the
# decoded pixels exactly: ITU-T T.81 / T.83 (IEEE 1180 accuracy) allow each decoder's IDCT output to be off by at
# most 1 per sample (peak), with an overall mean square error <= 0.02. The JFIF YCbCr -> RGB conversion then mixes
# the components, R = Y + 1.402 Cr', G = Y - 0.344 Cb' - 0.714 Cr', B = Y + 1.772 Cb': two conforming decoders can
# differ by up to 1 + 1.772 = 2.772 before rounding (the chroma upsampling, libjpeg's default "fancy" triangle
# filter, is a convex combination and keeps a +-1 bound; CMYK -> RGB, R = C * K / 255, gives <= 2), and each rounds
# to an integer (+1), so |diff| < 3.772: at most 3 grey levels per sample. On average: IEEE 1180's overall mean
# square error <= 0.02 gives a mean |error| <= sqrt(0.02) = 0.141 per decoder and component, <= 0.283 between two;
# the conversion's weights (|sum| 2.402 / 2.058 / 2.772, mean 2.41) make that <= 0.68 per RGB sample, and rounding
# both values adds nothing on average (they round apart with probability equal to their fractional distance):
# mean |diff| <= 0.68, allowed 0.75. A real defect (channel order, CMYK inversion, a wrong colour matrix, a
# half-resolution decode, a one-level bias) exceeds the maximum or the mean (test_jpeg_tolerance_rejects_...).
JPEG_MAX_DIFF = 3
JPEG_MEAN_DIFF = 0.75


def _decoder_versions():
    import torchvision
    from PIL import __version__ as pil_version, features
    return (f"torchvision {torchvision.__version__}, Pillow {pil_version} (libjpeg-turbo "
            f"{features.version('libjpeg_turbo') if features.check_feature('libjpeg_turbo') else 'no'})")


def jpeg_mismatch(got, ref):
    """Why the (H, W, 3) uint8 ``got`` is not a conforming decode of the same JPEG as PIL's ``ref``; None if it is."""
    if ref is None:
        return "PIL cannot read it"
    if got.shape != ref.shape:
        return f"shape {got.shape} != PIL's {ref.shape}"
    d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    if d.max() > JPEG_MAX_DIFF or d.mean() > JPEG_MEAN_DIFF:
        return (f"max |diff| {d.max()} (allowed {JPEG_MAX_DIFF}), mean {d.mean():.3f} (allowed {JPEG_MEAN_DIFF}); "
                f"{_decoder_versions()}")
    return None


def assert_jpeg_like_pil(img, data):
    why = jpeg_mismatch(_hwc(img), np.asarray(_pil(data).convert("RGB")))
    assert why is None, why


def test_jpeg_tolerance_rejects_wrong_conversions():
    """The tolerance is tight enough that the obvious wrong decodes (channel order, inverted colours, gray from one
    channel, a half-resolution image blown up, a one-level bias over the whole image) are rejected."""
    data = _jpeg("RGB", (32, 48))
    ref = np.asarray(_pil(data).convert("RGB"))
    assert jpeg_mismatch(ref.copy(), ref) is None
    gray = np.repeat(ref[..., :1], 3, axis=2)
    subsampled = np.repeat(np.repeat(ref[::2, ::2], 2, axis=0), 2, axis=1)[: ref.shape[0], : ref.shape[1]]
    for wrong in (ref[..., ::-1], 255 - ref, gray, subsampled, np.clip(ref.astype(np.int16) + 1, 0, 255)):
        assert jpeg_mismatch(np.ascontiguousarray(wrong).astype(np.uint8), ref) is not None


PNG_FORMATS = [(ct, b, il) for ct in DEPTHS for b in DEPTHS[ct] for il in (False, True)]


@pytest.mark.parametrize("color_type,bits,interlace", PNG_FORMATS)
def test_png_image_matrix(color_type, bits, interlace):
    for trns in (False, True):
        data, arr, palette = png_case(color_type, bits, interlace, trns=trns)
        img = decode_image(data, "png")
        assert img.dtype == torch.uint8 and img.shape == (3, 7, 13) and img.is_contiguous()
        want = expected_rgb(color_type, bits, arr, palette)
        np.testing.assert_array_equal(_hwc(img), want)
        if not (color_type == 0 and bits == 16):  # PIL's I;16 -> RGB clips at 255 instead of shifting
            np.testing.assert_array_equal(_hwc(img), np.asarray(_pil(data).convert("RGB")))


@pytest.mark.parametrize("color_type,bits,interlace", PNG_FORMATS)
def test_png_label_matrix(color_type, bits, interlace):
    for trns in (False, True):
        data, arr, _ = png_case(color_type, bits, interlace, trns=trns, max_value=200 if bits == 16 else None)
        if CHANNELS[color_type] > 1:
            with pytest.raises(BadSample, match="single-channel"):
                decode_label(data)
            continue
        lab = decode_label(data)
        assert lab.dtype == torch.uint8 and lab.shape == (7, 13)
        np.testing.assert_array_equal(lab.numpy(), arr)  # raw values / palette indices, never rescaled
        pil = np.asarray(_pil(data)).astype(np.int64)
        if color_type == 0 and bits in (2, 4):  # PIL scales 2/4-bit gray to 0..255
            pil = pil // (255 // ((1 << bits) - 1))
        np.testing.assert_array_equal(lab.numpy(), pil)


def test_one_bit_mask_keeps_class_one_and_palette_masks_read_indices():
    m = np.zeros((8, 9), np.uint8)
    m[2:5, 3:7] = 1
    lab = decode_label(write_png(m, 0, 1))
    assert set(lab.unique().tolist()) == {0, 1} and (lab.numpy() == m).all()
    for bits in (1, 2, 4, 8):  # what PIL writes for masks with <= 2, 4, 16, 256 colours
        idx = (np.arange(72).reshape(8, 9) % (1 << bits)).astype(np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette([v % 256 for v in range(3 * (1 << bits))])
        b = io.BytesIO()
        im.save(b, format="PNG", bits=bits)
        assert b.getvalue()[24] == bits  # IHDR bit depth
        np.testing.assert_array_equal(decode_label(b.getvalue()).numpy(), idx)


def test_sixteen_bit_labels_as_is_or_refused():
    arr = np.array([[0, 7, 255], [3, 1, 2]], np.uint16)
    np.testing.assert_array_equal(decode_label(write_png(arr, 0, 16)).numpy(), arr)
    arr[0, 0] = 256
    with pytest.raises(BadSample, match="256"):
        decode_label(write_png(arr, 0, 16))


def test_sixteen_bit_image_normalises_like_eight_bit():
    """16-bit images are scaled down (high byte), so normalised pixels stay about [-2.2, 2.7]."""
    from vit_adapter_ds.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

    arr = np.full((4, 5, 3), 65535, np.uint16)
    arr[0] = 0
    x = normalize(decode_image(write_png(arr, 2, 16)), IMAGENET_MEAN, IMAGENET_STD)
    assert float(x.abs().max()) < 2.7


def _jpeg(mode, shape=(13, 21), seed=0, **kw):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    base = np.cumsum(base, axis=1, dtype=np.uint16).astype(np.uint8)  # some structure, not only noise
    im = Image.fromarray(base).convert(mode)
    b = io.BytesIO()
    im.save(b, format="JPEG", quality=kw.pop("quality", 90), **kw)
    return b.getvalue()


JPEG_FORMATS = {"rgb_420": ("RGB", {}), "rgb_444": ("RGB", {"subsampling": 0}),
                "rgb_422": ("RGB", {"subsampling": 1}), "gray": ("L", {}), "cmyk": ("CMYK", {}),
                "progressive": ("RGB", {"progressive": True}), "progressive_gray": ("L", {"progressive": True}),
                "optimized_q50": ("RGB", {"optimize": True, "quality": 50})}


@pytest.mark.parametrize("name", sorted(JPEG_FORMATS))
def test_jpeg_matrix_matches_pil(name):
    mode, kw = JPEG_FORMATS[name]
    for shape in ((13, 21), (16, 16), (1, 1), (33, 8)):
        data = _jpeg(mode, shape, **dict(kw))
        assert _pil(data).mode == mode
        img = decode_image(data, "jpg")
        assert img.shape == (3,) + shape and img.dtype == torch.uint8
        assert_jpeg_like_pil(img, data)


def test_type_is_read_from_the_bytes_and_other_types_are_bad():
    data, arr, pal = png_case(2, 8)
    np.testing.assert_array_equal(_hwc(decode_image(data, "jpg")), arr)  # a PNG named .jpg
    jpg = _jpeg("RGB")
    assert_jpeg_like_pil(decode_image(jpg, "png"), jpg)
    for bad in (b"", b"GIF89a" + bytes(50), b"\xff\xd8", b"\x89PNG\r\n\x1a\n"):
        with pytest.raises(BadSample):
            decode_image(bad, "jpg")
    with pytest.raises(BadSample, match="not a PNG"):
        decode_label(jpg)


def test_oversized_headers_are_refused_before_decoding():
    side = int(MAX_PIXELS ** 0.5) + 1
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + _chunk(b"IEND", b"")
    with pytest.raises(BadSample, match="MAX_PIXELS"):
        decode_label(png)
    jpg = bytearray(_jpeg("RGB", (8, 8)))
    i = jpg.index(b"\xff\xc0")
    jpg[i + 5:i + 9] = struct.pack(">HH", 65535, 65535)
    with pytest.raises(BadSample, match="MAX_PIXELS"):
        decode_image(bytes(jpg), "jpg")


# ---- fuzzing (in a subprocess: a segfault or hang is a test failure, not a crashed pytest) ----

def _fuzz_files():
    """Small files: label PNGs (palette 1/4/8-bit, gray 1/8-bit), image PNGs (RGB 8-bit, gray 16-bit, RGBA
    interlaced) and image JPEGs (baseline, gray, CMYK, progressive)."""
    labels = {f"label_p{b}": png_case(3, b, shape=(8, 8))[:2] for b in (1, 4, 8)}
    labels.update({f"label_l{b}": png_case(0, b, shape=(8, 8))[:2] for b in (1, 8)})
    images = {"png_rgb8": png_case(2, 8, shape=(8, 8)), "png_gray16": png_case(0, 16, shape=(8, 8)),
              "png_rgba8_adam7": png_case(6, 8, interlace=True, shape=(8, 8))}
    images = {k: (d, expected_rgb(ct, b, a, p)) for (k, (d, a, p)), (ct, b) in
              zip(images.items(), ((2, 8), (0, 16), (6, 8)))}
    for name, (mode, kw) in (("jpg_rgb", ("RGB", {})), ("jpg_gray", ("L", {})), ("jpg_cmyk", ("CMYK", {})),
                             ("jpg_progressive", ("RGB", {"progressive": True}))):
        images[name] = (_jpeg(mode, (8, 8), **kw), None)
    return labels, images


def _variants(data):
    for pos in range(len(data)):
        for x in (0xFF, 0x01):
            d = bytearray(data)
            d[pos] ^= x
            yield f"flip {pos} ^{x:#x}", bytes(d)
    for n in range(len(data)):
        yield f"truncate {n}", data[:n]


def _pil_rgb(data):
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:
        return None


def fuzz_main():
    """Decode every variant; print a JSON summary. Run in a child process by the test."""
    import warnings
    warnings.simplefilter("ignore")
    labels, images = _fuzz_files()
    out = {"decoded": 0, "bad": 0, "wrong": []}
    for name, (data, want) in labels.items():
        assert (decode_label(data).numpy() == want).all(), name
        for how, d in _variants(data):
            try:
                got = decode_label(d).numpy()
            except BadSample:
                out["bad"] += 1
                continue
            out["decoded"] += 1
            if got.shape != want.shape or not (got == want).all():  # a label must never change silently
                out["wrong"].append(f"{name} {how}")
    def wrong(got, want, d):  # PNG (lossless): exactly the original; JPEG: what PIL reads, within the tolerance
        if want is not None:
            return got.shape != want.shape or not (got == want).all()
        return jpeg_mismatch(got, _pil_rgb(d)) is not None

    for name, (data, want) in images.items():
        assert not wrong(_hwc(decode_image(data)), want, data), name
        for how, d in _variants(data):
            try:
                got = _hwc(decode_image(d))
            except BadSample:
                out["bad"] += 1
                continue
            out["decoded"] += 1
            if wrong(got, want, d):
                out["wrong"].append(f"{name} {how}")
    print("FUZZ " + json.dumps(out))


def test_fuzz_every_byte_flip_and_truncation_is_exact_or_bad():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_data_decode as t; t.fuzz_main()")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__))],
                       capture_output=True, text=True, timeout=150, env=env)
    assert p.returncode == 0, f"decoder process died with status {p.returncode}:\n{p.stderr[-3000:]}"
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("FUZZ ")][-1]
    res = json.loads(line[5:])
    assert res["wrong"] == [], res["wrong"][:20]
    assert res["bad"] > 1000 and res["decoded"] > 100, res  # both outcomes happen (JPEG data flips decode)


def test_corrupt_png_members_are_bad_samples_with_reasons():
    lab, arr, _ = png_case(3, 4, shape=(8, 8))
    img, _, _ = png_case(2, 8, shape=(8, 8))
    i = lab.index(b"IDAT") + 6
    broken = lab[:i] + bytes([lab[i] ^ 0x20]) + lab[i + 1:]
    with pytest.raises(BadSample, match="corrupt label png: corrupt PNG: CRC mismatch in chunk IDAT"):
        decode_seg_sample({"png": img, "seg.png": broken}, None, 16)
    j = img.index(b"IDAT") + 6
    broken = img[:j] + bytes([img[j] ^ 0x20]) + img[j + 1:]
    with pytest.raises(BadSample, match="corrupt png image: corrupt PNG: CRC mismatch"):
        decode_seg_sample({"png": broken, "seg.png": lab}, None, 16)
    out_img, out_lab = decode_seg_sample({"png": img, "seg.png": lab}, None, 16)
    assert out_img.shape == (3, 8, 8) and (out_lab.numpy() == arr).all()


def test_custom_dataset_with_low_bit_masks_and_16_bit_images_end_to_end(tmp_path):
    """The user story of issue 13: a custom folder with 1-bit gray, 2/4-bit palette (as PIL writes them) and
    16-bit gray masks, 16-bit RGB and 8-bit images, one corrupt mask; the val loader returns exactly the masks'
    class indices, images normalised in range, and skips the corrupt sample by name."""
    from vit_adapter_ds.data import build_val_loader
    from vit_adapter_ds.data.make_shards import write_custom

    imgs, masks = tmp_path / "img", tmp_path / "ann"
    imgs.mkdir()
    masks.mkdir()
    (tmp_path / "classes.txt").write_text("\n".join(f"c{i}" for i in range(16)))
    rng = np.random.default_rng(3)
    want = {}
    for i, kind in enumerate(["gray1", "pal2", "pal4", "gray16", "corrupt"]):
        top = {"gray1": 2, "pal2": 4, "pal4": 16, "gray16": 16, "corrupt": 2}[kind]
        m = rng.integers(0, top, (9, 11)).astype(np.uint8)
        if kind.startswith("pal"):
            im = Image.fromarray(m, "P")
            im.putpalette([v % 256 for v in range(3 * top)])
            b = io.BytesIO()
            im.save(b, format="PNG", bits=int(kind[3:]))
            data = b.getvalue()
        elif kind == "gray16":
            data = write_png(m.astype(np.uint16), 0, 16)
        else:
            data = write_png(m, 0, 1)
        if kind == "corrupt":
            j = data.index(b"IDAT") + 5
            data = data[:j] + bytes([data[j] ^ 4]) + data[j + 1:]
        (masks / f"s{i}.png").write_bytes(data)
        want[f"s{i}"] = m
        rgb = rng.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
        if i % 2:
            (imgs / f"s{i}.png").write_bytes(write_png(rgb, 2, 16))
        else:
            Image.fromarray((rgb >> 8).astype(np.uint8)).save(imgs / f"s{i}.jpg", quality=95)
    write_custom(str(imgs), str(masks), str(tmp_path / "classes.txt"), str(tmp_path / "out" / "val"), "val",
                 num_workers=1, progress=False)
    loader = build_val_loader(str(tmp_path / "out"), max_bad_fraction=0.5)
    got = {b["meta"]["keys"][0]: b for b in loader}
    assert sorted(got) == ["s0", "s1", "s2", "s3"] and loader.bad.total == 1
    for k, b in got.items():
        np.testing.assert_array_equal(b["gt_semantic_seg"][0].numpy(), want[k])
        assert float(b["img"].abs().max()) < 2.7
