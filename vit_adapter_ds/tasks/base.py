"""What a task supplies to the engine (torchtitan's ``TrainSpec`` idea): the engine knows nothing else of it.

A task is built from a recipe (``Task(cfg)``) and provides:

* ``validate() -> meta model``: raise ``ConfigError`` for anything wrong in ``cfg.model`` / ``cfg.data``, before any
  process group or worker starts (builds the model on the meta device and returns it).
* ``build_model(load_pretrained=True) -> nn.Module``: in train mode, ``forward_loss(model, batch)`` returns a dict of
  scalar tensors with the total under ``'loss'``.
* ``build_train_loader(rank, world_size, seed)``: an infinite iterator with ``state_dict()`` / ``load_state_dict()``.
* ``build_val_loader(rank, world_size)``: an iterable (or None), each sample once over all ranks.
* ``forward_loss(model, batch, device, dtype) -> dict``: moves the batch to the device and runs the model.
* optionally ``param_groups(model) -> list[dict]``: optimizer groups (``lr_scale``, ``group_name`` optional); without
  it the engine builds the recipe's layer-decay groups (``engine/optim.py``).
* ``evaluate(model, val_loader, dtype, num_vis) -> (metrics: dict[str, float], images: list[HxWx3 uint8])``, called
  on every rank.
* ``best_metric``: the metric ``evaluation.save_best='auto'`` means.
* optionally ``checkpoint_filter(state_dict, model, report)``: adapts a foreign checkpoint given to ``--load-from``
  (e.g. the official mmdet key layout of released detection checkpoints) before it is loaded.
"""
from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    cfg: object
    name: str
    best_metric: str

    def validate(self): ...

    def build_model(self, load_pretrained: bool = True): ...

    def build_train_loader(self, rank: int, world_size: int, seed: int): ...

    def build_val_loader(self, rank: int, world_size: int): ...

    def forward_loss(self, model, batch, device, dtype) -> dict: ...

    def evaluate(self, model, val_loader, dtype, num_vis: int) -> tuple[dict, list]: ...
