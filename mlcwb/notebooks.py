"""Run the notebook series headless with papermill (for `mlcwb reproduce` and the test suite).

A failed stage must end in one message a person can act on (which stage, which cell, what error,
which executed notebook to open), never in papermill's or nbclient's stack trace, because the
reader of ``mlcwb reproduce`` output is usually not the person who wrote the notebook.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from mlcwb.errors import MLCWBError
from mlcwb.paths import repo_root

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CELL_LINES = 8  # lines of the failing cell shown when the traceback does not point at one


class NotebookError(MLCWBError):
    """A notebook stage failed (a cell raised, ran past its timeout, or the kernel died)."""


def notebook_paths() -> list[Path]:
    """The series in order (``00_quickstart`` ... ), as committed under ``notebooks/``."""
    return sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _read_cells(executed: Path) -> list[Any]:
    """The executed copy's code cells; ``[]`` when papermill never got to write it."""
    import nbformat

    try:
        return [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    except (OSError, ValueError, KeyError):
        return []


def _failed_cell(executed: Path) -> tuple[Any, dict[str, Any]] | None:
    """The first code cell with an error output, and that output."""
    for cell in _read_cells(executed):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return cell, output
    return None


def _running_cell(executed: Path) -> Any:
    """The cell papermill marked as running or failed last (the one a timeout interrupted)."""
    marked = [c for c in _read_cells(executed)
              if c.metadata.get("papermill", {}).get("status") in ("running", "failed")]
    return marked[-1] if marked else None


def _failing_line(cell_source: str, traceback: list[str]) -> str:
    """The line of the cell that raised (IPython marks it ``---->``), else the cell's start."""
    frames = [_ANSI.sub("", frame) for frame in traceback]
    in_cell = [f for f in frames if f.lstrip().startswith("Cell In[")] or frames
    for frame in reversed(in_cell):
        marked = [line for line in frame.splitlines() if line.lstrip().startswith("---->")]
        if marked:
            number, _, code = marked[-1].strip().removeprefix("---->").strip().partition(" ")
            return f"line {number}: {code.strip()}" if number.isdigit() else marked[-1].strip()
    lines = cell_source.splitlines()
    return "\n      ".join(lines[:_CELL_LINES]) + ("\n      ..." if len(lines) > _CELL_LINES else "")


def _stage_error(source: Path, output: Path, what: str, cell: Any = None,
                 traceback: list[str] | None = None) -> NotebookError:
    """The one message a failed stage shows: stage, cell, error, where it failed, file to open."""
    count = cell.get("execution_count") if cell is not None else None
    label = f"cell [{count}]" if count is not None else "a cell" if cell is not None else "setup"
    detail = _failing_line(cell.get("source", ""), traceback or []) if cell is not None else ""
    where = f"\n  at: {detail}" if detail else ""
    return NotebookError(f"stage {source.stem} failed in {label}: {what}{where}\n"
                         f"  open the executed notebook for the full traceback: {output}")


def _execution_error(source: Path, output: Path, exc: Any) -> NotebookError:
    """A cell raised: papermill has saved the executed copy with the error in it."""
    found = _failed_cell(output)
    if found:
        cell, error = found
        return _stage_error(source, output, f"{error.get('ename')}: {error.get('evalue')}", cell,
                            error.get("traceback"))
    cell = {"execution_count": exc.exec_count, "source": exc.source or ""}
    return _stage_error(source, output, f"{exc.ename}: {exc.evalue}", cell, exc.traceback)


def _timeout_error(source: Path, output: Path, timeout: float | None) -> NotebookError:
    """nbclient interrupted a cell at the timeout: its KeyboardInterrupt output shows where."""
    found = _failed_cell(output)
    cell, traceback = (found[0], found[1].get("traceback")) if found else (_running_cell(output), None)
    limit = f"{timeout:g} s" if timeout is not None else "the limit"
    return _stage_error(source, output, f"it ran longer than the per-cell timeout of {limit} "
                        "(the preset's cell_timeout; leave it unset for no limit)", cell, traceback)


def execute_notebook(source: Path, output: Path, parameters: dict[str, Any] | None = None,
                     cell_timeout: float | None = None, kernel: str = "python3") -> float:
    """Execute ``source`` into ``output`` with papermill; returns the wall time in seconds.

    Runs with ``notebooks/`` as the working directory, like JupyterLab does. ``cell_timeout`` is
    in seconds per cell and ``None`` (the default) sets no limit: a training cell takes as long
    as the machine needs, and a run that stops after an hour of work for a clock helps nobody.
    Every failure becomes a ``NotebookError`` (see ``_stage_error``).
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "mlcwb-numba-cache"))
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters or {},
                            kernel_name=kernel, cwd=str(source.parent),
                            execution_timeout=cell_timeout, progress_bar=False)
    except pm.PapermillExecutionError as exc:
        raise _execution_error(source, output, exc) from None
    except CellTimeoutError:
        raise _timeout_error(source, output, cell_timeout) from None
    except DeadKernelError:
        raise _stage_error(source, output, "the Python kernel died (out of memory?)",
                           _running_cell(output)) from None
    except (pm.PapermillException, RuntimeError, TimeoutError) as exc:
        raise _stage_error(source, output, f"{type(exc).__name__}: {exc}") from None
    return time.perf_counter() - start
