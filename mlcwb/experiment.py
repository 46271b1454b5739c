"""The experiment the workbench exists for: arms trained from one seed on one data set.

Every arm starts from the same model with the same seed, prompts and order; only the objective
differs, so their differences are the objectives' doing:

* ``align``: English-only alignment (SFT or DPO), no MLC: the paper's baseline;
* ``mlc``: the same alignment + λ·MLC in one pass (the paper's "joint");
* ``mlc_seq``: the alignment pass, then an MLC-only pass (the paper's "sequential");
* ``mlc_only``: MLC alone, no alignment data: does consistency by itself carry the safety the
  model already shows in English into the other languages? It is also where collapse shows first
  (``mlcwb.collapse``).

With both ``align`` and ``mlc_seq``, the English-only arm is not trained on its own: the sequential
arm's alignment phase is the same run step for step (same seed, data order, optimizer; nothing in
it reads the MLC settings), so the model it leaves is taken as the ``align`` arm
(``derived_from``), and the experiment trains one alignment pass instead of two (tested: the
weights are equal to those of alignment trained alone).

An arm's run directory is ``OUTPUT/<arm>``. Rerunning resumes an interrupted arm from its last
checkpoint, reuses a finished one, and starts over where the configuration changed, so a notebook
stage that dies mid-training costs only the steps since the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mlcwb.defaults import ARMS
from mlcwb.errors import ConfigError
from mlcwb.io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from mlcwb.mlc import MLCConfig
from mlcwb.train_config import TrainConfig

if TYPE_CHECKING:
    from mlcwb.data import PromptSet

log = logging.getLogger(__name__)

_IGNORED = {"resume", "output_dir", "report_to", "keep_phase_end"}  # may differ between a run and its rerun


@dataclass
class ArmResult:
    """Where an arm's final checkpoint is, and its training log (the model is not kept: arms of a
    0.5B model would not fit in memory together)."""

    name: str
    final_dir: Path
    steps: int
    log: list[dict]
    reused: bool = False
    resumed_from: int = 0  # the step an interrupted run was resumed from (0: none)
    derived_from: str | None = None  # the arm whose alignment phase this arm is (see the module doc)


def arm_configs(base: TrainConfig, mlc: MLCConfig, arms: Sequence[str],
                mlc_only_lr: float | None = None) -> dict[str, TrainConfig]:
    """One TrainConfig per arm, derived from ``base`` (alignment settings, MLC languages in
    ``base.mlc_languages``) and ``mlc``. The MLC-only arm adds its term every step (there is no alignment
    step to interleave with) and may take its own learning rate."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ConfigError(f"Unknown arms {unknown}; choose from {list(ARMS)}.")
    if base.align == "none" and set(arms) - {"mlc_only"}:
        raise ConfigError("base.align is 'none': only the mlc_only arm can be trained without "
                          "an alignment loss.")
    with_mlc = sorted(set(arms) - {"align"})
    if mlc.lam <= 0 and with_mlc:
        raise ConfigError(f"mlc.lam is {mlc.lam}: the arms {with_mlc} "
                          f"would train without the MLC term and pass for MLC arms. Set lam > 0, or "
                          f"train only the 'align' arm.")
    root = Path(base.output_dir)
    # the sequential arm keeps its alignment phase's end when the English-only arm can be it
    keep = "align" in arms and base.lora is None and base.max_steps is None
    derived = {
        "align": lambda: base.replace(mlc=None, schedule="joint"),
        "mlc": lambda: base.replace(mlc=mlc, schedule="joint"),
        "mlc_seq": lambda: base.replace(mlc=mlc, schedule="sequential", keep_phase_end=keep),
        "mlc_only": lambda: base.replace(
            mlc=dataclasses.replace(mlc, aux_every=1), align="none", pref_loss="sigmoid", schedule="joint",
            lr=base.lr if mlc_only_lr is None else mlc_only_lr),
    }
    return {arm: derived[arm]().replace(output_dir=str(root / arm)) for arm in arms}


def _saved_config(output_dir: Path) -> dict | None:
    path = output_dir / "config.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _same_run(saved: dict, config: TrainConfig) -> bool:
    now = config.to_dict()
    return {k: v for k, v in saved.items() if k not in _IGNORED} == \
        {k: v for k, v in now.items() if k not in _IGNORED}


def train_arm(name: str, config: TrainConfig, prompts: PromptSet | None = None) -> ArmResult:
    """Train one arm, resuming or reusing what an earlier run of the same configuration left.

    A finished arm keeps ``final/`` only: its step checkpoints were resume points, and with the
    optimizer's state a 0.5B model's step checkpoint takes 7.5 GB (four arms with two each would
    fill a 64 GB disk).
    """
    from mlcwb.train import train

    out = Path(config.output_dir)
    saved = _saved_config(out)
    if saved is not None and not _same_run(saved, config):
        log.info("%s: the configuration changed since %s was written; starting over", name, out)
        shutil.rmtree(out)
        saved = None
    if saved is not None and (out / "summary.json").is_file() and (out / "final" / "config.json").is_file():
        rows = read_jsonl(out / "log.jsonl", skip_partial_last=True) if (out / "log.jsonl").is_file() else []
        log.info("%s: finished earlier in %s; reusing it", name, out)
        return ArmResult(name, out / "final", max((r["step"] for r in rows), default=0), rows, True)
    result = train(config.replace(resume=True), prompts=prompts)
    shutil.rmtree(out / "steps", ignore_errors=True)
    return ArmResult(name, result.final_dir, result.steps, result.log,
                     resumed_from=result.resumed_from)


# What shaped an arm, as the training summary and the report name it.
_ARM_KEYS = ("align", "pref_loss", "lr", "epochs", "batch_size", "train_prompts", "seed", "precision",
             "schedule")
_MLC_KEYS = ("lam", "tau", "variant", "centre", "layer", "pooling", "aux_every", "batch_size",
             "extractor", "answer_kl", "answer_kl_tokens")


def arm_settings(configs: dict[str, TrainConfig], results: dict[str, ArmResult] | None = None
                 ) -> dict[str, dict]:
    """Every setting that shaped each arm (λ, τ, variant, centring, layer, pooling, lr, steps,
    prompts, languages, seed, alignment loss, precision, LoRA), for the training summary: a result
    read without its settings cannot be compared with another. ``results`` add the steps run and
    the MLC layer used (the chosen one where ``layer`` is ``auto``)."""
    out = {}
    for arm, config in configs.items():
        row = {key: getattr(config, key) for key in _ARM_KEYS}
        row["mlc_languages"] = list(config.mlc_languages) if config.mlc is not None else []
        row["lora"] = config.lora is not None
        if config.mlc is not None:
            row.update({f"mlc_{key}": getattr(config.mlc, key) for key in _MLC_KEYS})
        if results and arm in results:
            row["steps"] = results[arm].steps
            summary = Path(config.output_dir) / "summary.json"
            if config.mlc is not None and summary.is_file():
                row["mlc_layer"] = json.loads(summary.read_text(encoding="utf-8")).get("mlc_layer", row["mlc_layer"])
        out[arm] = row
    return out


def train_arms(configs: dict[str, TrainConfig], prompts: PromptSet | None = None) -> dict[str, ArmResult]:
    """Every arm (see ``train_arm``), in ``configs``' order, except that the English-only arm is
    taken from the sequential arm's alignment phase where it can be (module doc), so that arm
    trains first; the trained models are freed between arms."""
    import gc

    derive = "align" in configs and configs.get("mlc_seq") is not None and configs["mlc_seq"].keep_phase_end
    order = sorted(configs, key=lambda arm: arm == "align") if derive else list(configs)
    results = {}
    for name in order:
        derived = align_from_phase(configs["align"], configs["mlc_seq"]) if name == "align" and derive else None
        results[name] = derived or train_arm(name, configs[name], prompts)
        gc.collect()
    return {name: results[name] for name in configs}


def align_from_phase(config: TrainConfig, sequential: TrainConfig) -> ArmResult | None:
    """The English-only arm from the sequential arm's alignment phase (``train.PHASE_END``): its
    model as ``final/``, that phase's log rows, and a summary saying where it came from. Reused
    like a trained arm when an earlier run of the same configuration left it; None when neither
    is there (a sequential arm finished before it kept its phase end: train ``align`` itself)."""
    from mlcwb.train import PHASE_END

    out, source = Path(config.output_dir), Path(sequential.output_dir)
    saved = _saved_config(out)
    if saved is not None and _same_run(saved, config) and (out / "summary.json").is_file() \
            and (out / "final" / "config.json").is_file():
        shutil.rmtree(source / PHASE_END, ignore_errors=True)
        rows = read_jsonl(out / "log.jsonl") if (out / "log.jsonl").is_file() else []
        origin = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("derived_from")
        log.info("align: finished earlier in %s; reusing it", out)
        return ArmResult("align", out / "final", len(rows), rows, True, derived_from=origin)
    if not (source / PHASE_END / "config.json").is_file():
        return None
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = [{**row, "phase": "joint"} for row in read_jsonl(source / "log.jsonl", skip_partial_last=True)
            if row["phase"] == "align"]
    write_jsonl(out / "log.jsonl", rows)
    atomic_write_json(out / "summary.json", {"steps": len(rows), "resumed_from": 0,
                                             "derived_from": "mlc_seq", "final_dir": str(out / "final"),
                                             "last": rows[-1] if rows else None})
    os.replace(source / PHASE_END, out / "final")
    atomic_write_text(out / "config.yaml", config.to_yaml())  # last: it marks the arm finished
    log.info("align: taken from the alignment phase of %s (%d steps)", source, len(rows))
    return ArmResult("align", out / "final", len(rows), rows, derived_from="mlc_seq")


__all__ = ["ARMS", "ArmResult", "align_from_phase", "arm_configs", "arm_settings", "train_arm", "train_arms"]
