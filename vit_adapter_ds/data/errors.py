"""Errors shared by the shard-set readers (manifest.py, remote.py), kept apart so neither imports the other's
module for them."""


class ShardSetError(RuntimeError):
    """A shard set that cannot be used at all (missing, unreadable, inconsistent with its manifest)."""
