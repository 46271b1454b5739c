"""The import graph of mlcwb has no cycles and keeps the layers docs/design.md draws (read from the
source with ``ast``; nothing is imported).

docs/design.md ("Import layers") lists every module of mlcwb in one row of a table; a module may
import only modules in rows below its own. ``test_design_doc_lists_every_module_once`` and
``test_imports_go_down_the_design_doc_layers`` hold the table to the code, so the page stays true:
a new module, or an import that climbs a row, fails here with the row to write.
``python -m tests.test_imports`` prints the table with every module in the lowest row it fits.

An edge is any ``import mlcwb...`` or ``from mlcwb... import ...`` anywhere in a module, at module
level or inside a function: a lazy import keeps ``mlcwb --help`` fast, but it still makes the two
modules depend on each other, and a cycle of lazy imports is a cycle of layers. Imports under
``if TYPE_CHECKING:`` count too: they never run, but a reader of the annotations needs the other
module, and a circle hidden there is still a circle (name a type from a lower module, or a
``Protocol``, instead). A ``__main__`` block counts like any other code (``python -m mlcwb`` is
``mlcwb/__main__.py``, so no stage module needs one).

Importing ``mlcwb.a.b`` also runs the package ``mlcwb.a`` first, so that is an edge too, except
into a module's own ancestor packages (``mlcwb.data.corpus`` importing ``mlcwb.data``,
``mlcwb.cli`` importing ``mlcwb``): a package is initialised before any of its submodules runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "mlcwb"
DESIGN = PACKAGE.parent / "docs" / "design.md"
SECTION = "Import layers"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, every ``.py`` under ``package`` (``__init__``: the package)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _kinds(tree: ast.Module) -> dict[int, str]:
    """id of each node that is not plain module-level code -> ``type-checking``, ``lazy``
    (inside a function) or ``__main__``, the innermost of these that holds it."""
    kinds: dict[int, str] = {}

    def mark(nodes: list[ast.AST], kind: str) -> None:
        for stmt in nodes:
            for n in ast.walk(stmt):
                kinds[id(n)] = kind

    for node in ast.walk(tree):  # outer nodes come first, so inner blocks overwrite them
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            mark(node.body if isinstance(node.body, list) else [node.body], "lazy")
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test).replace("'", '"').replace(" ", "")
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                mark(node.body, "type-checking")
            elif test == '__name__=="__main__"':
                mark(node.body, "__main__")
    return kinds


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module (``mlcwb.io.read_jsonl`` -> ``mlcwb.io``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(module: str, path: Path, modules: dict[str, Path]) -> dict[str, list[tuple[int, str]]]:
    """The package's own modules that ``module`` imports -> where: ``(line, kind)`` for each import
    statement, kind ``module`` (module level), ``lazy``, ``type-checking`` or ``__main__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    kinds = _kinds(tree)
    package = module.split(".")[0]
    edges: dict[str, list[tuple[int, str]]] = {}
    for node in ast.walk(tree):
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
                    where = (node.lineno, kinds.get(id(node), "module"))
                    if where not in edges.setdefault(target, []):
                        edges[target].append(where)
                target = target.rpartition(".")[0]
    return edges


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that ``module`` imports (every kind of import, see above)."""
    return set(import_edges(module, path, modules))


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


# --------------------------------------------------------------------------------------------
# The layers of docs/design.md
# --------------------------------------------------------------------------------------------

_ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|")


def doc_rows(text: str, section: str = SECTION) -> dict[str, list[int]]:
    """Module -> the rows of the ``section`` table that list it (one, when the page is right).

    The table is Markdown, ``| row | modules |`` (more columns are allowed and not read), each
    module written in backticks without the ``mlcwb.`` prefix (``data.corpus``; ``mlcwb`` is the
    package itself); the section runs from its heading to the next heading of its level or above.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("#") and section in line), None)
    assert start is not None, f"{DESIGN.name}: no heading naming {section!r}"
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    rows: dict[str, list[int]] = {}
    for line in lines[start + 1:]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        match = _ROW.match(line)
        if match:
            for name in re.findall(r"`([^`]+)`", match.group(2)):
                module = name if name == "mlcwb" else f"mlcwb.{name}"
                rows.setdefault(module, []).append(int(match.group(1)))
    return rows


def lowest_rows(graph: dict[str, set[str]], placed: dict[str, int] | None = None) -> dict[str, int]:
    """The row each module needs: its ``placed`` row where given, else the lowest one it fits
    (one above the highest row it imports from; 0 for a module importing nothing of mlcwb)."""
    placed = placed or {}
    out: dict[str, int] = {}

    def row(module: str, seen: tuple[str, ...] = ()) -> int:
        if module in placed:
            return placed[module]
        if module not in out:
            below = [row(t, seen + (module,)) for t in graph.get(module, ()) if t not in seen]
            out[module] = 1 + max(below, default=-1)  # (a cycle is test_no_import_cycles' to name)
        return out[module]

    for module in graph:
        out[module] = row(module)
    return out


def _short(module: str) -> str:
    return module if module == "mlcwb" else module.removeprefix("mlcwb.")


def layer_table(graph: dict[str, set[str]]) -> str:
    """The Markdown table of docs/design.md with every module in the lowest row it fits."""
    by_row: dict[int, list[str]] = {}
    for module, row in lowest_rows(graph).items():
        by_row.setdefault(row, []).append(module)
    body = [f"| {row} | {', '.join(f'`{_short(m)}`' for m in sorted(by_row[row], key=_short))} |"
            for row in sorted(by_row, reverse=True)]
    return "\n".join(["| row | modules |", "|---|---|", *body])


def _doc_problems(graph: dict[str, set[str]], rows: dict[str, list[int]]) -> list[str]:
    """What is wrong with the table's list of modules: missing, unknown or repeated names."""
    where = f"{DESIGN.relative_to(PACKAGE.parent)} (\"{SECTION}\")"
    placed = {m: r[0] for m, r in rows.items() if m in graph}
    need = lowest_rows(graph, placed)
    problems = []
    for module in sorted(set(graph) - set(rows)):
        below = sorted(graph[module], key=lambda t: (-need[t], t))
        why = (f"it imports {', '.join(f'{_short(t)} (row {need[t]})' for t in below)}"
               if below else "it imports nothing of mlcwb")
        problems.append(f"{module} is missing from {where}: add `{_short(module)}` to row "
                        f"{need[module]} or above ({why})")
    for module in sorted(set(rows) - set(graph)):
        problems.append(f"{where} lists `{_short(module)}` (row {rows[module][0]}), which is no "
                        f"module of mlcwb: remove it or fix its name")
    for module in sorted(m for m, r in rows.items() if len(r) > 1):
        problems.append(f"{where} lists `{_short(module)}` in rows {rows[module]}: keep it in one")
    return problems


def _edge_problems(rows: dict[str, int], package: Path = PACKAGE) -> list[str]:
    """Every import that does not go to a strictly lower row of the table, with its place."""
    where = f"{DESIGN.relative_to(PACKAGE.parent)} (\"{SECTION}\")"
    modules = module_files(package)
    problems = []
    for module, path in modules.items():
        for target, places in sorted(import_edges(module, path, modules).items()):
            if module not in rows or target not in rows or rows[target] < rows[module]:
                continue
            at = ", ".join(f"line {line} ({kind})" for line, kind in places)
            problems.append(
                f"{module} (row {rows[module]}) imports {target} (row {rows[target]}) at "
                f"{path.relative_to(package.parent)} {at}: a module may import only from rows below "
                f"its own. Move `{_short(module)}` to row {rows[target] + 1} or above (and whatever "
                f"imports it above that) or `{_short(target)}` below row {rows[module]} in {where}, "
                f"or drop the import")
    return problems


def test_import_graph_reads_every_kind_of_import(tmp_path: Path) -> None:
    """Lazy imports count; ``from pkg import submodule`` reaches the submodule; relative imports
    resolve; ``__main__`` and TYPE_CHECKING blocks count; other packages and one's own do not."""
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
    assert graph["pkg.typing_only"] == {"pkg.base", "pkg.lazy"}
    assert graph["pkg.script"] == {"pkg.base", "pkg.frompkg"}
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.base", "pkg.sub.other"}
    assert graph["pkg.sub.other"] == set()  # its own package
    assert cycles(graph) == []
    modules = module_files(pkg)
    assert import_edges("pkg.typing_only", pkg / "typing_only.py", modules) == {
        "pkg.base": [(3, "type-checking")], "pkg.lazy": [(5, "module")]}
    assert import_edges("pkg.lazy", pkg / "lazy.py", modules) == {"pkg.base": [(2, "lazy")]}
    assert import_edges("pkg.script", pkg / "script.py", modules)["pkg.frompkg"] == [(3, "__main__")]


def test_a_type_checking_circle_is_a_cycle(tmp_path: Path) -> None:
    """The circle the issue found: a imports b, b names a's type under TYPE_CHECKING only."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "a.py").write_text("from pkg.b import f\n", encoding="utf-8")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from pkg.a import A\n", encoding="utf-8")
    assert cycles(import_graph(pkg)) == [("pkg.a", "pkg.b")]


def test_layer_checks_name_the_fix(tmp_path: Path) -> None:
    """The table parser and both kinds of failure message, on a made-up package and page."""
    pkg = tmp_path / "mlcwb"
    pkg.mkdir()
    files = {"__init__.py": "", "low.py": "", "mid.py": "from mlcwb import low\n",
             "high.py": "def f():\n    from mlcwb import mid\n", "new.py": "import mlcwb.high\n"}
    for name, text in files.items():
        (pkg / name).write_text(text, encoding="utf-8")
    page = ("## 11. Import layers\n\n| row | modules |\n|---|---|\n| 2 | `high` |\n"
            "| 1 | `low`, `mid`, `gone` |\n| 0 | `mlcwb`, `low` |\n\n## 12. Next\n| 9 | `new` |\n")
    rows = doc_rows(page)
    assert rows == {"mlcwb.high": [2], "mlcwb.low": [1, 0], "mlcwb.mid": [1], "mlcwb.gone": [1],
                    "mlcwb": [0]}
    graph = import_graph(pkg)
    problems = _doc_problems(graph, rows)
    assert len(problems) == 3
    assert problems[0].startswith("mlcwb.new is missing from docs/design.md")
    assert "add `new` to row 3 or above (it imports high (row 2))" in problems[0]
    assert "lists `gone` (row 1), which is no module of mlcwb" in problems[1]
    assert "lists `low` in rows [1, 0]: keep it in one" in problems[2]
    edges = _edge_problems({"mlcwb": 0, "mlcwb.low": 1, "mlcwb.mid": 1, "mlcwb.high": 2}, pkg)
    assert edges == [
        "mlcwb.mid (row 1) imports mlcwb.low (row 1) at mlcwb/mid.py line 1 (module): a module may "
        "import only from rows below its own. Move `mid` to row 2 or above (and whatever imports it "
        "above that) or `low` below row 1 in docs/design.md (\"Import layers\"), or drop the import"]
    assert lowest_rows(graph) == {"mlcwb": 0, "mlcwb.low": 0, "mlcwb.mid": 1, "mlcwb.high": 2,
                                  "mlcwb.new": 3}
    assert layer_table(graph).splitlines()[2:] == [
        "| 3 | `new` |", "| 2 | `high` |", "| 1 | `mid` |", "| 0 | `low`, `mlcwb` |"]


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


def test_design_doc_lists_every_module_once() -> None:
    problems = _doc_problems(import_graph(), doc_rows(DESIGN.read_text(encoding="utf-8")))
    assert not problems, ("the import-layer table does not match mlcwb/ (`python -m "
                          "tests.test_imports` prints one that does):\n" + "\n".join(problems))


def test_imports_go_down_the_design_doc_layers() -> None:
    rows = {m: r[0] for m, r in doc_rows(DESIGN.read_text(encoding="utf-8")).items()}
    problems = _edge_problems(rows)
    assert not problems, "imports against the layers of the design doc:\n" + "\n".join(problems)


if __name__ == "__main__":
    print(layer_table(import_graph()))
