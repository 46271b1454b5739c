"""The refusal screen: validation against verdicts and the per-method AUROC table (no model)."""

from __future__ import annotations

import pandas as pd
import pytest

from mlcwb.errors import DataError
from mlcwb.screen import screen_table, validate_scores


def _rows(scores, refused, lang="en"):
    return pd.DataFrame({"id": [f"p{i}" for i in range(len(scores))], "lang": lang,
                         "harmful": [i % 2 == 0 for i in range(len(scores))],
                         "refusal_score": scores, "refused": refused})


def test_validate_scores_measures_auroc_rank_agreement_and_signs():
    raw = pd.concat([_rows([2.0, -1.0, 1.0, -2.0], [True, False, True, False]),
                     _rows([0.5, -0.5, -1.0, -3.0], [True, False, False, False], "zh")])
    aligned = pd.concat([_rows([3.0, 1.5, 2.0, -1.0], [True, True, True, False]),
                         _rows([-0.2, 0.1, -2.0, -2.5], [False, True, False, False], "zh")])
    out = validate_scores({"raw": raw, "aligned": aligned})
    per_lang = out["per_language"]
    assert per_lang.loc["en", "auroc"] == pytest.approx(1.0)  # every refused answer scores higher
    # zh: refused scores 0.5, 0.1 against -0.5, -1, -3, -0.2, -2, -2.5: 12 of 12 pairs ordered
    assert per_lang.loc["zh", "auroc"] == pytest.approx(1.0)
    assert bool(per_lang.loc["en", "screen"]) and per_lang.loc["en", "n"] == 8
    rates = out["rates"]
    assert rates.loc[("aligned", "en"), "judged"] == pytest.approx(75.0)
    agreement = out["agreement"].iloc[0]
    assert agreement["sign_pairs"] == 1  # zh: 25% vs 25% is no difference; en: 50% -> 75%
    assert agreement["sign_kept"] == 1.0


def test_validate_scores_flags_a_score_that_ranks_the_wrong_way():
    rows = _rows([-2.0, 1.0, -1.0, 2.0], [True, False, True, False])
    out = validate_scores({"raw": rows})
    assert out["per_language"].loc["en", "auroc"] == pytest.approx(0.0)
    assert not bool(out["per_language"].loc["en", "screen"])
    with pytest.raises(DataError, match="refusal_score"):
        validate_scores({"raw": rows.drop(columns=["refusal_score"])})


def test_screen_table_is_methods_by_languages():
    before = _rows([1.0, -1.0, 2.0, -2.0, 3.0, 0.0], [None] * 6)
    after = _rows([-1.0, 1.0, -2.0, 2.0, 0.0, 3.0], [None] * 6)
    table = screen_table({"before": before, "after": after}, n_boot=50)
    assert list(table.index) == ["before", "after"] and list(table.columns) == ["en"]
    assert table.loc["before", "en"] == pytest.approx(100.0)  # harmful rows (even) all above benign
    assert table.loc["after", "en"] == pytest.approx(0.0)


def test_validate_scores_needs_rows():
    with pytest.raises(DataError, match="at least one method"):
        validate_scores({})
