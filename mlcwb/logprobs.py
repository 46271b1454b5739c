"""Log-probabilities of given continuations after a prompt, and the perplexity built on them.

One forward pass scores a fixed answer, which is how the quickstart compares a refusal-style
opening with a compliance-style one and how utility is measured as perplexity on reference
answers, both without sampling noise. ``masked_token_logps`` is the answer score itself (the sum
of an answer's token log-probs); training's SFT and preference losses optimise that same sum, so
one function serves both.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mlcwb.errors import ConfigError, EvaluationError
from mlcwb.io import atomic_write_json, read_json
from mlcwb.models import model_fingerprint
from mlcwb.prefix import SharedPrefix, after_prefix, compute_prefix, pack_after_prefix, prompt_rows

if TYPE_CHECKING:
    from mlcwb.data import Prompt, PromptSet


def masked_token_logps(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the log-probs of ``targets`` where ``mask`` is 1, and the number of such tokens.

    ``logits[:, t]`` is the prediction for ``targets[:, t]`` (shift before calling); log-softmax
    runs in float32 so bfloat16 logits do not round answer scores. Masked-out positions add an
    exact 0, whatever the model predicted there.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = mask.to(torch.float32)
    return torch.where(keep.bool(), token_logp, 0.0).sum(-1), keep.sum(-1)


def _answer_logps(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: SharedPrefix,
                  targets: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Log-probs of ``targets`` predicted at ``(rows, columns)`` positions of a right-packed batch,
    computing the LM head at those positions only (the rest of the prompt needs none).

    Models whose head does more than a matmul (logit soft-capping, a logit scale) get their own
    full forward, so their scores stay exact.
    """
    rows_idx, cols = rows
    kwargs = after_prefix(model, ids, mask, prefix)
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        logits = model(**kwargs).logits[rows_idx, cols - prefix.length]
    else:
        hidden = model.get_decoder()(**kwargs).last_hidden_state
        logits = model.get_output_embeddings()(hidden[rows_idx, cols - prefix.length])
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.inference_mode()
def continuation_logprobs(model: Any, tokenizer: Any, prompts: list[str], continuations: list[str],
                          chat_template: bool = True, batch_size: int = 8) -> list[tuple[float, int]]:
    """``(sum of log-probs, number of tokens)`` of each continuation given its prompt.

    The prompt is formatted exactly as for generation, the continuation is tokenized on its own
    and appended, so the scored tokens are the ones the model would have to produce. The chat
    template's shared prefix is run once per call, rows are batched in order of length (reference
    answers in Bengali or Urdu run to several times the tokens of English ones), and the
    vocabulary-sized LM head runs only where an answer token is predicted. Decoder-only models.
    """
    if len(prompts) != len(continuations):
        raise ConfigError("prompts and continuations must have the same length")
    if model.config.is_encoder_decoder:
        raise ConfigError("continuation_logprobs scores a decoder-only model's continuation of its "
                          "prompt; an encoder-decoder scores answers through its decoder (labels=).")
    device = next(model.parameters()).device
    heads = prompt_rows(tokenizer, prompts, chat_template)
    tails = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    prefix = compute_prefix(model, heads)
    order = sorted(range(len(prompts)), key=lambda i: len(heads[i]) + len(tails[i]))
    results: dict[int, tuple[float, int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = pack_after_prefix([heads[i] + tails[i] for i in chunk], prefix.length,
                                      tokenizer.pad_token_id, "right")
        where = [(r, t) for r, i in enumerate(chunk)
                 for t in range(len(heads[i]), len(heads[i]) + len(tails[i]))]
        sums = torch.zeros(len(chunk), dtype=torch.float64)
        if where:
            rows = torch.tensor([r for r, _ in where]), torch.tensor([t - 1 for _, t in where])
            targets = ids[rows[0], rows[1] + 1]
            logps = _answer_logps(model, ids.to(device), mask.to(device), prefix,
                                  targets.to(device), (rows[0].to(device), rows[1].to(device)))
            sums.index_add_(0, rows[0], logps.double().cpu())
        results.update((i, (float(sums[r]), len(tails[i]))) for r, i in enumerate(chunk))
    return [results[i] for i in range(len(prompts))]


def perplexity(model: Any, tokenizer: Any, prompts: Sequence[str], references: Sequence[str],
               batch_size: int = 8) -> float:
    """Token-weighted perplexity of reference answers given their prompts (lower is better).

    Utility is measured this way because it needs no judge and no sampling: if alignment damages
    the model, it becomes less likely to produce good answers to ordinary questions.
    """
    pairs = [(p, r) for p, r in zip(prompts, references) if r]
    if not pairs:
        raise EvaluationError("No reference answers to score; utility needs benign prompts with "
                              "a `response` (the corpus test split has them).")
    scores = continuation_logprobs(model, tokenizer, [p for p, _ in pairs], [r for _, r in pairs],
                                   batch_size=batch_size)
    total_lp = sum(lp for lp, _ in scores)
    total_n = sum(n for _, n in scores)
    return float(math.exp(-total_lp / total_n))


def utility(model: Any, tokenizer: Any, prompts: PromptSet | Sequence[Prompt],
            answers: Mapping[str, Mapping[str, str]] | None = None,
            limit: int | None = None, cache: str | Path | None = None) -> dict[str, float]:
    """Perplexity of benign reference answers per language: ``{lang: perplexity}``.

    ``answers`` is ``{lang: {prompt id: answer}}`` (``mlcwb.data.load_corpus_answers``); the
    default is English only, each benign prompt's ``response``. Each answer is scored after the
    prompt in its own language, because alignment that damages a language shows there first. The
    numbers compare methods within a language, not languages with each other: tokenizers split
    scripts differently. ``limit`` caps the answers scored per language. With ``cache`` (a JSON
    file), a result made by the same weights on the same prompts and answers is read back
    instead of recomputed, so rerunning an evaluation of an unchanged model costs no utility.
    """
    benign = [p for p in getattr(prompts, "prompts", prompts) if not p.harmful]
    answers = answers if answers is not None else {"en": {p.id: p.response for p in benign if p.response}}
    chosen: dict[str, list[tuple[str, str]]] = {}
    for lang, by_id in answers.items():
        rows = [p for p in benign if lang in p.text and by_id.get(p.id)][:limit or None]
        if not rows:
            raise EvaluationError(f"No {lang} reference answer for any benign prompt given; pass "
                                  f"prompts with {lang} text and answers for their ids "
                                  f"(mlcwb.data.load_corpus_answers covers the dev and test splits).")
        chosen[lang] = [(p.text[lang], by_id[p.id]) for p in rows]
    key = {"model": model_fingerprint(model), "pairs": hashlib.sha256(json.dumps(
        chosen, ensure_ascii=False, sort_keys=True).encode()).hexdigest()}
    stored = read_json(cache) if cache is not None else None
    if isinstance(stored, dict) and stored.get("key") == key:
        return dict(stored["perplexity"])
    scores = {lang: perplexity(model, tokenizer, [q for q, _ in pairs], [r for _, r in pairs])
              for lang, pairs in tqdm(chosen.items(), desc="utility", unit="lang",
                                      disable=len(chosen) < 2)}
    if cache is not None:
        atomic_write_json(cache, {"key": key, "perplexity": scores})
    return scores
