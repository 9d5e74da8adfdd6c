"""Bad data: skipped with counted, named warnings; a clear failure past the allowed fraction; unusable shard sets
fail at construction; worker errors propagate (nothing hangs)."""
import logging
import os

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from vit_adapter_ds.data import ShardSetError, TooManyBadSamples, build_train_loader, build_val_loader
from vit_adapter_ds.data.classes import reduce_zero_label_map
from vit_adapter_ds.data.make_shards import ade20k_samples, write_ade20k, write_coco
from vit_adapter_ds.data.shard_writer import write_shards
from vit_adapter_ds.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade, write_synthetic_coco

OPTS = dict(crop_size=(32, 32), scale=(80, 40), seed=0)
N_GOOD = 20
pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:This DataLoader will create")]
META = {"dataset": "bad", "split": "train", "task": "segmentation", "classes": list(SYNTHETIC_CLASSES),
        "num_classes": 8, "palette": [[0, 0, 0]] * 8, "ignore_index": 255, "label_map": reduce_zero_label_map()}


def _png(arr):
    return encode_png(torch.from_numpy(arr)[None]).numpy().tobytes()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_synthetic_ade(tmp_path_factory.mktemp("bad") / "raw", N_GOOD, 0, seed=2, size=(64, 80))


@pytest.fixture(scope="module")
def bad_set(raw, tmp_path_factory):
    """20 good samples and one of each bad kind, spread over shards; returns (dir, {bad key: reason})."""
    good = ade20k_samples(raw, "train")
    jpg = open(good[0][1]["jpg"], "rb").read()
    png = open(good[0][1]["seg.png"], "rb").read()
    bad = {
        "bad_corrupt_jpg": {"jpg": jpg[: len(jpg) // 3], "seg.png": png},
        "bad_garbage_jpg": {"jpg": b"\xff\xd8\xff" + os.urandom(500), "seg.png": png},
        "bad_corrupt_png": {"jpg": jpg, "seg.png": png[:40]},
        "bad_missing_mask": {"jpg": jpg},
        "bad_size_mismatch": {"jpg": jpg, "seg.png": _png(np.ones((32, 40), np.uint8))},
        "bad_label_range": {"jpg": jpg, "seg.png": _png(np.full((64, 80), 200, np.uint8))},  # 200 -> 199 >= 8
        "bad_rgb_mask": {"jpg": jpg, "seg.png": encode_png(torch.ones(3, 64, 80, dtype=torch.uint8)).numpy()
                         .tobytes()},
    }
    samples = []
    for i, (k, files) in enumerate(good):
        samples.append((k, files))
        if i % 3 == 0 and bad:
            name = sorted(bad)[0]
            samples.append((name, bad.pop(name)))
    assert not bad
    d = str(tmp_path_factory.mktemp("badset") / "train")
    write_shards(samples, d, META, max_samples=6, num_workers=1, progress=False)
    return d


BAD_KEYS = {"bad_corrupt_jpg", "bad_garbage_jpg", "bad_corrupt_png", "bad_missing_mask", "bad_size_mismatch",
            "bad_label_range", "bad_rgb_mask"}


def test_val_skips_each_bad_kind_and_names_it(bad_set, caplog):
    caplog.set_level(logging.WARNING, logger="vit_adapter_ds.data.loader")
    loader = build_val_loader(bad_set, rank=0, world_size=1, max_bad_fraction=0.5)
    keys = [b["meta"]["keys"][0] for b in loader]
    assert len(keys) == N_GOOD and not BAD_KEYS & set(keys) and len(set(keys)) == N_GOOD
    assert loader.bad.total == len(BAD_KEYS)
    text = caplog.text
    for k in BAD_KEYS:
        assert k in text
    assert "shard-00000" in text
    for reason in ("corrupt jpg", "corrupt label png", "missing mask", "image size", "outside [0, 8)",
                   "single-channel"):
        assert reason in text, reason


def test_val_fails_past_the_bad_fraction(bad_set):
    with pytest.raises(TooManyBadSamples, match="max_bad_fraction"):
        list(build_val_loader(bad_set, rank=0, world_size=1))  # default 1 %


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_replaces_bad_samples_and_keeps_batch_sizes(bad_set, num_workers):
    loader = build_train_loader(bad_set, batch_size=3, num_workers=num_workers, max_bad_fraction=0.5, **OPTS)
    batches = list(loader.epoch_batches())
    assert len(batches) == loader.len_per_epoch == 9  # 27 samples / 3
    assert all(b["img"].shape[0] == 3 for b in batches)
    keys = [k for b in batches for k in b["meta"]["keys"]]
    assert not BAD_KEYS & set(keys)
    reported = {k for b in batches for _, k, _ in b["meta"]["bad"]}
    assert reported == BAD_KEYS and loader.bad.total == len(BAD_KEYS)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_fails_past_the_bad_fraction(bad_set, num_workers):
    loader = build_train_loader(bad_set, batch_size=3, num_workers=num_workers, **OPTS)  # default 1 %
    with pytest.raises(TooManyBadSamples, match="bad_"):
        list(loader.epoch_batches())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_error_inside_a_worker_propagates(tmp_path, raw, num_workers):
    """Every sample bad: the worker gives up after max_substitutes and the error reaches the main process."""
    jpg = open(ade20k_samples(raw, "train")[0][1]["jpg"], "rb").read()
    samples = [(f"k{i}", {"jpg": jpg}) for i in range(40)]
    d = str(tmp_path / "allbad")
    write_shards(samples, d, META, max_samples=10, num_workers=1, progress=False)
    loader = build_train_loader(d, batch_size=2, num_workers=num_workers, max_bad_fraction=1.0, **OPTS)
    with pytest.raises(TooManyBadSamples, match="consecutive samples"):
        next(iter(loader))


def test_truncated_tar(tmp_path, raw):
    d = str(tmp_path / "trunc")
    m = write_ade20k(raw, d, "train", classes=SYNTHETIC_CLASSES, max_samples=10, num_workers=1, progress=False)
    last = os.path.join(d, m["shards"][-1]["name"])
    size = os.path.getsize(last)
    with open(last, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ShardSetError, match="truncated"):
        build_train_loader(d, batch_size=2, **OPTS)  # default verify='size' fails at once
    with pytest.raises(ShardSetError, match="truncated"):
        build_val_loader(d, split="train")
    # without the size check the lost samples are skipped and counted
    loader = build_val_loader(d, split="train", verify="none", max_bad_fraction=0.5)
    keys = [b["meta"]["keys"][0] for b in loader]
    assert 10 <= len(keys) < N_GOOD and loader.bad.total == N_GOOD - len(keys)
    tl = build_train_loader(d, batch_size=2, verify="none", max_bad_fraction=0.5, **OPTS)
    got = list(tl.epoch_batches())
    assert len(got) == 10 and tl.bad.total >= 1


def test_unusable_shard_sets_fail_at_construction(tmp_path, bad_set):
    with pytest.raises(ShardSetError, match="not found"):
        build_train_loader(str(tmp_path / "missing"), batch_size=2, **OPTS)
    with pytest.raises(ShardSetError, match="no shard directory"):
        build_train_loader("", batch_size=2, **OPTS)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ShardSetError, match="no manifest.json"):
        build_val_loader(str(tmp_path / "empty"))
    with pytest.raises(ShardSetError, match="8 classes, the model/recipe 150"):
        build_train_loader(bad_set, batch_size=2, num_classes=150, **OPTS)
    with pytest.raises(ShardSetError, match="sha256"):  # content change with the same size
        d = str(tmp_path / "copy")
        os.makedirs(d)
        for fn in os.listdir(bad_set):
            data = bytearray(open(os.path.join(bad_set, fn), "rb").read())
            if fn.endswith(".tar"):
                data[1000] ^= 1
            open(os.path.join(d, fn), "wb").write(bytes(data))
        build_train_loader(d, batch_size=2, verify="sha256", **OPTS)
    root = write_synthetic_coco(tmp_path / "coco", 2, 0, size=(32, 40))
    write_coco(root, str(tmp_path / "det" / "train"), "train", num_workers=1, progress=False)
    with pytest.raises(ShardSetError, match="detection"):
        build_train_loader(str(tmp_path / "det"), batch_size=2, **OPTS)


def _in_unprivileged_child(fn):
    """``fn()`` (returning a str) in a forked child that, when this process is root (CI), first drops to
    nobody (uid/gid 65534), so that file permissions apply to it; returns its result or ``'raised TYPE: message'``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        os.close(r)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            out = str(fn())
        except BaseException as e:  # noqa: BLE001 -- reported to the parent
            out = f"raised {type(e).__name__}: {e}"
        try:
            os.write(w, out.encode()[:60000])
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return out


def test_unreadable_shard_fails_at_construction(bad_set):
    """A shard without read permission: ShardSetError naming it at construction. Runs as root too (CI): the check
    runs in a child that dropped root, on a copy of the set in a folder it may enter."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="unreadable-shards-")
    try:
        os.chmod(d, 0o755)
        for fn in os.listdir(bad_set):
            shutil.copy(os.path.join(bad_set, fn), os.path.join(d, fn))
            os.chmod(os.path.join(d, fn), 0o644)
        shard = os.path.join(d, "shard-000000.tar")

        def construct():
            build_train_loader(d, batch_size=2, **OPTS)
            return "constructed"

        assert _in_unprivileged_child(construct) == "constructed"  # the copy is usable by the child...
        os.chmod(shard, 0o000)

        def probe():
            try:
                open(shard, "rb").close()
            except PermissionError:
                return construct()
            return "the child can read a mode-000 file"

        out = _in_unprivileged_child(probe)
        assert out.startswith("raised ShardSetError") and "unreadable" in out and shard in out, out
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("ignore_index", [255, 0])
def test_label_range_check_edges(raw, ignore_index):
    from vit_adapter_ds.data.classes import identity_label_map
    from vit_adapter_ds.data.decode import BadSample, decode_seg_sample

    jpg = open(ade20k_samples(raw, "train")[0][1]["jpg"], "rb").read()
    lut = torch.tensor(identity_label_map(), dtype=torch.uint8)
    ok = np.full((64, 80), 7, np.uint8)
    ok[0, :8] = np.arange(8)
    ok[1, 0] = ignore_index
    decode_seg_sample({"jpg": jpg, "seg.png": _png(ok)}, lut, 8, ignore_index)
    for v in (8, 254) + ((255,) if ignore_index != 255 else ()):
        bad = ok.copy()
        bad[5, 5] = v
        with pytest.raises(BadSample, match=rf"\[{v}\] outside"):
            decode_seg_sample({"jpg": jpg, "seg.png": _png(bad)}, lut, 8, ignore_index)
