from __future__ import annotations

import pytest

from mlcwb.errors import LanguageError
from mlcwb.languages import (LANGUAGES, MULTIJAIL_LANGUAGES, PAPER_LANGUAGES, RESOURCE_LEVELS, get_language,
                             language_codes, unseen_languages)


def test_registry_covers_paper_multijail_and_extra_languages():
    needed = set(PAPER_LANGUAGES) | set(MULTIJAIL_LANGUAGES) | {"fr", "de", "es", "hi"}
    assert needed <= set(LANGUAGES)
    assert PAPER_LANGUAGES == ["en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku"]
    assert MULTIJAIL_LANGUAGES == ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]


def test_entries_are_consistent():
    assert len({lang.flores for lang in LANGUAGES.values()}) == len(LANGUAGES)
    for code, lang in LANGUAGES.items():
        assert lang.code == code
        assert lang.resource in RESOURCE_LEVELS
        assert lang.flores.endswith("_" + lang.script)
        assert lang.name and lang.native


def test_flores_codes_and_scripts():
    assert get_language("zh").flores == "zho_Hans"
    assert get_language("ar").flores == "arb_Arab"
    assert get_language("sw").flores == "swh_Latn"
    assert get_language("ps").flores == "pbt_Arab"
    kurdish = get_language("ku")  # Sorani, Arabic script, as in the MLC paper
    assert (kurdish.flores, kurdish.script) == ("ckb_Arab", "Arab")
    assert "Sorani" in kurdish.name


def test_resource_levels_follow_multijail():
    levels = {code: get_language(code).resource for code in MULTIJAIL_LANGUAGES[1:]}
    assert levels == {"zh": "high", "it": "high", "vi": "high", "ar": "medium", "ko": "medium",
                      "th": "medium", "bn": "low", "sw": "low", "jv": "low"}
    assert [get_language(c).resource for c in ("ur", "ps", "ku")] == ["low"] * 3


@pytest.mark.parametrize("alias, code", [("zh", "zh"), ("ZH", "zh"), ("zh-CN", "zh"), ("zho_Hans", "zh"),
                                         ("zho", "zh"), ("Chinese", "zh"), ("ckb", "ku"), ("ckb_Arab", "ku"),
                                         (" pt-BR ", "pt"), ("swh", "sw"), ("Bengali", "bn")])
def test_aliases(alias, code):
    assert get_language(alias).code == code


def test_unknown_code_lists_close_matches():
    with pytest.raises(LanguageError, match=r"did you mean: zh \(Chinese\)"):
        get_language("Chinse")
    with pytest.raises(LanguageError, match="unknown language 'xq'.*Known codes: en, zh"):
        get_language("xq")
    with pytest.raises(LanguageError, match="non-empty"):
        get_language("")


def test_language_codes_canonical_and_deduplicated():
    assert language_codes(["en", "zh-CN", "zh", "ckb"]) == ["en", "zh", "ku"]
    assert language_codes("Russian") == ["ru"]


def test_unseen_languages_are_the_measured_ones_training_left_out():
    measured = ["en", "zh", "ru", "ja", "ar", "sw"]
    assert unseen_languages(measured, ["en", "zh", "ru", "ja", "ar"]) == ["sw"]
    assert unseen_languages(["sw", "en", "ur"], ["en", "fr"]) == ["sw", "ur"]  # measured order
    assert unseen_languages(measured, measured) == []
    assert unseen_languages(measured, None) == []  # no training summary: nothing to mark
    assert unseen_languages(measured, []) == measured  # trained on none of them
