"""The training configuration: one dataclass, loadable from YAML, validated with clear errors.

A YAML file mirrors the dataclass (``mlc:`` and ``lora:`` are nested mappings; ``mlc: null`` trains
alignment only). Unknown keys are errors that suggest the closest known key, because a typo in
``aux_evry`` that silently keeps the default would waste a GPU day.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mlcwb.errors import ConfigError
from mlcwb.mlc import MLCConfig

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
    ``align_langs``: languages of the alignment data (the paper aligns in English only).
    ``langs``: languages of the MLC prompts (the first is the anchor, English in the paper).
    ``benign_rejected``: for DPO, benign prompts have no unsafe answer; ``refusal`` uses a refusal
    as their *rejected* answer (teaching the model not to over-refuse), ``skip`` drops them.
    ``schedule``: ``joint`` (align + MLC in one pass, the paper's "single update") or
    ``sequential`` (an alignment pass, then an MLC-only pass: "2-step").
    """

    model: str = "smollm2-135m-instruct"
    data: str = "corpus"
    split: str | list[str] = "train"
    langs: list[str] = field(default_factory=lambda: ["en", "zh", "ru", "ja", "ar", "bn", "sw",
                                                      "ur", "ps", "ku"])
    align_langs: list[str] = field(default_factory=lambda: ["en"])
    max_prompts: int | None = None
    align: str = "dpo"
    beta: float = 0.1
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
    resume: bool = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"A training config is a mapping of keys to values, got {type(raw).__name__}")
        values = dict(raw)
        _check_keys(values, cls, "")
        if isinstance(values.get("mlc"), dict):
            _check_keys(values["mlc"], MLCConfig, "mlc.")
            values["mlc"] = MLCConfig(**values["mlc"])
        if isinstance(values.get("lora"), dict):
            _check_keys(values["lora"], LoraSettings, "lora.")
            values["lora"] = LoraSettings(**values["lora"])
        return cls(**values).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Training config {path} does not exist.")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validate()

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
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.max_prompts is None or self.max_prompts >= 1,
             f"max_prompts must be >= 1, got {self.max_prompts}"),
            (self.save_every >= 0 and self.warmup_steps >= 0, "save_every and warmup_steps must be >= 0"),
            (self.sequential_mlc_epochs >= 1, "sequential_mlc_epochs must be >= 1"),
            (len(set(self.langs)) == len(self.langs), f"langs has duplicates: {self.langs}"),
            (bool(self.align_langs) or self.align == "none", "align_langs is empty"),
            (self.align != "none" or self.uses_mlc, "align: none needs an MLC term (mlc.lam > 0)"),
            (self.schedule == "joint" or (self.uses_mlc and self.align != "none"),
             "schedule: sequential needs both an alignment loss and an MLC term"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.mlc is not None:
            self.mlc.validate()
            if self.uses_mlc and len(self.langs) < 2:
                raise ConfigError(f"MLC compares languages: langs needs at least 2, got {self.langs}")
        if self.lora is not None and self.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.lora.r}")
        return self


def _check_keys(values: dict[str, Any], cls: type, prefix: str) -> None:
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {prefix}{close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown config key {prefix}{key!r}.{hint} Known keys: "
                              f"{', '.join(prefix + k for k in known)}")


__all__ = ["ALIGNS", "LoraSettings", "REFUSAL", "SCHEDULES", "TrainConfig"]
