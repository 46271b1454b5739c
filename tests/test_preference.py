"""Preference losses: each against a value computed by hand on one toy batch of two pairs.

The batch: summed answer log-probs (chosen rows, then rejected rows) and their token counts,
and the reference's summed log-probs per pair (chosen, rejected):

    pair  chosen logp/len  rejected logp/len  ref chosen  ref rejected
    1     -4 / 2           -8 / 4             -5          -7
    2     -6 / 3           -5 / 5             -6          -4
"""

from __future__ import annotations

import math

import pytest
import torch

from mlcwb.errors import ConfigError
from mlcwb.preference import (PREF_LOSSES, dpo_loss, hinge_loss, ipo_loss, log_odds, orpo_loss,
                              preference_loss, simpo_loss)
from mlcwb.train_config import TrainConfig

LOGPS = torch.tensor([-4.0, -6.0, -8.0, -5.0])
LENGTHS = torch.tensor([2.0, 3.0, 4.0, 5.0])
REF = torch.tensor([[-5.0, -7.0], [-6.0, -4.0]])


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_sigmoid_is_dpo_on_summed_logps():
    # margins: (-4+5) - (-8+7) = 2 and (-6+6) - (-5+4) = 1; β = 0.5
    expected = (softplus(-1.0) + softplus(-0.5)) / 2
    loss, stats = preference_loss("sigmoid", LOGPS, LENGTHS, REF, beta=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["reward_acc"] == 1.0 and stats["reward_margin"] == pytest.approx(1.5)
    assert dpo_loss(LOGPS, REF, 0.5)[0].item() == pytest.approx(expected, abs=1e-6)


def test_hinge_is_relu_of_one_minus_beta_margin():
    # relu(1 - 0.5*2) = 0, relu(1 - 0.5*1) = 0.5
    loss, _ = preference_loss("hinge", LOGPS, LENGTHS, REF, beta=0.5)
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    assert hinge_loss(torch.tensor([2.0, 1.0]), 0.5).item() == pytest.approx(0.25)


def test_ipo_is_squared_distance_to_half_inverse_beta_on_average_logps():
    # averages: policy chosen -2, -2; rejected -2, -1. reference chosen -2.5, -2; rejected -1.75, -0.8
    # margins: (-2+2.5) - (-2+1.75) = 0.75 and (-2+2) - (-1+0.8) = 0.2; target 1/(2*0.5) = 1
    expected = ((0.75 - 1) ** 2 + (0.2 - 1) ** 2) / 2
    loss, stats = preference_loss("ipo", LOGPS, LENGTHS, REF, beta=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["reward_margin"] == pytest.approx((0.75 + 0.2) / 2, abs=1e-6)
    assert ipo_loss(torch.tensor([1.0]), 0.5).item() == 0.0


def test_simpo_uses_average_logps_and_no_reference():
    # β(avg_c - avg_r) - γ with β = 2, γ = 0.5: 2*(-2+2) - 0.5 = -0.5 and 2*(-2+1) - 0.5 = -2.5
    expected = (softplus(0.5) + softplus(2.5)) / 2
    loss, stats = preference_loss("simpo", LOGPS, LENGTHS, None, beta=2.0, simpo_gamma=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["reward_acc"] == 0.0  # margins 0 and -1: no pair ranked the right way yet
    even = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), beta=2.0, gamma=0.0)
    assert even.item() == pytest.approx(math.log(2))


def test_orpo_is_chosen_nll_plus_lambda_odds_ratio_term():
    # NLL on chosen: (4 + 6) / (2 + 3) = 2. log odds(a) = a - log(1 - e^a):
    # pair 1: log odds(-2) - log odds(-2) = 0; pair 2: log odds(-2) - log odds(-1)
    lo = lambda a: a - math.log(1 - math.exp(a))  # noqa: E731
    ratio = (math.log(2) + softplus(-(lo(-2) - lo(-1)))) / 2
    loss, stats = preference_loss("orpo", LOGPS, LENGTHS, None, beta=0.1, orpo_lambda=0.1)
    assert loss.item() == pytest.approx(2.0 + 0.1 * ratio, abs=1e-5)
    assert stats["nll"] == pytest.approx(2.0) and stats["odds_ratio_loss"] == pytest.approx(ratio, abs=1e-5)
    total, term = orpo_loss(torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor(1.0), 0.5)
    assert term.item() == pytest.approx(math.log(2)) and total.item() == pytest.approx(1 + 0.5 * math.log(2))


def test_log_odds_stays_finite_at_probability_one_and_near_zero():
    values = log_odds(torch.tensor([0.0, -1e-9, -50.0, -1000.0]))
    assert torch.isfinite(values).all()
    assert values[2].item() == pytest.approx(-50.0, abs=1e-6)


def test_every_loss_has_finite_gradients_on_the_toy_batch():
    for kind in PREF_LOSSES:
        logps = LOGPS.clone().requires_grad_(True)
        loss, _ = preference_loss(kind, logps, LENGTHS, REF, beta=0.5)
        loss.backward()
        assert torch.isfinite(logps.grad).all() and logps.grad.abs().sum() > 0, kind


def test_reference_losses_need_reference_logps():
    with pytest.raises(ConfigError, match="reference"):
        preference_loss("ipo", LOGPS, LENGTHS, None, beta=0.5)


def test_pref_loss_is_checked_in_the_config():
    with pytest.raises(ConfigError, match=r"pref_loss 'kto'.*'sigmoid', 'ipo', 'hinge', 'orpo', 'simpo'"):
        TrainConfig.from_dict({"pref_loss": "kto"})
    with pytest.raises(ConfigError, match="needs align: dpo"):
        TrainConfig.from_dict({"align": "sft", "pref_loss": "orpo"})
    with pytest.raises(ConfigError, match="simpo_gamma"):
        TrainConfig.from_dict({"pref_loss": "simpo", "simpo_gamma": -1})
    config = TrainConfig.from_dict({"pref_loss": "simpo", "beta": "2.0", "simpo_gamma": "0.5",
                                    "orpo_lambda": 1})
    assert (config.pref_loss, config.beta, config.simpo_gamma, config.orpo_lambda) == ("simpo", 2.0, 0.5, 1.0)
    assert type(config.orpo_lambda) is float
