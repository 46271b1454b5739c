"""Keep the answer language: the first answer tokens of non-English MLC prompts held to the
reference model's distribution (``mlc.answer_kl``).

The official MLC term, beside English-only alignment, makes a model answer every language in
English (docs/results.md): at the last prompt token, the state it makes collinear decides the first
answer token, language included. This term pulls the other way without target-language answers:
before training, the untrained model answers each non-English MLC prompt greedily for ``k`` tokens
and its next-token distribution at each of those positions is kept (its ``m`` most likely tokens
and the mass of the rest); during training, on every MLC step, the policy's distribution at the
same positions (the prompt, then the reference's own first tokens) is compared with it by
Kullback-Leibler divergence KL(reference || policy).

Only the top ``m`` tokens and a "rest" bucket are compared: a coarsening of both distributions,
so the value is a lower bound of the full KL and equals it when ``m`` covers the vocabulary (both
tested). It holds whatever the reference's openings carry, the refusal decision included; that
is the price of needing no labels, and why the weight is a setting the sweep measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcwb.backbone import position_ids
from mlcwb.prefix import pack_after_prefix, prompt_rows


@dataclass
class Openings:
    """The reference's first ``k`` answer tokens and its top-``m`` log-probs at each position, for
    every (MLC prompt, non-anchor language): ``tokens`` (n, L-1, k), ``top_ids`` and ``top_logps``
    (n, L-1, k, m), ``valid`` (n, L-1, k): positions up to and including the first end token."""

    tokens: Tensor
    top_ids: Tensor
    top_logps: Tensor
    valid: Tensor

    def take(self, picked: Sequence[int]) -> dict[str, Tensor]:
        """The rows of prompts ``picked``, flattened prompt-major (as ``encode_mlc`` orders them)."""
        index = torch.as_tensor(list(picked), dtype=torch.long)
        return {name: getattr(self, name)[index].flatten(0, 1)
                for name in ("tokens", "top_ids", "top_logps", "valid")}


@torch.inference_mode()
def reference_openings(model: Any, tokenizer: Any, groups: Sequence[Sequence[str]], k: int, m: int,
                       chat_template: bool = True, batch_size: int = 16) -> Openings:
    """The first ``k`` answer tokens of every text but each group's first (the anchor, English),
    as the workbench's greedy answers start (``generation.answer_rows``' settings and shared
    prefix), with ``model``'s top-``m`` log-probs at each step, from ``model`` as it is now."""
    from mlcwb.generation import eos_ids, generation_kwargs
    from mlcwb.prefix import cache_kwargs, compute_prefix, expand_cache

    n, per = len(groups), (len(groups[0]) - 1 if groups else 0)
    rows = prompt_rows(tokenizer, [text for group in groups for text in group[1:]], chat_template)
    prefix = compute_prefix(model, rows)
    device = next(model.parameters()).device
    kwargs = {**generation_kwargs(model, tokenizer, k, False, 1.0, 1.0), "output_logits": True,
              "return_dict_in_generate": True}
    tokens, top_ids, top_logps = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        ids, mask = pack_after_prefix(batch, prefix.length, tokenizer.pad_token_id, "left")
        extra = cache_kwargs(model, expand_cache(prefix.cache, len(batch), model.config)) \
            if prefix.cache is not None else {}
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs, **extra)
        logps = torch.log_softmax(torch.stack(out.logits, 1).float(), dim=-1)
        values, index = logps.topk(m, dim=-1)
        new = out.sequences[:, ids.shape[1]:]
        short = k - new.shape[1]  # every row ended early: the missing steps are not answers
        tokens.append(F.pad(new, (0, short), value=tokenizer.pad_token_id).cpu())
        index, values = F.pad(index, (0, 0, 0, short)), F.pad(values, (0, 0, 0, short))
        top_ids.append(index.cpu())
        top_logps.append(values.cpu())
    tokens_ = torch.cat(tokens) if tokens else torch.empty(0, k, dtype=torch.long)
    valid = _before_end(tokens_, set(eos_ids(model, tokenizer)))
    return Openings(tokens_.view(n, per, k), torch.cat(top_ids).view(n, per, k, m),
                    torch.cat(top_logps).view(n, per, k, m), valid.view(n, per, k))


def _before_end(tokens: Tensor, ends: set[int]) -> Tensor:
    """True up to and including each row's first end token (what follows it is not an answer)."""
    is_end = torch.zeros_like(tokens, dtype=torch.bool)
    for end in ends:
        is_end |= tokens == end
    ended_before = torch.cumsum(is_end.long(), dim=-1) - is_end.long()
    return ended_before == 0


def encode_openings(tokenizer: Any, texts: Sequence[str], tokens: Tensor, chat_template: bool,
                    pad_id: int) -> dict[str, Tensor]:
    """Left-padded rows: each prompt, then the reference's first ``k - 1`` answer tokens, so the
    last ``k`` positions predict the reference's ``k`` answer tokens."""
    k = tokens.shape[1]
    rows = [row + tokens[i, :k - 1].tolist() for i, row in enumerate(prompt_rows(tokenizer, texts, chat_template))]
    ids, mask = pack_after_prefix(rows, 0, pad_id, "left")  # no shared prefix: plain left padding
    return {"input_ids": ids, "attention_mask": mask}


def opening_logps(model: Any, ids: Tensor, mask: Tensor, top_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The policy's log-probs of the reference's top tokens at the last ``k`` positions, and the
    log of the mass left outside them: (rows, k, m) and (rows, k)."""
    k = top_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                   logits_to_keep=k, use_cache=False).logits[:, -k:].float()
    logps = torch.log_softmax(logits, dim=-1)
    top = logps.gather(-1, top_ids)
    return top, _log_rest(top)


def _log_rest(top: Tensor) -> Tensor:
    """log(1 - sum(exp(top))), kept finite where the top tokens hold (nearly) all the mass."""
    covered = torch.logsumexp(top, dim=-1).clamp(max=-1e-6)
    return torch.log(-torch.expm1(covered))


def coarse_kl(ref_top: Tensor, top: Tensor, log_rest: Tensor, valid: Tensor) -> Tensor:
    """KL(reference || policy) over the reference's top tokens and one bucket for the rest,
    averaged over valid positions (0 when none is valid)."""
    ref = ref_top.exp()
    ref_rest = (1 - ref.sum(-1)).clamp_min(0)
    per = (ref * (ref_top - top)).sum(-1) + torch.xlogy(ref_rest, ref_rest) - ref_rest * log_rest
    weights = valid.to(per.dtype)
    return (per * weights).sum() / weights.sum().clamp_min(1)


__all__ = ["Openings", "coarse_kl", "encode_openings", "opening_logps", "reference_openings"]
