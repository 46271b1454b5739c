"""The import graph of mlcwb has no cycles (read from the source with ``ast``; nothing is imported).

docs/design.md ("Import layers") draws the layers this keeps: a module may import only modules
below it. An edge is any ``import mlcwb...`` or ``from mlcwb... import ...`` anywhere in a module,
at module level or inside a function: a lazy import keeps ``mlcwb --help`` fast, but it still makes
the two modules depend on each other, and a cycle of lazy imports is a cycle of layers. Imports
under ``if TYPE_CHECKING:`` are left out: they are for annotations and never run. A
``__main__`` block counts like any other code (``python -m mlcwb`` is ``mlcwb/__main__.py``, so no
stage module needs one).

Importing ``mlcwb.a.b`` also runs the package ``mlcwb.a`` first, so that is an edge too, except
into a module's own ancestor packages (``mlcwb.data.corpus`` importing ``mlcwb.data``,
``mlcwb.cli`` importing ``mlcwb``): a package is initialised before any of its submodules runs.
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "mlcwb"



def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, every ``.py`` under ``package`` (``__init__``: the package)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _skipped_blocks(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` bodies."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        test = ast.unparse(node.test).replace("'", '"').replace(" ", "")
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module (``mlcwb.io.read_jsonl`` -> ``mlcwb.io``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that ``module`` imports (module-level and function-level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _skipped_blocks(tree)
    package = module.split(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            # ``from mlcwb.pkg import name``: mlcwb.pkg, and mlcwb.pkg.name if that is a module
            names = [base] + [f"{base}.{alias.name}" for alias in node.names
                              if f"{base}.{alias.name}" in modules]
        else:
            continue
        for name in names:
            if name.split(".")[0] != package:
                continue
            target = _resolve(name, modules)
            while target:  # the module, then the packages above it, which run first
                if target != module and not module.startswith(target + "."):
                    targets.add(target)
                target = target.rpartition(".")[0]
    return targets


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Every elementary cycle, each once, starting at its smallest module name."""
    out: list[tuple[str, ...]] = []
    for component in _components(graph):
        members = set(component)
        for start in component:  # cycles whose smallest member is ``start``
            def walk(path: list[str]) -> None:
                for nxt in sorted(graph[path[-1]] & members):
                    if nxt == start:
                        out.append(tuple(path))
                    elif nxt > start and nxt not in path:
                        walk(path + [nxt])
            walk([start])
    return sorted(out)


def _describe(found: list[tuple[str, ...]]) -> str:
    return "\n".join(" -> ".join((*c, c[0])) for c in found)


def test_import_graph_reads_every_kind_of_import(tmp_path: Path) -> None:
    """Lazy imports count; ``from pkg import submodule`` reaches the submodule; relative imports
    resolve; ``__main__`` blocks count; TYPE_CHECKING blocks, other packages and one's own do not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "base.py": "import os\n",
        "lazy.py": "def f():\n    from pkg.base import x\n",
        "frompkg.py": "from pkg import base, lazy\n",
        "dotted.py": "import pkg.sub.leaf as leaf\nfrom pkg.sub.leaf import name\n",
        "typing_only.py": ("from typing import TYPE_CHECKING\n"
                           "if TYPE_CHECKING:\n    import pkg.base\nelse:\n    import pkg.lazy\n"),
        "script.py": "import pkg.base\nif __name__ == '__main__':\n    from pkg import frompkg\n",
        "sub/__init__.py": "from . import leaf\n",
        "sub/leaf.py": "from .. import base\nfrom pkg.sub import other\nname = 1\n",
        "sub/other.py": "import pkg.sub\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    graph = import_graph(pkg)
    assert graph["pkg.base"] == set() and graph["pkg"] == set()
    assert graph["pkg.lazy"] == {"pkg.base"}
    assert graph["pkg.frompkg"] == {"pkg.base", "pkg.lazy"}
    assert graph["pkg.dotted"] == {"pkg.sub", "pkg.sub.leaf"}  # pkg.sub runs before its leaf
    assert graph["pkg.typing_only"] == {"pkg.lazy"}
    assert graph["pkg.script"] == {"pkg.base", "pkg.frompkg"}
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.base", "pkg.sub.other"}
    assert graph["pkg.sub.other"] == set()  # its own package
    assert cycles(graph) == []


def test_graph_of_mlcwb_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "mlcwb.train" in graph["mlcwb.experiment"]  # imported inside train_arm() only
    assert "mlcwb.commands.train" in graph["mlcwb.cli"]  # from mlcwb.commands import ..., train
    assert graph["mlcwb.__main__"] == {"mlcwb.cli"}


def test_cycle_finder() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [("a", "b"), ("a", "b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycle(s) in mlcwb:\n" + _describe(found)
