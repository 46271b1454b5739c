"""Preference losses beside sigmoid DPO: IPO, hinge, ORPO and SimPO, one small function each.

The paper's official code trains with a DPO trainer whose ``loss_type`` picks the preference loss;
``TrainConfig.pref_loss`` is that switch here (used when ``align: dpo``). Each loss reads the same
per-row answer log-probs the training loop already computes (``logps``: chosen rows, then rejected
rows; ``lengths``: their answer token counts), so adding one costs no extra forward.

Which log-probs each loss uses, and why:

* ``sigmoid`` and ``hinge`` score whole answers (summed log-probs against the reference), as DPO
  and SLiC are defined.
* ``ipo`` uses per-token *average* log-probs (policy and reference alike), as trl's DPO trainer
  does for ``loss_type="ipo"``: its target margin 1/(2β) is a fixed number, and a summed
  margin would make that target depend on answer length.
* ``orpo`` and ``simpo`` need no reference model (their reference log-probs are never computed)
  and use average log-probs, as both papers define them: a sum would reward short answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcwb.errors import ConfigError

PREF_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")
_MAX_AVG_LOGP = -1e-6  # ORPO's odds p/(1-p) are infinite at p = 1; keep p just below it


def dpo_loss(logps: Tensor, ref_logps: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Sigmoid DPO: ``-log σ(β[(π_c - ref_c) - (π_r - ref_r)])``; returns (loss, reward accuracy).

    ``logps`` holds chosen rows then rejected rows; ``ref_logps`` is (n, 2) = (chosen, rejected).
    """
    margin = reference_margin(logps, ref_logps)
    return -F.logsigmoid(beta * margin).mean(), (margin > 0).float().mean()


def reference_margin(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """``(π_c - ref_c) - (π_r - ref_r)`` per pair: how much more the policy than the reference
    prefers the chosen answer (DPO's implicit reward difference, divided by β)."""
    n = logps.shape[0] // 2
    return (logps[:n] - ref_logps[:, 0].to(logps)) - (logps[n:] - ref_logps[:, 1].to(logps))


def ipo_loss(margin: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023): ``(margin - 1/(2β))²``, averaged over pairs.

    A squared loss with a finite target: unlike DPO's sigmoid it stops pushing once the margin
    reaches 1/(2β), which is IPO's guard against over-fitting deterministic preferences.
    ``margin`` is ``reference_margin`` of per-token average log-probs (module docstring).
    """
    return (margin - 1.0 / (2.0 * beta)).pow(2).mean()


def hinge_loss(margin: Tensor, beta: float) -> Tensor:
    """Hinge (SLiC, Zhao et al. 2023): ``relu(1 - β·margin)``, averaged over pairs.

    Zero once β·margin exceeds 1, so pairs the policy already ranks clearly give no gradient.
    """
    return torch.relu(1.0 - beta * margin).mean()


def log_odds(avg_logp: Tensor) -> Tensor:
    """``log(p / (1 - p))`` of ``p = exp(avg_logp)``, stable for p near 0 and near 1."""
    x = avg_logp.clamp(max=_MAX_AVG_LOGP)
    log1m = torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return x - log1m


def orpo_loss(chosen_avg: Tensor, rejected_avg: Tensor, chosen_nll: Tensor,
              lam: float) -> tuple[Tensor, Tensor]:
    """ORPO (Hong et al. 2024): ``NLL_chosen + λ·(-log σ(log odds_c - log odds_r))``.

    ``chosen_avg``/``rejected_avg`` are per-token average answer log-probs, ``chosen_nll`` the SFT
    loss on the chosen answers (per answer token). The odds-ratio term replaces DPO's reference:
    the SFT term raises the chosen answers and the odds ratio holds the rejected ones down, in one
    model and one stage. Returns (loss, odds-ratio term before λ).
    """
    ratio = -F.logsigmoid(log_odds(chosen_avg) - log_odds(rejected_avg)).mean()
    return chosen_nll + lam * ratio, ratio


def simpo_loss(chosen_avg: Tensor, rejected_avg: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (Meng et al. 2024): ``-log σ(β·(avg_c - avg_r) - γ)``, averaged over pairs.

    The reward is β times the per-token average log-prob, with no reference model. ``gamma`` is
    the target reward margin γ in reward units, as in the SimPO paper's loss and trl's
    ``simpo_gamma``; SimPO's own code sets ``gamma_beta_ratio`` = γ/β instead (its default 0.25
    with β = 2.0 is γ = 0.5). The paper tunes β in 2-10, far above DPO's 0.1.
    """
    return -F.logsigmoid(beta * (chosen_avg - rejected_avg) - gamma).mean()


def preference_loss(kind: str, logps: Tensor, lengths: Tensor, ref_logps: Tensor | None,
                    beta: float, simpo_gamma: float = 0.5,
                    orpo_lambda: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """The ``kind`` loss of a batch of pairs, and numbers worth logging (reward accuracy, ...).

    ``logps``/``lengths``: summed answer log-probs and answer token counts, chosen rows then
    rejected rows; ``ref_logps``: (n, 2) summed reference log-probs, ``None`` for ORPO/SimPO.
    ``reward_acc`` is the share of pairs whose margin (the quantity each loss pushes up) is > 0.
    """
    if kind not in PREF_LOSSES:
        raise ConfigError(f"pref_loss {kind!r}: use one of {PREF_LOSSES}")
    lengths = lengths.to(logps).clamp_min(1)
    if kind in REFERENCE_FREE:
        loss, margin, extra = _reference_free(kind, logps, lengths, beta, simpo_gamma, orpo_lambda)
    else:
        if ref_logps is None:
            raise ConfigError(f"pref_loss {kind!r} compares against a reference model: "
                              f"reference log-probs are needed.")
        (loss, margin), extra = _with_reference(kind, logps, lengths, ref_logps.to(logps), beta), {}
    return loss, {"reward_acc": float((margin > 0).float().mean()),
                  "reward_margin": float(margin.detach().mean()), **extra}


def _with_reference(kind: str, logps: Tensor, lengths: Tensor, ref: Tensor,
                    beta: float) -> tuple[Tensor, Tensor]:
    """(loss, margin) of sigmoid, IPO or hinge; IPO on per-token averages (module docstring)."""
    if kind == "ipo":
        n = logps.shape[0] // 2
        logps, ref = logps / lengths, ref / torch.stack([lengths[:n], lengths[n:]], dim=1)
    margin = reference_margin(logps, ref)
    if kind == "ipo":
        return ipo_loss(margin, beta), margin
    if kind == "hinge":
        return hinge_loss(margin, beta), margin
    return -F.logsigmoid(beta * margin).mean(), margin


def _reference_free(kind: str, logps: Tensor, lengths: Tensor, beta: float, simpo_gamma: float,
                    orpo_lambda: float) -> tuple[Tensor, Tensor, dict[str, float]]:
    """(loss, margin of average log-probs, extra numbers) of SimPO or ORPO."""
    n = logps.shape[0] // 2
    avg = logps / lengths
    margin = avg[:n] - avg[n:]
    if kind == "simpo":
        return simpo_loss(avg[:n], avg[n:], beta, simpo_gamma), margin, {}
    nll = -logps[:n].sum() / lengths[:n].sum()
    loss, ratio = orpo_loss(avg[:n], avg[n:], nll, orpo_lambda)
    return loss, margin, {"nll": float(nll.detach()), "odds_ratio_loss": float(ratio.detach())}


__all__ = ["PREF_LOSSES", "REFERENCE_FREE", "dpo_loss", "hinge_loss", "ipo_loss", "log_odds",
           "orpo_loss", "preference_loss", "reference_margin", "simpo_loss"]
