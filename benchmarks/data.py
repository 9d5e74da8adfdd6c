"""Data-loading benchmark: shard loader vs a file-per-image loader on the same synthetic data, and shard writing.

    OMP_NUM_THREADS=1 python benchmarks/data.py [--num-images 64] [--workers 1 2] [--crops 512 896]

Both loaders decode with ``vit_adapter_ds.data.decode`` (checked PNG/JPEG headers; PIL for PNG, torchvision for
JPEG) and run the same training transforms (RandomResize at the recipe
scale (4*crop, crop), RandomCrop with cat_max_ratio, flip, PhotoMetricDistortion, Normalize, Pad), so the
difference is the storage path: one ``seek + read`` per member in a few large tar files vs opening two files per
sample. The folder loader visits the same samples in the same order with the same random draws, so the work
is identical. Reported: images/s over one epoch after a warm-up batch (best of ``--repeats`` alternating runs),
and images/s per worker. Shard writing: samples/s
and MB/s of ``make_shards`` over the same folders (1 and 2 processes). Decoding cost: per file type, the
container check alone (PNG chunk structure + CRC-32, JPEG marker walk), our full decode, and torchvision's bare
``decode_png`` / ``decode_jpeg`` without checks (the decoder used before; it crashes on some corrupt PNGs and
misreads 1/2/4-bit ones). Prints markdown tables.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, decode_png

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vit_adapter_ds.data import build_train_loader, epoch_order, read_manifest  # noqa: E402
from vit_adapter_ds.data.classes import reduce_zero_label_map  # noqa: E402
from vit_adapter_ds.data.decode import check_png, decode_image, decode_label, jpeg_size  # noqa: E402
from vit_adapter_ds.data.make_shards import write_ade20k  # noqa: E402
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade  # noqa: E402
from vit_adapter_ds.data.transforms import train_transform  # noqa: E402


class FolderDataset(Dataset):
    """The baseline: a map-style dataset over ADE20K-layout folders (one JPEG + one PNG per sample), visiting
    the samples in the shard loader's epoch-0 order with the same per-slot random draws, so both loaders do
    identical decoding and transform work and differ only in how the bytes are found and read."""

    def __init__(self, root, shard_dir, crop, scale, seed=0):
        self.img_dir = os.path.join(root, "images", "training")
        self.ann_dir = os.path.join(root, "annotations", "training")
        m = read_manifest(shard_dir)
        keys = [k for s in m["shards"] for k, _ in s["samples"]]
        self.names = [keys[i] for i in epoch_order(m, seed, 0)]
        self.crop, self.scale, self.seed = crop, scale, seed
        self.lut = torch.tensor(reduce_zero_label_map(), dtype=torch.uint8)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, g):
        n = self.names[g]
        with open(os.path.join(self.img_dir, n + ".jpg"), "rb") as f:
            img = decode_image(f.read(), "jpg")
        with open(os.path.join(self.ann_dir, n + ".png"), "rb") as f:
            lab = decode_label(f.read(), self.lut)
        rng = np.random.default_rng([self.seed, 0, g])
        return train_transform(img, lab, rng, (self.crop, self.crop), self.scale)


def _time_epoch(it, n_batches, batch_size):
    next(it)  # warm-up (worker start, first decode)
    t = time.perf_counter()
    for _ in range(n_batches - 1):
        next(it)
    return (n_batches - 1) * batch_size / (time.perf_counter() - t)


def bench_loaders(root, shard_dir, crops, workers, batch_size, n_images, repeats):
    """Best of ``repeats`` alternating runs (the machine is shared: the best run is the least disturbed)."""
    rows = []
    n_batches = n_images // batch_size
    for crop in crops:
        scale = (4 * crop, crop)
        for nw in workers:
            shard_ips = folder_ips = 0.0
            for _ in range(repeats):
                sl = build_train_loader(shard_dir, batch_size=batch_size, crop_size=crop, scale=scale,
                                        num_workers=nw, seed=0)
                shard_ips = max(shard_ips, _time_epoch(iter(sl), n_batches, batch_size))
                dl = DataLoader(FolderDataset(root, shard_dir, crop, scale), batch_size=batch_size, shuffle=False,
                                num_workers=nw, drop_last=True)
                folder_ips = max(folder_ips, _time_epoch(iter(dl), n_batches, batch_size))
            per = max(nw, 1)
            rows.append((crop, nw, shard_ips, shard_ips / per, folder_ips, folder_ips / per))
            print(f"crop {crop} workers {nw}: shards {shard_ips:.1f} img/s, folders {folder_ips:.1f} img/s",
                  flush=True)
    return rows


def bench_read_decode(root, shard_dir, repeats):
    """Single process, no transforms: read only, and read + decode (+ label map), shards vs folders."""
    from vit_adapter_ds.data.decode import ShardReader, decode_seg_sample

    m = read_manifest(shard_dir)
    lut = torch.tensor(m["label_map"], dtype=torch.uint8)
    ids = [(si, i) for si, s in enumerate(m["shards"]) for i in range(s["num_samples"])]
    ds = FolderDataset(root, shard_dir, 512, (2048, 512))
    warm = ShardReader(m)
    decode_seg_sample(warm.read(*ids[0]), lut, m["num_classes"])  # first-call initialisation of the decoders
    warm.close()
    out = {}
    for decode in (False, True):
        best_s = best_f = 0.0
        for _ in range(repeats):
            reader = ShardReader(m)
            t = time.perf_counter()
            for si, i in ids:
                sample = reader.read(si, i)
                if decode:
                    decode_seg_sample(sample, lut, m["num_classes"])
            best_s = max(best_s, len(ids) / (time.perf_counter() - t))
            reader.close()
            t = time.perf_counter()
            for n in ds.names:
                with open(os.path.join(ds.img_dir, n + ".jpg"), "rb") as f:
                    img = f.read()
                with open(os.path.join(ds.ann_dir, n + ".png"), "rb") as f:
                    lab = f.read()
                if decode:
                    decode_image(img, "jpg")
                    decode_label(lab, ds.lut)
            best_f = max(best_f, len(ids) / (time.perf_counter() - t))
        out["read + decode" if decode else "read only"] = (best_s, best_f)
    return out


def _best_ms(fn, items, repeats):
    fn(items[0])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best * 1e3


def bench_decode_cost(root, repeats):
    """ms per file: container check alone, our decode (check + decode + conversion), torchvision's bare decoder."""
    names = sorted(os.listdir(os.path.join(root, "images", "training")))
    jpgs = [open(os.path.join(root, "images", "training", n), "rb").read() for n in names]
    labels = [open(os.path.join(root, "annotations", "training", n[:-4] + ".png"), "rb").read() for n in names]
    rgb_pngs = []
    for j in jpgs[:16]:
        b = io.BytesIO()
        Image.open(io.BytesIO(j)).save(b, format="PNG")
        rgb_pngs.append(b.getvalue())

    def tensor(x):
        return torch.frombuffer(bytearray(x), dtype=torch.uint8)

    rows = []
    for name, items, check, ours, bare in (
            ("label PNG (8-bit gray)", labels, check_png, decode_label, lambda x: decode_png(tensor(x))),
            ("image JPEG (RGB)", jpgs, jpeg_size, lambda x: decode_image(x, "jpg"),
             lambda x: decode_jpeg(tensor(x), mode=ImageReadMode.RGB)),
            ("image PNG (8-bit RGB)", rgb_pngs, check_png, lambda x: decode_image(x, "png"),
             lambda x: decode_png(tensor(x), mode=ImageReadMode.RGB))):
        size = sum(map(len, items)) / len(items) / 1e3
        rows.append((name, size, _best_ms(check, items, repeats), _best_ms(ours, items, repeats),
                     _best_ms(bare, items, repeats)))
        print(f"{name}: check {rows[-1][2]:.3f} ms, decode {rows[-1][3]:.2f} ms, bare {rows[-1][4]:.2f} ms",
              flush=True)
    return rows


def bench_writing(root, out, procs):
    rows = []
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(root)) for f in fs
                if "training" in dp)
    for p in procs:
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        m = write_ade20k(root, out, "train", classes=SYNTHETIC_CLASSES, max_samples=16, num_workers=p,
                         progress=False)
        dt = time.perf_counter() - t
        rows.append((p, m["num_samples"] / dt, total / dt / 1e6, len(m["shards"])))
        print(f"writing with {p} process(es): {m['num_samples'] / dt:.0f} samples/s", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--crops", type=int, nargs="+", default=[512, 896])
    ap.add_argument("--size", type=int, nargs=2, default=[512, 683])
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    try:
        t = time.perf_counter()
        root = write_synthetic_ade(os.path.join(tmp, "raw"), a.num_images, 0, seed=0, size=tuple(a.size))
        print(f"generated {a.num_images} synthetic {a.size[0]}x{a.size[1]} images in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        wrows = bench_writing(root, os.path.join(tmp, "shards", "train"), [1, 2])
        drows = bench_read_decode(root, os.path.join(tmp, "shards", "train"), a.repeats + 1)
        crows = bench_decode_cost(root, a.repeats + 1)
        lrows = bench_loaders(root, os.path.join(tmp, "shards", "train"), a.crops, a.workers, a.batch_size,
                              a.num_images, a.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| crop | workers | shards img/s | shards img/s/worker | folders img/s | folders img/s/worker | ratio |")
    print("|---|---|---|---|---|---|---|")
    for crop, nw, s, sp, f, fp in lrows:
        print(f"| {crop} | {nw} | {s:.1f} | {sp:.1f} | {f:.1f} | {fp:.1f} | {s / f:.2f} |")
    print("\n| 1 process, no transforms | shards samples/s | folders samples/s | ratio |")
    print("|---|---|---|---|")
    for name, (sv, fv) in drows.items():
        print(f"| {name} | {sv:.0f} | {fv:.0f} | {sv / fv:.2f} |")
    print("\n| file (mean size) | check ms | our decode ms | bare torchvision decode ms | ours / bare |")
    print("|---|---|---|---|---|")
    for name, kb, c, o, b in crows:
        print(f"| {name} ({kb:.0f} KB) | {c:.3f} | {o:.2f} | {b:.2f} | {o / b:.2f} |")
    print("\n| writer processes | samples/s | MB/s | shards |")
    print("|---|---|---|---|")
    for p, sps, mbs, ns in wrows:
        print(f"| {p} | {sps:.0f} | {mbs:.1f} | {ns} |")


if __name__ == "__main__":
    main()
