"""The package's layers point down only, and no module of stardss/ is part of an import cycle.

Read from the source (every `import`, also the ones inside functions), not by importing:

    command layer   stardss.cli, stardss.commands.*      reads the whole job, calls stages
    edge            stardss.cluster.submit, .configs     cluster operations (`stardss submit`)
    support         stardss.testing.*                    stand-ins for tests and benchmarks
    stages          stardss.data, .guard, .star, .train, .eval
    demo            stardss.demo.*                       the embedded world (a `kind: toy` source)
    primitives      stardss.config, .cluster.resources, .cluster.placement, .raytools,
                    .tracking, .console

A module imports its own layer or the ones below. Two leaf tables of the stages, the loss
kinds and the guardrail registry, are what validation reads the allowed values from: they
import nothing of stardss, so a primitive may read them without any arrow pointing back up.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stardss"

LAYERS = [  # top first
    ("command", ("stardss.cli", "stardss.commands", "stardss.__main__")),
    ("edge", ("stardss.cluster.submit", "stardss.cluster.configs")),
    ("support", ("stardss.testing",)),
    ("stages", ("stardss.data", "stardss.guard", "stardss.star", "stardss.train",
                "stardss.eval")),
    ("demo", ("stardss.demo",)),
    ("primitives", ("stardss.config", "stardss.cluster", "stardss.raytools", "stardss.tracking",
                    "stardss.console", "stardss")),
]
LEAF_TABLES = ("stardss.train.kinds", "stardss.guard.registry")
"""Tables a primitive may read: they import nothing of stardss (asserted below)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The stardss modules `path` imports (a `from pkg import name` counts as pkg.name when
    that is a module, else as pkg)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    modules = all_modules()
    return {m for m in found if m in modules and m != name}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(path) for name, path in all_modules().items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module that
    imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    """Index into LAYERS (0 = top) of the most specific prefix that names the module."""
    best, depth = len(LAYERS) - 1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        for target in targets:
            if target in LEAF_TABLES and layer_of(module) >= layer_of(target):
                continue
            if layer_of(target) < layer_of(module):
                bad.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                           f"({LAYERS[layer_of(target)][0]})")
    return sorted(bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_point_down():
    assert upward_imports(import_graph()) == []


def test_leaf_tables_import_nothing_of_stardss():
    graph = import_graph()
    for table in LEAF_TABLES:
        assert graph[table] == set(), f"{table} imports {sorted(graph[table])}"


def test_the_checks_catch_what_they_are_for():
    """The detectors themselves, on made-up graphs: a cycle and an upward arrow are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    up = upward_imports({"stardss.train.worker": {"stardss.commands.train"},
                         "stardss.config.validate": {"stardss.train.kinds",
                                                     "stardss.train.loss"}})
    assert up == ["stardss.config.validate (primitives) imports stardss.train.loss (stages)",
                  "stardss.train.worker (stages) imports stardss.commands.train (command)"]
    assert layer_of("stardss.cluster.submit") == 1 and layer_of("stardss.cluster.resources") == 5
