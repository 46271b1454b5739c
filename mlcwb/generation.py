"""Generate responses to prompt sets, batched and resumable, as JSONL rows in a run directory.

Safety is measured on what a model *says*, so every evaluation starts here. Generation is
batched (left padding, KV cache, a max-new-tokens bound, stop on end-of-turn) because one prompt
at a time is several times slower on a CPU; greedy batched output is checked against one-at-a-time
output in the tests, so batching changes the speed and never the answers. Each finished response
is appended to a JSONL file at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mlcwb.errors import ConfigError, DataError, EvaluationError
from mlcwb.io import append_jsonl, atomic_path, read_jsonl, write_jsonl
from mlcwb.models import model_fingerprint
from mlcwb.prefix import (SharedPrefix, cache_kwargs, compute_prefix, expand_cache, pack_after_prefix,
                          prompt_rows)
from mlcwb.refusal_score import FirstStepLogits, score_rows

if TYPE_CHECKING:
    from mlcwb.data import Prompt, PromptSet

Prompts = Union[  # what generate() accepts; plain strings need no PromptSet
    "PromptSet", Sequence["Prompt"], Sequence[str]]

log = logging.getLogger(__name__)

COLUMNS = ["id", "lang", "prompt", "response", "harmful", "borderline", "category", "model",
           "settings", "refusal_score"]


@dataclass(frozen=True)
class Job:
    """One (prompt, language) pair to answer."""

    id: str
    lang: str
    prompt: str
    harmful: bool | None
    borderline: bool
    category: str


def prompt_jobs(prompts: Prompts, langs: Sequence[str] | None) -> list[Job]:
    """Flatten a PromptSet (or a list of Prompt objects, or plain strings) into jobs, language-major.

    Plain strings get ids ``p0000...`` and the single language ``langs[0]`` (default ``"und"``),
    so quick experiments need no PromptSet.
    """
    items = list(getattr(prompts, "prompts", prompts))
    if not items:
        raise DataError("No prompts to generate from; select a non-empty split or language.")
    if all(isinstance(p, str) for p in items):
        if langs is not None and len(langs) != 1:
            raise ConfigError("Plain-string prompts have one language; pass langs=[code] or None.")
        lang = langs[0] if langs else "und"
        return [Job(f"p{i:04d}", lang, text, None, False, "") for i, text in enumerate(items)]
    if langs is None:
        langs = getattr(prompts, "languages", None) or ["en"]
    jobs = []
    for lang in langs:
        for p in items:
            if lang not in p.text:
                raise DataError(f"Prompt {p.id!r} has no {lang!r} text; select languages present "
                                f"in every prompt (PromptSet.languages) or translate first.")
            jobs.append(Job(p.id, lang, p.text[lang], bool(p.harmful),
                            bool(getattr(p, "borderline", False)), getattr(p, "category", "")))
    return jobs


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS, the model's, and ChatML's ``<|im_end|>``."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


def settings_dict(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                  seed: int, chat_template: bool, dtype: str = "float32") -> dict[str, Any]:
    """What decides a response besides the model and the prompt: the resume key's second half.

    Batch size and prefix reuse are not part of it: greedy output depends on neither (tested).
    The precision is, when it is not float32 (a bfloat16 model can answer differently); float32
    adds nothing, so keys written before precision was recorded stay valid.
    """
    s: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample),
                         "chat_template": bool(chat_template)}
    if do_sample:
        s.update(temperature=float(temperature), top_p=float(top_p), seed=int(seed))
    if dtype != "float32":
        s["dtype"] = dtype
    return s


def model_dtype(model: Any) -> str:
    """``"float32"``, ``"bfloat16"``, ...: the precision a model computes in."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def generation_kwargs(model: Any, tokenizer: Any, max_new_tokens: int, do_sample: bool,
                       temperature: float, top_p: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=eos_ids(model, tokenizer))
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


@torch.inference_mode()
def answer_rows(model: Any, tokenizer: Any, rows: Sequence[Sequence[int]], prefix: SharedPrefix,
                langs: Sequence[str] | None = None, max_new_tokens: int = 64, do_sample: bool = False,
                temperature: float = 1.0, top_p: float = 1.0) -> tuple[list[str], np.ndarray]:
    """Answer one batch of tokenized prompts: ``(texts, refusal scores)``.

    Rows are packed as ``[shared prefix][pads][own tokens]`` and the prefix's keys/values are
    handed to ``generate`` as its cache, so only the rows' own tokens are prefilled. ``generate``
    derives position ids from the attention mask, so every row sees the positions it would see
    alone and greedy answers equal those of a plain left-padded batch (tested). With ``langs``,
    each row's refusal log-odds (``mlcwb.refusal_score``) is read off the prefill's logits;
    otherwise the scores are NaN.
    """
    device = next(model.parameters()).device
    ids, mask = pack_after_prefix(rows, prefix.length, tokenizer.pad_token_id, "left")
    kwargs = generation_kwargs(model, tokenizer, max_new_tokens, do_sample, temperature, top_p)
    if prefix.cache is not None:
        kwargs.update(cache_kwargs(model, expand_cache(prefix.cache, len(rows), model.config)))
    with FirstStepLogits(model) as first:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    new = out if model.config.is_encoder_decoder else out[:, ids.shape[1]:]
    texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    scores = np.full(len(rows), np.nan)
    if langs is not None and first.logits is not None:
        scores = score_rows(tokenizer, first.logits, langs)
    return texts, scores


def generate_texts(model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int = 64,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                   chat_template: bool = True, reuse_prefix: bool = True) -> list[str]:
    """Answer one batch of prompts (KV cache, the template's shared prefix run once); returns the
    decoded new text."""
    rows = prompt_rows(tokenizer, texts, chat_template)
    prefix = compute_prefix(model, rows) if reuse_prefix else SharedPrefix()
    return answer_rows(model, tokenizer, rows, prefix, None, max_new_tokens, do_sample,
                       temperature, top_p)[0]


def _done_rows(path: Path, fingerprint: str, settings: dict[str, Any]) -> dict[tuple[str, str], dict]:
    """Rows already in ``path`` for this model and settings; repairs a truncated last line.

    A run killed mid-append leaves a partial line; it is dropped (that response is redone) so the
    next append does not glue a new row onto it.
    """
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    rows = read_jsonl(path, skip_partial_last=True)
    if raw and not raw.endswith(b"\n"):
        log.warning("%s ends with a partial line (interrupted run); dropping it", path)
        write_jsonl(path, rows)
    return {(r["id"], r["lang"]): r for r in rows
            if r.get("model") == fingerprint and r.get("settings") == settings}


def generate(model: Any, tokenizer: Any, prompts: Prompts, langs: Sequence[str] | None = None,
             max_new_tokens: int = 64, batch_size: int = 16, out_path: str | Path | None = None,
             do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
             seed: int = 0, chat_template: bool = True, progress: bool = True,
             reuse_prefix: bool = True) -> pd.DataFrame:
    """Answer every prompt in every language; returns one row per (prompt, language).

    ``prompts`` is a PromptSet, a list of Prompt objects, or a list of strings. With ``out_path``
    each response is appended as soon as its batch finishes and rows already there (same model
    fingerprint and settings) are skipped, so a rerun only does what is missing. Prompts are
    sorted by length across languages, so that every batch is full and wastes little on padding
    (a set of 24 prompts per language still fills batches of 64), and the chat template's shared
    prefix is computed once per call (``reuse_prefix``). Each row carries
    ``refusal_score``, the log-odds that the answer opens with a refusal, read off the first
    generation step (``mlcwb.refusal_score``). Sampling (``do_sample=True``) is seeded per
    batch: reproducible for the same seed, batch size and prompt order.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("max_new_tokens and batch_size must be >= 1.")
    jobs = prompt_jobs(prompts, langs)
    keys = [(j.id, j.lang) for j in jobs]
    if len(set(keys)) != len(keys):
        raise DataError("Duplicate (prompt id, language) pairs; prompt ids must be unique.")
    fingerprint = model_fingerprint(model)
    settings = settings_dict(max_new_tokens, do_sample, temperature, top_p, seed, chat_template,
                             model_dtype(model))
    out = Path(out_path) if out_path else None
    done = _done_rows(out, fingerprint, settings) if out else {}
    todo = [j for j in jobs if (j.id, j.lang) not in done]
    if done:
        log.info("resuming: %d of %d responses already in %s", len(jobs) - len(todo), len(jobs), out)
    rows = dict(zip(todo, prompt_rows(tokenizer, [j.prompt for j in todo], chat_template))) if todo else {}
    todo.sort(key=lambda j: -len(rows[j]))  # stable: equal lengths keep the language-major order
    prefix = compute_prefix(model, list(rows.values())) if reuse_prefix and todo else SharedPrefix()
    results = dict(done)
    bar = tqdm(total=len(todo), desc="generate", disable=not progress or not todo)
    for b, start in enumerate(range(0, len(todo), batch_size)):
        batch = todo[start:start + batch_size]
        if do_sample:
            torch.manual_seed(seed * 1_000_003 + b)
        try:
            texts, scores = answer_rows(model, tokenizer, [rows[j] for j in batch], prefix,
                                        [j.lang for j in batch], max_new_tokens, do_sample,
                                        temperature, top_p)
        except (RuntimeError, ValueError) as exc:
            raise EvaluationError(f"Generation failed on a batch of {len(batch)} prompts "
                                  f"({batch[0].lang}, first id {batch[0].id}): {exc}. Try a smaller "
                                  f"batch_size or max_new_tokens.") from exc
        for job, text, score in zip(batch, texts, scores):
            row = {"id": job.id, "lang": job.lang, "prompt": job.prompt, "response": text,
                   "harmful": job.harmful, "borderline": job.borderline, "category": job.category,
                   "model": fingerprint, "settings": settings,
                   "refusal_score": None if np.isnan(score) else round(float(score), 4)}
            if out:
                append_jsonl(out, row)
            results[(job.id, job.lang)] = row
        bar.update(len(batch))
    bar.close()
    return pd.DataFrame([results[k] for k in keys], columns=COLUMNS)


def load_responses(path: str | Path) -> pd.DataFrame:
    """The rows of a generation file (tolerating a truncated last line)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist; run generate(..., out_path={str(path)!r}).")
    return pd.DataFrame(read_jsonl(path, skip_partial_last=True), columns=COLUMNS)


JUDGED_COLUMNS = [*COLUMNS, "refused", "verdict", "reason", "judge", "judge_version"]


def judged_csv_path(responses_path: str | Path, judge_name: str) -> Path:
    """``<responses stem>.<judge name>.csv`` beside the responses' JSONL.

    One file per judge, so the verdicts of two judges on the same responses sit side by side
    instead of overwriting each other.
    """
    path = Path(responses_path)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", judge_name).strip("_") or "judge"
    return path.with_name(f"{path.stem}.{slug}.csv")


def save_judged(judged: pd.DataFrame, path: str | Path) -> Path:
    """Write ``apply_judge`` output as CSV (atomically), one row per response.

    CSV because the judged rows are what people open in a spreadsheet to check a verdict; each
    row carries the judge's name and version, so a file stays interpretable on its own.
    """
    missing = [c for c in JUDGED_COLUMNS if c not in judged.columns]
    if missing:
        raise DataError(f"Judged rows lack columns {missing}; pass the output of "
                        f"mlcwb.judges.apply_judge(frame, judge).")
    frame = judged[JUDGED_COLUMNS].copy()
    frame["settings"] = [json.dumps(s, sort_keys=True) for s in frame["settings"]]
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


__all__ = ["COLUMNS", "JUDGED_COLUMNS", "Job", "answer_rows", "eos_ids", "generate", "generate_texts",
           "generation_kwargs", "judged_csv_path", "load_responses", "model_dtype", "prompt_jobs", "save_judged", "settings_dict"]
