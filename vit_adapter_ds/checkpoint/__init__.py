"""Checkpoints, one package (standard library, torch and :mod:`vit_adapter_ds.runtime` only; nothing of the models,
data, evaluation, tasks or engine):

* :mod:`.layout` -- the on-disk layout, defined once: tag names, the ``COMPLETE`` marker and its file list,
  ``latest``, ``best.json``, verification, which tag is newest;
* :mod:`.reader` -- reads any checkpoint file safely (``weights_only``);
* :mod:`.deepspeed` -- DeepSpeed folders: which tag a path designates (the one finder), ZeRO shards merged to fp32,
  the safe-file check before DeepSpeed loads, universal conversion;
* :mod:`.loading` -- any input (file or folder) -> state dict (``read_state_dict``), and ``load_into`` a model with
  a :class:`~.loading.LoadReport`;
* :mod:`.manager` -- a run's checkpoints: when to save, what to keep, what is best, what to resume, and loading.
"""
