"""The one vocabulary that turns a config dict into typed values, or into a :class:`ConfigError` that names the
dotted path. Every family uses it: the model builders (``from_config`` of the segmentation tables and of the
detectors), the task's loader arguments and the engine sections (:mod:`.schema`), so a misspelled or ill-typed key
anywhere is refused the same way.

One primitive checks a value (:func:`check_value`: type, choices, range); on top of it, imperative helpers read one
key at a time::

    check_keys(cfg, {"type", "in_channels", "channels"}, "model.decode_head")
    channels = take(cfg, "channels", int, "model.decode_head")                 # required
    ratio = take(cfg, "dropout_ratio", float, "model.decode_head", default=0.1)

and a declarative *spec* ``{key: rule}`` checks one whole level (and the levels below) with :func:`parse`, a rule
being

* :class:`Param` -- the value is checked and read into the flat output dict under ``Param.name`` (``name=None``:
  checked only; :func:`Check` is that shorthand, for validation-only specs such as the engine sections);
* :class:`Fixed` -- an official key with no knob here: accepted only with one of the listed values;
* a nested spec dict (or :class:`Section`, which may allow ``None``) -- the value must be a dict checked with it;
* :class:`Raw` -- the value is passed through unchecked (checked by another ``from_config``);
* a callable ``(value, where) -> value`` -- a custom check (see :func:`seq`).

Every key not in a spec raises the :func:`check_keys` error naming the full dotted path and the valid keys.
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


def check_value(value, types, where: str, *, choices=None, minimum=None, exclusive: bool = False):
    """``value`` checked against ``types`` (:func:`check_type`), ``choices`` and a lower bound ``minimum``
    (``exclusive``: strictly above it; ``None`` values are not compared) -- the one value check of every rule."""
    value = check_type(value, types, where)
    if choices is not None and value not in choices:
        raise ConfigError(f"recipe: {where}={value!r} is not supported; choose one of {list(choices)}")
    if minimum is not None and value is not None and (value <= minimum if exclusive else value < minimum):
        raise ConfigError(f"recipe: {where} must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
    return value


def take(cfg: Mapping, key: str, types, where: str, default=REQUIRED, choices=None):
    """``cfg[key]`` checked against ``types`` (and ``choices``); ``default`` when absent (required otherwise)."""
    if key not in cfg:
        if default is REQUIRED:
            raise ConfigError(f"recipe: {where}.{key} is required")
        return default
    return check_value(cfg[key], types, f"{where}.{key}", choices=choices)


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


# ------------------------------------------------------------------------------------------ declarative specs
OPTIONAL = object()  # a rule default: an absent key is fine and yields nothing


class Param:
    """A config value checked with :func:`check_value` (``types`` a tuple; ``None`` allowed via ``type(None)``;
    ``choices``, ``minimum``, ``exclusive``) or with ``check(value, where)``, and read into ``out[name]`` (a list
    becomes a tuple; ``name=None``: checked only). ``default`` when the key is absent: :data:`REQUIRED` (the
    key must be given), :data:`OPTIONAL` (nothing is read) or the value to read."""

    def __init__(self, name, types=None, default=REQUIRED, *, choices=None, minimum=None, exclusive=False,
                 check=None):
        self.name, self.types, self.default, self.check = name, types, default, check
        self.choices, self.minimum, self.exclusive = choices, minimum, exclusive

    def __call__(self, value, where: str):
        if self.check is not None:
            return self.check(value, where)
        return check_value(value, self.types, where, choices=self.choices, minimum=self.minimum,
                           exclusive=self.exclusive)


def Check(*types, choices=None, minimum=None, exclusive=False, check=None) -> Param:  # noqa: N802 (a rule)
    """A validation-only :class:`Param`: optional, checked, not read."""
    return Param(None, types or None, OPTIONAL, choices=choices, minimum=minimum, exclusive=exclusive, check=check)


class Fixed:
    """An official key that only takes one of ``values`` here (its official / neutral value)."""

    def __init__(self, *values):
        self.values = values


class Raw:
    """A value passed through as ``out[name]`` and checked elsewhere."""

    def __init__(self, name, default=REQUIRED):
        self.name, self.default = name, default


class Section:
    """A nested spec: the value must be a dict checked with ``spec`` (absent: checked as ``{}``, so the defaults
    of its :class:`Param` rules are read); ``allow_none``: ``None`` is accepted as absent."""

    def __init__(self, spec: dict, allow_none: bool = False):
        self.spec, self.allow_none = spec, allow_none


def seq(item, length: int | None = None, allow_none: bool = False):
    """A rule for a list (or tuple) whose items are checked by ``item`` (a callable rule, e.g. :func:`Check`)."""
    def check(value, where):
        if value is None and allow_none:
            return value
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            raise ConfigError(f"recipe: {where} must be a list{f' of {length}' if length else ''}, got {value!r}")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return check


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


def parse(cfg, spec: dict, where: str, out: dict | None = None) -> dict:
    """Check ``cfg`` against ``spec`` (see the module docstring); return the flat dict of the :class:`Param` /
    :class:`Raw` values read."""
    out = {} if out is None else out
    check_keys(cfg, spec, where)
    for key, rule in spec.items():
        path = f"{where}.{key}"
        present = key in cfg
        value = cfg.get(key)
        if isinstance(rule, (Param, Raw)):
            if not present:
                if rule.default is REQUIRED:
                    raise ConfigError(f"recipe: {path} is required")
                if rule.default is not OPTIONAL and rule.name is not None:
                    out[rule.name] = rule.default
                continue
            if isinstance(rule, Param):
                value = rule(value, path)
                value = tuple(value) if isinstance(value, list) else value
            if rule.name is not None:
                out[rule.name] = value
        elif isinstance(rule, Fixed):
            if present and all(_norm(value) != _norm(v) for v in rule.values):
                allowed = " or ".join(repr(v) for v in rule.values)
                raise ConfigError(f"recipe: {path}={value!r} is not supported here; only {allowed} (the official "
                                  "value)")
        elif isinstance(rule, (dict, Section)):
            section = rule if isinstance(rule, Section) else Section(rule)
            if not (value is None and section.allow_none):
                parse(value if present else {}, section.spec, path, out)
        elif callable(rule):
            if present:
                rule(value, path)
        else:  # pragma: no cover - a spec bug
            raise TypeError(f"bad spec rule for {path}: {rule!r}")
    return out
