"""Quality checks for machine translations, as data: one row per translation, one column per check.

A bad translation quietly poisons everything downstream: a prompt "in Swahili" that is still English
measures nothing about Swahili, and an empty or truncated one is not the same request. Each check here
is cheap, runs offline, and says *why* a translation is suspect:

- ``lang``: a language identifier (py3langid, which ships its model in the pip package) must name the
  target language; output detected as the source language is ``untranslated``, any other language is
  ``wrong_language``. Languages the detector does not know are ``unchecked`` — never counted as passing.
- ``length``: the character-length ratio target/source, as a robust z-score against the ratios of the
  project corpus's own translations for that language pair (Chinese is ~0.34x English, German ~1.26x).
- ``empty`` and ``copy`` (the output is the source, or nearly: chrF >= 0.9 against it).
- ``round_trip`` (optional): chrF between the source and a back-translation.

The verdict per row is ``ok`` (every check ran and passed), ``flagged`` (any check failed) or
``unchecked`` (nothing failed but the language could not be identified).
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcwb.errors import ConfigError
from mlcwb.languages import LANGUAGES, get_language

if TYPE_CHECKING:
    from mlcwb.data import PromptSet
    from mlcwb.translate import Translator

# Registry code -> detector labels that count as that language. Close varieties the detector splits
# off (Wu/Cantonese for written Chinese, Egyptian/Moroccan Arabic, Malay for Indonesian) are accepted;
# None marks a language the detector does not know. py3langid's "ku" is Kurmanji (Latin script) while
# our "ku" is Sorani (Arabic script), so Sorani is unchecked rather than checked against the wrong thing.
_ALIASES: dict[str, set[str]] = {"zh": {"wuu", "yue"}, "ar": {"ary", "arz"}, "id": {"ms"}, "en": {"pcm"}}
_UNKNOWN_TO_DETECTOR = {"ku"}

COPY_CHRF = 0.9  # chrF of output vs source at or above which the output counts as a copy
LENGTH_Z_MAX = 4.5  # |robust z| of the log length ratio above which a translation is an outlier
ROUND_TRIP_MIN = 0.35  # chrF(source, back-translation) below which the meaning likely drifted
CHECK_COLUMNS = ["detected", "detected_prob", "lang_check", "length_ratio", "length_z", "empty", "copy",
                 "round_trip_chrf", "flags", "verdict"]


@functools.lru_cache(maxsize=1)
def _identifier() -> Any:
    """py3langid's bundled model with normalised probabilities; loading takes ~3 s, so once."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detector_labels(lang: str) -> set[str] | None:
    """The detector labels accepted as ``lang``; None when the detector cannot check it."""
    code = get_language(lang).code
    if code in _UNKNOWN_TO_DETECTOR or code not in set(_identifier().labels):
        return None
    return {code} | _ALIASES.get(code, set())


def detect_language(text: str) -> tuple[str, float]:
    """(detector label, probability) for one text."""
    label, prob = _identifier().classify(text)
    return label, float(prob)


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score (Popović 2015) in [0, 1], spaces ignored, n = 1..max_n averaged.

    Script-agnostic (no tokenizer needed), so the same number means roughly the same thing for
    Chinese and Swahili; beta = 2 weighs recall twice, as sacrebleu's chrF does.
    """
    hyp, ref = "".join(_normalise(hypothesis).split()), "".join(_normalise(reference).split())
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            continue
        overlap = sum((h & r).values())
        precisions.append(overlap / sum(h.values()))
        recalls.append(overlap / sum(r.values()))
    if not precisions:
        return float(hyp == ref)
    p, r = float(np.mean(precisions)), float(np.mean(recalls))
    if p == 0 and r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (beta**2 * p + r)


@dataclass
class LengthModel:
    """Per language pair: median and robust spread (1.4826 * MAD) of log(len(tgt) / len(src)).

    Pairs not seen in calibration get a centre of 0 and a wide spread (ratio 0.2x-4.8x passes at
    the default threshold), so they are checked only for gross truncation or run-on output.
    """

    stats: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    fallback_scale: float = 0.35
    min_scale: float = 0.1  # a very consistent pair must not make every small deviation an outlier

    @classmethod
    def fit(cls, prompts: PromptSet, src: str = "en") -> LengthModel:
        """Calibrate on a PromptSet's own translations from ``src`` to each of its languages."""
        stats = {}
        sources = prompts.texts(src)
        for tgt in prompts.languages:
            if tgt == src:
                continue
            logs = np.log([max(len(t), 1) / max(len(s), 1) for s, t in zip(sources, prompts.texts(tgt))])
            centre = float(np.median(logs))
            stats[(src, tgt)] = (centre, 1.4826 * float(np.median(np.abs(logs - centre))))
        return cls(stats)

    def z(self, src: str, tgt: str, source: str, translation: str) -> tuple[float, float]:
        """(ratio, robust z) of one translation's character length."""
        ratio = max(len(translation.strip()), 1) / max(len(source.strip()), 1)
        centre, scale = self.stats.get((src, tgt), (0.0, self.fallback_scale))
        return ratio, (math.log(ratio) - centre) / max(scale, self.min_scale)


@functools.lru_cache(maxsize=1)
def corpus_length_model() -> LengthModel:
    """The length model calibrated on the shipped corpus (English -> its ten languages)."""
    from mlcwb.data import load_corpus

    return LengthModel.fit(load_corpus())


def _lang_check(translation: str, src: str, tgt: str) -> tuple[str | None, float | None, str]:
    accepted = detector_labels(tgt)
    label, prob = detect_language(translation)
    if accepted is None:
        return label, prob, "unchecked"
    if label in accepted:
        return label, prob, "pass"
    source_labels = detector_labels(src) or {src}
    return label, prob, "untranslated" if label in source_labels else "wrong_language"


def check_translations(rows: pd.DataFrame, length_model: LengthModel | None = None,
                       round_trip: Translator | None = None, length_z_max: float = LENGTH_Z_MAX,
                       round_trip_min: float = ROUND_TRIP_MIN) -> pd.DataFrame:
    """Add the check columns (``CHECK_COLUMNS``) to a table with ``src, tgt, source, translation``.

    ``round_trip`` back-translates every output with that translator (costly: a second MT pass)
    and flags chrF(source, back-translation) < ``round_trip_min``.
    """
    missing = {"src", "tgt", "source", "translation"} - set(rows.columns)
    if missing:
        raise ConfigError(f"check_translations: the table lacks column(s) {sorted(missing)}; "
                          "pass the output of mlcwb.translate.translate_rows")
    length_model = length_model or corpus_length_model()
    out = rows.copy().reset_index(drop=True)
    records = []
    for src, tgt, source, translation in zip(out["src"], out["tgt"], out["source"], out["translation"]):
        empty = not translation.strip()
        if empty:
            detected, prob, lang = None, None, "unchecked" if detector_labels(tgt) is None else "empty"
            ratio, z = 0.0, math.nan
        else:
            detected, prob, lang = _lang_check(translation, src, tgt)
            ratio, z = length_model.z(src, tgt, source, translation)
        copy = not empty and chrf(translation, source) >= COPY_CHRF
        records.append({"detected": detected, "detected_prob": prob, "lang_check": lang,
                        "length_ratio": ratio, "length_z": z, "empty": empty, "copy": copy})
    checks = pd.DataFrame(records, index=out.index)
    checks["round_trip_chrf"] = np.nan
    if round_trip is not None:
        for (src, tgt), group in out.groupby(["src", "tgt"], sort=False):
            back = round_trip.translate(group["translation"].tolist(), tgt, src)
            checks.loc[group.index, "round_trip_chrf"] = [chrf(b, s) for b, s in zip(back, group["source"])]
    flags = []
    for row in checks.itertuples():
        f = [name for name, bad in (
            ("empty", row.empty),
            ("untranslated", row.lang_check == "untranslated"),
            ("wrong_language", row.lang_check == "wrong_language"),
            ("copy", row.copy),
            ("length", not row.empty and abs(row.length_z) > length_z_max),
            ("round_trip", not math.isnan(row.round_trip_chrf) and row.round_trip_chrf < round_trip_min),
        ) if bad]
        flags.append(",".join(f))
    checks["flags"] = flags
    checks["verdict"] = np.where(checks["flags"] != "", "flagged",
                                 np.where(checks["lang_check"] == "unchecked", "unchecked", "ok"))
    return pd.concat([out.drop(columns=[c for c in CHECK_COLUMNS if c in out.columns]), checks], axis=1)


def acceptance_table(checked: pd.DataFrame) -> pd.DataFrame:
    """Per target language: counts per verdict and flag, and ``acceptance`` = ok / (ok + flagged).

    Unchecked rows are excluded from the rate's denominator and reported in their own column, so a
    language the detector cannot read shows acceptance NaN rather than a reassuring 100 %.
    """
    rows = []
    for tgt, group in checked.groupby("tgt", sort=False):
        verdicts = group["verdict"].value_counts()
        ok, flagged = int(verdicts.get("ok", 0)), int(verdicts.get("flagged", 0))
        row = {"language": tgt, "name": LANGUAGES[tgt].name if tgt in LANGUAGES else tgt, "n": len(group),
               "ok": ok, "flagged": flagged, "unchecked": int(verdicts.get("unchecked", 0)),
               "acceptance": ok / (ok + flagged) if ok + flagged else float("nan")}
        flag_counts = Counter(f for flags in group["flags"] for f in flags.split(",") if f)
        for name in ("wrong_language", "untranslated", "empty", "copy", "length", "round_trip"):
            row[name] = flag_counts.get(name, 0)
        rows.append(row)
    return pd.DataFrame(rows).set_index("language")


def corpus_rows(langs: Sequence[str] | None = None, src: str = "en") -> pd.DataFrame:
    """The shipped corpus's own translations as a ``translate_rows``-shaped table (for calibration)."""
    from mlcwb.data import load_corpus

    prompts = load_corpus(None if langs is None else [src, *langs])
    rows = [{"id": p.id, "src": src, "tgt": tgt, "source": p.text[src], "translation": p.text[tgt],
             "method": p.method.get(tgt, "unknown")}
            for tgt in prompts.languages if tgt != src for p in prompts]
    return pd.DataFrame(rows)


def corpus_acceptance(langs: Sequence[str] | None = None) -> pd.DataFrame:
    """How often the checks accept the corpus's shipped translations, per language (target >= 95 %)."""
    return acceptance_table(check_translations(corpus_rows(langs)))
