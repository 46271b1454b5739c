"""The training configuration: one dataclass, loadable from YAML, validated with clear errors.

A YAML file mirrors the dataclass (``mlc:`` and ``lora:`` are nested mappings; ``mlc: null`` trains
alignment only). Unknown keys are errors that suggest the closest known key, because a typo in
``aux_evry`` that silently keeps the default would waste a GPU day.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mlcwb.errors import ConfigError, LanguageError
from mlcwb.io import read_yaml
from mlcwb.languages import PAPER_LANGUAGES, get_language
from mlcwb.mlc import MLCConfig
from mlcwb.preference import PREF_LOSSES
from mlcwb.tracking import trackers

ALIGNS = ("sft", "dpo", "none")
SCHEDULES = ("joint", "sequential")
PRECISIONS = ("auto", "no", "bf16", "fp16")
BENIGN_REJECTED = ("refusal", "skip")
REFUSAL = "I'm sorry, but I can't help with that."


@dataclass
class LoraSettings:
    """peft LoRA on every linear layer by default; for models too large to fine-tune fully."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainConfig:
    """Everything one training run needs; defaults follow the paper where it says.

    ``data`` is ``"corpus"`` (the project's corpus) or a path to a PromptSet JSONL.
    ``align_languages``: languages of the alignment data (the paper aligns in English only).
    ``mlc_languages``: languages of the MLC prompts (the first is the anchor, English in the paper).
    ``train_prompts``: how many prompts of the split to train on (None: all).
    ``benign_rejected``: for DPO, benign prompts have no unsafe answer; ``refusal`` uses a refusal
    as their *rejected* answer (teaching the model not to over-refuse), ``skip`` drops them.
    ``schedule``: ``joint`` (align + MLC in one pass, the paper's "single update") or
    ``sequential`` (an alignment pass, then an MLC-only pass: "2-step").
    ``pref_loss``: the preference loss of ``align: dpo``, as the official DPO trainer's loss type:
    ``sigmoid`` (DPO), ``ipo``, ``hinge``, ``orpo`` and ``simpo`` (these two need no reference
    model; SimPO wants a far larger ``beta``, 2-10 in its paper). See ``mlcwb.preference``.
    ``simpo_gamma``: SimPO's target reward margin γ, in reward units (trl's convention; SimPO's
    own code sets gamma_beta_ratio = γ/β, its default 0.25 x β 2.0 = 0.5).
    ``orpo_lambda``: ORPO's λ, the weight of the odds-ratio term beside the SFT loss.
    ``keep_phase_end``: with ``schedule: sequential``, save the model as the alignment phase
    leaves it in ``OUTPUT/phase-align/``: that phase is, step for step, the same run as alignment
    alone, so the experiment takes its English-only arm from it instead of training it twice.
    ``report_to``: experiment tracking, as trl's and accelerate's ``report_to``: ``none``, ``all``
    (every installed one) or any of tensorboard, wandb, mlflow (a list for several); each log.jsonl
    row goes to them, TensorBoard's files to OUTPUT/tracking/. See ``mlcwb.tracking``.
    """

    model: str = "smollm2-135m-instruct"
    data: str = "corpus"
    split: str | list[str] = "train"
    mlc_languages: list[str] = field(default_factory=lambda: list(PAPER_LANGUAGES))
    align_languages: list[str] = field(default_factory=lambda: ["en"])
    train_prompts: int | None = None
    align: str = "dpo"
    beta: float = 0.1
    pref_loss: str = "sigmoid"
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    benign_rejected: str = "refusal"
    mlc: MLCConfig | None = field(default_factory=MLCConfig)
    schedule: str = "joint"
    epochs: int = 3
    sequential_mlc_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 2
    lr: float = 6e-7
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    max_length: int = 1024
    chat_template: bool = True
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    lora: LoraSettings | None = None
    output_dir: str = "runs/train"
    save_every: int = 0  # steps; 0 = only the final checkpoint
    keep_checkpoints: int = 2
    keep_phase_end: bool = False
    resume: bool = True
    report_to: str | list[str] = "none"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Build and validate a config from a mapping such as parsed YAML.

        Every value is converted to its field's declared type first, because YAML 1.1 reads
        ``6e-7`` as a string and ``no`` as ``False``: a wrong type must be a ConfigError naming
        the key, never a TypeError from deep inside ``validate`` or training.
        """
        if not isinstance(raw, dict):
            raise ConfigError(f"A training config is a mapping of keys to values, got {type(raw).__name__}")
        return cls(**_coerce_fields(raw, cls, "")).validate()
    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        raw = read_yaml(path, "Training config")
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied, converted and checked like ``from_dict`` values."""
        return dataclasses.replace(self, **_coerce_fields(changes, type(self), "")).validate()

    @property
    def uses_mlc(self) -> bool:
        return self.mlc is not None and self.mlc.lam > 0

    def validate(self) -> TrainConfig:
        """Checks that need no data; sizes against the data are checked when it is loaded."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "max_length": self.max_length, "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        checks = [
            (self.align in ALIGNS, f"align {self.align!r}: use one of {ALIGNS}"),
            (self.schedule in SCHEDULES, f"schedule {self.schedule!r}: use one of {SCHEDULES}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r}: use one of {PRECISIONS}"),
            (self.benign_rejected in BENIGN_REJECTED,
             f"benign_rejected {self.benign_rejected!r}: use one of {BENIGN_REJECTED}"),
            (self.lr >= 0 and self.weight_decay >= 0, "lr and weight_decay must be >= 0"),
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (self.pref_loss in PREF_LOSSES, f"pref_loss {self.pref_loss!r}: use one of {PREF_LOSSES}"),
            (self.pref_loss == "sigmoid" or self.align == "dpo",
             f"pref_loss {self.pref_loss!r} is a preference loss: it needs align: dpo, got "
             f"align: {self.align}"),
            (self.simpo_gamma >= 0 and self.orpo_lambda >= 0, "simpo_gamma and orpo_lambda must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.train_prompts is None or self.train_prompts >= 1,
             f"train_prompts must be >= 1, got {self.train_prompts}"),
            (self.save_every >= 0 and self.warmup_steps >= 0, "save_every and warmup_steps must be >= 0"),
            (self.max_grad_norm is None or self.max_grad_norm >= 0,
             f"max_grad_norm must be >= 0 (0 or null: no clipping), got {self.max_grad_norm}; a "
             f"negative norm would flip every gradient"),
            (self.sequential_mlc_epochs >= 1, "sequential_mlc_epochs must be >= 1"),
            (len(set(self.mlc_languages)) == len(self.mlc_languages),
             f"mlc_languages has duplicates: {self.mlc_languages}"),
            (bool(self.align_languages) or self.align == "none", "align_languages is empty"),
            (self.align != "none" or self.uses_mlc, "align: none needs an MLC term (mlc.lam > 0)"),
            (self.schedule == "joint" or (self.uses_mlc and self.align != "none"),
             "schedule: sequential needs both an alignment loss and an MLC term"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.mlc is not None:
            self.mlc.validate()
            if self.uses_mlc and len(self.mlc_languages) < 2:
                raise ConfigError(f"MLC compares languages: mlc_languages needs at least 2, got "
                                  f"{self.mlc_languages}")
        if self.lora is not None and self.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.lora.r}")
        self._check_languages()
        trackers(self.report_to)
        return self

    def _check_languages(self) -> None:
        """Every language code is a known one, written canonically: a typo (``xx``) or an alias
        (``zh-CN``) here would otherwise surface only once the data is loaded, as "missing"."""
        named = [(f"mlc_languages[{i}]", code) for i, code in enumerate(self.mlc_languages)]
        named += [(f"align_languages[{i}]", code) for i, code in enumerate(self.align_languages)]
        if self.mlc is not None and self.mlc.lang_weights:
            named += [(f"mlc.lang_weights[{code!r}]", code) for code in self.mlc.lang_weights]
        for key, code in named:
            try:
                canonical = get_language(code).code
            except LanguageError as exc:
                raise LanguageError(f"{key}: {exc}") from None
            if canonical != code:
                raise LanguageError(f"{key}: write language {code!r} as {canonical!r}")


# Keys that were renamed so that a setting has one name from preset to result JSON; a config
# written with the old name gets the new one in the error instead of a guess.
RENAMED = {"langs": "mlc_languages", "align_langs": "align_languages", "max_prompts": "train_prompts",
           "encoder_pooling": "mlc.encoder_pooling"}


def _check_keys(values: dict[str, Any], cls: type, prefix: str) -> None:
    known = [f.name for f in fields(cls)]
    for key in values:
        if key in RENAMED and not prefix:
            raise ConfigError(f"Config key {key!r} is now called {RENAMED[key]!r} (the name the notebooks "
                              f"and the training summary use); rename it.")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {prefix}{close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown config key {prefix}{key!r}.{hint} Known keys: "
                              f"{', '.join(prefix + k for k in known)}")


# ------------------------------------------------------------------ type conversion

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


def _coerce_fields(values: dict[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    """``values`` with unknown keys rejected and each value converted to ``cls``'s field type."""
    _check_keys(values, cls, prefix)
    hints = typing.get_type_hints(cls)
    return {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in values.items()}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint``, or a ConfigError "key: value is not a <type>"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, hint, key)
    if dataclasses.is_dataclass(hint):
        return _coerce_dataclass(value, hint, key)
    if origin is list:
        return _coerce_list(value, args[0] if args else Any, hint, key)
    if origin is dict:
        return _coerce_dict(value, args or (Any, Any), hint, key)
    scalar = _SCALARS.get(hint)
    if scalar is None:
        raise TypeError(f"{key}: no conversion to {hint!r}")  # a field type this module lacks
    return scalar(value, key)


def _coerce_union(value: Any, args: tuple[Any, ...], hint: Any, key: str) -> Any:
    """``None`` for an optional field, else the member type ``value`` already has (whose own
    errors, such as an unknown ``mlc.`` key, are the useful ones), else the first member that can
    convert it (so ``"3"`` for ``int | None`` becomes 3)."""
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    if len(members) == 1:
        return _coerce(value, members[0], key)
    for member in members:
        if _is_exact(value, member):
            return _coerce(value, member, key)
    for member in members:
        try:
            return _coerce(value, member, key)
        except ConfigError:
            continue
    _fail(value, hint, key)


def _is_exact(value: Any, hint: Any) -> bool:
    """Whether ``value`` already has the shape of ``hint`` (without converting anything)."""
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, float)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(origin, type) and isinstance(value, origin)


def _coerce_dataclass(value: Any, cls: type, key: str) -> Any:
    """A nested section (``mlc:``, ``lora:``) given as a mapping or as the dataclass itself."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        _fail(value, cls, key)
    return cls(**_coerce_fields(value, cls, f"{key}."))


def _coerce_list(value: Any, item: Any, hint: Any, key: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        _fail(value, hint, key)
    return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _coerce_dict(value: Any, args: tuple[Any, ...], hint: Any, key: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        _fail(value, hint, key)
    key_type, value_type = args
    return {_coerce(k, key_type, f"{key} key"): _coerce(v, value_type, f"{key}[{k!r}]")
            for k, v in value.items()}


def _to_int(value: Any, key: str) -> int:
    """An int, a whole float (2.0) or a string of one ("3", "1e3"); bools are not numbers here."""
    if isinstance(value, bool):
        _fail(value, int, key)
    if isinstance(value, int):
        return value
    number = value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            number = _parse_float(value)
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    _fail(value, int, key)


def _to_float(value: Any, key: str) -> float:
    """A finite int, float or numeric string ("2e-5", which YAML 1.1 leaves a string)."""
    if isinstance(value, bool):
        _fail(value, float, key)
    number = _parse_float(value) if isinstance(value, str) else value
    if not isinstance(number, (int, float)):
        _fail(value, float, key)
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return float(number)


def _parse_float(text: str) -> float | None:
    try:
        return float(text.strip().replace("_", ""))
    except ValueError:
        return None


def _to_bool(value: Any, key: str) -> bool:
    """A bool or a quoted ``"true"``/``"false"`` (also yes/no/on/off); never a number."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    _fail(value, bool, key)


def _to_str(value: Any, key: str) -> str:
    """Strings only: a number or bool here is almost always YAML reading a bare word (``no``,
    the Norwegian code, becomes ``False``), so the message says to quote it. Paths are text."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    _fail(value, str, key)


_SCALARS = {int: _to_int, float: _to_float, bool: _to_bool, str: _to_str}


def _type_name(hint: Any) -> str:
    """``hint`` in words for messages: ``int``, ``str or list of str``, ``float or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(hint):
        return f"mapping of {hint.__name__} keys"
    return getattr(hint, "__name__", str(hint))


def _fail(value: Any, hint: Any, key: str) -> typing.NoReturn:
    name = _type_name(hint)
    article = "an" if name[0] in "aeiou" else "a"
    raise ConfigError(f"{key}: {value!r} is not {article} {name}{_quote_hint(value, hint)}")


def _quote_hint(value: Any, hint: Any) -> str:
    """Text fields given a bool or number are almost always YAML reading a bare word: ``no`` (the
    Norwegian code) becomes ``False``; say so, since the file shows no sign of it."""
    if str not in _flatten(hint):
        return ""
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off as booleans: quote the value, e.g. 'no')"
    if isinstance(value, (int, float)):
        return " (quote the value if it is meant as text)"
    return ""


def _flatten(hint: Any) -> set[Any]:
    """Every scalar type mentioned in ``hint``."""
    args = typing.get_args(hint)
    return set().union(*(_flatten(a) for a in args)) if args else {hint}


__all__ = ["ALIGNS", "LoraSettings", "PREF_LOSSES", "REFUSAL", "RENAMED",
           "SCHEDULES", "TrainConfig"]
