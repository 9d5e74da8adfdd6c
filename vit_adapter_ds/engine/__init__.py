"""Training engine: DeepSpeed set-up and loop, checkpoints, distributed init, logging; optimizer groups and schedule.

* ``cli``: ``launch/train.py`` (argument and config validation, then ``trainer.train``)
* ``trainer``: the iteration loop over ``deepspeed.initialize``'s engine (``Components`` = the parts it drives)
* ``components``: the real parts (segmentor, shard loaders, layer-decay groups, poly schedule, evaluator)
* ``checkpoint``: crash-safe save (COMPLETE marker), resume (also universal on another world size), export, load-from
* ``deepspeed_setup``: DeepSpeed JSON loading and ``"auto"`` resolution from the recipe
* ``distributed``: RANK/WORLD_SIZE/... from deepspeed, torchrun, srun or a plain process; process-group init
* ``logging``: TensorBoard, ``metrics.jsonl``, progress bar
* ``optim`` / ``schedule``: layer-decay parameter groups and the poly + linear warm-up learning rate
"""
