"""Checkpoints: :mod:`.layout` defines the on-disk layout once (tag names, markers, verification, which tag is newest)
for the engine's writer (:mod:`vit_adapter_ds.engine.checkpoint`) and the reader (:mod:`vit_adapter_ds.checkpoint_io`)."""
