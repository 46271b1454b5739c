"""Every notebook runs under papermill with smoke parameters; committed copies are clean."""

from __future__ import annotations

import json

import nbformat
import pytest

from mlcwb.notebooks import execute_notebook, notebook_paths
from tests.notebook_params import SMOKE

NOTEBOOKS = notebook_paths()


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
def test_notebook_runs(path, artifacts_dir):
    """Notebooks share one run directory, in series order, as `make reproduce` runs them."""
    run_dir = artifacts_dir / "run"
    params = {"run_dir": str(run_dir), **SMOKE.get(path.stem, {})}
    execute_notebook(path, artifacts_dir / "notebooks" / path.name, params, cell_timeout=600)
