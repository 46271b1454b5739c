"""mlcwb: the Multi-Lingual Consistency workbench (see README.md and docs/design.md).

The names below are the handful a notebook starts from: load a model and prompts, train the
experiment's arms, generate, judge, tabulate. Each is imported on first use (the module
``__getattr__``), because ``mlcwb --version`` and ``mlcwb --help`` import this package, and so
does the build backend when it reads ``__version__``: none of them may pay for torch.

``extract`` and ``train`` are not here: they share their names with the modules ``mlcwb.extract``
and ``mlcwb.train``, which Python binds on this package as soon as anything imports them. Use
``from mlcwb.extract import extract`` and ``from mlcwb.train import train``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here

_ENTRY_POINTS = {
    "load_model": "mlcwb.models",
    "load_corpus": "mlcwb.data",
    "PromptSet": "mlcwb.data",
    "open_run_dir": "mlcwb.paths",
    "Representations": "mlcwb.representations",
    "MLCConfig": "mlcwb.mlc",
    "TrainConfig": "mlcwb.train_config",
    "arm_configs": "mlcwb.experiment",
    "train_arms": "mlcwb.experiment",
    "generate": "mlcwb.generation",
    "evaluate_methods": "mlcwb.compare",
    "make_judge": "mlcwb.judges",
    "apply_judge": "mlcwb.judges",
    "language_metrics": "mlcwb.metrics",
    "safety_table": "mlcwb.tables",
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    """Import an entry point's module the first time the name is asked for, then keep the name."""
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlcwb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ENTRY_POINTS})
