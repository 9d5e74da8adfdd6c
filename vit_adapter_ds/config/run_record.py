"""The data-only record of a run's resolved config: ``<work_dir>/config.json``.

The trainer writes it next to ``config.py`` (mmengine's dump, kept for people to read); every tool that needs a run's
saved config (``launch/export.py``, tests) reads this JSON file instead, so nothing found in a work dir is ever
executed::

    write_run_config(cfg, work_dir)       # the trainer, after cfg.dump(work_dir / "config.py")
    cfg = read_run_config(work_dir)       # plain dict; RunRecordMissing / RunRecordError naming the file

Layout: ``{"format": "vit-adapter-ds/run-config", "version": 1, "config": {...}, "notes": [...]}``. ``config`` is
``cfg.to_dict()`` with tuples written as lists; a value JSON cannot hold (a type, a function, a non-string dict key)
is written as its ``repr`` string and listed in ``notes`` (the recipes hold none: only tuples). Reading uses
``json.loads`` only, refuses files over :data:`MAX_BYTES`, duplicate keys and any other layout.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import ConfigError

FILENAME = "config.json"
FORMAT = "vit-adapter-ds/run-config"
VERSION = 1
MAX_BYTES = 16 * 1024 * 1024  # the largest recipe records ~11 kB


class RunRecordError(ConfigError):
    """A run record that cannot be read (the message names the file and the reason)."""


class RunRecordMissing(RunRecordError, FileNotFoundError):
    """The work dir has no ``config.json`` (a run from before the record existed)."""


def _plain(value, where: str, notes: list[str]):
    if hasattr(value, "to_dict") and callable(value.to_dict):  # mmengine Config / ConfigDict
        value = value.to_dict()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                notes.append(f"{where}: key {k!r} ({type(k).__name__}) written as the string {str(k)!r}")
                k2 = str(k)
            else:
                k2 = k
            out[k2] = _plain(v, f"{where}.{k2}" if where else k2, notes)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            notes.append(f"{where}: non-finite float written as the string {repr(value)!r}")
            return repr(value)
        return value
    notes.append(f"{where}: {type(value).__name__} value written as its repr")
    return repr(value)


def run_config_json(cfg) -> str:
    """The text of the record of ``cfg`` (an mmengine ``Config`` or a dict)."""
    notes: list[str] = []
    config = _plain(cfg, "", notes)
    if not isinstance(config, dict):
        raise ConfigError(f"run record: the config must be a dict, got {type(cfg).__name__}")
    record = {"format": FORMAT, "version": VERSION, "config": config, "notes": notes}
    return json.dumps(record, indent=1, allow_nan=False, ensure_ascii=True) + "\n"


def write_run_config(cfg, work_dir) -> Path:
    """Write ``<work_dir>/config.json`` (atomically: a temporary file renamed over it); returns its path."""
    path = Path(work_dir) / FILENAME
    text = run_config_json(cfg)
    tmp = path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def read_run_record(work_dir) -> dict:
    """The whole record (``format``, ``version``, ``config``, ``notes``) of ``<work_dir>/config.json``."""
    path = Path(work_dir) / FILENAME
    if not path.exists() and not path.is_symlink():
        raise RunRecordMissing(f"{path}: no run record (runs before config.json was written have only config.py, "
                               "which is never executed)")
    if not path.is_file():
        raise RunRecordError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise RunRecordError(f"{path}: cannot read: {e}") from e
    if len(data) > MAX_BYTES:
        raise RunRecordError(f"{path}: larger than {MAX_BYTES} bytes, not a run record")
    try:
        record = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise RunRecordError(f"{path}: malformed run record: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RunRecordError(f"{path}: not a run record (expected a JSON object with format={FORMAT!r})")
    if record.get("version") != VERSION:
        raise RunRecordError(f"{path}: run record version {record.get('version')!r} is not supported "
                             f"(this code reads version {VERSION})")
    if not isinstance(record.get("config"), dict):
        raise RunRecordError(f"{path}: malformed run record: 'config' must be a JSON object")
    notes = record.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise RunRecordError(f"{path}: malformed run record: 'notes' must be a list of strings")
    return record


def read_run_config(work_dir) -> dict:
    """The resolved config of the run in ``work_dir`` as a plain dict (lists where the recipe had tuples)."""
    return read_run_record(work_dir)["config"]
