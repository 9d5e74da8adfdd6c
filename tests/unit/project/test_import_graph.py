"""The project's import graph has no cycle, and no module outside the model registry keeps a second table of model
classes (issue 19, item 3).

Every ``import`` of every module of ``vit_adapter_ds/`` counts, lazy imports inside functions included; ``from . import
x`` is an edge to the submodule ``x`` when there is one, else to the package. Importing a submodule runs its parent
package's ``__init__`` first, but that implicit step is not an edge (else every package that imports its own
submodules would be a cycle).
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
PACKAGE = "vit_adapter_ds"


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py file of the package."""
    found = {}
    base = os.path.join(ROOT, PACKAGE)
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join(rel)] = os.path.join(dirpath, f)
    return found


def _edges(name: str, path: str, modules: dict[str, str]) -> set[str]:
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    out.add(_deepest(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith(PACKAGE):
                continue
            target = _deepest(target, modules)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
    out.discard(name)
    return {t for t in out if t in modules}


def _deepest(dotted: str, modules: dict[str, str]) -> str:
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    # a lazy import inside a function (tasks -> models) and ``from . import x`` resolved to the submodule
    assert "vit_adapter_ds.models.registry" in graph["vit_adapter_ds.tasks.segmentation"]
    assert "vit_adapter_ds.models.registry" in graph["vit_adapter_ds.models.segmentor"]
    assert "vit_adapter_ds.models.backbones.vit" in graph["vit_adapter_ds.models.backbones"]


def test_find_cycles_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between project modules: " + "; ".join(" <-> ".join(c) for c in cycles)


# ---------------------------------------------------------------------------------------------------------------------
# no second table of model classes
# ---------------------------------------------------------------------------------------------------------------------
REGISTRY = "vit_adapter_ds.models.registry"
# known second tables, each with the reason it is still there
ALLOWED_TABLES: set = set()  # (module, name) of a deliberate exception, with its reason: none today


def _registered_names() -> set[str]:
    from vit_adapter_ds.models.registry import FAMILIES

    return {name for family in FAMILIES.values() for name in family}


def _module_level_tables(path: str):
    """(line, name, literal) of each module-level dict / tuple / list / set literal assigned to a name (not
    ``__all__``)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if "__all__" in names:
            continue  # the exported names of a package, not a table
        if isinstance(value, (ast.Dict, ast.Tuple, ast.List, ast.Set)):
            yield node.lineno, (names or ["?"])[0], value


def test_no_second_table_of_model_types():
    """No module-level dict/tuple/list/set outside the registry whose keys or items are registered model classes
    (a Name of one) or official type names of registered models (as strings): such a table is what a new model
    would have to be added to besides its own file."""
    names = _registered_names()
    assert {"ViTAdapter", "BEiTAdapter", "UPerHead", "EncoderDecoder", "MaskRCNN", "FPN"} <= names
    offenders = []
    for module, path in _modules().items():
        if module == REGISTRY:
            continue
        for line, table, value in _module_level_tables(path):
            if (module, table) in ALLOWED_TABLES:
                continue
            items = list(value.keys) + list(value.values) if isinstance(value, ast.Dict) else list(value.elts)
            hits = {i.id for i in items if isinstance(i, ast.Name) and i.id in names}
            hits |= {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)
                     and i.value in names}
            if len(hits) >= 2:  # a table lists several models; one name in a tuple is a message or a default
                offenders.append(f"{os.path.relpath(path, ROOT)}:{line} {sorted(hits)}")
    assert not offenders, "tables of model types outside models/registry.py: " + "; ".join(offenders)


@pytest.mark.parametrize("family", ["backbone", "neck", "head", "segmentor", "detector"])
def test_one_registry_per_family(family):
    from vit_adapter_ds.models.registry import FAMILIES

    assert FAMILIES[family].family == family
