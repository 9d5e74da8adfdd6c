"""Load a recipe file, apply ``key=value`` overrides, validate the engine sections.

    cfg = load_recipe("upernet_deit_adapter_tiny_512_160k_ade20k", ["runner.max_iters=100"])
    cfg = load_recipe(None)                    # the built-in synthetic quickstart recipe

The ``model`` and ``data`` sections are validated by the task (``vit_adapter_ds.tasks.validate``, which builds the
model on the meta device); ``vit_adapter_ds.tasks.load_and_validate`` does both.
"""
from __future__ import annotations

import ast
import keyword
import math
from pathlib import Path

from mmengine import Config

from .errors import ConfigError  # noqa: F401  (re-exported)
from .schema import TOP_LEVEL_KEYS, validate_sections


def resolve_recipe_path(name_or_path: str | None) -> Path:
    """A recipe file path, or the stem of a file in ``vit_adapter_ds/recipes`` or ``vit_adapter_ds/recipes/detection``
    (None: the quickstart recipe)."""
    from ..recipes import QUICKSTART
    from ..recipes import RECIPES as SEGMENTATION
    from ..recipes.detection import DETECTION_RECIPES

    RECIPES = {**SEGMENTATION, **DETECTION_RECIPES}  # the stems are unique (test_config_recipes)
    if name_or_path is None:
        return QUICKSTART
    p = Path(name_or_path)
    if p.is_file():
        return p.resolve()
    stem = p.name[:-3] if p.name.endswith(".py") else p.name
    if stem in RECIPES and (len(p.parts) == 1):
        return RECIPES[stem]
    raise ConfigError(f"recipe {name_or_path!r} not found: give a path to a .py config file or one of the "
                      f"built-in recipes: {', '.join(sorted(RECIPES))}")


def _parse_value(text: str):
    """A Python literal (``ast.literal_eval``: numbers, strings, lists, dicts, ... never evaluated as code), the
    words true/false/none/null, else the text itself as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def _key_part_problem(part: str, first: bool) -> str | None:
    """Why ``part`` cannot be one part of a dotted ``--cfg-options`` key (None: it can). A part is an ASCII Python
    identifier that is not a keyword, or (not first) a non-negative integer index of a list element."""
    if not part:
        return "an empty part (leading, trailing or doubled '.')"
    if not first and part.isascii() and part.isdigit():
        return None
    if not (part.isascii() and part.isidentifier()):
        return (f"{part!r} is not a Python identifier (letters, digits and '_', not starting with a digit)"
                + ("" if first else " nor a list index"))
    if keyword.iskeyword(part):
        return f"{part!r} is a Python keyword"
    return None


def check_option_key(key: str, option: str) -> None:
    """Raise :class:`ConfigError` naming ``option`` unless ``key`` is a dotted path of identifiers (and list indices
    after the first part); ``_``-prefixed keys included. Such keys are written verbatim into the run's ``config.py``
    by mmengine's ``Config.dump``, so anything else could break that file or put code into it."""
    if not isinstance(key, str):
        raise ConfigError(f"--cfg-options {option!r}: the key must be a string, got {type(key).__name__}")
    parts = key.split(".")
    for i, part in enumerate(parts):
        problem = _key_part_problem(part, first=(i == 0))
        if problem:
            raise ConfigError(f"--cfg-options {option!r}: bad key {key!r}: {problem}; a key is a dotted path of "
                              "identifiers, e.g. optimizer.lr or data.train.pipeline.0.type")


def _check_value(value, option: str, where: str = "value") -> None:
    """Values are literals; refuse the ones mmengine's ``Config.dump`` would write as broken or injected Python:
    dict keys other than plain printable strings (written between quotes without escaping) and non-finite floats
    (written as ``inf`` / ``nan``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or repr(k) != f"'{k}'":
                raise ConfigError(f"--cfg-options {option!r}: dict key {k!r} in the {where} is not allowed: keys "
                                  "inside a value must be printable strings without quotes or backslashes")
            _check_value(v, option, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _check_value(v, option, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--cfg-options {option!r}: {value!r} in the {where} is not allowed (non-finite floats "
                          "cannot be written to the run's config.py)")
    elif isinstance(value, complex) and not (math.isfinite(value.real) and math.isfinite(value.imag)):
        raise ConfigError(f"--cfg-options {option!r}: {value!r} in the {where} is not allowed (non-finite)")


def parse_options(options: list[str] | None) -> dict:
    """``["a.b=1", "c=[1, 2]", "d=text"]`` -> ``{"a.b": 1, "c": [1, 2], "d": "text"}`` (python literals; a value
    that is not a literal stays a string). Keys must be dotted identifiers (:func:`check_option_key`)."""
    out = {}
    for opt in options or []:
        if "=" not in opt:
            raise ConfigError(f"--cfg-options expects key=value, got {opt!r}")
        key, value = opt.split("=", 1)
        key = key.strip()
        check_option_key(key, opt)
        value = _parse_value(value.strip())
        _check_value(value, opt)
        out[key] = value
    return out


def load_recipe(name_or_path: str | None = None, options: list[str] | dict | None = None,
                validate: bool = True) -> Config:
    """Load, override and (by default) validate a recipe; raises ``ConfigError`` with a readable message."""
    path = resolve_recipe_path(name_or_path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # syntax errors, missing _base_ files ...
        raise ConfigError(f"cannot load recipe {path}: {type(e).__name__}: {e}") from e
    opts = options if isinstance(options, dict) else parse_options(options)
    for key, value in opts.items():
        check_option_key(key, f"{key}={value!r}")  # dict options too: every key reaches the dumped config.py
        _check_value(value, f"{key}={value!r}")
        top = key.split(".")[0]
        if top not in cfg and not top.startswith("_") and top not in TOP_LEVEL_KEYS:
            raise ConfigError(f"--cfg-options: unknown key {key!r}; valid top-level keys: "
                              f"{', '.join(sorted(TOP_LEVEL_KEYS))}")
        _open_none_parents(cfg, key)
        try:
            cfg.merge_from_dict({key: value})
        except Exception as e:  # mmengine raises bare TypeError/KeyError for keys it cannot merge
            raise ConfigError(f"--cfg-options {key}={value!r}: {type(e).__name__}: {e}") from e
    if validate:
        from .keys import to_plain
        validate_sections(to_plain(cfg))
    return cfg


def _open_none_parents(cfg, dotted: str) -> None:
    """``a.b.c=1`` where the recipe has ``a.b = None`` (e.g. ``optimizer_config.grad_clip=None``): make ``a.b`` an
    empty dict first, so the override creates ``{'c': 1}`` instead of failing inside mmengine."""
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not hasattr(node, "get"):
            return
        child = node.get(part)
        if child is None and part in node:
            node[part] = {}
            child = node[part]
        if child is None:
            return
        node = child
