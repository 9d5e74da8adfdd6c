"""Deterministic, exactly resumable train loader and exact-coverage validation loader over tar shards.

Design ("global order", see ``shards/README.md``):

* The manifest lists every sample (global id = position in manifest order) with its tar member offsets (kept
  in compact arrays by :class:`ShardReader`; ``loader.manifest`` omits the per-sample index). An epoch's order is a
  permutation of all N samples, a pure function of ``(seed, epoch)`` (and the shuffle mode).
* The epoch is cut into global steps of ``world_size * batch_size`` consecutive *slots* of that order; slot ``g``
  holds sample ``order[g % N]`` (the last step wraps around to the start of the order, so every rank gets
  ``ceil(N / (world_size * batch_size))`` batches; nothing is dropped, a few samples are seen twice).
  Rank ``r``'s batch at step ``s`` holds slots ``P0 + s * W * B + r * B + j``, ``j < B``.
* A sample's augmentation is drawn from ``numpy.random.default_rng([seed, epoch, g])``.
* DataLoader worker ``w`` of ``n`` computes the batches ``s = w, w + n, ...``; PyTorch's iterable-dataset
  loader returns workers' outputs round-robin, which restores the order ``s = 0, 1, 2, ...``.

So a batch is a pure function of (seed, epoch, position, rank, world size, batch size) and independent of the
number of workers. The loader's position is ``samples_consumed_in_epoch`` = P (global slots consumed, counted in
the main process as batches are handed out, ``W * B`` per batch). Resuming from P with the same world size and
batch size reproduces the uninterrupted run exactly, for any number of workers; with another world size or batch
size the epoch continues from slot P, so no sample of the epoch before P is repeated and none after P is
skipped (only the wrap-around at the end of the epoch differs).

A bad sample (see :class:`BadSample`) is replaced by the next sample of the epoch order that decodes; bad
samples are counted and warned about (rate-limited, naming shard and key). The bad-sample budget is per epoch
over all ranks: :func:`bad_sample_budget` of the epoch's samples. When ``torch.distributed`` is initialised with
the loader's world size, the train loader sums the ranks' counts with one tiny int64 all-reduce per batch in the
main process (on a gloo group: the default group, or one created once beside an NCCL group), so every rank sees
the same global count and raises :class:`TooManyBadSamples` at the same batch; a rank whose loader fails in
another way tells the others through the same all-reduce, so no rank is left waiting in a collective. The val
loader sums once, at the end of its pass (its ranks run unequal numbers of batches).
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import BadSample, ShardReader, decode_seg_sample
from .manifest import ShardSetError, read_manifest, verify_shards
from ..utils.redact import redact_url
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, train_transform

log = logging.getLogger(__name__)


class TooManyBadSamples(RuntimeError):
    """More bad samples in an epoch (over all ranks) than the budget, or a run of ``max_substitutes + 1``
    consecutive bad samples; raised on every rank at the same batch."""


class OtherRankFailed(RuntimeError):
    """The loader of another rank failed (its error is in its log); raised so that this rank stops as well."""


def bad_sample_budget(max_bad_fraction, num_samples):
    """Bad samples an epoch of ``num_samples`` (all ranks) may hold: ``floor(max_bad_fraction * num_samples)``,
    but at least 1 when ``max_bad_fraction > 0`` (a tiny epoch does not fail on one bad sample);
    ``max_bad_fraction=0`` tolerates none."""
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    allowed = math.floor(max_bad_fraction * num_samples + 1e-9)
    return max(1, allowed) if max_bad_fraction > 0 else 0


_GLOO_GROUPS = {}


def _reduce_group():
    """The group for the loader's CPU all-reduces: the default one if its backend takes CPU tensors, else a gloo
    group over all ranks, created once (collectively: every rank reaches this at the same batch)."""
    backend = str(dist.get_backend())
    if "gloo" in backend or "mpi" in backend or "ucc" in backend:
        return None
    world = dist.group.WORLD
    if world not in _GLOO_GROUPS:
        _GLOO_GROUPS[world] = dist.new_group(backend="gloo")
    return _GLOO_GROUPS[world]


def syncs_ranks(world_size):
    """Whether the loaders' counts are summed over ranks: ``torch.distributed`` is initialised with
    ``world_size`` (> 1) ranks."""
    return world_size > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size


def sum_over_ranks(values, world_size):
    """Element-wise sum of a few integers over the loader's ranks (see :func:`syncs_ranks`); the values
    themselves otherwise."""
    values = [int(v) for v in values]
    if not syncs_ranks(world_size):
        return values
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, group=_reduce_group())
    return t.tolist()


def _open_set(shard_dir, split, num_classes, verify, expect_split):
    """Read and check a segmentation shard set; return (manifest without the per-sample index, ShardReader)."""
    m = read_manifest(shard_dir, split)
    if m.get("split") not in (None, expect_split):
        log.warning("%s holds the %r split, read by the %s loader", redact_url(m["shard_dir"]), m.get("split"),
                    expect_split)
    if m.get("task", "segmentation") != "segmentation":
        raise ShardSetError(f"{redact_url(m['shard_dir'])} holds {m.get('task')!r} shards, not segmentation")
    verify_shards(m["shard_dir"], m, verify)
    nc = int(m["num_classes"])
    if num_classes is not None and int(num_classes) != nc:
        raise ShardSetError(f"{redact_url(m['shard_dir'])}: the manifest has {nc} classes, the model/recipe "
                            f"{num_classes}")
    reader = ShardReader(m)
    light = dict(m, shards=[{k: v for k, v in s.items() if k != "samples"} for s in m["shards"]])
    return light, reader


def _lut(m, label_remap=None):
    """The manifest's label map as a uint8 table, followed by ``label_remap``'s table when given."""
    lm = m.get("label_map")
    lut = torch.tensor(lm if lm is not None else list(range(256)), dtype=torch.uint8)
    if label_remap is not None:
        lut = torch.tensor(label_remap["lut"], dtype=torch.uint8)[lut.long()]
    return lut


def _check_remap(manifest, label_remap, num_classes):
    """A train pipeline's label remap (``MapillaryHack``) reads the classes of the shards it was written for and
    gives the model's classes; ShardSetError otherwise."""
    where, nc = redact_url(manifest["shard_dir"]), int(manifest["num_classes"])
    if nc != label_remap["in_classes"]:
        raise ShardSetError(f"{where}: the train pipeline's {label_remap['name']} maps {label_remap['in_classes']} "
                            f"classes (Mapillary Vistas shards), the manifest has {nc}")
    if num_classes is not None and int(num_classes) != label_remap["num_classes"]:
        raise ShardSetError(f"{where}: the train pipeline's {label_remap['name']} gives "
                            f"{label_remap['num_classes']} classes, the model/recipe {num_classes}")


def epoch_order(manifest, seed, epoch, shuffle="global", window_shards=4):
    """The epoch's sample order: an int array of global sample ids (positions in manifest order).

    ``shuffle``: ``'global'`` (uniform permutation of all samples), ``'shards'`` (permute the shards, then
    permute samples within each window of ``window_shards`` consecutive shards of that order: fewer shards are
    read at the same time; a deterministic stand-in for webdataset's shard shuffle + shuffle buffer) or
    ``'none'`` (manifest order).
    """
    counts = [s["num_samples"] for s in manifest["shards"]]
    n = sum(counts)
    rng = np.random.default_rng([int(seed), int(epoch), 7919])
    if shuffle == "none":
        return np.arange(n)
    if shuffle == "global":
        return rng.permutation(n)
    if shuffle == "shards":
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        shard_perm = rng.permutation(len(counts))
        out = []
        for w0 in range(0, len(shard_perm), window_shards):
            window = shard_perm[w0:w0 + window_shards]
            idx = np.concatenate([np.arange(starts[k], starts[k] + counts[k]) for k in window])
            out.append(idx[rng.permutation(len(idx))])
        return np.concatenate(out)
    raise ValueError(f"shuffle must be 'global', 'shards' or 'none', got {shuffle!r}")


class BatchStream(IterableDataset):
    """A dataset whose items are whole batches ``make_batch(step)`` for ``step < num_batches``; DataLoader workers
    take every ``num_workers``-th step, and the shard reader is closed when the iteration ends."""

    num_batches: int

    def make_batch(self, step):
        raise NotImplementedError

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            for step in range(wid, self.num_batches, nw):
                yield self.make_batch(step)
        finally:
            self.reader.close()


class _TrainStream(BatchStream):
    """Yields the rank's batches of one epoch from position ``start`` (global slots), split across workers."""

    def __init__(self, manifest, reader, *, epoch, start, num_batches, rank, world_size, batch_size, crop_size,
                 scale, ratio_range, cat_max_ratio, seed, shuffle, window_shards, mean, std, ignore_index,
                 photometric, label_remap=None, max_substitutes=32):
        super().__init__()
        self.reader = reader
        self.order = epoch_order(manifest, seed, epoch, shuffle, window_shards)
        self.lut = _lut(manifest, label_remap)
        self.num_classes = int(manifest["num_classes"] if label_remap is None else label_remap["num_classes"])
        self.epoch, self.start, self.num_batches = epoch, start, num_batches
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.crop_size, self.scale, self.ratio_range = tuple(crop_size), tuple(scale), tuple(ratio_range)
        self.cat_max_ratio, self.seed, self.mean, self.std = cat_max_ratio, seed, mean, std
        self.ignore_index, self.photometric, self.max_substitutes = ignore_index, photometric, max_substitutes

    def slots(self, step):
        base = self.start + step * self.world_size * self.batch_size + self.rank * self.batch_size
        return range(base, base + self.batch_size)

    def _load(self, g, bad):
        n = len(self.order)
        for k in range(self.max_substitutes + 1):
            i = int(self.order[(g + k) % n])
            key = str(self.reader.keys[i])
            try:
                img, lab = decode_seg_sample(self.reader.read_global(i), self.lut, self.num_classes,
                                             self.ignore_index)
                return img, lab, self.reader.shard_name(i), key
            except BadSample as e:
                bad.append((self.reader.shard_name(i), key, str(e)))
        raise TooManyBadSamples(f"{self.max_substitutes + 1} consecutive samples of the epoch order from slot "
                                f"{g} are bad, last: {bad[-1]}")

    def make_batch(self, step):
        """The batch of ``step``, or ``{'fatal': message, 'meta': {'bad': ...}}`` after a run of
        ``max_substitutes + 1`` bad samples (raised by the main process, on all ranks at once)."""
        imgs, labs, keys, shapes, shards, bad = [], [], [], [], [], []
        slots = list(self.slots(step))
        for g in slots:
            try:
                img, lab, shard, key = self._load(g, bad)
            except TooManyBadSamples as e:
                return {"fatal": str(e), "meta": {"bad": bad, "step": step, "epoch": self.epoch}}
            rng = np.random.default_rng([int(self.seed), int(self.epoch), int(g)])
            x, y = train_transform(img, lab, rng, self.crop_size, self.scale, self.ratio_range, self.cat_max_ratio,
                                   photometric=self.photometric, mean=self.mean, std=self.std,
                                   ignore_index=self.ignore_index)
            imgs.append(x)
            labs.append(y)
            keys.append(key)
            shards.append(shard)
            shapes.append([int(v) for v in img.shape[1:]])
        return {"img": torch.stack(imgs), "gt_semantic_seg": torch.stack(labs),
                "meta": {"keys": keys, "shards": shards, "ori_shape": shapes, "slots": slots, "epoch": self.epoch,
                         "step": step, "bad": bad}}

class _BadCounter:
    """Counts distinct bad samples per epoch (and in total), logs rate-limited warnings naming shard and key, and
    raises :class:`TooManyBadSamples` when the epoch's count over all ranks exceeds the budget."""

    def __init__(self, max_bad_fraction, what):
        bad_sample_budget(max_bad_fraction, 1)  # validates the fraction
        self.max_bad_fraction, self.what = max_bad_fraction, what
        self.total = 0  # distinct bad samples per epoch, summed over epochs
        self.seen = set()
        self.last = None

    def reset_epoch(self):
        self.seen = set()
        self.last = None

    @property
    def epoch_count(self):
        return len(self.seen)

    def add(self, bad):
        for shard, key, reason in bad:
            if (shard, key) in self.seen:  # met again as a substitute candidate
                continue
            self.seen.add((shard, key))
            self.total += 1
            self.last = (shard, key, reason)
            if self.total <= 10 or self.total % 100 == 0:
                log.warning("%s: skipped bad sample %s in shard %s: %s (%d bad so far)%s", self.what, key, shard,
                            redact_url(reason), self.total,
                            "; further warnings every 100th" if self.total == 10 else "")

    def check(self, global_count, epoch_samples, world_size):
        """Raise if ``global_count`` (this epoch, all ranks) exceeds the budget of ``epoch_samples``."""
        allowed = bad_sample_budget(self.max_bad_fraction, epoch_samples)
        if global_count > allowed:
            last = ("this rank has none" if self.last is None else
                    f"this rank's last: {self.last[1]} in shard {self.last[0]}: {redact_url(self.last[2])}")
            scope = (f"over all {world_size} rank(s)" if world_size == 1 or syncs_ranks(world_size) else
                     f"on this rank (no process group to sum over the {world_size} ranks)")
            raise TooManyBadSamples(
                f"{self.what}: {global_count} bad samples this epoch {scope}, more than the "
                f"budget of {allowed} (max_bad_fraction={self.max_bad_fraction} of the epoch's {epoch_samples} "
                f"samples, see bad_sample_budget); {last}")


def agreed_pass(it, bad: _BadCounter, epoch_samples: int, world_size: int):
    """Yield the good items of one evaluation pass over ``it`` (:func:`iterate_batches`); bad samples go to ``bad``.
    The bad-sample budget of ``epoch_samples`` is checked over all ranks once, at the end of the pass (ranks run
    unequal numbers of batches, so there is no per-batch collective); a rank that alone exceeds the budget, or whose
    loader fails, stops early and waits there, so all ranks raise together."""
    bad.reset_epoch()
    allowed = bad_sample_budget(bad.max_bad_fraction, epoch_samples)
    error = None
    try:
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 -- re-raised below, after the other ranks heard of it
                error = e
                break
            if "img" in item:
                yield item
                continue
            bad.add(item["bad"])
            if bad.epoch_count > allowed:  # the global count is at least this: stop early
                break
    finally:
        it.close()
    count, n_error = sum_over_ranks([bad.epoch_count, error is not None], world_size)
    if error is not None:
        raise error
    if n_error:
        raise OtherRankFailed(f"{bad.what}: the loader of {n_error} other rank(s) failed (see their logs)")
    bad.check(count, epoch_samples, world_size)


def iterate_batches(ds, num_workers, timeout, pin_memory=False, prefetch_factor=2):
    """Iterate a DataLoader over ``ds`` (items are already batches). Workers are shut down as soon as the
    iteration ends, fails or is abandoned: left to the garbage collector after a worker error, PyTorch's
    shutdown waits ~5 s per worker."""
    kw = {}
    if num_workers > 0:
        kw = dict(timeout=timeout, prefetch_factor=prefetch_factor, persistent_workers=False)
    # A private generator: creating the iterator draws a base seed from it, and drawing from the global torch RNG
    # would shift the model's dropout / drop-path stream (a resumed run creates its iterator at another point).
    # Sample randomness comes from (seed, epoch, slot), never from the worker seed.
    owner = os.getpid()
    it = iter(DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         generator=torch.Generator().manual_seed(0), **kw))
    try:
        yield from it
    finally:
        if os.getpid() != owner:
            # An abandoned generator (a loader <-> generator reference cycle) collected in a forked process,
            # e.g. another DataLoader's worker: the workers belong to the parent; mark the iterator as shut down
            # so that neither we nor its __del__ signal them from here.
            if hasattr(it, "_shutdown"):
                it._shutdown = True
        elif hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


class EpochLoader:
    """What every resumable train loader shares: the position (epoch, global samples consumed), equal batch counts
    per rank, ``state_dict`` / ``load_state_dict`` (also across world sizes), the per-batch cross-rank check of bad
    samples and failures, and being its own infinite iterator (``next(loader)``).

    A subclass sets ``manifest``, ``reader``, ``num_samples``, ``batch_size``, ``rank``, ``world_size``, ``seed``,
    ``shuffle``, ``num_workers``, ``worker_timeout``, ``bad`` (a ``_BadCounter``) and calls ``_start_position()``; it
    implements ``_stream()``: the :class:`BatchStream` of the rest of the current epoch."""

    pin_memory = False
    prefetch_factor = 2

    def _start_position(self):
        self._reset_position(0)
        self._it = None

    def _reset_position(self, epoch):
        """Position at the start of ``epoch`` (a subclass with more position state resets it here too)."""
        self.epoch, self.samples_consumed_in_epoch = int(epoch), 0

    def _advance(self):
        """Count one handed-out batch (``world_size * batch_size`` global slots) in the position."""
        self.samples_consumed_in_epoch += self.global_batch

    @property
    def global_batch(self):
        return self.world_size * self.batch_size

    @property
    def len_per_epoch(self):
        """Batches per rank in a full epoch: ceil(N / (world_size * batch_size))."""
        return math.ceil(self.num_samples / self.global_batch)

    def __len__(self):
        return self.len_per_epoch

    def remaining_in_epoch(self):
        left = self.num_samples - self.samples_consumed_in_epoch
        return max(0, math.ceil(left / self.global_batch))

    def set_epoch(self, epoch):
        """Start epoch ``epoch`` from its beginning at the next ``next()``."""
        self._reset_position(epoch)
        self._close()

    def state_dict(self):
        epoch, pos = self.epoch, self.samples_consumed_in_epoch
        if self.remaining_in_epoch() == 0:  # the epoch's last batch was handed out: the next epoch's start
            epoch, pos = epoch + 1, 0
        return {"epoch": epoch, "samples_consumed_in_epoch": pos, "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.batch_size, "num_samples": self.num_samples,
                "shuffle": self.shuffle, "bad_samples_total": self.bad.total}

    def load_state_dict(self, state):
        """Restore a position saved by :meth:`state_dict` (takes effect at the next ``next()``). A different
        world size or batch size is allowed: the epoch continues from the same global position."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        if int(state.get("num_samples", self.num_samples)) != self.num_samples:
            raise ValueError(f"loader state is for {state['num_samples']} samples, the shards hold "
                             f"{self.num_samples}: a different dataset")
        if state.get("shuffle", self.shuffle) != self.shuffle:
            raise ValueError(f"loader state used shuffle={state['shuffle']!r}, this loader {self.shuffle!r}")
        if int(state["world_size"]) != self.world_size or int(state.get("batch_size", self.batch_size)) != \
                self.batch_size:
            log.warning("resuming the data position with world_size*batch_size %d*%d (saved with %d*%d): the "
                        "epoch continues from global sample %d", self.world_size, self.batch_size,
                        state["world_size"], state.get("batch_size", -1), state["samples_consumed_in_epoch"])
        self.epoch = int(state["epoch"])
        self.samples_consumed_in_epoch = int(state["samples_consumed_in_epoch"])
        self.bad.total = int(state.get("bad_samples_total", 0))
        self._close()

    def _close(self):
        """Drop the running batch generator (its workers shut down); the next ``next()`` starts from the state."""
        it, self._it = getattr(self, "_it", None), None
        if it is not None:
            it.close()

    def _stream(self):
        raise NotImplementedError

    def epoch_batches(self):
        """Yield the remaining batches of the current epoch, then advance to the next epoch.

        After every batch the ranks sum their bad-sample counts and failures (:func:`sum_over_ranks`, when a process
        group is initialised), so a failure or an exceeded budget (:func:`bad_sample_budget` of the epoch's samples
        over all ranks) raises on every rank at the same batch instead of leaving the others in a collective."""
        if self.samples_consumed_in_epoch == 0:
            self.bad.reset_epoch()
        n = self.remaining_in_epoch()
        if n > 0:
            epoch_samples = self.len_per_epoch * self.global_batch
            it = iterate_batches(self._stream(), self.num_workers, self.worker_timeout, self.pin_memory,
                                 self.prefetch_factor)
            try:
                for _ in range(n):
                    batch, error = None, None
                    try:
                        batch = next(it)
                    except StopIteration:
                        error = RuntimeError(f"{self.bad.what}: the DataLoader ended before the epoch's batches")
                    except Exception as e:  # noqa: BLE001 -- re-raised below, after the other ranks heard of it
                        error = e
                    fatal = batch.get("fatal") if batch is not None else None
                    if batch is not None:
                        self.bad.add(batch["meta"]["bad"])
                    count, n_fatal, n_error = sum_over_ranks(
                        [self.bad.epoch_count, fatal is not None, error is not None], self.world_size)
                    if error is not None:
                        raise error
                    if fatal is not None:
                        raise TooManyBadSamples(f"{self.bad.what}: {fatal}")
                    if n_error:
                        raise OtherRankFailed(f"{self.bad.what}: the loader of {n_error} other rank(s) failed at "
                                              f"this batch (see their logs); stopping")
                    if n_fatal:
                        raise TooManyBadSamples(f"{self.bad.what}: {n_fatal} other rank(s) met a run of "
                                                "consecutive bad samples (see their logs); stopping")
                    self.bad.check(count, epoch_samples, self.world_size)
                    self._advance()
                    yield batch
            finally:
                it.close()
        self._reset_position(self.epoch + 1)

    def _batches(self):
        while True:
            yield from self.epoch_batches()

    def __iter__(self):
        """The loader is its own (infinite) iterator: ``next(loader)`` gives the next batch, and
        :meth:`load_state_dict` takes effect at the next ``next()``."""
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._batches()
        return next(self._it)


class TrainLoader(EpochLoader):
    """Infinite iterator over training batches with an exactly resumable position (see module docstring).

    ``next(loader)`` yields batches forever (the loader is its own iterator), rolling over epochs;
    ``epoch_batches()`` yields the rest of the current epoch only. Batches: ``img`` float32 (B, 3, ch, cw), ``gt_semantic_seg`` int64 (B, ch, cw) with
    ``ignore_index`` for ignored/padded pixels, ``meta`` (keys, shards, ori_shape, slots, epoch, step, bad).
    ``label_remap`` (from the train pipeline's ``MapillaryHack``, :func:`~vit_adapter_ds.data.pipeline.mapillary_hack`):
    a second label table applied after the manifest's, from the manifest's ``in_classes`` to ``num_classes`` classes.
    """

    def __init__(self, shard_dir, *, batch_size, crop_size, scale=(2048, 512), num_workers=0, seed=0, rank=0,
                 world_size=1, num_classes=None, ignore_index=255, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 max_bad_fraction=0.01, ratio_range=(0.5, 2.0), cat_max_ratio=0.75, photometric=True,
                 shuffle="global", window_shards=4, split=None, verify="size", worker_timeout=300.0,
                 pin_memory=False, prefetch_factor=2, label_remap=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        self.manifest, self.reader = _open_set(shard_dir, split, num_classes if label_remap is None else None,
                                               verify, "train")
        if label_remap is not None:
            _check_remap(self.manifest, label_remap, num_classes)
        self.shard_dir = self.manifest["shard_dir"]
        self.num_samples = int(self.manifest["num_samples"])
        self.batch_size, self.rank, self.world_size, self.seed = int(batch_size), rank, world_size, int(seed)
        self.num_workers, self.worker_timeout = int(num_workers), worker_timeout
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.opts = dict(crop_size=tuple(crop_size), scale=tuple(scale), ratio_range=tuple(ratio_range),
                         cat_max_ratio=cat_max_ratio, shuffle=shuffle, window_shards=window_shards,
                         mean=tuple(mean), std=tuple(std), ignore_index=ignore_index, photometric=photometric,
                         label_remap=label_remap)
        self.shuffle = shuffle
        epoch_order(self.manifest, 0, 0, shuffle, window_shards)  # validates ``shuffle``
        self.bad = _BadCounter(max_bad_fraction, f"train loader (rank {rank})")
        self._start_position()

    def _stream(self):
        return _TrainStream(self.manifest, self.reader, epoch=self.epoch, start=self.samples_consumed_in_epoch,
                            num_batches=self.remaining_in_epoch(), rank=self.rank, world_size=self.world_size,
                            batch_size=self.batch_size, seed=self.seed, **self.opts)


class _ValStream(IterableDataset):
    def __init__(self, manifest, reader, indices, mean, std, ignore_index):
        super().__init__()
        self.reader = reader
        self.indices = indices
        self.lut = _lut(manifest)
        self.num_classes = int(manifest["num_classes"])
        self.mean, self.std, self.ignore_index = mean, std, ignore_index

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            for i in self.indices[wid::nw]:
                key, name = str(self.reader.keys[i]), self.reader.shard_name(i)
                try:
                    img, lab = decode_seg_sample(self.reader.read_global(i), self.lut, self.num_classes,
                                                 self.ignore_index)
                except BadSample as e:
                    yield {"bad": [(name, key, str(e))], "index": int(i)}
                    continue
                yield {"img": normalize(img, self.mean, self.std)[None], "gt_semantic_seg": lab.long()[None],
                       "meta": {"keys": [key], "shards": [name], "ori_shape": [[int(v) for v in img.shape[1:]]],
                                "index": [int(i)], "bad": []}}
        finally:
            self.reader.close()


class ValLoader:
    """Every validation sample exactly once across ranks, in manifest order, as single-sample batches.

    Rank ``r`` of ``W`` gets the contiguous block ``[r * N // W, (r + 1) * N // W)`` (counts differ by at most
    one; no padding duplicates). Batches: ``img`` float32 (1, 3, H, W) normalised at the original size,
    ``gt_semantic_seg`` int64 (1, H, W), ``meta`` (keys, shards, ori_shape, index). Resizing to the test scale is
    the evaluator's job. For exact distributed mIoU each rank accumulates per-class intersection/union areas
    over its samples and the areas are all-reduced (summed); do not average per-rank mIoUs.
    """

    def __init__(self, shard_dir, *, rank=0, world_size=1, num_workers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 num_classes=None, ignore_index=255, max_bad_fraction=0.01, split="val", verify="size",
                 worker_timeout=300.0, pin_memory=False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        self.manifest, self.reader = _open_set(shard_dir, split, num_classes, verify, "val")
        n = int(self.manifest["num_samples"])
        self.indices = np.arange(rank * n // world_size, (rank + 1) * n // world_size)
        self.world_size = world_size
        self.num_workers, self.worker_timeout, self.pin_memory = num_workers, worker_timeout, pin_memory
        self.mean, self.std, self.ignore_index = tuple(mean), tuple(std), ignore_index
        self.bad = _BadCounter(max_bad_fraction, f"val loader (rank {rank})")

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        """Yield this rank's samples. The bad-sample budget is checked over all ranks once, at the end of the pass
        (ranks run unequal numbers of batches, so there is no per-batch collective); a rank that alone exceeds
        the budget, or whose loader fails, stops early and waits there, so all ranks raise together."""
        ds = _ValStream(self.manifest, self.reader, self.indices, self.mean, self.std, self.ignore_index)
        it = iterate_batches(ds, self.num_workers, self.worker_timeout, self.pin_memory, 2)
        yield from agreed_pass(it, self.bad, int(self.manifest["num_samples"]), self.world_size)


def build_train_loader(shard_dir, *, batch_size, crop_size, scale=(2048, 512), num_workers=0, seed=0, rank=0,
                       world_size=1, num_classes=None, ignore_index=255, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       max_bad_fraction=0.01, **kw):
    """Build a :class:`TrainLoader` (infinite, resumable; ``len_per_epoch`` batches per rank per epoch).

    ``shard_dir``: a split folder with ``manifest.json`` or a folder with ``train/`` (see :func:`read_manifest`).
    ``crop_size``: int or (h, w); ``scale``: the recipe's (long, short) RandomResize scale. Extra keywords:
    ``ratio_range``, ``cat_max_ratio``, ``photometric``, ``shuffle`` ('global'|'shards'|'none'),
    ``window_shards``, ``split``, ``verify`` ('size'|'sha256'|'exists'|'none'), ``worker_timeout``,
    ``pin_memory``, ``prefetch_factor``.
    """
    return TrainLoader(shard_dir, batch_size=batch_size, crop_size=crop_size, scale=scale, num_workers=num_workers,
                       seed=seed, rank=rank, world_size=world_size, num_classes=num_classes,
                       ignore_index=ignore_index, mean=mean, std=std, max_bad_fraction=max_bad_fraction, **kw)


def build_val_loader(shard_dir, *, rank=0, world_size=1, num_workers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     **kw):
    """Build a :class:`ValLoader` (each sample exactly once across ranks, batch size 1, original size).
    ``shard_dir``: a split folder or a folder with ``val/``. Extra keywords: ``num_classes``, ``ignore_index``,
    ``max_bad_fraction``, ``split``, ``verify``, ``worker_timeout``, ``pin_memory``."""
    return ValLoader(shard_dir, rank=rank, world_size=world_size, num_workers=num_workers, mean=mean, std=std, **kw)
