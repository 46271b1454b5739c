"""What notebooks 04 and 05 leave in ``metrics/``: the training and safety summaries.

``save_training_summary`` (notebook 04) writes ``metrics/04_mlc_training.json``, which notebook 05
and the report read, and ``save_safety_summary`` (notebook 05) ``metrics/05_safety.json`` plus
``metrics.csv`` and ``safety_table.md``; the report (``mlcwb.run_report``) finds them at
``TRAINING_JSON`` and ``SAFETY_JSON``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mlcwb.errors import DataError
from mlcwb.io import atomic_write_json, atomic_write_text
from mlcwb.languages import unseen_languages
from mlcwb.metrics import paired_comparison
from mlcwb.tables import (SAFETY_MD, detectable_differences, measured_metrics, safety_markdown,
                          write_metrics_csv)

TRAINING_JSON = Path("metrics") / "04_mlc_training.json"
SAFETY_JSON = Path("metrics") / "05_safety.json"


def _rounded(frame: pd.DataFrame | None) -> dict[str, Any] | None:
    return None if frame is None else frame.round(4).to_dict(orient="index")


def training_summary(collinearity: pd.DataFrame, languages: Sequence[str], mlc_pooling: str,
                     heldout_prompts: int, steps: Mapping[str, int], *,
                     mlc_languages: Sequence[str] | None = None, mlc_variant: str = "official",
                     mlc_layer: int | None = None, distinctness: pd.DataFrame | None = None,
                     probe_auroc: pd.DataFrame | None = None,
                     settings: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Notebook 04's result in the form the report and notebook 05 read.

    The held-out MLC objective at the last layer for each model (the ``model`` column of
    ``collinearity``: ``before`` and every arm) and its floor, how it was measured, which
    languages MLC trained on (``unseen``: measured but not trained on), the optimiser steps of
    each arm, and, at ``mlc_layer``, the held-out distinctness and English-probe AUROC
    frames (one row per model). ``settings``: everything that shaped each arm
    (``experiment.arm_settings``), stored under ``settings`` and shown by the report.
    """
    missing = {"model", "layer", "mlc_loss", "floor"} - set(collinearity.columns)
    if missing:
        raise DataError(f"collinearity frame lacks columns {sorted(missing)}; concatenate "
                        f"geometry.collinearity(...) frames with a 'model' column.")
    last_layer = int(collinearity["layer"].max())
    last = collinearity[collinearity["layer"] == last_layer]
    losses = last.groupby("model", sort=False)["mlc_loss"].first()
    mlc_langs = list(mlc_languages or languages)
    return {"floor": float(last["floor"].iloc[0]), "objective_layer": last_layer,
            "mlc_pooling": mlc_pooling, "languages": list(languages), "mlc_languages": mlc_langs,
            "unseen": unseen_languages(languages, mlc_langs), "mlc_variant": mlc_variant,
            "mlc_layer": last_layer if mlc_layer is None else int(mlc_layer), "arms": list(steps),
            "steps": {k: int(v) for k, v in steps.items()}, "heldout_prompts": int(heldout_prompts),
            **{str(m): float(v) for m, v in losses.items()},
            "distinctness": _rounded(distinctness), "probe_auroc": _rounded(probe_auroc),
            **({"settings": {arm: dict(row) for arm, row in settings.items()}} if settings else {})}


def save_training_summary(run: str | Path, collinearity: pd.DataFrame, languages: Sequence[str],
                          mlc_pooling: str, heldout_prompts: int, steps: Mapping[str, int],
                          **measured: Any) -> Path:
    """Write ``training_summary`` (``measured``: its keyword arguments) to
    ``run/metrics/04_mlc_training.json``; returns the path."""
    return atomic_write_json(Path(run) / TRAINING_JSON, training_summary(
        collinearity, languages, mlc_pooling, heldout_prompts, steps, **measured))


def _records(frame: pd.DataFrame) -> dict[str, Any]:
    """A frame as ``{index: {column: value}}`` with NaN as null (JSON has no NaN)."""
    return json.loads(frame.to_json(orient="index"))


def paired_comparisons(judged: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """Every before/after comparison of notebook 05 and the report: raw -> each trained method
    and English-only alignment -> each MLC method, each ``metrics.paired_comparison`` on harmful
    and on benign prompts, as ``{"raw->mlc": {"harmful": frame, "benign": frame}, ...}``.

    Computed once: the notebook shows these frames and hands them to ``save_safety_summary``,
    so what it shows and what the report reads are one result, not two that could drift apart.
    """
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for base in ("raw", "align"):
        if base not in judged:
            continue
        for name in [m for m in judged if m not in ("raw", base)]:
            out[f"{base}->{name}"] = {
                ("harmful" if harmful else "benign"): paired_comparison(
                    judged[base], judged[name], harmful=harmful)
                for harmful in (True, False)}
    return out


def safety_summary(metrics: Mapping[str, pd.DataFrame], judged: Mapping[str, pd.DataFrame],
                   languages: Sequence[str], utility: Mapping[str, Mapping[str, float]] | None = None,
                   *, unseen: Sequence[str] = (), openings: pd.DataFrame | None = None,
                   multijail: Mapping[str, pd.DataFrame] | None = None,
                   paired: Mapping[str, Mapping[str, pd.DataFrame]] | None = None) -> dict[str, Any]:
    """Notebook 05's result in the form the report reads: ``language_metrics`` per method,
    the paired comparisons, utility, the judge, the sizes (from the judged rows) and the
    smallest differences those sizes detect (``detectable_differences``).

    ``metrics`` and ``judged`` map a method name (``raw``, ``align``, ``mlc``, ...) to its
    ``metrics.language_metrics`` frame and its ``judges.apply_judge`` rows; ``unseen`` are the
    languages MLC did not train on (``languages.unseen_languages``), ``openings`` the
    ``collapse.opening_diversity`` frame per method, ``multijail`` the MultiJail
    ``language_metrics`` per method, ``paired`` the ``paired_comparisons`` of ``judged`` where
    the caller already has them (computed here otherwise).
    """
    if not metrics or not judged:
        raise DataError("safety_summary needs the metrics and judged rows of at least one method.")
    first = next(iter(judged.values()))
    harmful = first.drop_duplicates("id")["harmful"].astype(bool)
    n_harmful, n_benign = int(harmful.sum()), int((~harmful).sum())
    settings = first["settings"].iloc[0] if "settings" in first else None
    judge = {key: str(first[col].iloc[0]) if col in first else None
             for key, col in (("name", "judge"), ("version", "judge_version"))}
    if paired is None:
        paired = paired_comparisons(judged)
    return {"languages": list(languages), "captions": measured_metrics(metrics),
            "methods": {name: _records(frame) for name, frame in metrics.items()},
            "paired": {pair: {kind: _records(frame) for kind, frame in kinds.items()}
                       for pair, kinds in paired.items()},
            "utility": {m: {lang: float(v) for lang, v in per_lang.items()}
                        for m, per_lang in (utility or {}).items()}, "judge": judge,
            "unseen": list(unseen),
            "openings": [] if openings is None else
            json.loads(openings.reset_index().to_json(orient="records")),
            "multijail": {name: _records(frame) for name, frame in (multijail or {}).items()},
            "n_harmful": n_harmful, "n_benign": n_benign,
            "detectable_difference": detectable_differences(n_harmful, n_benign),
            "max_new_tokens": (settings or {}).get("max_new_tokens")}


def save_safety_summary(run: str | Path, metrics: Mapping[str, pd.DataFrame],
                        judged: Mapping[str, pd.DataFrame], languages: Sequence[str],
                        utility: Mapping[str, Mapping[str, float]] | None = None,
                        **extra: Any) -> list[Path]:
    """Write ``safety_summary`` (``extra``: its keyword-only arguments) to
    ``run/metrics/05_safety.json``, the same numbers in long form to ``run/metrics.csv`` and
    as tables to ``run/safety_table.md`` (``tables.safety_markdown``, from the frames themselves
    rather than their JSON form, whose floats are rounded); returns the three paths.
    """
    summary = safety_summary(metrics, judged, languages, utility, **extra)
    return [atomic_write_json(Path(run) / SAFETY_JSON, summary),
            write_metrics_csv(run, summary["methods"]),
            atomic_write_text(Path(run) / SAFETY_MD, safety_markdown(metrics, languages, utility))]
