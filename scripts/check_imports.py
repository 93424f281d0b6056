"""Read rprselect's import graph from the source and fail on a cycle or a forbidden edge.

Every ``import`` and ``from ... import`` inside the package counts, at module level or inside a
function (a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` never run
and do not count. Two rules:

1. no import cycle among rprselect's modules;
2. no module of the library imports ``rprselect.benchmarks``, except the command-line entry
   point ``rprselect.cli``, whose ``bench`` subcommand is how benchmarks are run.

Run by ``make test``; exits 1 and prints the cycle or the edge when a rule is broken.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rprselect": ROOT / "rprselect", "rprselect.integrations": ROOT / "integrations"}
ALLOWED_BENCHMARK_IMPORTERS = {"rprselect.cli"}


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (integrations included)."""
    found: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([pkg, *parts])] = f
    return found


def _resolve(name: str, level: int, current: str, is_pkg: bool) -> str:
    if level == 0:
        return name
    base = current.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node.module or "", node.level, name, is_pkg)
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:  # "a.b.c" -> the longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for the type checker only,
    never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other (strongly connected components of more
    than one module, by Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(u: str) -> None:
        index[u] = low[u] = len(index)
        stack.append(u)
        on.add(u)
        for v in sorted(graph[u]):
            if v not in index:
                visit(v)
                low[u] = min(low[u], low[v])
            elif v in on:
                low[u] = min(low[u], index[v])
        if low[u] == index[u]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == u:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for u in sorted(graph):
        if u not in index:
            visit(u)
    return sorted(found)


def parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without edges from a module to its own package ``__init__`` chain: importing
    ``rprselect.x`` runs ``rprselect/__init__`` first by Python's rules, not by a choice of
    the module, so those edges are not design cycles."""
    return {u: {v for v in vs if not u.startswith(v + ".")} for u, vs in graph.items()}


def main() -> int:
    mods = modules()
    known = set(mods)
    graph = parent_edges({m: imports(m, p, known) for m, p in mods.items()})
    problems = []
    for comp in cycles(graph):
        problems.append("import cycle among: " + ", ".join(comp))
    for m, deps in sorted(graph.items()):
        if m.startswith("rprselect.benchmarks") or m in ALLOWED_BENCHMARK_IMPORTERS:
            continue
        bad = sorted(d for d in deps if d.startswith("rprselect.benchmarks"))
        if bad:
            problems.append(f"library module {m} imports {', '.join(bad)}")
    for p in problems:
        print(f"check_imports: {p}", file=sys.stderr)
    if not problems:
        print(f"check_imports: {len(graph)} modules, no cycle, no library import of benchmarks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
