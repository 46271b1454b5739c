"""Where things are: the repository, its data, the shared data folder, the cache, run directories."""

from __future__ import annotations

import os
from pathlib import Path

from mlcwb import run_lock

SHARED_DATA_ENV = "MLCWB_SHARED_DATA"
CACHE_ENV = "MLCWB_CACHE_DIR"  # moves every cache at once: models, judges' verdicts


def cache_dir(kind: str) -> Path:
    """``$MLCWB_CACHE_DIR/<kind>`` (default ``~/.cache/mlcwb/<kind>``): the one place caches live
    (``models``: fetched and converted weights; ``judges``: verdicts bought once), so one variable
    moves them all."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlcwb"
    return Path(root) / kind


def repo_root() -> Path:
    """The folder that holds ``data/`` and ``notebooks/``: the checkout when mlcwb runs from one
    (an editable install), else the copy the wheel ships as ``mlcwb/_resources/`` (pyproject.toml
    maps the two folders there), so ``pip install mlcwb`` finds the corpus and the notebooks too."""
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout
    return package / "_resources"


def data_dir() -> Path:
    return repo_root() / "data"


def shared_data_dir() -> Path:
    """Third-party datasets kept outside the repo (``../shared/data`` or ``$MLCWB_SHARED_DATA``)."""
    env = os.environ.get(SHARED_DATA_ENV)
    return Path(env) if env else repo_root().parent / "shared" / "data"


def open_run_dir(path: str | Path, lock: bool = False) -> Path:
    """A run directory (``runs/<name>/``), created if missing, as an absolute path (a relative one
    is taken from the working directory), so a notebook's ``run_dir`` parameter names one folder
    whichever way it is written.

    A directory another run holds (``mlcwb reproduce``, ``mlcwb train``: ``mlcwb.run_lock``) raises
    ``RunLockedError``, except in the kernels that run started. With ``lock`` this process also
    holds the directory until it exits; without (a notebook), it only checks, so the notebooks of
    a series open in JupyterLab share their directory."""
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if lock:
        run_lock.acquire(path)
    else:
        run_lock.check(path)
    return path
