"""Hostile inputs are refused with bounded work: checkpoint files that are devices or FIFOs, release archives whose
members are too large, lie about their size or climb out with '..', JAX .npz files sized from their headers only,
manifests that declare huge per-sample tables, and dataset files that lie outside the dataset root (make_shards).
Reads that could block are guarded by a timeout, so a regression fails instead of hanging the suite."""
import collections
import io
import json
import os
import re
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from vit_adapter_ds.checkpoint import reader as cio
from vit_adapter_ds.checkpoint.reader import CheckpointError, read_checkpoint
from vit_adapter_ds.data import ShardSetError, read_manifest
from vit_adapter_ds.data.decode import ShardReader
from vit_adapter_ds.data.make_shards import (UnsafeSourceError, main as make_shards_main, write_ade20k, write_coco,
                                             write_cocostuff, write_custom)
from vit_adapter_ds.data.shard_writer import write_shards
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade, write_synthetic_coco

pytestmark = pytest.mark.timeout(60)
WRITE = dict(num_workers=1, progress=False)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint files that are not regular files
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["zero.pth", "zero.zip", "zero.npz", "zero.safetensors"])
def test_symlink_to_dev_zero_is_refused(tmp_path, name):
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=re.escape(str(link)) + r" \(a symlink to /dev/zero\): it is a "
                                              r"character device, not a regular file"):
        read_checkpoint(link)


@pytest.mark.timeout(30)
def test_fifo_is_refused(tmp_path):
    fifo = tmp_path / "ckpt.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=re.escape(str(fifo)) + r": it is a FIFO, not a regular file"):
        read_checkpoint(fifo)


def test_symlink_to_a_regular_file_is_read(tmp_path):
    real = tmp_path / "real.pth"
    torch.save({"w": torch.arange(3.0)}, real)
    (tmp_path / "link.pth").symlink_to(real)
    assert torch.equal(read_checkpoint(tmp_path / "link.pth")["w"], torch.arange(3.0))


# ---------------------------------------------------------------------------------------------------------------------
# Release archives (.zip wrapping one checkpoint)
# ---------------------------------------------------------------------------------------------------------------------

def _archive(path, data: bytes, member="model.pth"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(member), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _declare_size(archive, size):
    """Rewrite the uncompressed size of the archive's only member in its local and central headers."""
    raw = bytearray(archive.read_bytes())
    struct.pack_into("<I", raw, 22, size)
    struct.pack_into("<I", raw, raw.rindex(b"PK\x01\x02") + 24, size)
    archive.write_bytes(bytes(raw))


@pytest.fixture
def unpack_dir(tmp_path, monkeypatch):
    """The folder read_checkpoint unpacks release archives into, kept after the call for inspection."""
    d = tmp_path / "unpacked"
    d.mkdir()
    monkeypatch.setattr(cio.tempfile, "mkdtemp", lambda prefix="": str(d))
    monkeypatch.setattr(cio.shutil, "rmtree", lambda *a, **k: None)
    return d


def _bytes_in(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_member_that_inflates_beyond_its_declared_size_is_refused(tmp_path, unpack_dir):
    archive = _archive(tmp_path / "release.zip", b"\0" * (1 << 20))
    _declare_size(archive, 1000)
    with pytest.raises(CheckpointError, match=r"refusing the member model.pth of " + re.escape(str(archive))):
        read_checkpoint(archive)
    assert _bytes_in(unpack_dir) <= 1000


def test_bounded_copy_stops_at_the_declared_size():
    dst = io.BytesIO()
    with pytest.raises(CheckpointError, match=r"refusing the member m.pth of r.zip: it inflates beyond its "
                                              r"declared 1000 bytes"):
        cio._copy_bounded(io.BytesIO(b"\0" * (8 << 20)), dst, 1000, "the member m.pth of r.zip")
    assert dst.tell() <= 1000


Usage = collections.namedtuple("Usage", "total used free")


@pytest.mark.parametrize("limit", ["cap", "free space"])
def test_member_larger_than_the_cap_or_the_free_space_is_refused_before_writing(tmp_path, unpack_dir, monkeypatch,
                                                                                 limit):
    archive = _archive(tmp_path / "release.zip", b"\0" * 100_000)
    if limit == "cap":
        monkeypatch.setattr(cio, "MAX_UNPACKED_BYTES", 4096)
    else:
        monkeypatch.setattr(cio.shutil, "disk_usage", lambda path: Usage(1 << 40, (1 << 40) - 4096, 4096))
    with pytest.raises(CheckpointError, match=re.escape(str(archive)) + r": its member model.pth declares 100000 "
                                              rf"bytes, more than (the cap|the {limit} at)"):
        read_checkpoint(archive)
    assert _bytes_in(unpack_dir) == 0


@pytest.mark.parametrize("member", ["../evil.pth", "/abs/evil.pth", "a/../../evil.pth"])
def test_member_names_that_climb_out_are_refused(tmp_path, member):
    archive = _archive(tmp_path / "release.zip", _torch_bytes({"w": torch.ones(2)}), member)
    with pytest.raises(CheckpointError, match=re.escape(str(archive)) + r": the member name .* is an absolute "
                                              r"path or climbs out with '\.\.'"):
        read_checkpoint(archive)


def test_archive_inside_the_archive_is_refused(tmp_path):
    inner = _archive(tmp_path / "inner.zip", _torch_bytes({"w": torch.ones(2)}))
    outer = _archive(tmp_path / "outer.zip", inner.read_bytes(), "inner.pth")
    with pytest.raises(CheckpointError, match=re.escape(str(outer)) + r": the member inner.pth is itself an archive"):
        read_checkpoint(outer)


# ---------------------------------------------------------------------------------------------------------------------
# JAX .npz: sized from the .npy headers
# ---------------------------------------------------------------------------------------------------------------------

def _jax_vit_arrays(dim=32, heads=2, depth=2, patch=4, grid=2, hidden=64, classes=5):
    """The arrays read_checkpoint sizes a ViT from (zeros; timm's converter is not run on them here)."""
    shapes = {"embedding/kernel": (patch, patch, 3, dim), "head/kernel": (dim, classes),
              "Transformer/posembed_input/pos_embedding": (1, grid * grid + 1, dim)}
    for i in range(depth):
        block = f"Transformer/encoderblock_{i}/"
        shapes[block + "MultiHeadDotProductAttention_1/query/kernel"] = (dim, heads, dim // heads)
        shapes[block + "MlpBlock_3/Dense_0/kernel"] = (dim, hidden)
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}


def test_npz_model_is_sized_from_the_headers_without_reading_arrays(tmp_path, monkeypatch):
    import timm.models.vision_transformer as tvit

    path = tmp_path / "vit.npz"
    np.savez(path, **_jax_vit_arrays())

    def no_array_reads(*args, **kwargs):
        raise AssertionError("an array was loaded to get its shape")

    filled = []
    monkeypatch.setattr(np.lib.format, "read_array", no_array_reads)
    monkeypatch.setattr(tvit, "_load_weights", lambda model, checkpoint_path: filled.append(checkpoint_path))
    sd = read_checkpoint(path)
    assert filled == [str(path)]  # timm's converter still fills the model from the file
    assert sd["patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    assert sd["pos_embed"].shape == (1, 5, 32) and sd["head.weight"].shape == (5, 32)
    assert sd["blocks.1.mlp.fc1.weight"].shape == (64, 32) and "blocks.2.norm1.weight" not in sd


def test_npz_with_a_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "vit.npz"
    np.savez(path, **_jax_vit_arrays(), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r": the array payload.npy holds Python objects"):
        read_checkpoint(path)


def test_npz_header_that_lies_about_its_shape_is_refused(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (16, 16, 3, 1 << 30)})
    path = tmp_path / "vit.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("embedding/kernel.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r": the header of embedding/kernel.npy declares "
                                              r"\(16, 16, 3, 1073741824\) float32, which does not match its"):
        read_checkpoint(path)


def test_npz_declaring_more_bytes_than_it_can_inflate_to_is_refused(tmp_path):
    header = io.BytesIO()
    shape = (16, 16, 3, 1 << 20)  # 3 GiB of float32, declared consistently by the .npy header and the zip header
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path = tmp_path / "vit.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("embedding/kernel.npy", header.getvalue() + b"\0" * 64)
    _declare_size(path, len(header.getvalue()) + 4 * int(np.prod(shape)))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r": its arrays declare 3221225600 bytes, more "
                                              r"than a \d+-byte archive can hold"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------------
# Manifests that declare huge per-sample tables
# ---------------------------------------------------------------------------------------------------------------------

def _write_manifest(folder, samples, nbytes):
    m = {"format": "vit-adapter-ds-shards", "version": 1, "num_classes": 1, "num_samples": len(samples),
         "shards": [{"name": "shard-000000.tar", "num_samples": len(samples), "bytes": nbytes, "sha256": "0" * 64,
                     "samples": samples}]}
    (folder / "manifest.json").write_text(json.dumps(m))


def _open_reader_traced(folder):
    """(exception raised by read_manifest + ShardReader, peak traced bytes) ."""
    tracemalloc.start()
    try:
        with pytest.raises(ShardSetError) as err:
            ShardReader(read_manifest(folder))
        return err.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_manifest_with_thousands_of_member_types_is_refused_with_bounded_memory(tmp_path):
    # the reviewed 0.6 MiB manifest had 20000 samples of one distinct type each: a 20000 x 20000 x 2 int64 table
    _write_manifest(tmp_path, [[f"k{i}", {f"e{i}": [0, 0]}] for i in range(3000)], nbytes=10 ** 9)
    err, peak = _open_reader_traced(tmp_path)
    assert re.search(re.escape(str(tmp_path / "manifest.json")) + r": field 'shards\[\*\]\.samples' name 3000 "
                     r"member types .* more than 16", str(err))
    assert peak < 32 << 20  # the table would be 144 MB


def test_manifest_with_more_members_than_its_shard_can_hold_is_refused(tmp_path):
    _write_manifest(tmp_path, [[f"k{i}", {"jpg": [0, 0], "png": [0, 0]}] for i in range(100)], nbytes=4096)
    with pytest.raises(ShardSetError, match=r"manifest.json: field 'shards\[0\] \(shard-000000.tar\).samples' lists "
                                            r"200 tar members, more than its 4096 bytes can hold"):
        read_manifest(tmp_path)


def test_manifest_with_a_huge_key_is_refused_with_bounded_memory(tmp_path):
    # numpy stores keys at the longest key's width: one 100k-character key makes every key 400 kB
    samples = [[f"k{i}", {"jpg": [0, 0]}] for i in range(300)] + [["x" * 100_000, {"jpg": [0, 0]}]]
    _write_manifest(tmp_path, samples, nbytes=10 ** 9)
    err, peak = _open_reader_traced(tmp_path)
    assert re.search(r"manifest.json: field 'shards\[0\] \(shard-000000.tar\)\.samples\[300\]\[0\]' must be a key of "
                     r"at most 255", str(err))
    assert peak < 32 << 20  # the keys would take 120 MB


# ---------------------------------------------------------------------------------------------------------------------
# make_shards: sources outside the dataset root, non-regular sources, no .tar.tmp left behind
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture
def ade(tmp_path):
    """(ADE20K-layout root with 2 training samples, the first image's path, a secret file outside the root)."""
    root = write_synthetic_ade(tmp_path / "raw", 2, 0, seed=3, size=(24, 32))
    image = os.path.join(root, "images", "training", sorted(os.listdir(os.path.join(root, "images", "training")))[0])
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(open(image, "rb").read()[:-2] + b"SECRET")
    return root, image, secret


def _leftovers(out):
    return sorted(n for n in os.listdir(out) if n.endswith(".tmp")) if os.path.isdir(out) else []


def _shard_bytes(out):
    return b"".join(open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".tar"))


def test_image_symlinked_outside_the_root_is_refused(ade, tmp_path):
    root, image, secret = ade
    os.remove(image)
    os.symlink(secret, image)
    out = str(tmp_path / "out")
    with pytest.raises(UnsafeSourceError, match=re.escape(image) + r" resolves to " + re.escape(str(secret)) +
                       r", outside the dataset root " + re.escape(root) + r"; refused \(pass --follow-symlinks"):
        write_ade20k(root, out, "train", classes=SYNTHETIC_CLASSES, **WRITE)
    assert not os.path.exists(out)  # refused while listing the sources, before any shard


def test_follow_symlinks_reads_an_outside_symlink(ade, tmp_path):
    root, image, secret = ade
    os.remove(image)
    os.symlink(secret, image)
    out = str(tmp_path / "out")
    write_ade20k(root, out, "train", classes=SYNTHETIC_CLASSES, follow_symlinks=True, **WRITE)
    assert b"SECRET" in _shard_bytes(out)


def test_symlink_inside_the_root_is_read(ade, tmp_path):
    root, image, _ = ade
    moved = os.path.join(root, "elsewhere.jpg")
    os.replace(image, moved)
    os.symlink(os.path.relpath(moved, os.path.dirname(image)), image)
    out = str(tmp_path / "out")
    m = write_ade20k(root, out, "train", classes=SYNTHETIC_CLASSES, **WRITE)
    assert m["num_samples"] == 2 and open(moved, "rb").read() in _shard_bytes(out)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
@pytest.mark.parametrize("follow", [False, True])
def test_devices_and_fifos_are_always_refused(ade, tmp_path, kind, follow):
    root, image, _ = ade
    os.remove(image)
    if kind == "fifo":
        os.mkfifo(image)
    else:
        os.symlink("/dev/zero", image)
    out = str(tmp_path / "out")
    pattern = (re.escape(image) + r" is not a regular file" if follow or kind == "fifo"
               else re.escape(image) + r" resolves to /dev/zero, outside the dataset root")
    with pytest.raises(UnsafeSourceError, match=pattern):
        write_ade20k(root, out, "train", classes=SYNTHETIC_CLASSES, follow_symlinks=follow, **WRITE)
    assert _leftovers(out) == []


@pytest.fixture
def coco(tmp_path):
    """(COCO-layout root with 2 training images, its instances JSON path, a secret file outside the root)."""
    root = write_synthetic_coco(tmp_path / "raw", 2, 0, seed=3, size=(24, 32))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET")
    return str(root), os.path.join(root, "annotations", "instances_train2017.json"), secret


def _set_first_file_name(ann_file, file_name):
    coco = json.load(open(ann_file))
    coco["images"][0]["file_name"] = file_name
    json.dump(coco, open(ann_file, "w"))


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_coco_file_name_leading_out_of_the_root_is_refused(coco, tmp_path, how):
    root, ann_file, secret = coco
    img_dir = os.path.join(root, "images", "train2017")
    name = os.path.relpath(secret, img_dir) if how == "relative" else str(secret)
    _set_first_file_name(ann_file, name)
    out = str(tmp_path / "out")
    with pytest.raises(UnsafeSourceError, match=r"image listed in " + re.escape(ann_file) + " " +
                       re.escape(os.path.join(img_dir, name)) + r" lies outside the dataset root " + re.escape(root)):
        write_coco(root, out, "train", follow_symlinks=True, **WRITE)  # the flag is for symlinks only
    assert _leftovers(out) == []


def test_coco_stuff_map_symlinked_outside_its_folder_is_refused(coco, tmp_path):
    root, _, secret = coco
    maps = os.path.join(root, "stuffthingmaps_trainval2017")
    first = os.path.join(maps, "train2017", sorted(os.listdir(os.path.join(maps, "train2017")))[0])
    os.replace(first, secret)
    os.symlink(secret, first)
    with pytest.raises(UnsafeSourceError, match=r"stuff map " + re.escape(first) + r" resolves to .*outside the "
                                                r"dataset root " + re.escape(maps)):
        write_coco(root, str(tmp_path / "out"), "train", stuff_maps=maps, **WRITE)


@pytest.mark.timeout(30)
def test_coco_annotation_file_that_is_a_device_is_refused(coco, tmp_path):
    root, ann_file, _ = coco
    os.remove(ann_file)
    os.symlink("/dev/zero", ann_file)
    with pytest.raises(UnsafeSourceError, match=r"COCO annotation file " + re.escape(ann_file) + r" is not a regular "
                                                r"file"):
        write_coco(root, str(tmp_path / "out"), "train", follow_symlinks=True, **WRITE)


def test_cocostuff_image_symlinked_outside_the_root_is_refused(coco, tmp_path):
    root, _, secret = coco
    img_dir = os.path.join(root, "images", "train2017")
    image = os.path.join(img_dir, sorted(os.listdir(img_dir))[0])
    os.remove(image)
    os.symlink(secret, image)
    with pytest.raises(UnsafeSourceError, match=re.escape(image) + r" resolves to .*outside the dataset root " +
                       re.escape(root)):
        write_cocostuff(root, str(tmp_path / "out"), "train", **WRITE)


@pytest.mark.timeout(30)
def test_custom_mask_outside_its_folder_and_fifo_class_file_are_refused(ade, tmp_path):
    root, _, secret = ade
    images, masks = os.path.join(root, "images", "training"), os.path.join(root, "annotations", "training")
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    mask = os.path.join(masks, sorted(os.listdir(masks))[0])
    os.replace(mask, tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", mask)
    with pytest.raises(UnsafeSourceError, match=re.escape(mask) + r" resolves to .*outside the dataset root " +
                       re.escape(masks)):
        write_custom(images, masks, str(classes), str(tmp_path / "out"), "train", **WRITE)
    fifo = tmp_path / "classes.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeSourceError, match=r"class file " + re.escape(str(fifo)) + r" is not a regular file"):
        write_custom(images, masks, str(fifo), str(tmp_path / "out"), "train", follow_symlinks=True, **WRITE)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_shard_leaves_no_tar_tmp(tmp_path, workers):
    folder = tmp_path / "not_a_file.jpg"
    folder.mkdir()
    samples = [(f"k{i}", {"jpg": b"x" * 10}) for i in range(4)] + [("bad", {"jpg": str(folder)})]
    out = tmp_path / "out"
    with pytest.raises((ValueError, OSError), match=re.escape(str(folder))):
        write_shards(samples, str(out), {}, max_samples=2, num_workers=workers, progress=False)
    assert _leftovers(str(out)) == []


def test_follow_symlinks_flag_is_documented_and_works_on_the_cli(ade, tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_shards_main(["ade20k", "--help"])
    assert "--follow-symlinks" in capsys.readouterr().out
    root, image, secret = ade
    os.remove(image)
    os.symlink(secret, image)
    out = tmp_path / "cli"
    args = ["ade20k", "--root", root, "--splits", "train", "--out", str(out), "--workers", "1", "--no-progress"]
    with pytest.raises(UnsafeSourceError):
        make_shards_main(args)
    assert make_shards_main(args + ["--follow-symlinks"]) == 0
    assert b"SECRET" in _shard_bytes(str(out / "train"))
