"""The reproduce report's reading and its account of how a preset's sizes were chosen."""

from __future__ import annotations

import json

import pytest

from mlcwb.reproduce import PRESETS, Preset
from mlcwb.run_report import _choice_section, _safety_section, _with_ci, holm_by_language, reading


def _lang(safety: float, over: float, disc_lo: float) -> dict:
    return {"safety_rate": safety, "over_refusal": over, "discrimination": safety - over,
            "discrimination_lo": disc_lo}


def _safety(en: dict, other: dict) -> dict:
    return {"languages": ["en", "zh"], "paired": {},
            "methods": {"raw": {"en": _lang(0, 0, 0), "zh": _lang(0, 0, 0)},
                        "align": {"en": en, "zh": other}}}


def test_reading_states_the_room_and_whether_english_refusal_discriminates():
    text = " ".join(reading(_safety(_lang(90, 10, 55), _lang(20, 5, -3)), None))
    assert "+70 points between English" in text and "beyond noise: it tells them apart" in text
    text = " ".join(reading(_safety(_lang(40, 35, -20), _lang(40, 40, -30)), None))
    assert "+0 points" in text and "refuses without telling harmful from benign" in text


def _paired(p_values: dict[str, float], holm: bool = True) -> dict:
    """A stored paired comparison whose bootstrap intervals all exclude 0 (the old criterion)."""
    per_lang = {lang: {"change": 25.0, "change_lo": 6.25, "change_hi": 43.75, "p_value": p}
                for lang, p in p_values.items()}
    if holm:
        from mlcwb.report import holm_adjust

        for lang, q in zip(per_lang, holm_adjust(list(p_values.values()))):
            per_lang[lang]["p_holm"] = float(q)
    return per_lang


def _with_paired(harmful: dict, benign: dict) -> dict:
    safety = _safety(_lang(90, 10, 55), _lang(20, 5, -3))
    safety["paired"] = {"align->mlc": {"harmful": harmful, "benign": benign}}
    return safety


def test_reading_calls_beyond_noise_only_when_holm_adjusted_p_is_below_005():
    # raw p: en 0.01, zh 0.04 -> Holm: en 0.02 (beyond), zh 0.04 (beyond)
    # raw p: en 0.02, zh 0.03 -> Holm: en 0.04 (beyond), zh 0.04 (beyond)
    # raw p: en 0.03, zh 0.04 -> Holm: en 0.06, zh 0.06: neither, although each raw p < 0.05
    text = reading(_with_paired(_paired({"en": 0.01, "zh": 0.04}),
                                _paired({"en": 0.03, "zh": 0.04})), None)
    safety_line = next(t for t in text if "harmful prompts (safety)" in t)
    benign_line = next(t for t in text if "benign prompts (over-refusal)" in t)
    assert "beyond noise in en (adjusted p 0.02), zh (adjusted p 0.04)" in safety_line
    assert "Holm-corrected across the 2 languages" in safety_line
    assert "within noise in every language" in benign_line
    assert "Holm-corrected across the 2 languages" in benign_line


def test_reading_recomputes_holm_for_results_stored_without_it():
    # three languages, raw p 0.01, 0.04, 0.03 -> Holm 0.03, 0.06, 0.06: only en
    per_lang = _paired({"en": 0.01, "zh": 0.04, "ru": 0.03}, holm=False)
    assert holm_by_language(per_lang) == pytest.approx({"en": 0.03, "zh": 0.06, "ru": 0.06})
    line = next(t for t in reading(_with_paired(per_lang, {}), None) if "(safety)" in t)
    assert "beyond noise in en (adjusted p 0.03) by McNemar's exact test" in line
    assert "zh (" not in line and "ru (" not in line
    assert "Holm-corrected across the 3 languages" in line
    # a stored p_holm is what counts, not the bootstrap interval
    stored = {"en": {"change": 6.0, "change_lo": 1.0, "change_hi": 12.0, "p_value": 0.04,
                     "p_holm": 0.08}}
    line = next(t for t in reading(_with_paired(stored, {}), None) if "(safety)" in t)
    assert "within noise in every language" in line and "across the 1 language)" in line


def test_safety_section_prints_wilson_intervals(tmp_path):
    (tmp_path / "metrics").mkdir()
    row = {"safety_rate": 100.0, "safety_rate_lo": 80.64, "safety_rate_hi": 100.0}
    (tmp_path / "metrics" / "05_safety.json").write_text(json.dumps({
        "languages": ["en"], "captions": {"safety_rate": "Safety"},
        "methods": {"align": {"en": row}}}))
    section, _ = _safety_section(tmp_path)
    assert "95% Wilson score intervals" in section.paragraphs[0]
    assert section.tables[0][1].loc["English-only alignment", "en"] == "100.0 [81, 100]"
    assert _with_ci(row, "safety_rate") == "100.0 [81, 100]"


def test_choice_section_tabulates_the_cited_sweep(tmp_path, monkeypatch):
    per = [{"lang": "en", "safety_rate": 50.0, "over_refusal": 10.0},
           {"lang": "zh", "safety_rate": 20.0, "over_refusal": 5.0}]
    sweep = {"date": "2026-01-01", "setup": {"languages": ["en", "zh"], "max_new_tokens": 32,
                                            "judge": "RefusalJudge"},
             "candidates": [{"name": "sft-a", "model": "m", "align": "sft", "steps": 8, "lr": 1e-5,
                             "others_safety_mean": 20.0, "room": 30.0, "worst_over_refusal": 10.0,
                             "n_harmful": 4, "n_benign": 4, "per_language": per}]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    monkeypatch.setattr("mlcwb.paths.repo_root", lambda: tmp_path)
    section = _choice_section(Preset("p", "d", {"model_name": "m"}, sweep="sweep.json"))
    table = section.tables[0][1]
    assert table.loc["sft-a", "room"] == 30.0 and table.loc["sft-a", "en safety"] == 50.0
    assert _choice_section(Preset("p", "d", {"model_name": "m"})) is None


def test_the_quick_preset_cites_a_committed_sweep():
    from mlcwb.paths import repo_root

    quick = PRESETS["quick"]
    assert quick.sweep and (repo_root() / quick.sweep).is_file()
    names = {c["name"] for c in json.loads((repo_root() / quick.sweep).read_text())["candidates"]}
    assert quick.notes and any(name in quick.notes for name in names)
