"""The package's shape, as docs/architecture.md draws it: layers that import only downwards, no
import circle (imports under ``TYPE_CHECKING`` count), and ``ContinualNetwork`` a thin facade."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eidetic"

# Lowest first. A module may import modules of its own layer or of a lower one. A package's
# ``__init__`` belongs to its package's layer unless named.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["errors"]),
    ("graph", ["graph"]),
    ("guarantee parts", ["guarantee.ownership", "guarantee.slices", "guarantee.layout", "guarantee.masks",
                         "guarantee.eras", "guarantee.guard", "guarantee.norm", "guarantee.snapshot",
                         "guarantee.phases", "guarantee.resizing", "guarantee.narrowing"]),
    ("training parts", ["training.data", "training.distributed", "training.report", "training.scoring",
                        "training.session", "training.pruning"]),
    ("inference parts", ["inference.heads", "inference.memory", "inference.discriminant", "inference.projection",
                         "inference.gaussian",
                         "inference.routing", "evaluation.capacity"]),
    ("state", ["state"]),
    ("verbs", ["guarantee.lifecycle", "guarantee.widening", "guarantee.transaction", "training.task",
               "inference.predict", "inference.export", "checkpoint"]),
    ("facade", ["network"]),
    ("methods", ["mixins", "evaluation", "testing"]),
    ("applications", ["cli", "zoo", "datasets", "integrations", "__main__", ""]),
]


def _modules() -> dict[str, Path]:
    """``{dotted name under eidetic: path}``, a package's ``__init__`` under the package's name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    """The index of ``module``'s layer: the longest name in LAYERS that is it or a package above it."""
    best, depth = None, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            matches = module == name or name == "" or module.startswith(name + ".")
            if matches and len(name) > depth:
                best, depth = index, len(name)
    assert best is not None, f"eidetic.{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return best


def _reexports(package: str) -> dict[str, str]:
    """``{name: module}`` of what a package's ``__init__`` imports from its submodules."""
    tree = ast.parse(MODULES[package].read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            source = _target(package, True, node)
            for alias in node.names:
                found[alias.asname or alias.name] = source
    return found


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _resolve(target: str, name: str) -> str:
    """The module that ``from eidetic.<target> import <name>`` reaches: a submodule, or the
    submodule a package re-exports the name from, or the package itself."""
    if f"{target}.{name}".strip(".") in MODULES:
        return f"{target}.{name}".strip(".")
    if target in MODULES and MODULES[target].name == "__init__.py":
        source = _reexports(target).get(name)
        if source is not None and source != target and source in MODULES:
            return _resolve(source, name) if MODULES[source].name == "__init__.py" else source
    return target


def _imports(module: str) -> set[str]:
    """The eidetic modules ``module`` imports, anywhere in its source (``TYPE_CHECKING`` and
    function-level imports included)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = _target(module, is_package, node)
            elif node.module and (node.module == "eidetic" or node.module.startswith("eidetic.")):
                target = node.module.removeprefix("eidetic").lstrip(".")
            else:
                continue
            found |= {_resolve(target, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("eidetic.") for a in node.names if a.name.startswith("eidetic.")}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_import_points_down_the_layers():
    wrong = [f"eidetic.{m} ({LAYERS[_layer(m)][0]}) imports eidetic.{d} ({LAYERS[_layer(d)][0]})"
             for m, deps in GRAPH.items() if m for d in deps if d and _layer(d) > _layer(m)]
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_circle():
    """Tarjan's strongly connected components over the import graph; a package ``__init__``
    re-exporting its submodules is no circle (names resolve to the submodule that defines them)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, circles


def test_only_the_layers_above_the_facade_import_network():
    facade = _layer("network")
    importers = sorted(m for m, deps in GRAPH.items() if "network" in deps and _layer(m) <= facade)
    assert not importers


def _class(name: str) -> ast.ClassDef:
    tree = ast.parse(MODULES["network"].read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_continual_network_is_a_thin_facade():
    cls = _class("ContinualNetwork")
    assert cls.end_lineno - cls.lineno + 1 <= 300
    long = {f.name: f.end_lineno - min([f.lineno, *(d.lineno for d in f.decorator_list)]) + 1
            for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert all(lines <= 40 for lines in long.values()), {k: v for k, v in long.items() if v > 40}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_machine_path_in_a_docstring(module):
    tree = ast.parse(MODULES[module].read_text())
    docs = [ast.get_docstring(n) or "" for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    machine = re.compile(r"(?<![\w.])/(work|home|Users|root|tmp|mnt)/|\.\./shared\b|[A-Z]:\\\\")
    assert not [d for d in docs if machine.search(d)]


def test_every_module_says_what_it_owns():
    missing = sorted(m for m, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text())))
    assert not missing
