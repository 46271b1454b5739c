"""`mlcwb reproduce`: run the notebook series in order into one run directory.

Each notebook is executed with papermill so that every run leaves executed notebooks a person
can open; the run directory carries the work from one notebook to the next.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from mlcwb.notebooks import execute_notebook, notebook_paths
from mlcwb.paths import run_dir as make_run_dir

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {},
}


def reproduce(out: str | Path, preset: str = "quick") -> dict[str, float]:
    """Execute every notebook with the preset's parameters; returns seconds per notebook."""
    out = make_run_dir(out).resolve()
    params = PRESETS[preset]
    timings: dict[str, float] = {}
    for source in notebook_paths():
        stage = source.stem
        log.info("[%s] running %s", preset, stage)
        seconds = execute_notebook(source, out / "notebooks" / source.name,
                                   {"run_dir": str(out), **params.get(stage, {})})
        timings[stage] = round(seconds, 1)
        log.info("[%s] %s done in %.0f s", preset, stage, seconds)
    return timings


def _run(args: argparse.Namespace) -> int:
    out = args.out or f"runs/{args.preset}"
    start = time.perf_counter()
    timings = reproduce(out, args.preset)
    log.info("finished in %.0f s: %s", time.perf_counter() - start, timings)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the notebook series end to end into runs/NAME")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.set_defaults(func=_run)
