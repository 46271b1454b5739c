"""Run the notebook series headless with papermill (for `mlcwb reproduce` and the test suite)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlcwb.errors import MLCWBError
from mlcwb.paths import repo_root

log = logging.getLogger(__name__)


class NotebookError(MLCWBError):
    """A notebook cell raised; the message carries the cell's source and the error."""


def notebook_paths() -> list[Path]:
    """The series in order (``00_quickstart`` ... ), as committed under ``notebooks/``."""
    return sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _failing_cell(executed: Path) -> tuple[str, str]:
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return cell.source, f"{output.get('ename')}: {output.get('evalue')}"
    return "", ""


def execute_notebook(source: Path, output: Path, parameters: dict[str, Any] | None = None,
                     cell_timeout: int = 900, kernel: str = "python3") -> float:
    """Execute ``source`` into ``output`` with papermill; returns the wall time in seconds.

    Runs with ``notebooks/`` as the working directory, like JupyterLab does, and turns a failing
    cell into a ``NotebookError`` that shows the cell and the error instead of papermill's dump.
    """
    import papermill as pm

    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "mlcwb-numba-cache"))
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters or {},
                            kernel_name=kernel, cwd=str(source.parent),
                            execution_timeout=cell_timeout, progress_bar=False)
    except pm.PapermillExecutionError as exc:
        cell, error = _failing_cell(output)
        raise NotebookError(
            f"{source.name} failed in cell {exc.exec_count}:\n--- cell ---\n{cell}\n--- error ---\n"
            f"{error or exc.ename + ': ' + exc.evalue}\nExecuted copy: {output}"
        ) from None
    return time.perf_counter() - start
