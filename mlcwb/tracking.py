"""Experiment tracking (``TrainConfig.report_to``): training curves in TensorBoard, W&B or MLflow.

The trackers are accelerate's. ``report_to`` names them the way trl's and transformers' ``report_to``
does: ``none`` (the default, and a true no-op: no tracker is made, no file is written), ``all``
(every one of ``TRACKERS`` that is installed) or one or more of ``TRACKERS``. A named tracker that
is not installed is a ConfigError that says what to install, raised when the config is validated,
not after the model has loaded.

Every row ``mlcwb.train`` writes to ``log.jsonl`` goes to the trackers too (its numbers, at its
``step``), with the flattened config as the run's parameters. TensorBoard writes under
``<output_dir>/tracking/``, so each arm of an experiment has its own curves
(``tensorboard --logdir runs/NAME/checkpoints`` shows them side by side). A fresh run clears what
an earlier run left there, as it clears ``log.jsonl``; a resumed run hides the steps the
interrupted one logged after its checkpoint (TensorBoard's ``purge_step``), as it cuts them from
``log.jsonl``. W&B and MLflow take their project, server and credentials from their own settings
(``wandb login``, ``MLFLOW_TRACKING_URI``); the project is ``mlcwb``, the run is named after the
output directory.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from mlcwb.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")
PROJECT = "mlcwb"
TRACKING_DIR = "tracking"  # under output_dir: TensorBoard's event files

# The modules that make each tracker work (any one of them), and what to install for it.
_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
_INSTALL = {"tensorboard": "pip install tensorboard (or pip install 'mlcwb[track]')",
            "wandb": "pip install wandb", "mlflow": "pip install mlflow"}


def installed(tracker: str) -> bool:
    """Whether ``tracker``'s package can be imported here (looked up, not imported)."""
    return any(importlib.util.find_spec(module) is not None for module in _MODULES[tracker])


def trackers(report_to: str | list[str]) -> list[str]:
    """The trackers ``report_to`` asks for, checked: [] for ``none``, the installed ones for
    ``all``; an unknown name, or a named tracker that is not installed, is a ConfigError."""
    if report_to == "none":
        return []
    if report_to == "all":
        return [name for name in TRACKERS if installed(name)]
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to {name!r}: use 'none', 'all', or any of {list(TRACKERS)} "
                              f"(a list for several)")
        if not installed(name):
            raise ConfigError(f"report_to {name!r}: {name} is not installed; {_INSTALL[name]}, or "
                              f"set report_to: none")
    return list(dict.fromkeys(names))


def tracker_kwargs(config: Any) -> dict[str, Any]:
    """What ``Accelerator(...)`` needs for a TrainConfig's trackers; nothing for ``report_to: none``.
    (``config`` is typed loosely: mlcwb.train_config imports this module.)"""
    names = trackers(config.report_to)
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(config.output_dir)
    return {"log_with": names, "project_config": ProjectConfiguration(
        project_dir=str(out), logging_dir=str(out / TRACKING_DIR))}


def start_tracking(accelerator: Any, config: Any, start: int) -> None:
    """Open the trackers' run (main process) with the flattened config; ``start`` is the step a
    resumed run goes on from (0: a fresh run, whose TensorBoard files start over)."""
    if not accelerator.log_with or not accelerator.is_main_process:
        return
    logs = Path(config.output_dir) / TRACKING_DIR
    if start == 0:
        shutil.rmtree(logs, ignore_errors=True)
    name = Path(config.output_dir).name
    init = {"wandb": {"name": name}, "mlflow": {"run_name": name},
            "tensorboard": {"purge_step": start + 1} if start else {}}
    accelerator.init_trackers(PROJECT, config=flat_config(config.to_dict()), init_kwargs=init)


def log_row(accelerator: Any, row: dict[str, Any]) -> None:
    """Every number of a ``log.jsonl`` row, at the row's ``step`` (text such as ``phase`` and
    booleans stay in the log only)."""
    if not accelerator.trackers:
        return
    values = {key: value for key, value in row.items() if key != "step" and _is_number(value)}
    accelerator.log(values, step=int(row["step"]))


def end_tracking(accelerator: Any) -> None:
    """Close the trackers' run (W&B and MLflow mark it finished, TensorBoard closes its file).

    Not ``accelerator.end_training()``: that also destroys the distributed process group, which
    the run's own final checkpoint and the next arm of an experiment still need."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of scalars (``mlc.lam``; lists joined with commas), the shape
    trackers' hyper-parameter tables take."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = ["TRACKERS", "TRACKING_DIR", "end_tracking", "flat_config", "installed", "log_row",
           "start_tracking", "tracker_kwargs", "trackers"]
