"""Imports flow one way (README *Layout*): ops <- models <- data <- evaluation <- tasks <- engine <- deploy / apis
(the user-facing layers: ONNX export, the inference API, demo and web page, which nothing below imports). The foundation
modules (config, checkpoint, runtime, utils) import none of those layers. Checked on the source with ``ast``,
lazy imports inside functions included, so a shortcut through a higher layer fails here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[3] / "vit_adapter_ds"
LAYERS = ["ops", "models", "data", "evaluation", "tasks", "engine", "deploy", "apis"]
FOUNDATION = ["config", "checkpoint", "runtime", "utils"]


def _part(module: str) -> str:
    """``vit_adapter_ds.<part>...`` -> part."""
    return module.split(".")[1] if module.startswith("vit_adapter_ds.") else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts)[:-1]  # the package a relative import starts from (for __init__.py: its own)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from .. import a, b
                    out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
                    continue
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


def _violations(part: str, forbidden: set[str]) -> list[str]:
    root = PKG / part
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    bad = []
    for f in files:
        for line, mod in _imports(f):
            if _part(mod) in forbidden:
                bad.append(f"{f.relative_to(PKG.parent)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("part", LAYERS)
def test_layers_import_only_lower_layers(part):
    higher = set(LAYERS[LAYERS.index(part) + 1:])
    assert not _violations(part, higher)


@pytest.mark.parametrize("part", FOUNDATION)
def test_foundation_imports_no_layer(part):
    assert not _violations(part, set(LAYERS))


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The parser resolves ``from ..tasks import x`` inside a function of vit_adapter_ds/evaluation/x.py."""
    f = PKG / "evaluation" / "_layering_probe.py"
    f.write_text("def f():\n    from ..tasks import task_for\n    from . import coco\n")
    try:
        assert _imports(f) == [(2, "vit_adapter_ds.tasks"), (3, "vit_adapter_ds.evaluation.coco")]
        assert _violations("evaluation", {"tasks"}) == [
            "vit_adapter_ds/evaluation/_layering_probe.py:2 imports vit_adapter_ds.tasks"]
    finally:
        f.unlink()
