"""The import-graph check run by ``make test`` finds cycles and forbidden edges."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "check_imports", ROOT / "scripts/check_imports.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cycles_are_the_strongly_connected_groups() -> None:
    ci = _load()
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert ci.cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert ci.cycles({"a": {"b"}, "b": set()}) == []


def test_package_edges_and_type_checking_imports(tmp_path: Path) -> None:
    ci = _load()
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .x import y\n"
        "if TYPE_CHECKING:\n    from .z import w\n"
        "def f():\n    from . import q\n"
    )
    known = {"pkg.m", "pkg.x", "pkg.z", "pkg.q", "pkg"}
    assert ci.imports("pkg.m", src, known) == {"pkg", "pkg.x", "pkg.q"}
    assert ci.parent_edges({"pkg.m": {"pkg", "pkg.x"}}) == {"pkg.m": {"pkg.x"}}


def test_the_library_itself_has_no_cycle_and_no_benchmark_import() -> None:
    ci = _load()
    mods = ci.modules()
    graph = ci.parent_edges({m: ci.imports(m, p, set(mods)) for m, p in mods.items()})
    assert ci.cycles(graph) == []
    assert "rprselect.engine" in graph["rprselect.scoring"]
    assert "rprselect.engine" in graph["rprselect.distributed"]
    assert "rprselect.driving" in graph["rprselect.scoring"]
    assert "rprselect.driving" in graph["rprselect.distributed"]
    assert "rprselect.scoring" not in graph["rprselect.distributed"]
    leaks = {
        m
        for m, d in graph.items()
        if not m.startswith("rprselect.benchmarks")
        and m != "rprselect.cli"
        and any(x.startswith("rprselect.benchmarks") for x in d)
    }
    assert leaks == set()
