"""The shape of the source tree, read from the AST (nothing is imported, no torch).

- No import cycle: neither among modules nor among the packages ``unetzoo.{cli, data,
  deploy, engine, losses, metrics, models, measure, errors}``, counting every import,
  function-local ones included (a lazy import is still a dependency).
- Foundations stay leaves: the model registry, ``data.io`` and ``data.geometry`` import
  only ``unetzoo.errors``.
- Data flows one way: ``engine`` never imports ``deploy``; ``models``, ``data``,
  ``metrics`` and ``losses`` never import ``engine``, ``deploy`` or ``cli``; only the
  ``python -m unetzoo`` entry imports ``cli``.
- Short stage functions: no function in ``unetzoo/engine/`` is over 80 lines.
- Tests go through public seams: no test monkeypatches a ``_``-prefixed name (a private
  function, or an attribute of a private module), and no environment variable exists
  only for tests (``UNETZOO_TEST_*``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "unetzoo"
PACKAGES = (
    "cli", "data", "deploy", "engine", "losses", "metrics", "models", "measure", "runs", "errors"
)
MAX_ENGINE_FUNCTION_LINES = 80
TESTS = Path(__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under src/unetzoo."""
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imported(name: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """The project modules one import statement of module ``name`` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        # `from unetzoo.models import unet` loads the submodule; `from x import f` loads x.
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in mods else target)
    return [m for m in out if m in mods]


def _module_graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name].update(m for m in _imported(name, path, node, mods) if m != name)
    for name in mods:
        edges.setdefault(name, set())
    return dict(edges)


def _package(module: str) -> str:
    """``unetzoo.engine.trainer`` -> ``engine``; ``unetzoo.measure`` -> ``measure``;
    the root package and ``__main__`` -> ``""`` (the entry points, outside the graph)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else ""


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for src, targets in _module_graph().items():
        for dst in targets:
            a, b = _package(src), _package(dst)
            if a and b and a != b:
                graph.setdefault(a, set()).add(b)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_cycles():
    # The checks below pass vacuously if the finder is blind: prove it is not.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_local_and_relative_imports():
    mods = {"unetzoo.x": Path("x.py"), "unetzoo.x.y": Path("y.py"), "unetzoo.z": Path("z.py")}
    tree = ast.parse("def f():\n    from unetzoo.x import y\n    from ..z import g\n")
    local, relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _imported("unetzoo.x.w", Path("w.py"), local, mods) == ["unetzoo.x.y"]
    assert _imported("unetzoo.x.w", Path("w.py"), relative, mods) == ["unetzoo.z"]
    # Every package of the rule exists (a renamed package must not drop out silently).
    assert set(PACKAGES) <= {_package(m) for m in _modules()}


def test_no_module_import_cycle():
    assert _cycles(_module_graph()) == []


def test_no_package_import_cycle():
    assert _cycles(_package_graph()) == []


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("engine", {"deploy", "cli"}),
        ("models", {"engine", "deploy", "cli"}),
        ("data", {"engine", "deploy", "cli"}),
        ("metrics", {"engine", "deploy", "cli"}),
        ("losses", {"engine", "deploy", "cli"}),
        ("measure", {"engine", "deploy", "cli"}),
        ("errors", set(PACKAGES) - {"errors"}),
        ("deploy", {"cli"}),
    ],
)
def test_imports_flow_one_way(package, forbidden):
    """train -> checkpoint -> evaluate -> report -> predict -> export -> demo: a later
    stage may import an earlier one, never the reverse."""
    assert _package_graph()[package] & forbidden == set()


@pytest.mark.parametrize(
    "module, allowed",
    [
        # Families import the registry, never the reverse: discovery lives in models/__init__.
        ("unetzoo.models.registry", {"unetzoo.errors"}),
        # Voxel order and grids are pure array code under the readers and the label writer.
        ("unetzoo.data.geometry", {"unetzoo.errors"}),
        ("unetzoo.data.io", {"unetzoo.errors"}),
        # Ownership of written files: every writer, data builds included, may use it.
        ("unetzoo.runs.outputs", {"unetzoo.errors"}),
    ],
)
def test_foundation_modules_import_only_errors(module, allowed):
    assert _module_graph()[module] <= allowed


def test_no_long_function_in_engine():
    long = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_ENGINE_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def _dotted(node: ast.AST) -> list[str]:
    """``a.b._c`` as ``["a", "b", "_c"]`` (the names of an attribute chain)."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
    return names[::-1]


def _private_patches(source: str) -> list[int]:
    """Lines of ``*.setattr(target, "_name", ...)`` and ``*.setattr("a.b._c", ...)`` calls
    (monkeypatch's two forms), and of patches of anything reached through a private
    module (``setattr(pkg._mod, "f", ...)``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "setattr" and node.args):
            continue
        first, names = node.args[0], []
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names = first.value.split(".")  # the dotted-path form
        else:
            names = _dotted(first)[1:]  # the object's attribute chain (its root is local)
            second = node.args[1] if len(node.args) > 1 else None
            if isinstance(second, ast.Constant) and isinstance(second.value, str):
                names.append(second.value)
        if any(n.startswith("_") for n in names):
            lines.append(node.lineno)
    return lines


def test_the_private_patch_finder_finds_them():
    found = _private_patches(
        "mp.setattr(evaluation, '_test_model', f)\n"
        "mp.setattr('unetzoo.data.io._atomic_write', f)\n"
        "mp.setattr(torchvision.models._api, 'load', f)\n"
        "mp.setattr(ev, 'run_test', f)\n"
        "mp.setattr('unetzoo.engine.inference.predict_volume', f)\n"
        "setattr(obj, '_x', 1)\n"
    )
    assert found == [1, 2, 3]


def test_no_test_patches_a_private_name():
    found = [f"{path.relative_to(TESTS.parent)}:{line}"
             for path in sorted(TESTS.rglob("*.py"))
             for line in _private_patches(path.read_text(encoding="utf-8"))]
    assert found == [], "patch a public seam (a parameter, a hook), not a private name"


def test_no_environment_variable_exists_for_tests():
    found = [f"{path.relative_to(SRC)}:{node.lineno}"
             for path in sorted(ROOT.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and node.value.startswith("UNETZOO_TEST")]
    assert found == []
