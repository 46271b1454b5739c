"""Run the notebook series headless with papermill (for `mlcwb reproduce` and the test suite).

A failed stage must end in one message a person can act on (which stage, which cell, what error,
which executed notebook to open), never in papermill's or nbclient's stack trace, because the
reader of ``mlcwb reproduce`` output is usually not the person who wrote the notebook.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcwb.errors import MLCWBError
from mlcwb.paths import repo_root

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CELL_LINES = 8  # lines of the failing cell shown when the traceback does not point at one


class NotebookError(MLCWBError):
    """A notebook stage failed (a cell raised, ran past its timeout, or the kernel died)."""


def use_numba_cache() -> str:
    """Point numba's JIT cache at a per-user temp dir unless ``NUMBA_CACHE_DIR`` is already set.

    umap-learn compiles with numba, which caches beside its own source by default and fails on a
    read-only install. The variable must be set before umap is first imported: ``mlcwb.viz`` calls
    this when it is imported, ``execute_notebook`` before starting a kernel (which inherits it).
    Returns the directory in use.
    """
    return os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "mlcwb-numba-cache"))


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


# --------------------------------------------------------------------------------------------
# Progress while a stage runs
# --------------------------------------------------------------------------------------------

PROGRESS_INTERVAL = 5.0  # seconds between two lines of the same progress bar in the log
_PROGRESS_ENGINE = "mlcwb-progress"


class _StreamLines:
    """A notebook's stdout or stderr chunks as whole log lines.

    Chunks arrive cut anywhere; a text progress bar redraws one line with carriage returns, so
    of a redrawn line only its latest state is kept, shown at most every ``interval`` seconds.
    """

    def __init__(self, emit: Callable[[str], None], interval: float = PROGRESS_INTERVAL) -> None:
        self.emit, self.interval = emit, interval
        self.partial, self.shown, self.last = "", "", 0.0

    def _show(self, text: str) -> None:
        text = text.rstrip()
        if text and text != self.shown:
            self.emit(text)
            self.shown, self.last = text, time.monotonic()

    def feed(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self._show(line.rsplit("\r", 1)[-1])
        if "\r" in self.partial:
            states = [s for s in self.partial.split("\r") if s.strip()]
            self.partial = states[-1] if states else ""
            if self.partial and time.monotonic() - self.last >= self.interval:
                self._show(self.partial)

    def flush(self) -> None:
        self._show(self.partial)
        self.partial = ""


class _WidgetBars:
    """tqdm's notebook bars as log lines, read from the widget state the notebook client keeps.

    Inside a kernel ``tqdm.auto`` draws an ipywidgets bar (an HBox of HTML, FloatProgress and
    HTML), whose updates are comm messages, not output: without this a headless run shows none
    of them. A bar is shown when it starts, at most every ``interval`` seconds, and when full.
    """

    def __init__(self, emit: Callable[[str], None], interval: float = PROGRESS_INTERVAL) -> None:
        self.emit, self.interval = emit, interval
        self.last: dict[str, tuple[float, str]] = {}

    def updated(self, state: dict[str, dict[str, Any]], comm_id: str) -> None:
        """``comm_id`` changed; if it is a bar's right-hand text (tqdm writes it last), show it."""
        model = f"IPY_MODEL_{comm_id}"
        for box_id, box in state.items():
            children = box.get("children") or []
            if box.get("_model_name") != "HBoxModel" or len(children) != 3 or children[2] != model:
                continue
            left, bar, right = (state.get(c.removeprefix("IPY_MODEL_"), {}) for c in children)
            if bar.get("_model_name") != "FloatProgressModel":
                return
            text = html.unescape(f"{left.get('value', '')} {right.get('value', '')}")
            text = " ".join(text.replace("\u2007", " ").split())
            done = (bar.get("value") or 0) >= (bar.get("max") or float("inf"))
            when, shown = self.last.get(box_id, (-float("inf"), ""))
            if text and text != shown and (done or time.monotonic() - when >= self.interval):
                self.emit(text)
                self.last[box_id] = (time.monotonic(), text)
            return


def _source_line(cell: Any) -> str:
    """The first line of a cell that is not blank or a comment, cut to 80 characters."""
    lines = [ln.strip() for ln in cell.get("source", "").splitlines()]
    first = next((ln for ln in lines if ln and not ln.startswith("#")), "")
    return first if len(first) <= 80 else first[:77] + "..."


class _QuietInterrupt:
    """Mixed into the notebook client: on Ctrl-C the kernel is killed at once, since one shut down
    gracefully in the middle of a cell prints a traceback of its own on the terminal."""

    def papermill_execute_cells(self) -> None:
        try:
            super().papermill_execute_cells()  # type: ignore[misc]
        except KeyboardInterrupt:
            self.shutdown_kernel = "immediate"  # read by nbclient's cleanup, which runs next
            raise


@functools.lru_cache(maxsize=None)
def _register_progress_engine() -> str:
    """A papermill engine whose notebook client also reports progress to ``mlcwb.notebooks``:
    each code cell as it starts, every line the notebook prints (stdout and stderr) and its
    progress bars. The executed notebook is written exactly as by papermill's own engine.

    papermill takes per-message callbacks only through its engine, so this engine builds the
    client as ``NBClientEngine`` does, with a subclass that logs; registered once, by name.
    """
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressClient(_QuietInterrupt, PapermillNotebookClient):
        def __init__(self, nb_man: Any, stage: str, **kwargs: Any) -> None:
            super().__init__(nb_man, **kwargs)
            emit = functools.partial(log.info, "%s | %s", stage)
            self.streams = {name: _StreamLines(emit) for name in ("stdout", "stderr")}
            self.bars = _WidgetBars(emit)
            self.stage, self.done = stage, 0
            self.total = sum(c.cell_type == "code" and bool(c.source.strip())
                             for c in nb_man.nb.cells)
            self.on_cell_start = self.cell_started

        def cell_started(self, cell: Any, cell_index: int) -> None:
            for stream in self.streams.values():
                stream.flush()
            if cell.cell_type != "code" or not cell.source.strip():
                return  # nbclient calls this hook for every cell, markdown ones too
            self.done += 1
            log.info("%s: cell %d/%d: %s", self.stage, self.done, self.total, _source_line(cell))

        def log_output_message(self, output: Any) -> None:
            if output.output_type == "stream" and output.name in self.streams:
                self.streams[output.name].feed("".join(output.text))

        def handle_comm_msg(self, outs: Any, msg: dict[str, Any], cell_index: int) -> None:
            super().handle_comm_msg(outs, msg, cell_index)
            self.bars.updated(self.widget_state, msg["content"].get("comm_id", ""))

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, log_output: bool = False,
                                     start_timeout: float = 60, execution_timeout: float | None = None,
                                     progress_stage: str = "notebook", **kwargs: Any) -> Any:
            kwargs.pop("input_path", None)
            client = ProgressClient(nb_man, progress_stage, timeout=execution_timeout,
                                    startup_timeout=start_timeout, kernel_name=kernel_name,
                                    log=logging.getLogger("papermill"), log_output=True, **kwargs)
            try:
                return client.execute()
            finally:
                for stream in client.streams.values():
                    stream.flush()

    papermill_engines.register(_PROGRESS_ENGINE, ProgressEngine)
    return _PROGRESS_ENGINE


def execute_notebook(source: Path, output: Path, parameters: dict[str, Any] | None = None,
                     cell_timeout: float | None = None, kernel: str = "python3",
                     progress: bool = False) -> float:
    """Execute ``source`` into ``output`` with papermill; returns the wall time in seconds.

    Runs with ``notebooks/`` as the working directory, like JupyterLab does. ``cell_timeout`` is
    in seconds per cell and ``None`` (the default) sets no limit: a training cell takes as long
    as the machine needs, and a run that stops after an hour of work for a clock helps nobody.
    ``progress`` logs (logger ``mlcwb.notebooks``, INFO) each cell as it starts, what the
    notebook prints and its progress bars, so a stage that runs for minutes is not silent; the
    executed notebook is the same either way. Every failure becomes a ``NotebookError`` (see
    ``_stage_error``).
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    use_numba_cache()
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        engine = {"engine_name": _register_progress_engine(), "progress_stage": source.stem} \
            if progress else {}
        pm.execute_notebook(str(source), str(output), parameters=parameters or {},
                            kernel_name=kernel, cwd=str(source.parent),
                            execution_timeout=cell_timeout, progress_bar=False, **engine)
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
