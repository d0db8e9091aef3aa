"""No import cycles among the modules of ``engine``, ``analysis`` and ``sweepcore``, read from
the source (``ast``), so a cycle is caught before it bites as a half-initialised module.

What counts as an edge A → B (B one of the three packages' modules):

* a module-level ``import B`` / ``from B import x`` (inside ``try``, ``if``, ``with`` and class
  bodies too: they run at import); ``from P import m`` where ``P.m`` is a module adds ``P.m``;
* importing ``P.Q.m`` first initialises ``P`` and ``P.Q``, so those count too, except A's own
  parent packages: Python initialises them before A, and ``from engine.compress.base import X``
  inside ``engine/compress/prune.py`` is no cycle one could remove;
* but naming the parent package itself (``from engine.compress import masked`` inside
  ``prune.py``, whose package ``__init__`` imports ``prune``) reads the half-initialised package
  and is a cycle through its ``__init__``;
* imports under ``if TYPE_CHECKING:`` are not runtime imports and do not count.

Function-local (lazy) imports are kept apart: they are no cycle at import time, but a lazy
``A → B`` while ``B`` reaches ``A`` at module level hides one. Such an import fails the test
unless its line says why it must stay (a ``# cycle: <reason>`` comment).
``python tests/test_import_cycles.py`` prints the graph's lazy imports and any cycle.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "analysis", "sweepcore")
JUSTIFIED = "# cycle:"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool
    justified: bool


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root/<package>``."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: list[ast.stmt], lazy: bool = False):
    """Every import statement in ``body``, with whether it runs only when a function is
    called; ``if TYPE_CHECKING:`` bodies are skipped (their ``else`` is kept)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        elif isinstance(node, ast.If) and _type_checking(node.test):
            yield from _import_nodes(node.orelse, lazy)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _import_nodes(node.body, True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    yield from _import_nodes(sub, lazy)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def edges(root: Path, packages: tuple[str, ...]) -> list[Edge]:
    """The import edges among ``packages``' modules (module-level and lazy), as defined in
    the module docstring."""
    known = modules(root, packages)
    out = []
    for name, path in known.items():
        text = path.read_text()
        lines = text.splitlines()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = set(_ancestors(name))
        for node, lazy in _import_nodes(ast.parse(text, filename=str(path)).body):
            if isinstance(node, ast.Import):
                named = [(alias.name, []) for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                named = [(mod, [f"{mod}.{alias.name}" for alias in node.names])]
            targets: set[str] = set()
            for mod, subs in named:
                targets |= {mod, *(s for s in subs if s in known)}
                targets |= {a for a in _ancestors(mod) if a not in own}
            end = node.end_lineno or node.lineno
            justified = any(JUSTIFIED in ln for ln in lines[node.lineno - 1 : end])
            out += [
                Edge(name, t, node.lineno, lazy, justified)
                for t in sorted(targets)
                if t in known and t != name
            ]
    return out


def graph(all_edges: list[Edge], *, lazy: bool = False) -> dict[str, set[str]]:
    """Adjacency of the module-level edges (``lazy=True``: of the lazy ones too)."""
    out: dict[str, set[str]] = {}
    for e in all_edges:
        if lazy or not e.lazy:
            out.setdefault(e.source, set()).add(e.target)
    return out


def _path(g: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import chain ``start → … → goal`` (breadth first), or None."""
    prev: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        nxt = []
        for node in todo:
            for succ in sorted(g.get(node, ())):
                if succ == goal:
                    chain = [goal, node]
                    while prev[chain[-1]] is not None:
                        chain.append(prev[chain[-1]])  # type: ignore[arg-type]
                    return chain[::-1]
                if succ not in prev:
                    prev[succ] = node
                    nxt.append(succ)
        todo = nxt
    return None


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, …, a]`` per group of modules that import each other
    (a strongly connected component), so each tangle is listed once."""
    seen: set[str] = set()
    out = []
    for node in sorted(g):
        if node in seen:
            continue
        back = _path(g, node, node)
        if back is None:
            continue
        group = {m for m in g if _path(g, node, m) and _path(g, m, node)}
        seen |= group
        out.append(back)
    return out


def hidden_cycles(all_edges: list[Edge]) -> list[tuple[Edge, list[str]]]:
    """Lazy imports ``A → B`` where ``B`` imports ``A`` at module level (directly or through
    others), with that chain; left out where the import line justifies itself."""
    g = graph(all_edges)
    out = []
    for e in all_edges:
        if e.lazy and not e.justified:
            chain = _path(g, e.target, e.source)
            if chain is not None:
                out.append((e, chain))
    return out


def _show(found: list[list[str]]) -> str:
    return "\n".join(" → ".join(c) for c in found)


# ----------------------------------------------------------------------------- the project


def test_module_level_imports_are_acyclic() -> None:
    found = cycles(graph(edges(REPO, PACKAGES)))
    assert found == [], "import cycles:\n" + _show(found)


def test_no_lazy_import_hides_a_cycle() -> None:
    found = hidden_cycles(edges(REPO, PACKAGES))
    assert found == [], "\n".join(
        f"{e.source}:{e.line} lazily imports {e.target}, which imports it back: "
        + " → ".join(chain)
        for e, chain in found
    )


def test_the_walk_sees_the_packages() -> None:
    """A guard against a walk that finds nothing: the known package edges are there."""
    g = graph(edges(REPO, PACKAGES))
    assert "engine.compress.prune" in g["engine.compress"]
    assert "sweepcore.pareto" in g["analysis.frontier"]
    assert "engine.importance.base" in g["engine.importance.config"]


# ----------------------------------------------------------------------------- planted cases


def _plant(root: Path, files: dict[str, str]) -> list[Edge]:
    for rel, src in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(src)
    return edges(root, ("pkg",))


def test_a_planted_cycle_is_found_and_listed(tmp_path: Path) -> None:
    found = cycles(
        graph(
            _plant(
                tmp_path,
                {
                    "pkg/__init__.py": "",
                    "pkg/a.py": "import pkg.b\n",
                    "pkg/b.py": "try:\n    from pkg.c import x\nexcept ImportError:\n    pass\n",
                    "pkg/c.py": "from . import a\nx = 1\n",
                    "pkg/d.py": "import pkg.a\n",  # into the cycle, not on it
                },
            )
        )
    )
    assert found == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_the_parent_package_counts_only_where_it_is_named(tmp_path: Path) -> None:
    """``__init__`` imports ``sub``: ``sub`` importing a sibling module by its full name is
    fine (the package is initialised first); ``from pkg import sibling`` reads the
    half-initialised package, a cycle through ``__init__``."""
    base = {"pkg/__init__.py": "from pkg import sub\n", "pkg/base.py": "X = 1\n"}
    ok = _plant(tmp_path / "ok", {**base, "pkg/sub.py": "from pkg.base import X\n"})
    assert cycles(graph(ok)) == []
    bad = _plant(tmp_path / "bad", {**base, "pkg/sub.py": "from pkg import base\n"})
    assert cycles(graph(bad)) == [["pkg", "pkg.sub", "pkg"]]
    # a module outside the package importing one inside initialises the package first
    outside = _plant(
        tmp_path / "outside",
        {
            "pkg/__init__.py": "",
            "pkg/inner/__init__.py": "from pkg.inner import sub\n",
            "pkg/inner/sub.py": "import pkg.other\n",
            "pkg/other.py": "from pkg.inner.base import X\n",
            "pkg/inner/base.py": "X = 1\n",
        },
    )
    assert cycles(graph(outside)) == [["pkg.inner", "pkg.inner.sub", "pkg.other", "pkg.inner"]]


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    found = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\n"
                "import typing\n"
                "if TYPE_CHECKING:\n    from pkg.a import A\n"
                "if typing.TYPE_CHECKING:\n    import pkg.a\n"
                "else:\n    import pkg.c\n"
            ),
            "pkg/c.py": "",
        },
    )
    assert graph(found) == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}}


def test_a_lazy_import_that_dodges_a_cycle_is_reported(tmp_path: Path) -> None:
    found = _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "import pkg.c\n",
            "pkg/c.py": (
                "def f():\n    from pkg import a\n"
                "def g():\n    import pkg.b  # cycle: planted, and said why\n"
                "class K:\n    def h(self):\n        import pkg.d\n"
            ),
            "pkg/d.py": "",
        },
    )
    assert cycles(graph(found)) == []
    assert sorted(e.target for e in found if e.lazy) == ["pkg", "pkg.a", "pkg.b", "pkg.d"]
    [(edge, chain)] = hidden_cycles(found)
    assert (edge.source, edge.target, edge.line) == ("pkg.c", "pkg.a", 2)
    assert chain == ["pkg.a", "pkg.b", "pkg.c"]


if __name__ == "__main__":
    every = edges(REPO, PACKAGES)
    print("module-level cycles:", _show(cycles(graph(every))) or "none")
    print("cycles counting lazy imports too:", _show(cycles(graph(every, lazy=True))) or "none")
    print("lazy imports:")
    for e in every:
        if e.lazy:
            print(f"  {e.source}:{e.line} → {e.target}{'  (justified)' if e.justified else ''}")
    sys.exit(0)
