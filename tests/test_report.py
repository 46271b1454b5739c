"""Metrics, intervals, McNemar, the paper-layout table and figures, on PromptSet-shaped rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlcwb.errors import DataError
from mlcwb.report import (bar_figure, bootstrap_ci, heatmap_figure, language_metrics, mcnemar_exact,
                          paired_comparison, perplexity, safety_table, scatter_figure, to_html,
                          to_markdown)


def _judged(refuse_harmful: dict[str, int], refuse_benign: dict[str, int], n: int = 10) -> pd.DataFrame:
    """n harmful + n benign (half borderline) per language; the first k of each group refused."""
    rows = []
    for lang in refuse_harmful:
        for i in range(n):
            rows.append({"id": f"h{i}", "lang": lang, "harmful": True, "borderline": False,
                         "refused": i < refuse_harmful[lang], "response": "I cannot help with that."})
        for i in range(n):
            rows.append({"id": f"b{i}", "lang": lang, "harmful": False, "borderline": i % 2 == 1,
                         "refused": i < refuse_benign[lang], "response": "Bread needs flour, water and salt."})
    return pd.DataFrame(rows)


def test_language_metrics_values():
    m = language_metrics(_judged({"en": 9, "sw": 10}, {"en": 1, "sw": 10}))
    assert m.loc["en", "safety_rate"] == 90.0
    assert m.loc["sw", "over_refusal"] == 100.0
    assert m.loc["en", "over_refusal"] == 20.0  # b0 refused (benign non-borderline: b0,b2,b4,b6,b8)
    assert m.loc["en", "borderline_over_refusal"] == 0.0
    assert m.loc["en", "discrimination"] == pytest.approx(80.0)
    assert m.loc["sw", "discrimination"] == 0.0  # refuses everything: safe-looking, not safe
    assert m.loc["en", "safety_rate_lo"] <= 90 <= m.loc["en", "safety_rate_hi"]
    assert m.loc["en", "lang_match"] == 100.0  # English responses to English prompts
    assert m.loc["sw", "lang_match"] == 0.0
    assert (m[["n_harmful", "n_benign", "n_borderline"]].loc["en"] == [10, 5, 5]).all()


def test_unknown_verdicts_are_excluded_and_counted():
    frame = _judged({"en": 5}, {"en": 0})
    frame["refused"] = frame["refused"].astype(object)
    frame.loc[0, "refused"] = None
    m = language_metrics(frame, with_language_id=False)
    assert m.loc["en", "unknown_verdicts"] == 1 and m.loc["en", "n_harmful"] == 9
    assert m.loc["en", "safety_rate"] == pytest.approx(400 / 9)


def test_bootstrap_ci_covers_and_narrows():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.7
    big = rng.random(2000) < 0.7
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s <= small.mean() <= hi_s and lo_b <= big.mean() <= hi_b
    assert hi_b - lo_b < hi_s - lo_s
    assert 0.66 < lo_b < 0.7 < hi_b < 0.74
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_mcnemar_exact_known_values():
    # 10 discordant pairs all one way: p = 2 * 0.5**10
    before = [False] * 10 + [True] * 5
    after = [True] * 10 + [True] * 5
    r = mcnemar_exact(before, after)
    assert (r["b"], r["c"]) == (0, 10) and r["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    # b=3, c=5: p = 2 * P(X<=3 | n=8) = 2 * 93/256
    r = mcnemar_exact([True] * 3 + [False] * 5, [False] * 3 + [True] * 5)
    assert r["p_value"] == pytest.approx(2 * 93 / 256)


def test_paired_comparison():
    before = _judged({"en": 5, "zh": 2}, {"en": 0, "zh": 0})
    after = _judged({"en": 9, "zh": 10}, {"en": 1, "zh": 2})
    cmp = paired_comparison(before, after)
    assert cmp.loc["zh", "change"] == 80.0 and cmp.loc["zh", "c"] == 8
    assert cmp.loc["zh", "p_value"] < 0.01
    assert cmp.loc["en", "change_lo"] <= 40.0 <= cmp.loc["en", "change_hi"]
    benign = paired_comparison(before, after, harmful=False)
    assert benign.loc["zh", "after"] == 20.0
    with pytest.raises(DataError):
        paired_comparison(before, after.assign(id="other"))


def test_table_layout_markdown_html_and_figures():
    results = {"raw": language_metrics(_judged({"en": 5, "zh": 2}, {"en": 0, "zh": 1}), with_language_id=False),
               "mlc": language_metrics(_judged({"en": 9, "zh": 8}, {"en": 1, "zh": 1}), with_language_id=False)}
    table = safety_table(results)
    assert list(table.columns) == ["en", "zh", "Avg", "Var"]
    assert list(table.index) == ["raw", "mlc"]
    assert table.loc["raw", "Avg"] == 35.0 and table.loc["raw", "Var"] == 225.0
    md = to_markdown(table, caption="Safety")
    assert md.splitlines()[2].startswith("| method |") and "| raw | 50.0 | 20.0 | 35.0 | 225.0 |" in md
    assert "<table>" in to_html(table) and "<th>mlc</th>" in to_html(table)
    over = safety_table(results, "over_refusal", langs=["zh"])
    assert list(over.columns) == ["zh", "Avg", "Var"] and over.loc["mlc", "Var"] == 0.0
    with pytest.raises(DataError):
        safety_table(results, "nope")
    bars = bar_figure(results)
    assert len(bars.data) == 2 and bars.data[0].error_y.array is not None
    assert len(scatter_figure(results).data) == 2
    heat = heatmap_figure(results, "raw")
    assert heat.data[0].z[0] == (40.0, 60.0) or list(heat.data[0].z[0]) == [40.0, 60.0]


def test_perplexity_reacts_to_reference(tiny_llama):
    model, tok = tiny_llama
    ppl = perplexity(model, tok, ["Say hi"] * 2, ["hi there", "hello"])
    assert 1.0 < ppl < 2 * len(tok)  # a near-uniform random model: about vocabulary size
