"""No import cycles: between hpcps's subpackages (hpcps.tune, hpcps.slurm, ... and top-level modules such
as hpcps.cli), and between the modules of hpcps.tune. The graph is built from the source with ast, from
module-level imports (an import inside a function runs later, and one under `if TYPE_CHECKING:` never
does). Within hpcps.tune imports inside functions count too: a cycle there is not to be held apart by
deferring an import."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run when the module is imported: the top level, and the blocks of top-level
    if/try/with statements, except `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                    (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                yield from _module_level(node.orelse)
                continue
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)
        else:
            yield node


def _everywhere(tree: ast.Module) -> Iterator[ast.stmt]:
    skipped = {id(n) for top in _type_checking_blocks(tree.body) for n in ast.walk(top)}
    return (n for n in ast.walk(tree) if isinstance(n, ast.stmt) and id(n) not in skipped)


def _type_checking_blocks(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.If) and ((isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING") or
                                         (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            yield from node.body


def import_graph(package_dir: Path, inside_functions: bool = False) -> dict[str, set[str]]:
    """{module: modules of the package it imports at module level (with inside_functions: anywhere but
    under `if TYPE_CHECKING:`)} for every module under package_dir."""
    root = package_dir.parent
    package = package_dir.name
    files = {module_name(p, root): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in _everywhere(tree) if inside_functions else _module_level(tree.body):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:      # `from pkg import module` imports pkg.module
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else base)
        graph[name] = {t for t in targets if (t == package or t.startswith(package + ".")) and t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def collapse(graph: dict[str, set[str]], depth: int) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """The graph between module-name prefixes of `depth` parts (hpcps.tune.loop -> hpcps.tune at depth 2),
    and for each edge one import that makes it ("a.x imports b.y")."""
    def group(m: str) -> str:
        return ".".join(m.split(".")[:depth])
    out: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for a, targets in graph.items():
        for b in targets:
            ga, gb = group(a), group(b)
            if ga != gb:
                out.setdefault(ga, set()).add(gb)
                why.setdefault((ga, gb), f"{a} imports {b}")
    return out, why


def describe(comp: list[str], graph: dict[str, set[str]], why: dict[tuple[str, str], str] | None = None) -> str:
    edges = [f"{a} -> {b}" + (f" ({why[(a, b)]})" if why else "") for a in comp for b in sorted(graph.get(a, ()))
             if b in comp]
    return "; ".join(edges)


def test_no_import_cycle_between_subpackages():
    graph, why = collapse(import_graph(ROOT / "hpcps"), depth=2)
    found = cycles(graph)
    assert not found, "import cycles between subpackages: " + " | ".join(describe(c, graph, why) for c in found)


def test_no_import_cycle_within_the_tuner():
    graph = import_graph(ROOT / "hpcps", inside_functions=True)
    tune = {m: {t for t in ts if t.startswith("hpcps.tune")} for m, ts in graph.items() if m.startswith("hpcps.tune")}
    found = cycles(tune)
    assert not found, "import cycles in hpcps.tune: " + " | ".join(describe(c, tune) for c in found)


def test_the_check_finds_a_cycle_held_apart_only_by_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    for path, text in {"__init__.py": "", "a/__init__.py": "from pkg.b import thing\n",
                       "b/__init__.py": "from pkg.b.more import thing\n",
                       "b/more.py": "from pkg import a\n\nthing = 1\n",
                       "c.py": "def late():\n    from pkg import a\n",
                       "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n",
                       "e.py": "from . import d\nfrom .a import thing\n"}.items():
        (pkg / path).parent.mkdir(parents=True, exist_ok=True)
        (pkg / path).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.b.more"] == {"pkg.a"} and graph["pkg.c"] == set() and graph["pkg.d"] == set()
    assert graph["pkg.e"] == {"pkg.d", "pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.b.more"]]
    between, _ = collapse(graph, depth=2)
    assert cycles(between) == [["pkg.a", "pkg.b"]]
    everywhere = import_graph(pkg, inside_functions=True)
    assert everywhere["pkg.c"] == {"pkg.a"} and everywhere["pkg.d"] == set()
