"""Declarative checking of official mmdet config dicts (private helper of the detector ``from_config`` methods).

A *spec* is a dict ``{key: rule}`` for one level of a config dict, where a rule is

* :class:`Param` -- the value is read (type-checked) into the flat output dict under ``Param.name``;
* :class:`Fixed` -- an official key with no knob here: accepted only with one of the listed values;
* a nested spec dict -- the value must be a dict checked with that spec;
* :class:`Raw` -- the value is passed through unchecked (checked by another ``from_config``).

Every key not in the spec raises :class:`~vit_adapter_ds.config.errors.ConfigError` naming the full dotted
path and listing the valid keys. (The lead's ``vit_adapter_ds/config/keys.py`` will replace this when it lands.)
"""
from __future__ import annotations

from collections.abc import Mapping

from ...config.errors import ConfigError

_MISSING = object()


class Param:
    """A config value read into ``out[name]``; ``types`` a tuple of accepted types (``None`` allowed via
    ``type(None)``); ``default`` used when the key is absent (``_MISSING``: the key is required)."""

    def __init__(self, name, types, default=_MISSING):
        self.name, self.types, self.default = name, types, default


class Fixed:
    """An official key that only takes one of ``values`` here (its official / neutral value)."""

    def __init__(self, *values):
        self.values = values


class Raw:
    """A value passed through as ``out[name]`` and checked elsewhere."""

    def __init__(self, name, default=_MISSING):
        self.name, self.default = name, default


def _norm(v):
    if isinstance(v, Mapping):
        return {k: _norm(x) for k, x in v.items() if k != "_delete_"}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return v


def _typecheck(value, types, where):
    if isinstance(value, bool) and bool not in types:
        ok = False
    elif float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
        raise ConfigError(f"recipe: {where} must be {names}, got {value!r}")
    if isinstance(value, list):
        return tuple(value)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse(cfg, spec: dict, where: str, out: dict | None = None) -> dict:
    """Check ``cfg`` against ``spec`` (see module docstring); return the flat dict of :class:`Param` values."""
    out = {} if out is None else out
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"recipe: {where} must be a dict, got {type(cfg).__name__}")
    unknown = sorted(k for k in cfg if k not in spec and k != "_delete_")
    if unknown:
        raise ConfigError(f"recipe: {where}.{unknown[0]}: unknown key (unknown: {unknown}); valid keys: "
                          f"{', '.join(sorted(spec))}")
    for key, rule in spec.items():
        path = f"{where}.{key}"
        present = key in cfg
        value = cfg.get(key)
        if isinstance(rule, Param):
            if not present:
                if rule.default is _MISSING:
                    raise ConfigError(f"recipe: {path} is required")
                out[rule.name] = rule.default
            else:
                out[rule.name] = _typecheck(value, rule.types, path)
        elif isinstance(rule, Raw):
            if not present and rule.default is _MISSING:
                raise ConfigError(f"recipe: {path} is required")
            out[rule.name] = value if present else rule.default
        elif isinstance(rule, Fixed):
            if present and all(_norm(value) != _norm(v) for v in rule.values):
                allowed = " or ".join(repr(v) for v in rule.values)
                raise ConfigError(f"recipe: {path}={value!r} is not supported here; only {allowed} (the official "
                                  "value)")
        elif isinstance(rule, dict):
            if present:
                parse(value, rule, path, out)
            else:
                parse({}, rule, path, out)
        else:  # pragma: no cover - a spec bug
            raise TypeError(f"bad spec rule for {path}: {rule!r}")
    return out
