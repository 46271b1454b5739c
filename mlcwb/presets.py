"""The presets of ``mlcwb reproduce``: data, one YAML file each under ``mlcwb/presets/``.

A preset sets the notebook series' parameters: ``common`` goes to every notebook that declares the
name, ``notebooks`` to one notebook each. Any YAML file of the same form is a preset too: ``mlcwb
presets quick > mine.yaml``, edit it, ``mlcwb reproduce --preset mine.yaml`` (named after its file,
so a copy never passes for the preset it came from). The form is checked when a preset is read, so
a mistyped key stops the run before any notebook starts, with the file and the key in the message.

The files are read with YAML 1.2's numbers: ``lr: 6e-7`` is a float, where YAML 1.1 (PyYAML's
default) makes it the string "6e-7". A quoted number stays a string;
``reproduce.stage_parameters`` turns it into the number the notebook's default says it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcwb.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "presets"


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
    measured: str | None = None  # a measured end-to-end time, in words (for `mlcwb presets`)

    @property
    def model(self) -> str:
        return self.common["model_name"]


def _mapping(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(isinstance(k, str) for k in value))


def _timeout(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and value > 0)


# Every key a preset file may have: what its value must be, in words, and the check.
SCHEMA: dict[str, tuple[str, Any]] = {
    "name": ("a string (the file's name without .yaml)", lambda v: isinstance(v, str)),
    "description": ("a string", lambda v: isinstance(v, str)),
    "measured": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "common": ("a mapping of parameter names to values", _mapping),
    "notebooks": ("a mapping of notebook names (00_quickstart, ...) to mappings of parameters",
                  _mapping),
    "notes": ("a string", lambda v: isinstance(v, str)),
    "sweep": ("a repo-relative path to a JSON file, or null", lambda v: v is None or isinstance(v, str)),
    "cell_timeout": ("a positive number of seconds (or null for no limit)", _timeout),
}
# Notebook parameters renamed so that a knob has one name from preset to result JSON (the
# config classes' and the training summary's): a preset with an old name is told the new one.
RENAMED_PARAMETERS: dict[str, dict[str, str]] = {
    "01_translation": {"languages": "target_languages"},
    "04_mlc_training": {"lam": "mlc_lam", "aux_every": "mlc_aux_every", "variant": "mlc_variant",
                        "pooling": "mlc_pooling", "schedules": "arms", "mlc_only": "arms"},
}
# What a ``--config`` file may override in a preset.
OVERRIDE_KEYS = ("common", "notebooks", "description", "cell_timeout")


def preset_names() -> list[str]:
    """The presets that ship with mlcwb, by name (their files' names), sorted."""
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """The file of a shipped preset's name, or the given path to a preset file."""
    if str(name_or_path) in preset_names():
        return PRESET_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"Preset file {path} does not exist.")
    raise ConfigError(f"Unknown preset {str(name_or_path)!r}; choose one of "
                      f"{', '.join(preset_names())}, or give the path of a preset file "
                      "(`mlcwb presets quick > mine.yaml` writes one to edit).")


def load_preset(name_or_path: str | Path, config: str | Path | None = None) -> Preset:
    """A shipped preset by name, or the preset in a YAML file, optionally overridden by a
    ``--config`` YAML file with ``common:``/``notebooks:`` (and ``description``, ``cell_timeout``)."""
    path = preset_path(name_or_path)
    raw = _read(path, "A preset file")
    _check(raw, path, tuple(SCHEMA))
    common = raw.get("common") or {}
    if "model_name" not in common:
        raise ConfigError(f"{path}: common.model_name is missing: a preset names its model "
                          "(a packaged name such as smollm2-135m-instruct, a hub id or a folder).")
    timeout = raw.get("cell_timeout")
    preset = Preset(name=path.stem, description=raw.get("description", f"from {path}"),
                    common=dict(common), notebooks=_notebooks(raw), notes=raw.get("notes", ""),
                    sweep=raw.get("sweep"), cell_timeout=None if timeout is None else float(timeout),
                    measured=raw.get("measured"))
    return preset if config is None else _override(preset, Path(config))


def _override(preset: Preset, path: Path) -> Preset:
    """``preset`` with a ``--config`` file's values on top (an overridden preset was not what
    was measured, so it carries no ``measured``)."""
    raw = _read(path, "A preset config")
    _check(raw, path, OVERRIDE_KEYS)
    notebooks = {stem: dict(values) for stem, values in preset.notebooks.items()}
    for stem, values in _notebooks(raw).items():
        notebooks.setdefault(stem, {}).update(values)
    timeout = raw.get("cell_timeout", preset.cell_timeout)
    return Preset(name=f"{preset.name}+{path.stem}",
                  description=raw.get("description", preset.description),
                  common={**preset.common, **(raw.get("common") or {})}, notebooks=notebooks,
                  notes=preset.notes, sweep=preset.sweep,
                  cell_timeout=None if timeout is None else float(timeout))


def _notebooks(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {stem: dict(values or {}) for stem, values in (raw.get("notebooks") or {}).items()}


def _check(raw: dict[str, Any], path: Path, allowed: tuple[str, ...]) -> None:
    """Every key is one of ``allowed`` and of its type; notebooks are the series' notebooks."""
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}.")
    for key, value in raw.items():
        words, ok = SCHEMA[key]
        if not ok(value):
            raise ConfigError(f"{path}: {key} must be {words}, got {value!r}.")
    common = raw.get("common") or {}
    if "model_name" in common and not (isinstance(common["model_name"], str) and common["model_name"]):
        raise ConfigError(f"{path}: common.model_name must be a model's name, got "
                          f"{common['model_name']!r}.")
    stems = _series_stems()
    for stem, values in (raw.get("notebooks") or {}).items():
        if stems and stem not in stems:
            raise ConfigError(f"{path}: notebooks.{stem} is not a notebook of the series; "
                              f"the notebooks are {', '.join(stems)}.")
        if not _mapping(values):
            raise ConfigError(f"{path}: notebooks.{stem} must be a mapping of parameters, "
                              f"got {values!r}.")


def _series_stems() -> list[str]:
    from mlcwb.notebooks import notebook_paths

    return [path.stem for path in notebook_paths()]


def _read(path: Path, what: str) -> dict[str, Any]:
    """A preset file's mapping (``{}`` for an empty file), read with YAML 1.2 numbers."""
    import yaml

    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader())
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what.lower()} is a mapping with common: and notebooks: "
                          f"mappings, got {type(raw).__name__}.")
    return raw


@functools.cache
def _loader() -> type:
    """PyYAML's safe loader, with YAML 1.2's floats: ``6e-7`` and ``1E5`` (no dot) are numbers."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    pattern = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", pattern, list("-+0123456789."))
    return Loader


def preset_text(name_or_path: str | Path) -> str:
    """A preset's file as it is, comments included (what ``mlcwb presets NAME`` prints)."""
    return preset_path(name_or_path).read_text(encoding="utf-8")


__all__ = ["OVERRIDE_KEYS", "PRESET_DIR", "RENAMED_PARAMETERS", "SCHEMA", "Preset", "load_preset", "preset_names",
           "preset_path", "preset_text"]
