"""The reproduce report's reading and its account of how a preset's sizes were chosen."""

from __future__ import annotations

import json

from mlcwb.reproduce import PRESETS, Preset
from mlcwb.run_report import _choice_section, reading


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
