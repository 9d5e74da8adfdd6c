"""Small helpers that turn a config dict into typed values, or into a :class:`ConfigError` that names the dotted path.

Every builder that translates an official config dict (``from_config`` of the model tables, the task's loader
arguments, the engine's sections) uses these, so a misspelled or ill-typed key anywhere is refused the same way::

    check_keys(cfg, {"type", "in_channels", "channels"}, "model.decode_head")
    channels = take(cfg, "channels", int, "model.decode_head")                 # required
    ratio = take(cfg, "dropout_ratio", float, "model.decode_head", default=0.1)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import ConfigError

REQUIRED = object()


def check_keys(cfg, allowed: Iterable[str], where: str) -> None:
    """Raise unless ``cfg`` is a mapping whose keys are all in ``allowed`` (``_delete_`` is mmengine's)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"recipe: {where} must be a dict, got {type(cfg).__name__} {cfg!r}")
    allowed = set(allowed)
    unknown = sorted(str(k) for k in cfg if k not in allowed and k != "_delete_")
    if unknown:
        raise ConfigError(f"recipe: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; valid keys of "
                          f"{where}: {', '.join(sorted(allowed))}")


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def check_type(value, types, where: str):
    """``value`` if it is of ``types`` (``int`` excludes ``bool``; ``float`` accepts ``int``; ``tuple`` accepts
    ``list``), else :class:`ConfigError`."""
    tys = types if isinstance(types, tuple) else (types,)
    ok = False
    for t in tys:
        if t is type(None) and value is None:
            ok = True
        elif t is int and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        elif t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = True
        elif t in (tuple, list) and isinstance(value, (tuple, list)):
            ok = True
        elif t is bool and isinstance(value, bool):
            ok = True
        elif t not in (int, float, tuple, list, bool, type(None)) and isinstance(value, t):
            ok = True
    if not ok:
        raise ConfigError(f"recipe: {where} must be {_type_name(types)}, got {type(value).__name__} {value!r}")
    if float in tys and isinstance(value, int) and int not in tys:
        return float(value)
    return value


def take(cfg: Mapping, key: str, types, where: str, default=REQUIRED, choices=None):
    """``cfg[key]`` checked against ``types`` (and ``choices``); ``default`` when absent (required otherwise)."""
    if key not in cfg:
        if default is REQUIRED:
            raise ConfigError(f"recipe: {where}.{key} is required")
        return default
    value = check_type(cfg[key], types, f"{where}.{key}")
    if choices is not None and value not in choices:
        raise ConfigError(f"recipe: {where}.{key}={value!r} is not supported; choose one of {list(choices)}")
    return value


def take_pair(cfg: Mapping, key: str, where: str, default=REQUIRED, types=(int,)):
    """An int (or float with ``types=(float,)``) or a 2-sequence of them, as a tuple of two."""
    value = take(cfg, key, (int, float, tuple, list), where, default)
    if value is None or value is default:
        return value
    items = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != 2:
        raise ConfigError(f"recipe: {where}.{key} must be a number or a pair, got {value!r}")
    return tuple(check_type(v, types, f"{where}.{key}") for v in items)


def sub(cfg: Mapping, key: str, where: str, allowed: Iterable[str] | None = None, *, optional: bool = True) -> dict:
    """The nested dict ``cfg[key]`` (``{}`` when absent or None and ``optional``), its keys checked."""
    node = cfg.get(key)
    if node is None:
        if optional:
            return {}
        raise ConfigError(f"recipe: {where}.{key} is required")
    if allowed is not None:
        check_keys(node, allowed, f"{where}.{key}")
    elif not isinstance(node, Mapping):
        raise ConfigError(f"recipe: {where}.{key} must be a dict, got {type(node).__name__}")
    return dict(node)


def signature_kwargs(fn, cfg: Mapping, where: str, *, skip=("type",), supplied=()) -> dict:
    """The keyword arguments for ``fn`` from ``cfg``: keys must be parameters of ``fn`` (minus ``supplied``, which
    the caller passes itself and a recipe must not set); values whose default is a bool / int / float / str / pair
    must have that type. Returns the checked dict (without ``skip`` keys)."""
    import inspect

    params = {p.name: p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    set_by_caller = sorted(k for k in cfg if k in supplied)
    if set_by_caller:
        raise ConfigError(f"recipe: {where} must not set {set_by_caller}: the engine sets them (batch size: "
                          "data.samples_per_gpu, workers: data.workers_per_gpu, seed: seed, classes: the model)")
    check_keys(cfg, (set(params) - set(supplied)) | set(skip), where)
    out = {}
    for key, value in cfg.items():
        if key in skip or key == "_delete_":
            continue
        default = params[key].default
        for t in (bool, int, float, str):
            if type(default) is t:  # noqa: E721  (bool is not int here)
                value = check_type(value, t, f"{where}.{key}")
                break
        else:
            if isinstance(default, tuple):
                value = tuple(check_type(value, tuple, f"{where}.{key}"))
        out[key] = value
    return out


def to_plain(cfg):
    """mmengine ``Config`` / ``ConfigDict`` (nested) -> plain ``dict`` / ``list`` values."""
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [to_plain(v) for v in cfg]
    return cfg
