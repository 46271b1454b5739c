"""Every notebook runs under papermill with smoke parameters, printing no warning from mlcwb's
code; committed copies are clean."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import nbformat
import pytest

from mlcwb.notebooks import execute_notebook, notebook_paths
from tests.notebook_params import SMOKE

NOTEBOOKS = notebook_paths()

# A warning as Python prints it (warnings.formatwarning: "<file>:<line>: <Category>: <message>",
# then the source line, indented) whose file is in mlcwb/: the last directory named mlcwb is
# followed only by package names and a .py file (so a checkout named mlcwb, with its .venv's
# site-packages inside, does not make every library's warning mlcwb's).
_MLCWB_WARNING = re.compile(
    r"^(?P<where>(?:.*[/\\])?mlcwb(?:[/\\][A-Za-z_]\w*)*[/\\][A-Za-z_]\w*\.py:\d+): "
    r"(?P<category>[\w.]*Warning): (?P<message>.*)$", re.MULTILINE)


def mlcwb_warnings(notebook: Mapping[str, Any]) -> list[str]:
    """The warnings an executed notebook's cells printed to stderr from mlcwb's own code (a call
    in mlcwb/ that a library warns about, or mlcwb warning itself), as ``cell N: file:line:
    Category: message``. The pytest filters of pyproject.toml make these errors in the tests,
    but a notebook runs in its own kernel, so its outputs are read instead."""
    found = []
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") != "stream" or output.get("name") != "stderr":
                continue
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            found += [f"cell {index}: {m['where']}: {m['category']}: {m['message']}"
                      for m in _MLCWB_WARNING.finditer(text)]
    return found


def test_mlcwb_warnings_finds_only_mlcwb_code():
    def stderr(text):
        return {"output_type": "stream", "name": "stderr", "text": text}

    notebook = {"cells": [
        {"cell_type": "markdown", "source": "/x/mlcwb/a.py:1: FutureWarning: not output"},
        {"cell_type": "code", "outputs": [
            stderr("/home/u/.venv/lib/python3.11/site-packages/mlcwb/metrics.py:42: FutureWarning: "
                   "the default of observed= is deprecated\n  df.groupby(keys)\n"),
            {"output_type": "stream", "name": "stdout",
             "text": "/work/main/mlcwb/io.py:3: DeprecationWarning: printed, not warned\n"}]},
        {"cell_type": "code", "outputs": [
            stderr(["100%|##########| 4/4\n",
                    "/work/main/mlcwb/data/corpus.py:7: DeprecationWarning: old call\n",
                    "  x = f()\n"]),
            stderr("/tmp/ipykernel_1/123.py:5: FutureWarning: the notebook's own call\n"
                   "/home/u/mlcwb/.venv/lib/python3.11/site-packages/torch/nn.py:9: UserWarning: "
                   "a library's own\n/home/u/mlcwb/mlcwb/train.py:10: UserWarning: mlcwb's own\n"
                   "C:\\src\\mlcwb\\viz.py:3: mlcwb.viz.FigureWarning: on Windows\n")]},
    ]}
    assert mlcwb_warnings(notebook) == [
        "cell 1: /home/u/.venv/lib/python3.11/site-packages/mlcwb/metrics.py:42: FutureWarning: "
        "the default of observed= is deprecated",
        "cell 2: /work/main/mlcwb/data/corpus.py:7: DeprecationWarning: old call",
        "cell 2: /home/u/mlcwb/mlcwb/train.py:10: UserWarning: mlcwb's own",
        "cell 2: C:\\src\\mlcwb\\viz.py:3: mlcwb.viz.FigureWarning: on Windows",
    ]
    assert mlcwb_warnings({"cells": []}) == []


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_name.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells)
                    if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert with_outputs == [], f"{path.name}: cells {with_outputs} carry outputs; strip them"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assert "run_dir" in tagged[0].source, f"{path.name}: the parameters cell must define run_dir"
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: should open with a Markdown story"
    # read as committed: nbformat.read invents the ids a cell lacks
    ids = [c.get("id") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: every cell needs its own id"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, artifacts_dir, monkeypatch):
    """Notebooks share one run directory, in series order, as `make reproduce` runs them; no cell
    prints a warning from mlcwb's code."""
    run_dir = artifacts_dir / "run"
    params = {"run_dir": str(run_dir), **SMOKE.get(path.stem, {})}
    # the kernel inherits this: Python hides deprecation warnings outside __main__ by default
    monkeypatch.setenv("PYTHONWARNINGS", "default::DeprecationWarning,default::PendingDeprecationWarning")
    executed = artifacts_dir / "notebooks" / path.name
    execute_notebook(path, executed, params, cell_timeout=600)
    found = mlcwb_warnings(nbformat.read(executed, as_version=4))
    assert not found, f"{path.name} printed warnings from mlcwb's code:\n" + "\n".join(found)
