"""The transfer sweep's second-round rule (a form of MLC that carries the decision), applied to
recorded candidates: each gate, the twin each form is judged against, and the choice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

LANGS = ["en", "zh", "ru", "ja", "ar"]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location(
        "transfer_sweep", Path(__file__).resolve().parent.parent / "benchmarks" / "transfer_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _candidate(name, en=40.0, others=10.0, lang_match=98.0, perplexity=5.0, collapsed=(), train_s=100.0,
               off_lang=None):
    rows = [{"lang": lang, "discrimination": en if lang == "en" else others,
             "lang_match": 50.0 if lang == off_lang else lang_match, "utility_perplexity": perplexity}
            for lang in LANGS]
    return {"name": name, "train_s": train_s, "en_discrimination": en, "others_discrimination_mean": others,
            "collapsed_langs": list(collapsed), "per_language": rows}


TWIN = "sharp-sft-full-288-1e-5"


def test_a_form_that_meets_every_gate_is_chosen_and_the_cheaper_of_a_tie(sweep):
    twin = _candidate(TWIN)
    fast = _candidate(f"{TWIN}+mlc-label", others=25.0, train_s=50.0)
    slow = _candidate(f"{TWIN}+mlc-centred", others=26.0, train_s=90.0)
    chosen, problems = sweep.decision_choice([twin, fast, slow])
    assert problems == {fast["name"]: [], slow["name"]: []}
    assert chosen == fast["name"]  # 25 vs 26 points: a tie within 2, so the cheaper


@pytest.mark.parametrize("changes, problem", [
    ({"others": 19.0}, "non-English discrimination +9.0 points"),
    ({"off_lang": "ja"}, "below 90% in ja"),
    ({"en": 34.0}, "English discrimination fell 6.0 points"),
    ({"collapsed": ["zh"]}, "collapsed in zh"),
    ({"perplexity": 5.6}, "utility perplexity x1.12"),
])
def test_each_gate_stops_a_form(sweep, changes, problem):
    twin = _candidate(TWIN)
    form = _candidate(f"{TWIN}+mlc-label", **{"others": 25.0, **changes})
    chosen, problems = sweep.decision_choice([twin, form])
    assert chosen is None
    assert any(problem in p for p in problems[form["name"]]), problems


def test_mlc_alone_is_judged_against_the_raw_model(sweep):
    raw = _candidate("raw", en=54.0, others=2.0)
    alone = _candidate("mlc-label-centred-1e-6", en=52.0, others=14.0)
    chosen, problems = sweep.decision_choice([raw, alone])
    assert problems == {alone["name"]: []} and chosen == alone["name"]


def test_the_rule_is_part_of_the_docstring_the_json_records(sweep):
    criterion = sweep.__doc__.split("Selection criterion, fixed before any candidate ran:")[1]
    assert "Second round" in criterion and "at least 10 points higher" in criterion
    assert sweep.DECISION["min_gain"] == 10.0 and sweep.DECISION["min_lang_match"] == 90.0
    for name, settings in sweep.CANDIDATES.items():
        if "+mlc-" in name:
            assert name.split("+")[0] in sweep.CANDIDATES  # every joint form has its twin


def test_a_raw_record_from_the_first_round_is_measured_again(sweep):
    """Forms of MLC alone are judged against the raw model, so a raw record without utility or the
    collapse flag (the first round kept neither) is measured again; other records are kept."""
    first_round = {"name": "raw", "per_language": [{"lang": "en", "discrimination": 54.2}]}
    old_form = {"name": "mlc-official-1e-6", "per_language": [{"lang": "en", "discrimination": 1.0}]}
    todo = [name for name, _ in sweep.pending({"raw": first_round, old_form["name"]: old_form}, None)]
    assert todo[0] == "raw" and old_form["name"] not in todo and TWIN in todo
    current = _candidate("raw")
    for row in current["per_language"]:
        row["collapsed"] = False
    assert "raw" not in [name for name, _ in sweep.pending({"raw": current}, None)]
    assert [name for name, _ in sweep.pending({"raw": first_round}, [TWIN])] == [TWIN]
