"""Language registry: one place that knows each language's code, names, script and FLORES-200 code.

Every other module names languages by the short ``code`` (ISO 639-1 where one exists), so prompt sets,
translation caches and representation files from different sources line up. The FLORES-200 code is
what NLLB-style translators want; ``resource`` groups languages the way MultiJail (Deng et al., 2024)
and the MLC paper report results: by the language's share of CommonCrawl, high > 1 %, medium
0.1-1 %, low < 0.1 %.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from mlcwb.errors import LanguageError

RESOURCE_LEVELS = ("high", "medium", "low")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    native: str
    script: str  # ISO 15924
    flores: str  # FLORES-200 code, e.g. "zho_Hans"
    resource: str  # "high" | "medium" | "low"


def _lang(code: str, name: str, native: str, flores: str, resource: str) -> Language:
    return Language(code=code, name=name, native=native, script=flores.split("_")[1], flores=flores,
                    resource=resource)


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in [
    _lang("en", "English", "English", "eng_Latn", "high"),
    _lang("zh", "Chinese", "中文", "zho_Hans", "high"),
    _lang("ru", "Russian", "Русский", "rus_Cyrl", "high"),
    _lang("ja", "Japanese", "日本語", "jpn_Jpan", "high"),
    _lang("fr", "French", "Français", "fra_Latn", "high"),
    _lang("de", "German", "Deutsch", "deu_Latn", "high"),
    _lang("es", "Spanish", "Español", "spa_Latn", "high"),
    _lang("it", "Italian", "Italiano", "ita_Latn", "high"),
    _lang("pt", "Portuguese", "Português", "por_Latn", "high"),
    _lang("vi", "Vietnamese", "Tiếng Việt", "vie_Latn", "high"),
    _lang("id", "Indonesian", "Bahasa Indonesia", "ind_Latn", "high"),
    _lang("tr", "Turkish", "Türkçe", "tur_Latn", "high"),
    _lang("ar", "Arabic", "العربية", "arb_Arab", "medium"),
    _lang("ko", "Korean", "한국어", "kor_Hang", "medium"),
    _lang("th", "Thai", "ไทย", "tha_Thai", "medium"),
    _lang("fa", "Persian", "فارسی", "pes_Arab", "medium"),
    _lang("hi", "Hindi", "हिन्दी", "hin_Deva", "medium"),
    _lang("bn", "Bengali", "বাংলা", "ben_Beng", "low"),
    _lang("sw", "Swahili", "Kiswahili", "swh_Latn", "low"),
    _lang("jv", "Javanese", "Basa Jawa", "jav_Latn", "low"),
    _lang("ur", "Urdu", "اردو", "urd_Arab", "low"),
    _lang("ps", "Pashto", "پښتو", "pbt_Arab", "low"),
    # Kurdish as the MLC paper uses it: Sorani (Central Kurdish), Arabic script.
    _lang("ku", "Kurdish (Sorani)", "کوردی", "ckb_Arab", "low"),
]}

PAPER_LANGUAGES = ["en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku"]
MULTIJAIL_LANGUAGES = ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]


def _aliases() -> dict[str, str]:
    """Lower-cased spellings people use for a language: FLORES and ISO 639-3 codes, English names."""
    table: dict[str, str] = {}
    for lang in LANGUAGES.values():
        table[lang.flores.lower()] = lang.code
        table[lang.flores.split("_")[0]] = lang.code
        table[lang.name.lower()] = lang.code
    table.update({"ckb": "ku", "sorani": "ku", "kurdish": "ku", "zho": "zh", "chi": "zh", "ara": "ar",
                  "swa": "sw"})
    table.update({code: code for code in LANGUAGES})
    return table


_ALIASES = _aliases()


def get_language(code: str) -> Language:
    """The registry entry for ``code``; also accepts ``zh-CN``, ``zho_Hans``, ``ckb``, ``Chinese``.

    Raises LanguageError naming close matches, so a typo in a notebook parameter is a one-line fix.
    """
    if not isinstance(code, str) or not code.strip():
        raise LanguageError(f"language code must be a non-empty string, got {code!r}")
    key = code.strip().lower().replace("-", "_")
    found = _ALIASES.get(key)
    if found is None and key not in _ALIASES and "_" in key:
        head = key.split("_")[0]  # BCP-47 region or script subtag: zh-CN, pt-BR, sr-Latn
        found = _ALIASES.get(head) if len(head) in (2, 3) else None
    if found is None:
        close = difflib.get_close_matches(key, list(_ALIASES), n=5, cutoff=0.6)
        hint = ", ".join(dict.fromkeys(f"{_ALIASES[c]} ({LANGUAGES[_ALIASES[c]].name})" for c in close))
        raise LanguageError(
            f"unknown language {code!r}"
            + (f"; did you mean: {hint}?" if hint else "")
            + f" Known codes: {', '.join(LANGUAGES)}."
        )
    return LANGUAGES[found]


def language_codes(langs: str | list[str] | tuple[str, ...]) -> list[str]:
    """Canonical codes for one or several language names, in order, without repeats."""
    if isinstance(langs, str):
        langs = [langs]
    return list(dict.fromkeys(get_language(c).code for c in langs))


def study_languages(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """The languages a notebook measures: ``requested`` as given, else those of ``available`` that
    the paper studies, else all of ``available`` (a prompt set with none of the paper's languages)."""
    if requested:
        return list(requested)
    return [lang for lang in available if lang in PAPER_LANGUAGES] or list(available)


def unseen_languages(measured: Sequence[str], trained: Sequence[str] | None) -> list[str]:
    """The languages of ``measured`` that MLC did not train on, in ``measured`` order.

    The paper's question is whether alignment reaches languages training never saw, so results
    on them are marked; one definition keeps the training summary (notebook 04) and the safety
    comparison (notebook 05) agreeing on which those are. ``trained`` None (no training summary
    to read) means nothing is unseen; an empty ``trained`` means every measured language is.
    """
    if trained is None:
        return []
    return [lang for lang in measured if lang not in trained]
