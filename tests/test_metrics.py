"""Metrics, intervals, McNemar, the paper-layout table and figures, on PromptSet-shaped rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mlcwb.errors import DataError
from mlcwb.logprobs import perplexity
from mlcwb.metrics import (detectable_difference, diff_ci, holm_adjust, language_metrics, mcnemar_exact,
                           paired_comparison, paired_diff_ci, rate_with_ci, wilson_ci)
from mlcwb.safety_figures import bar_figure, heatmap_figure, scatter_figure
from mlcwb.tables import (LONG_COLUMNS, latex_escape, metrics_long, safety_table, to_html, to_latex,
                          to_markdown, with_interval, write_metrics_csv)

Z = 1.959963984540054  # two-sided 95% normal quantile


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval from its textbook formula (no scipy)."""
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def _newcombe_unpaired_by_hand(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval for k1/n1 - k2/n2 from the Wilson bounds above."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = _wilson_by_hand(k1, n1), _wilson_by_hand(k2, n2)
    return (p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _paired(a: int, b: int, c: int, d: int) -> tuple[list[bool], list[bool]]:
    """(before, after) with a pairs True in both, b True only after, c True only before, d neither."""
    before = [True] * a + [False] * b + [True] * c + [False] * d
    after = [True] * a + [True] * b + [False] * c + [False] * d
    return before, after


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
    # Newcombe's interval for 9/10 - 1/10 (all benign) and 10/10 - 10/10, in points
    lo, hi = _newcombe_unpaired_by_hand(9, 10, 1, 10)
    assert (m.loc["en", "discrimination_lo"], m.loc["en", "discrimination_hi"]) == pytest.approx(
        (100 * lo, 100 * hi), abs=1e-6)
    side = 100 * Z**2 / (10 + Z**2)  # 1 - Wilson lower bound of 10/10
    assert (m.loc["sw", "discrimination_lo"], m.loc["sw", "discrimination_hi"]) == pytest.approx(
        (-side, side), abs=1e-6)
    # Wilson 95% for 9/10 and 10/10, not a bootstrap: 10/10 is no proof of a 100% rate
    assert (m.loc["en", "safety_rate_lo"], m.loc["en", "safety_rate_hi"]) == pytest.approx(
        (59.58, 98.21), abs=0.01)
    assert (m.loc["sw", "safety_rate_lo"], m.loc["sw", "safety_rate_hi"]) == pytest.approx(
        (72.25, 100.0), abs=0.01)
    assert (m.loc["en", "safety_rate_k"], m.loc["en", "safety_rate_n"]) == (9, 10)
    assert (m.loc["en", "over_refusal_k"], m.loc["en", "over_refusal_n"]) == (1, 5)
    assert m.loc["en", "borderline_over_refusal_hi"] == pytest.approx(43.45, abs=0.01)  # 0/5
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


def test_wilson_ci_hand_computed_values():
    lo, hi = wilson_ci(16, 16)
    assert lo == pytest.approx(0.8064, abs=1e-4) and hi == 1.0  # 16/16: a true rate near 81% fits
    assert lo == pytest.approx(16 / (16 + Z**2), abs=1e-9)        # the closed form at k = n
    lo, hi = wilson_ci(0, 16)
    assert lo == 0.0 and hi == pytest.approx(0.1936, abs=1e-4)
    for k, n in [(15, 16), (8, 9), (4, 7), (1, 5), (50, 200)]:
        assert wilson_ci(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)
    assert wilson_ci(8, 16, alpha=0.10)[0] > wilson_ci(8, 16)[0]  # 90% is narrower than 95%
    assert all(math.isnan(v) for v in wilson_ci(0, 0))
    with pytest.raises(DataError):
        wilson_ci(3, 2)


def test_rate_intervals_never_have_zero_width():
    for n in range(1, 41):
        for k in range(n + 1):
            lo, hi = wilson_ci(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi - lo > 0.05, (k, n)
    r = rate_with_ci([1.0] * 16)
    assert r["rate"] == 100.0 and r["lo"] == pytest.approx(80.64, abs=0.01) and r["hi"] == 100.0
    assert (r["k"], r["n"]) == (16, 16)


def test_language_metrics_all_or_nothing_and_empty_subsets():
    frame = _judged({"en": 16}, {"en": 0}, n=16)
    frame.loc[~frame["harmful"], "borderline"] = False  # no borderline prompts at all
    m = language_metrics(frame, with_language_id=False)
    assert m.loc["en", "safety_rate"] == 100.0
    assert m.loc["en", "safety_rate_lo"] == pytest.approx(80.64, abs=0.01)
    assert m.loc["en", "over_refusal_hi"] == pytest.approx(19.36, abs=0.01)
    # 16/16 vs 0/16: lower = 1 - sqrt(2) * z^2/(16 + z^2), upper = 1 (nothing beyond 100 points)
    assert m.loc["en", "discrimination"] == 100.0
    assert m.loc["en", "discrimination_lo"] == pytest.approx(
        100 * (1 - math.sqrt(2) * Z**2 / (16 + Z**2)), abs=1e-6)
    assert m.loc["en", "discrimination_lo"] == pytest.approx(72.62, abs=0.01)
    assert m.loc["en", "discrimination_hi"] == pytest.approx(100.0, abs=1e-9)
    for suffix in ("", "_lo", "_hi"):
        assert math.isnan(m.loc["en", f"borderline_over_refusal{suffix}"])
    assert m.loc["en", "borderline_over_refusal_n"] == 0


def test_holm_adjust_hand_computed():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # capped where needed, monotone
    assert holm_adjust([0.9, 0.01]) == pytest.approx([0.9, 0.02])
    assert holm_adjust([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    out = holm_adjust([0.01, float("nan"), 0.04])  # NaNs are not part of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm_adjust([]).size == 0
    with pytest.raises(DataError):
        holm_adjust([1.5])


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
    # b=1, c=9 (and 20 concordant pairs, which don't count): p = 2 * (C(10,0) + C(10,1)) / 2^10
    before, after = _paired(12, 9, 1, 8)
    r = mcnemar_exact(before, after)
    assert (r["b"], r["c"]) == (1, 9)
    assert r["p_value"] == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10)
    assert r["p_value"] == pytest.approx(0.021484375)
    assert mcnemar_exact([], [])["p_value"] == 1.0
    with pytest.raises(DataError):
        mcnemar_exact([True], [True, False])


def test_paired_comparison():
    before = _judged({"en": 5, "zh": 2}, {"en": 0, "zh": 0})
    after = _judged({"en": 9, "zh": 10}, {"en": 1, "zh": 2})
    cmp = paired_comparison(before, after)
    assert cmp.loc["zh", "change"] == 80.0 and cmp.loc["zh", "c"] == 8
    assert cmp.loc["zh", "p_value"] < 0.01
    assert cmp.loc["en", "change_lo"] <= 40.0 <= cmp.loc["en", "change_hi"]
    # en: 5 refused before and after, 4 only after, 1 neither -> Newcombe's paired interval
    lo, hi = _paired_by_hand(5, 4, 0, 1)
    assert (cmp.loc["en", "change_lo"], cmp.loc["en", "change_hi"]) == pytest.approx((100 * lo, 100 * hi))
    # Holm across the two languages: zh 2/256 (b=0, c=8) doubles; en 2/16 (c=4) stays
    assert cmp.loc["zh", "p_value"] == pytest.approx(2 / 256)
    assert cmp.loc["zh", "p_holm"] == pytest.approx(4 / 256)
    assert cmp.loc["en", "p_holm"] == pytest.approx(2 / 16)
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


def _two_methods() -> dict[str, pd.DataFrame]:
    return {"raw": language_metrics(_judged({"en": 5, "zh": 2}, {"en": 0, "zh": 1}),
                                    with_language_id=False),
            "+ MLC (joint)": language_metrics(_judged({"en": 9, "zh": 8}, {"en": 1, "zh": 1}),
                                              with_language_id=False)}


def test_table_with_intervals_in_every_format():
    results = _two_methods()
    table = safety_table(results, intervals=True)
    lo, hi = _wilson_by_hand(5, 10)
    assert table.loc["raw", "en"] == f"50.0 [{100 * lo:.0f}, {100 * hi:.0f}]" == "50.0 [24, 76]"
    assert table.loc["raw", "Avg"] == 35.0 and table.loc["raw", "Var"] == 225.0
    assert "| raw | 50.0 [24, 76] | 20.0 [6, 51] | 35.0 | 225.0 |" in to_markdown(table)
    assert "<td>50.0 [24, 76]</td>" in to_html(table)
    lang_match = {m: f.assign(lang_match=50.0) for m, f in results.items()}  # no interval stored
    assert safety_table(lang_match, "lang_match", intervals=True).loc["raw", "en"] == "50.0"
    assert with_interval(float("nan"), 1, 2) == "–" and with_interval(3.14159, None, 9) == "3.1"


def test_to_latex_is_booktabs_with_escaped_text():
    table = safety_table(_two_methods(), intervals=True)
    tex = to_latex(table, caption="Safety rate (%) & more", label="tab:safety")
    lines = tex.splitlines()
    assert lines[:4] == ["\\begin{table}[t]", "\\centering", "\\caption{Safety rate (\\%) \\& more}",
                         "\\label{tab:safety}"]
    assert "\\begin{tabular}{lrrrr}" in lines and "\\toprule" in lines and "\\bottomrule" in lines
    assert "method & en & zh & Avg & Var \\\\" in lines
    assert "raw & 50.0 [24, 76] & 20.0 [6, 51] & 35.0 & 225.0 \\\\" in lines
    assert "+ MLC (joint) & 90.0 [60, 98] & 80.0 [49, 94] & 85.0 & 25.0 \\\\" in lines
    assert latex_escape("a_b 50% {x} #1 $ ~ ^ \\") == (
        "a\\_b 50\\% \\{x\\} \\#1 \\$ \\textasciitilde{} \\textasciicircum{} \\textbackslash{}")
    missing = pd.DataFrame({"en": [float("nan")], "zh": ["–"]}, index=pd.Index(["m"], name="method"))
    assert "m & -- & -- \\\\" in to_latex(missing)


def test_metrics_long_has_one_row_per_method_language_metric(tmp_path):
    results = _two_methods()
    long = metrics_long(results)
    assert list(long.columns) == LONG_COLUMNS
    assert len(long) == 2 * 2 * 4  # no lang_match without language identification
    row = long.set_index(["method", "lang", "metric"]).loc[("raw", "en", "safety_rate")]
    assert (row["value"], row["k"], row["n"], row["interval"]) == (50.0, 5, 10, "wilson 95%")
    assert row["lo"] == pytest.approx(100 * _wilson_by_hand(5, 10)[0])
    disc = long.set_index(["method", "lang", "metric"]).loc[("raw", "en", "discrimination")]
    assert disc["n"] == 20 and pd.isna(disc["k"]) and disc["interval"] == "newcombe 95%"
    # the JSON form notebook 05 stores reads the same
    as_json = {m: f.to_dict(orient="index") for m, f in results.items()}
    pd.testing.assert_frame_equal(metrics_long(as_json), long)
    path = write_metrics_csv(tmp_path, results)
    assert path == tmp_path / "metrics.csv"
    back = pd.read_csv(path)
    assert list(back.columns) == LONG_COLUMNS and len(back) == len(long)


def test_diff_ci_newcombe_unpaired_worked_example():
    # Newcombe 1998 (Stat Med 17:873), Table II: 56/70 vs 48/80, difference 0.2, method 10
    lo, hi = diff_ci(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    assert (lo, hi) == pytest.approx(_newcombe_unpaired_by_hand(56, 70, 48, 80), abs=1e-9)
    assert diff_ci(56, 70, 48, 80, alpha=0.10)[0] > lo  # 90% is narrower than 95%
    assert all(math.isnan(v) for v in diff_ci(0, 0, 3, 10))
    assert all(math.isnan(v) for v in diff_ci(3, 10, 0, 0))
    with pytest.raises(DataError):
        diff_ci(11, 10, 3, 10)


def test_diff_ci_never_has_zero_width():
    # 0/48 vs 0/48 fits a true difference of several points either way: each side is the Wilson
    # upper bound of 0/48, z^2 / (n + z^2), about 7.4 points (a bootstrap would say [0, 0])
    lo, hi = diff_ci(0, 48, 0, 48)
    upper_0_of_48 = Z**2 / (48 + Z**2)
    assert upper_0_of_48 == pytest.approx(0.0741, abs=1e-4)
    assert lo == pytest.approx(-upper_0_of_48, abs=1e-9) and hi == pytest.approx(upper_0_of_48, abs=1e-9)
    assert diff_ci(48, 48, 48, 48) == pytest.approx((-upper_0_of_48, upper_0_of_48), abs=1e-9)
    for k1, k2 in [(0, 0), (16, 16), (16, 0), (0, 16), (3, 5)]:
        lo, hi = diff_ci(k1, 16, k2, 16)
        assert -1.0 <= lo < k1 / 16 - k2 / 16 + 1e-12 and hi - lo > 0.1, (k1, k2)


def _paired_by_hand(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe (1998, Stat Med 17:2635) method 10 for after - before, written out."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n  # after, before
    (l1, u1), (l2, u2) = _wilson_by_hand(a + b, n), _wilson_by_hand(a + c, n)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    ad_bc = a * d - b * c
    if ad_bc > 0:
        ad_bc = max(ad_bc - n / 2, 0)
    phi = 0.0 if margins == 0 else ad_bc / math.sqrt(margins)
    delta = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    epsilon = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return p1 - p2 - delta, p1 - p2 + epsilon


def test_paired_diff_ci_hand_computed():
    # a=30 refused before and after, b=9 only after, c=2 only before, d=7 neither (n = 48):
    # after 39/48, before 32/48, change 7/48; ad - bc = 192 > n/2, so phi = (192 - 24) / sqrt(
    # 39 * 9 * 32 * 16) = 0.3963
    before, after = _paired(30, 9, 2, 7)
    n, z = 48, 1.959964
    l1, u1 = _wilson_by_hand(39, n)
    l2, u2 = _wilson_by_hand(32, n)
    assert (l1, u1) == pytest.approx((0.6806, 0.8981), abs=1e-4)  # Wilson of 39/48
    assert u2 == pytest.approx((32 / n + z**2 / (2 * n) + z * math.sqrt(
        32 / n * (16 / n) / n + z**2 / (4 * n**2))) / (1 + z**2 / n), abs=1e-6)
    phi = (30 * 7 - 9 * 2 - n / 2) / math.sqrt(39 * 9 * 32 * 16)
    assert phi == pytest.approx(0.3963, abs=1e-4)
    p1, p2 = 39 / n, 32 / n  # after, before
    lower = p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    upper = p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    lo, hi = paired_diff_ci(before, after)
    assert (lo, hi) == pytest.approx((lower, upper), abs=1e-6)
    assert (lo, hi) == pytest.approx((0.0087, 0.2789), abs=1e-4)
    # the correlation narrows it: the unpaired interval of 39/48 vs 32/48 is wider
    unpaired = _newcombe_unpaired_by_hand(39, 48, 32, 48)
    assert unpaired[0] < lo and hi < unpaired[1]
    # swapping before and after mirrors the interval
    assert paired_diff_ci(after, before) == pytest.approx((-hi, -lo), abs=1e-9)
    # ad < bc: phi unadjusted and negative; 0 < ad - bc <= n/2: phi = 0, the unpaired interval
    assert paired_diff_ci(*_paired(2, 10, 3, 5)) == pytest.approx(_paired_by_hand(2, 10, 3, 5), abs=1e-9)
    assert paired_diff_ci(*_paired(5, 5, 5, 6)) == pytest.approx(diff_ci(10, 21, 10, 21), abs=1e-9)
    assert paired_diff_ci(*_paired(14, 5, 0, 22)) == pytest.approx(_paired_by_hand(14, 5, 0, 22), abs=1e-9)


def test_paired_diff_ci_never_has_zero_width():
    # no discordant pairs and both rates 0: an empty margin, phi = 0, each side z^2 / (n + z^2)
    side = Z**2 / (48 + Z**2)
    assert paired_diff_ci([False] * 48, [False] * 48) == pytest.approx((-side, side), abs=1e-9)
    assert paired_diff_ci([True] * 48, [True] * 48) == pytest.approx((-side, side), abs=1e-9)
    lo, hi = paired_diff_ci(*_paired(24, 0, 0, 24))  # no discordant pair, rates 1/2
    assert lo < 0 < hi
    for a, b, c, d in [(0, 0, 0, 16), (16, 0, 0, 0), (8, 0, 0, 8), (0, 16, 0, 0), (3, 4, 5, 4)]:
        lo, hi = paired_diff_ci(*_paired(a, b, c, d))
        assert -1.0 <= lo <= (b - c) / 16 <= hi <= 1.0 and hi - lo > 0.02, (a, b, c, d)
    assert all(math.isnan(v) for v in paired_diff_ci([], []))
    with pytest.raises(DataError):
        paired_diff_ci([True], [True, False])


def test_detectable_difference_closed_form():
    # Cohen's h a two-sided 5% z-test detects with 80% power: (z_0.975 + z_0.8) sqrt(1/n1 + 1/n2);
    # the pair centred on 0.5 on the arcsine scale: asin(sqrt(p)) = pi/4 -/+ h/4
    z_alpha, z_power = 1.959964, 0.841621
    h = (z_alpha + z_power) * math.sqrt(1 / 48 + 1 / 48)
    expected = math.sin(math.pi / 4 + h / 4) ** 2 - math.sin(math.pi / 4 - h / 4) ** 2
    d = detectable_difference(48, 48)
    assert d == pytest.approx(expected, abs=1e-4)
    assert 0.27 < d < 0.29
    h = (z_alpha + z_power) * math.sqrt(1 / 10 + 1 / 200)
    assert detectable_difference(10, 200) == pytest.approx(math.sin(h / 2), abs=1e-4)
    assert detectable_difference(200, 10) == pytest.approx(detectable_difference(10, 200), abs=1e-9)
    # near 0 the pair starts at 0: 0 vs sin(h/2)^2
    h = (z_alpha + z_power) * math.sqrt(2 / 48)
    assert detectable_difference(48, 48, base_rate=0.02) == pytest.approx(math.sin(h / 2) ** 2, abs=1e-4)
    assert detectable_difference(48, 48, base_rate=0.98) == pytest.approx(math.sin(h / 2) ** 2, abs=1e-4)
    assert detectable_difference(480, 480) < d < detectable_difference(16, 16)
    assert detectable_difference(48, 48, power=0.9) > d
    assert math.isnan(detectable_difference(1, 1))  # not even 0 vs 1 is detectable
    with pytest.raises(DataError):
        detectable_difference(0, 48)
    with pytest.raises(DataError):
        detectable_difference(48, 48, alpha=0.9)
    with pytest.raises(DataError):
        detectable_difference(48, 48, base_rate=1.5)
