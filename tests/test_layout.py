"""The compile stage's layout: no import cycle, the layers point one way, modules stay small.

Static (ast) so that it costs nothing and sees *every* import, including those inside functions —
which is where the cycle bench → compile → gpu → bench used to hide. Imports under
``if TYPE_CHECKING:`` are annotations only and are not followed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "laaq")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere (``from X import Y`` counts as X.Y when that is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.add(sub if sub in modules else child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # a module's own ancestor packages are initialised by Python anyway: not an edge of the design
        graph[name] = {m for m in _imports(path, modules) if m != name and not name.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_cycle_detector_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_one_way():
    """The method never imports the harness; the compile stage never imports the bench, CLI or reports;
    backends never import tuning, devices or the stages above them."""
    g = _graph()
    for mod, deps in g.items():
        if mod.startswith("laaq"):
            assert not {d for d in deps if d.startswith("harness")}, (mod, deps)
        above = {"harness.bench", "harness.cli", "harness.report", "harness.plots", "harness.variants"}
        if mod.startswith(("harness.compile", "harness.backend", "harness.lower", "harness.tuning", "harness.profile",
                           "harness.devices")):
            assert not deps & above, (mod, deps & above)
        if mod.startswith(("harness.backend", "harness.lower")):
            assert not {d for d in deps if d.startswith(("harness.tuning", "harness.devices", "harness.compile"))}, mod


def test_harness_modules_stay_small():
    """No module of harness/ above ~400 lines (the compile-stage issue's bound): one job per module."""
    long = {name: n for name, p in _modules().items() if name.startswith("harness")
            and (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
