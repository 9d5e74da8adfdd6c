"""The checkpoint layout is defined once (``vit_adapter_ds/checkpoint/layout.py``): no other module of the package
spells a tag pattern, the ``COMPLETE`` marker, ``latest``, ``best.json``, the partial / replaced / universal suffixes
or the per-rank state file name; the resume finder and the end-of-run record exist once too. Checked on the source
with ``ast`` (string literals, f-string parts included), so a copy anywhere fails here."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[3] / "vit_adapter_ds"
LAYOUT = PKG / "checkpoint" / "layout.py"

NAMES = {"COMPLETE", "latest", "best.json", ".partial", ".replaced", "_universal", "checkpoints", "TRAINING_FINISHED"}
PATTERNS = [re.compile(r"iter_\\d|iter_\(|\^iter_"),  # a tag regex
            re.compile(r"^iter_\*"),                     # a tag glob
            re.compile(r"^extra_rank")]                  # the per-rank state file


def _literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def _module_sources():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_layout_constants_are_spelled_only_in_layout_py():
    found = []
    for path in _module_sources():
        if path == LAYOUT:
            continue
        for line, value in _literals(path):
            if value in NAMES or any(p.search(value) for p in PATTERNS):
                found.append(f"{path.relative_to(PKG.parent)}:{line}: {value!r}")
    assert not found, "checkpoint layout spelled outside checkpoint/layout.py (use its constants):\n" + "\n".join(found)


def test_layout_py_defines_each_constant_once():
    tree = ast.parse(LAYOUT.read_text())
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)]
    for name in ("TAG_RE", "MARKER", "LATEST", "BEST", "PARTIAL_SUFFIX", "REPLACED_SUFFIX", "UNIVERSAL_SUFFIX"):
        assert assigned.count(name) == 1, name


def test_one_module_per_job_and_no_old_modules():
    """The old homes of checkpoint code are gone (no shims); each job has one module, and one resume finder."""
    assert not (PKG / "checkpoint_io.py").exists() and not (PKG / "engine" / "checkpoint.py").exists()
    assert {p.name for p in (PKG / "checkpoint").glob("*.py")} >= {"layout.py", "reader.py", "deepspeed.py",
                                                                  "manager.py"}
    finders = [f"{p.relative_to(PKG)}:{node.name}" for p in _module_sources()
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.FunctionDef)
               and node.name in ("find_deepspeed_tag", "find_tag", "newest_intact", "complete_tags")]
    assert sorted(finders) == ["checkpoint/deepspeed.py:find_tag", "checkpoint/layout.py:complete_tags",
                               "checkpoint/layout.py:newest_intact"], finders
