"""Which layer each parameter is for layer-wise learning-rate decay: every model says it for its own parameters
(the idea of timm's ``group_matcher``), so the optimizer (:mod:`vit_adapter_ds.engine.optim`) knows no names.

A module declares a method ``layer_id(name, num_layers) -> int`` for the names of its own
``named_parameters()`` (``num_layers`` is L = paramwise_cfg.num_layers + 2; layer 0 is the embeddings, i + 1 block i,
L - 1 the top). :func:`layer_id` asks, for a parameter of a whole model, the outermost module on the parameter's
path that declares one (with the name relative to that module); a parameter that no module claims is on the top
layer L - 1 (the adapter, necks, heads), as in the official rule. The declarations of this package:

* the ViT / BEiT backbones (:func:`vit_layer_id`): ``cls_token``, ``mask_token``, ``pos_embed`` (exact names) and
  ``patch_embed*`` are layer 0, ``blocks.i.*`` / ``layers.i.*`` layer i + 1, the rest L - 1;
* the Uni-Perceiver backbone (``UniPerceiverAdapter.layer_id``): ``visual_embed*`` layer 0, then the ViT rule;
* heads whose embeddings are layer 0 (:func:`zero_layer_id`): Mask2Former's ``query_feat``, ``query_embed``,
  ``level_embed``, ``mask_embed`` and ``cls_embed``.

Together they are the official ``get_num_layer_for_vit`` of ``segmentation/mmcv_custom/layer_decay_optimizer_
constructor.py`` (and of the detection one) for the official parameter names.

Likewise a module lists in ``no_weight_decay_names`` the parameter names (last name component) that the official
no-decay list intended (the backbones: :data:`VIT_NO_WEIGHT_DECAY`); the optimizer exempts them from weight decay
only with ``official_wd_quirk=False`` (:func:`intended_no_decay`).
"""
from __future__ import annotations

import re

from torch import nn

VIT_ZERO_LAYER_NAMES = ("cls_token", "mask_token", "pos_embed")
VIT_NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "mask_token", "level_embed", "relative_position_bias_table")
_BLOCK = re.compile(r"^(?:blocks|layers)\.(\d+)(?:\.|$)")


def vit_layer_id(name: str, num_layers: int) -> int:
    """The official rule for a ViT backbone's own parameter names (``num_layers`` = L = depth + 2). A block index
    >= L - 2 raises ``ValueError`` (paramwise_cfg.num_layers must be the backbone depth)."""
    if name in VIT_ZERO_LAYER_NAMES or name.startswith("patch_embed"):
        return 0
    m = _BLOCK.match(name)
    if m:
        block = int(m.group(1))
        if block >= num_layers - 2:
            raise ValueError(f"block index {block} >= num_layers={num_layers - 2} (paramwise_cfg.num_layers must be "
                             "the backbone depth)")
        return block + 1
    return num_layers - 1


def zero_layer_id(name: str, num_layers: int, prefixes: tuple[str, ...]) -> int:
    """Layer 0 for names starting with one of ``prefixes`` (a head's embeddings), else the top layer L - 1."""
    return 0 if name.startswith(prefixes) else num_layers - 1


def layer_id(model: nn.Module, name: str, num_layers: int) -> int:
    """The layer of ``model``'s parameter ``name`` (see the module docstring); ``num_layers`` = L."""
    owner, rest = model, name
    while True:
        if callable(getattr(type(owner), "layer_id", None)):
            return int(owner.layer_id(rest, num_layers))
        child, _, tail = rest.partition(".")
        owner = owner._modules.get(child) if tail else None
        if owner is None:
            return num_layers - 1
        rest = tail


def intended_no_decay(model: nn.Module, name: str) -> bool:
    """Whether a module on the path of ``model``'s parameter ``name`` lists its last name component in
    ``no_weight_decay_names``."""
    owner, parts = model, name.split(".")
    for part in parts:
        if parts[-1] in getattr(owner, "no_weight_decay_names", ()):
            return True
        owner = owner._modules.get(part)
        if owner is None:
            return False
    return False
