"""Training engine: the Trainer over a task's parts, checkpoints, DeepSpeed config, optimizer groups, schedule, logs.

* ``cli``: ``launch/train.py`` (argument and recipe validation before any process group, then the Trainer)
* ``eval_cli``: ``launch/eval.py`` / ``launch/predict.py`` (mIoU or COCO AP of a checkpoint; drawn predictions)
* ``trainer``: :class:`Trainer` -- build, step, log, evaluate, save / resume -- over ``deepspeed.initialize``
* ``faults``: stop signals (SIGTERM / SIGUSR1) and the non-finite loss / gradient policy of the training loop
* ``checkpoint``: what a checkpoint holds (:class:`TrainState`), crash-safe save (COMPLETE marker), pruning, best,
  resume (also universal on another world size, buffers included)
* ``deepspeed_setup``: DeepSpeed JSON loading and ``"auto"`` resolution from the recipe
* ``logging``: TensorBoard, ``metrics.jsonl``, progress bar
* ``optim`` / ``schedule``: layer-decay parameter groups and the poly + linear warm-up scheduler

The task (model, loaders, batch -> loss, evaluation) lives in :mod:`vit_adapter_ds.tasks`; the process group and
device in :mod:`vit_adapter_ds.runtime`.
"""
