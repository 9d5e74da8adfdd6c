"""Checkpoints, one package (standard library, torch and :mod:`vit_adapter_ds.runtime` only; nothing of the models,
data, evaluation, tasks or engine):

* :mod:`.layout` -- the on-disk layout, defined once: tag names, the ``COMPLETE`` marker and its file list,
  ``latest``, ``best.json``, verification, which tag is newest;
* :mod:`.reader` -- reads any checkpoint file safely (``weights_only``), :class:`~.reader.LoadReport` and
  :func:`~.reader.load_into`;
* :mod:`.deepspeed` -- DeepSpeed folders: which tag a path designates (the one finder), ZeRO shards merged to fp32,
  the safe-file check before DeepSpeed loads, universal conversion;
* :mod:`.manager` -- a run's checkpoints: when to save, what to keep, what is best, what to resume, and loading.
"""
