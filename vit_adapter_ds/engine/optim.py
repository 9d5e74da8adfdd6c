"""AdamW parameter groups: layer-wise learning-rate decay (official ``LayerDecayOptimizerConstructor``) or mmcv
``paramwise_cfg.custom_keys`` multipliers (AugReg-B / Mask R-CNN recipes).

Layer decay (docs/official-architecture.md §4.3, ``segmentation/mmcv_custom/layer_decay_optimizer_constructor.py``)::

    L = num_layers + 2
    layer_id = the model's answer (vit_adapter_ds/models/layer_decay.py: each backbone / head declares the layers
               of its own parameters; the official rule: embeddings 0, block i -> i + 1, everything else L - 1)
    lr_scale = rate ** (L - layer_id - 1);   lr = base_lr * lr_scale
    weight_decay = 0 for 1-D parameters and names ending in '.bias', else the base weight decay

The official code also lists the backbone's no-decay names but compares them with the *prefixed* names, so they
never match: the embeddings and the BEiT relative-position tables DO get weight decay. ``official_wd_quirk=True``
(default) reproduces that; ``False`` exempts the parameters the model lists in ``no_weight_decay_names``
(models/layer_decay.py: the backbones' embeddings and relative-position tables), which is what the list intended.

Groups are merged by (layer_id, decay/no_decay) like the official code (group names ``layer_{id}_{decay|no_decay}``,
in order of first appearance). Every group carries ``params``, ``lr`` (= base_lr * lr_scale, the value at the
schedule's peak), ``weight_decay``, ``lr_scale`` and ``group_name``; the schedule sets
``lr = lr_at(iter) * lr_scale`` every iteration.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..models.layer_decay import intended_no_decay, layer_id


def _no_decay(model, name: str, param, official_wd_quirk: bool) -> bool:
    if param.ndim == 1 or name.endswith(".bias"):
        return True
    return not official_wd_quirk and intended_no_decay(model, name)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _add(groups: OrderedDict, key, name: str, param, with_names: bool, **settings) -> None:
    """Put ``param`` in ``groups[key]``, made with ``settings`` (lr, weight_decay, lr_scale, group_name) on first
    use; ``with_names`` keeps the parameter names beside the parameters (``param_names``)."""
    if key not in groups:
        groups[key] = {"params": [], **settings, **({"param_names": []} if with_names else {})}
    groups[key]["params"].append(param)
    if with_names:
        groups[key]["param_names"].append(name)


def _layer_decay_groups(model, base_lr, weight_decay, rate, num_layers, official_wd_quirk, with_names):
    if num_layers is None:
        raise ValueError("layer decay needs num_layers (the backbone depth, e.g. 12 or 24)")
    total = int(num_layers) + 2
    groups: "OrderedDict[str, dict]" = OrderedDict()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = _no_decay(model, name, param, official_wd_quirk)
        try:
            layer = layer_id(model, name, total)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if not 0 <= layer < total:
            raise ValueError(f"{name}: layer {layer} outside 0 .. {total - 1} (paramwise_cfg.num_layers must be the "
                             "backbone depth)")
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        scale = rate ** (total - layer - 1)
        _add(groups, key, name, param, with_names, lr=base_lr * scale, weight_decay=0.0 if no_decay else weight_decay,
             lr_scale=scale, group_name=key)
    return list(groups.values())


def custom_key_multipliers(name: str, custom_keys: dict) -> tuple[float, float] | None:
    """mmcv ``DefaultOptimizerConstructor`` matching: keys sorted alphabetically, then by length (longest first);
    the first key that is a substring of ``'{module path}.{param name}'`` gives ``(lr_mult, decay_mult)``.
    (For a parameter of the root module the string is ``'.{name}'``.) None if no key matches."""
    full = name if "." in name else f".{name}"
    for key in sorted(sorted(custom_keys), key=len, reverse=True):
        if key in full:
            c = custom_keys[key]
            return float(c.get("lr_mult", 1.0)), float(c.get("decay_mult", 1.0))
    return None


def _custom_key_groups(model, base_lr, weight_decay, custom_keys, with_names):
    for key, c in custom_keys.items():
        unknown = set(c) - {"lr_mult", "decay_mult"}
        if unknown:
            raise ValueError(f"custom_keys[{key!r}]: unsupported entries {sorted(unknown)} (lr_mult, decay_mult)")
    groups: "OrderedDict[tuple, dict]" = OrderedDict()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = custom_key_multipliers(name, custom_keys)
        lr_mult, decay_mult = mult if mult is not None else (1.0, 1.0)
        _add(groups, (lr_mult, decay_mult), name, param, with_names, lr=base_lr * lr_mult,
             weight_decay=weight_decay * decay_mult, lr_scale=lr_mult, group_name=f"lr_x{lr_mult:g}_wd_x{decay_mult:g}")
    return list(groups.values())


def build_param_groups(model: nn.Module, base_lr: float, weight_decay: float, layer_decay_rate: float | None = None,
                       num_layers: int | None = None, custom_keys: dict | None = None,
                       official_wd_quirk: bool = True, *, with_names: bool = False) -> list[dict]:
    """Parameter groups for ``torch.optim.AdamW`` / DeepSpeed (see the module docstring).

    * ``layer_decay_rate`` + ``num_layers``: official layer-wise decay (``official_wd_quirk`` as described).
    * ``custom_keys``: ``{substring: dict(lr_mult=..., decay_mult=...)}`` (mmcv semantics, one rule per parameter,
      groups merged by equal multipliers; parameters matching no key keep lr/wd x1).
    * neither: one group with everything (plain AdamW, decay on all parameters as mmcv does without paramwise_cfg).

    Frozen parameters (``requires_grad=False``) are left out. ``with_names`` adds ``param_names`` to each group
    (for logging/tests; leave it off for optimizers that copy group dicts)."""
    model = _unwrap(model)
    if layer_decay_rate is not None and custom_keys:
        raise ValueError("give either layer_decay_rate (LayerDecayOptimizerConstructor) or custom_keys, not both")
    if layer_decay_rate is not None:
        return _layer_decay_groups(model, base_lr, weight_decay, float(layer_decay_rate), num_layers,
                                   official_wd_quirk, with_names)
    if custom_keys:
        return _custom_key_groups(model, base_lr, weight_decay, custom_keys, with_names)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    group = {"params": [p for _, p in named], "lr": base_lr, "weight_decay": weight_decay, "lr_scale": 1.0,
             "group_name": "all"}
    if with_names:
        group["param_names"] = [n for n, _ in named]
    return [group]


def param_groups_from_cfg(model: nn.Module, cfg, official_wd_quirk: bool = True) -> list[dict]:
    """Groups from a recipe's ``optimizer`` dict: ``constructor='LayerDecayOptimizerConstructor'`` with
    ``paramwise_cfg=dict(num_layers, layer_decay_rate[, official_wd_quirk])``, or
    ``paramwise_cfg=dict(custom_keys=...)``, or none.
    This is the engine's ``build_param_groups(model, cfg)`` hook."""
    opt = dict(cfg["optimizer"])
    if opt.get("type", "AdamW") != "AdamW":
        raise ValueError(f"only AdamW recipes are supported, got optimizer.type={opt.get('type')!r}")
    pw = dict(opt.get("paramwise_cfg") or {})
    constructor = opt.get("constructor")
    base_lr, wd = float(opt["lr"]), float(opt.get("weight_decay", 0.0))
    if constructor == "LayerDecayOptimizerConstructor":
        unknown = set(pw) - {"num_layers", "layer_decay_rate", "official_wd_quirk"}
        if unknown:
            raise ValueError(f"LayerDecayOptimizerConstructor paramwise_cfg: unsupported keys {sorted(unknown)}")
        return build_param_groups(model, base_lr, wd, layer_decay_rate=float(pw["layer_decay_rate"]),
                                  num_layers=int(pw["num_layers"]),
                                  official_wd_quirk=bool(pw.get("official_wd_quirk", official_wd_quirk)))
    if constructor not in (None, "DefaultOptimizerConstructor"):
        raise ValueError(f"unsupported optimizer constructor {constructor!r}")
    unknown = set(pw) - {"custom_keys"}
    if unknown:
        raise ValueError(f"paramwise_cfg: unsupported keys {sorted(unknown)} (custom_keys only)")
    return build_param_groups(model, base_lr, wd, custom_keys=dict(pw.get("custom_keys") or {}) or None)


def param_groups_for_recipe(model, cfg) -> list[dict]:
    """The recipe's layer-decay (or custom_keys) groups; ``optimizer.paramwise_cfg.official_wd_quirk`` (default
    True) keeps the official weight decay on the parameters the model lists in ``no_weight_decay_names``."""
    from ..config.keys import to_plain

    opt = to_plain(cfg.optimizer)
    pw = dict(opt.get("paramwise_cfg") or {})
    quirk = bool(pw.pop("official_wd_quirk", True))
    opt["paramwise_cfg"] = pw
    return param_groups_from_cfg(model, {"optimizer": opt}, official_wd_quirk=quirk)
