"""Notebook 05's steps: the test prompts, the models to compare, and one evaluation per model.

Every method (the raw model and each arm notebook 04 trained) answers the same prompts with the
same settings and is judged by the same judge, so the per-language metrics differ only by the
model. Responses are appended to ``<out_dir>/<prefix><method>.jsonl`` as they come, so an
interrupted comparison resumes where it stopped (``mlcwb.generation.generate``).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlcwb.data import PromptSet
from mlcwb.defaults import ARMS
from mlcwb.generation import generate, judged_csv_path, save_judged
from mlcwb.judges import Judge, apply_judge
from mlcwb.logprobs import utility
from mlcwb.metrics import language_metrics
from mlcwb.models import load_model


def comparison_prompts(corpus: PromptSet, langs: Sequence[str], n_harmful: int, n_benign: int) -> PromptSet:
    """The first ``n_harmful`` harmful and ``n_benign`` benign prompts of the test split, in
    ``langs``: the same prompts for every method, so paired tests can compare them."""
    test = corpus.select(langs=langs, split="test")
    ids = test.select(harmful=True).ids[:n_harmful] + test.select(harmful=False).ids[:n_benign]
    return test.select(ids=ids)


def trained_methods(run: Path, raw_model: str) -> dict[str, str]:
    """``{"raw": raw_model, arm: checkpoint dir, ...}`` for every arm with a final checkpoint under
    ``run/checkpoints/`` (what notebook 04 leaves), in the experiment's arm order."""
    methods = {"raw": raw_model}
    for arm in ARMS:
        final = run / "checkpoints" / arm / "final"
        if (final / "config.json").is_file():
            methods[arm] = str(final)
    return methods


@dataclass
class Comparison:
    """What each method did: judged rows, per-language metrics and utility (perplexity); the
    same for every further prompt set under ``extra[set name]``."""

    judged: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[str, pd.DataFrame] = field(default_factory=dict)
    utility: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> lang -> perplexity
    extra: dict[str, "Comparison"] = field(default_factory=dict)


def _answer_and_judge(model: Any, tokenizer: Any, name: str, prompts: PromptSet, langs: Sequence[str],
                      judge: Judge, responses: Path, into: Comparison, *, max_new_tokens: int,
                      batch_size: int, n_boot: int) -> None:
    frame = generate(model, tokenizer, prompts, langs, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, out_path=responses)
    into.judged[name] = apply_judge(frame, judge)
    save_judged(into.judged[name], judged_csv_path(responses, judge.name))
    into.metrics[name] = language_metrics(into.judged[name], n_boot=n_boot)


def evaluate_methods(methods: Mapping[str, str], prompts: PromptSet, langs: Sequence[str], judge: Judge,
                     out_dir: Path, *, max_new_tokens: int, batch_size: int, n_boot: int,
                     utility_set: PromptSet | None = None,
                     utility_answers: Mapping[str, Mapping[str, str]] | None = None,
                     utility_limit: int | None = None,
                     extra_sets: Mapping[str, tuple[PromptSet, Sequence[str]]] | None = None,
                     device: str = "auto", dtype: str | None = None, prefix: str = "") -> Comparison:
    """Generate, judge and measure every method in turn, one model in memory at a time, loaded
    once for every prompt set.

    Judged rows go beside the responses as ``<prefix><method>.<judge>.csv``; ``extra_sets``
    (``{name: (prompts, langs)}``, e.g. MultiJail) are answered by the same loaded model into
    ``<name>_<method>.jsonl`` and reported under ``result.extra[name]``. Utility is measured on
    ``utility_set``'s benign prompts when one is given, per language of ``utility_answers``
    (``{lang: {prompt id: answer}}``; default: the English ``response`` only), and cached beside
    the responses (``<prefix><method>.utility.json``), so a rerun of an unchanged model skips it.
    ``dtype`` (e.g. ``"bfloat16"``) sets the precision of evaluation; it enters the responses'
    resume key, so answers of two precisions never mix.
    """
    result = Comparison()
    extra_sets = extra_sets or {}
    result.extra = {set_name: Comparison() for set_name in extra_sets}
    settings = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, n_boot=n_boot)
    for name, source in methods.items():
        model, tokenizer = load_model(source, device=device, dtype=dtype)
        _answer_and_judge(model, tokenizer, name, prompts, langs, judge,
                          out_dir / f"{prefix}{name}.jsonl", result, **settings)
        for set_name, (extra_prompts, extra_langs) in extra_sets.items():
            _answer_and_judge(model, tokenizer, name, extra_prompts, extra_langs, judge,
                              out_dir / f"{set_name}_{name}.jsonl", result.extra[set_name], **settings)
        if utility_set is not None:
            result.utility[name] = utility(model, tokenizer, utility_set, utility_answers,
                                           limit=utility_limit,
                                           cache=out_dir / f"{prefix}{name}.utility.json")
        del model
        gc.collect()
    return result


__all__ = ["Comparison", "comparison_prompts", "evaluate_methods", "trained_methods"]
