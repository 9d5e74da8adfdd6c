"""Data: tar shards (writers, synthetic dataset), a resumable streaming train loader, an exact val loader.

Shards are written once (``python -m vit_adapter_ds.data.make_shards NAME``, NAME a dataset of the catalog:
one sub-command per dataset of the catalog, ``data/catalog/``; format in ``shards/README.md``); training and evaluation read only shards. A shard set is a folder per split
(``shards/NAME/{train,val}/``) with ``shard-NNNNNN.tar`` files and ``manifest.json``.

API used by the engine::

    from vit_adapter_ds.data import build_train_loader, build_val_loader, read_manifest

    m = read_manifest("shards/synthetic")            # -> dict: classes, palette, num_classes, num_samples, ...
    train = build_train_loader("shards/synthetic", batch_size=2, crop_size=512, scale=(2048, 512),
                               num_workers=2, seed=0, rank=r, world_size=w, num_classes=m["num_classes"])
    train.len_per_epoch                              # batches per rank per epoch (equal on all ranks)
    train.load_state_dict(ckpt["data"])              # optional, before iter()
    it = iter(train)                                 # infinite: epochs roll over internally
    batch = next(it)  # {'img': float32 (B,3,h,w), 'gt_semantic_seg': int64 (B,h,w) (255 = ignore), 'meta': {...}}
    ckpt["data"] = train.state_dict()                # {'epoch', 'samples_consumed_in_epoch', 'seed',
                                                     #  'world_size', 'batch_size', ...}: position after the
                                                     #  batches handed out so far
    for b in build_val_loader("shards/synthetic", rank=r, world_size=w, num_workers=0):
        ...  # b['img'] (1,3,H,W) normalised at original size, b['gt_semantic_seg'] (1,H,W); each sample once

``shard_dir`` may be a split folder (holding ``manifest.json``) or its parent: then the train loader reads
``train/`` and the val loader ``val/``. Guarantees: every rank gets ``len_per_epoch`` batches per epoch; resuming
from ``state_dict()`` reproduces an uninterrupted run exactly, also with another number of workers; after a
world-size change the epoch continues from the same global sample position. The val loader's ranks get unequal
sample counts (differ by at most one): accumulate per-class areas per rank and all-reduce them.
Bad samples are skipped (train: replaced by the next sample of the epoch order) with rate-limited warnings;
more than the epoch's budget over all ranks (``max_bad_fraction``, at least 1; see ``shards/README.md``) raises
``TooManyBadSamples`` on every rank at the same batch; an unusable shard set raises ``ShardSetError`` at
construction.
"""
from .decode import BadSample
from .loader import (TooManyBadSamples, TrainLoader, ValLoader, build_train_loader, build_val_loader,
                     epoch_order)
from .manifest import ShardSetError, read_manifest, verify_shards
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BadSample", "IMAGENET_MEAN", "IMAGENET_STD", "ShardSetError", "TooManyBadSamples", "TrainLoader", "ValLoader",
    "build_train_loader", "build_val_loader", "epoch_order", "read_manifest", "verify_shards",
]
