"""Log-probabilities of given continuations after a prompt, and the perplexity built on them.

One forward pass scores a fixed answer, which is how the quickstart compares a refusal-style
opening with a compliance-style one and how utility is measured as perplexity on reference
answers, both without sampling noise. ``masked_token_logps`` is the answer score itself (the sum
of an answer's token log-probs); training's SFT and preference losses optimise that same sum, so
one function serves both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mlcwb.errors import ConfigError, EvaluationError
from mlcwb.models import encode_prompts

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


def _rows(tokenizer: Any, prompts: list[str], continuations: list[str],
          chat_template: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``prompt + continuation`` ids, their attention mask and the continuation mask."""
    heads = [encode_prompts(tokenizer, [p], chat_template)["input_ids"][0].tolist() for p in prompts]
    tails = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    width = max(len(h) + len(t) for h, t in zip(heads, tails))
    ids = torch.full((len(heads), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    answer = torch.zeros_like(ids)
    for i, (head, tail) in enumerate(zip(heads, tails)):  # right padding: positions start at 0 for all
        ids[i, :len(head) + len(tail)] = torch.tensor(head + tail)
        mask[i, :len(head) + len(tail)] = 1
        answer[i, len(head):len(head) + len(tail)] = 1
    return ids, mask, answer


@torch.inference_mode()
def continuation_logprobs(model: Any, tokenizer: Any, prompts: list[str], continuations: list[str],
                          chat_template: bool = True, batch_size: int = 8) -> list[tuple[float, int]]:
    """``(sum of log-probs, number of tokens)`` of each continuation given its prompt.

    The prompt is formatted exactly as for generation, the continuation is tokenized on its own
    and appended, so the scored tokens are the ones the model would have to produce. Rows are
    batched in order of length, so that little of a batch is padding (reference answers in
    Bengali or Urdu run to several times the tokens of English ones).
    """
    if len(prompts) != len(continuations):
        raise ConfigError("prompts and continuations must have the same length")
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
    results: dict[int, tuple[float, int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask, answer = _rows(tokenizer, [prompts[i] for i in chunk],
                                  [continuations[i] for i in chunk], chat_template)
        ids, mask, answer = ids.to(device), mask.to(device), answer.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        sums, counts = masked_token_logps(logits[:, :-1], ids[:, 1:], answer[:, 1:])
        results.update((i, (float(s), int(n))) for i, s, n in zip(chunk, sums, counts))
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
            limit: int | None = None) -> dict[str, float]:
    """Perplexity of benign reference answers per language: ``{lang: perplexity}``.

    ``answers`` is ``{lang: {prompt id: answer}}`` (``mlcwb.data.load_corpus_answers``); the
    default is English only, each benign prompt's ``response``. Each answer is scored after the
    prompt in its own language, because alignment that damages a language shows there first. The
    numbers compare methods within a language, not languages with each other: tokenizers split
    scripts differently. ``limit`` caps the answers scored per language.
    """
    benign = [p for p in getattr(prompts, "prompts", prompts) if not p.harmful]
    answers = answers if answers is not None else {"en": {p.id: p.response for p in benign if p.response}}
    scores: dict[str, float] = {}
    for lang, by_id in tqdm(answers.items(), desc="utility", unit="lang", disable=len(answers) < 2):
        rows = [p for p in benign if lang in p.text and by_id.get(p.id)][:limit or None]
        if not rows:
            raise EvaluationError(f"No {lang} reference answer for any benign prompt given; pass "
                                  f"prompts with {lang} text and answers for their ids "
                                  f"(mlcwb.data.load_corpus_answers covers the dev and test splits).")
        scores[lang] = perplexity(model, tokenizer, [p.text[lang] for p in rows],
                                  [by_id[p.id] for p in rows])
    return scores
