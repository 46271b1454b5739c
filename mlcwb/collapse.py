"""Collapse: the degenerate way to satisfy MLC, caught during training and in evaluation.

The official MLC loss is minimal when each prompt's translations are collinear. A model reaches
that minimum without transferring anything by mapping *every* prompt to one direction: measured
on Qwen2.5-Coder-0.5B-Instruct with MLC alone, the loss hit its floor within a few steps and the
model then opened every answer, harmful or benign, in every language, with the same words.
Two cheap signals show it:

* in the states MLC acts on: different prompts become as similar as translations of one prompt
  (``batch_distinctness``: cross-prompt cosine up, the same-vs-other margin and en→x retrieval down);
* in the answers: one opening takes over (``opening_diversity``: the most common first words'
  share of all answers in a language).
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor

if TYPE_CHECKING:
    from mlcwb.representations import Representations

log = logging.getLogger(__name__)

OPENING_WORDS = 4
# Share of a language's answers (harmful and benign together) that open alike, above which the
# model is reported as collapsed: a model that still tells prompts apart answers a harmful and a
# benign question differently, so even a model that refuses every harmful prompt stays near 0.5.
COLLAPSED_OPENING_SHARE = 0.6


@torch.no_grad()
def batch_distinctness(states: Tensor, n_langs: int) -> dict[str, float]:
    """How distinct the prompts of one MLC batch stay (rows prompt-major, ``n_langs`` per prompt).

    ``prompt_cos``: mean cosine between different prompts in the same language (1 = collapsed);
    ``pair_cos``: mean cosine between translations of one prompt; ``margin`` = pair − prompt;
    ``retrieval``: share of (prompt, language) rows whose nearest other-prompt-or-translation row
    in the anchor language (the first) is their own translation (chance 1/prompts).
    Needs two prompts or more; with one, only ``pair_cos`` is defined.
    """
    z = states.detach().float()
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    z = z.reshape(-1, n_langs, z.shape[-1])  # (P, L, D)
    n_prompts = z.shape[0]
    upper = torch.triu(torch.ones(n_langs, n_langs, dtype=torch.bool), 1)
    within = z @ z.transpose(1, 2)  # (P, L, L): translations of one prompt
    out = {"pair_cos": float(within[:, upper].mean()) if n_langs > 1 else float("nan")}
    if n_prompts < 2:
        return out
    across = torch.einsum("pld,qld->lpq", z, z)  # (L, P, P): prompts within one language
    off = ~torch.eye(n_prompts, dtype=torch.bool)
    out["prompt_cos"] = float(across[:, off].mean())
    out["margin"] = out["pair_cos"] - out["prompt_cos"]
    anchor = z[:, 0]  # (P, D)
    sims = torch.einsum("pd,qld->lpq", anchor, z[:, 1:])  # anchor prompt p vs prompt q in lang l
    hits = sims.argmax(-1) == torch.arange(n_prompts)
    out["retrieval"] = float(hits.float().mean())
    return out


def heldout_distinctness(reps: Representations, layer: int) -> dict[str, float]:
    """``batch_distinctness`` over every held-out prompt and language of one layer."""
    from mlcwb.geometry import states

    x = torch.from_numpy(states(reps, layer)).float()  # (P, L, D), anchor language first as stored
    return batch_distinctness(x.reshape(-1, x.shape[-1]), x.shape[1])


class CollapseWatch:
    """Warns once, during training, when different prompts' MLC states become near-identical.

    Raw states already share much of their direction (Qwen2.5-Coder-0.5B: cross-prompt cosine
    0.87 at the last layer's last prompt token), so the signal is a cross-prompt cosine above
    ``threshold`` that the run did not start with.
    """

    def __init__(self, threshold: float = 0.98):
        self.threshold = threshold
        self.first: float | None = None
        self.warned = False

    def check(self, row: dict[str, float]) -> bool:
        """True (and one warning) the first time the logged ``prompt_cos`` crosses the threshold."""
        cos = row.get("prompt_cos")
        if cos is None:
            return False
        if self.first is None:
            self.first = cos
        if self.warned or cos < self.threshold or self.first >= self.threshold:
            return False
        self.warned = True
        log.warning("step %s: different prompts' MLC states have mean cosine %.3f (%.3f at the "
                    "start): the model may be collapsing every prompt onto one direction, which "
                    "meets the MLC objective without transferring anything. Check the answers "
                    "(mlcwb.collapse.opening_diversity), lower lr, or try mlc.variant: contrastive.",
                    row.get("step"), cos, self.first)
        return True


def opening(text: str, words: int = OPENING_WORDS) -> str:
    """The first words of an answer, lower-cased without punctuation (CJK text by characters)."""
    text = re.sub(r"[^\w\s]", " ", (text or "").lower())
    tokens = text.split()
    if len(tokens) <= 1 and text.strip():  # unspaced scripts: characters stand in for words
        return text.strip()[: 2 * words]
    return " ".join(tokens[:words])


def opening_diversity(responses: pd.DataFrame, words: int = OPENING_WORDS) -> pd.DataFrame:
    """Per language: how many different openings the answers have, and the top one's share.

    ``responses`` needs ``lang`` and ``response`` columns (a frame from ``mlcwb.generation``).
    ``collapsed`` is set where the most common opening covers more than
    ``COLLAPSED_OPENING_SHARE`` of the answers.
    """
    rows = []
    for lang, g in responses.groupby("lang", sort=False):
        counts = Counter(opening(r, words) for r in g["response"].fillna(""))
        top, top_n = counts.most_common(1)[0]
        rows.append({"lang": lang, "n": len(g), "distinct_openings": len(counts) / len(g),
                     "top_opening_share": top_n / len(g), "top_opening": top,
                     "collapsed": top_n / len(g) > COLLAPSED_OPENING_SHARE})
    return pd.DataFrame(rows).set_index("lang")


__all__ = ["COLLAPSED_OPENING_SHARE", "CollapseWatch", "batch_distinctness", "heldout_distinctness", "opening", "opening_diversity"]
