"""The project's own corpus in ``data/corpus/`` (see ``data/README.md``), validated on load.

- ``load_corpus``        prompts.jsonl + translations/<lang>.jsonl as one aligned ``PromptSet``
- ``load_corpus_parts`` / ``save_corpus``  the English parts and the file ``tools/build_corpus.py`` writes
- ``load_corpus_answers``  benign reference answers per language (utility in every language)
- ``corpus_translation_files`` / ``corpus_summary``  which languages are on disk; datasheet counts
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlcwb.data.promptset import (SPLITS, Prompt, PromptSet, check_prompt_at, check_unique_ids,
                                  read_jsonl_numbered)
from mlcwb.errors import ConfigError, DataError, LanguageError
from mlcwb.io import write_jsonl
from mlcwb.languages import LANGUAGES, get_language, language_codes
from mlcwb.paths import data_dir

CORPUS_CATEGORIES = ("violence", "weapons", "cybercrime", "fraud", "drugs", "self_harm", "hate",
                     "harassment", "privacy", "sexual", "misinformation", "theft")
CORPUS_SOURCE = "mlcwb-corpus"


def corpus_dir() -> Path:
    return data_dir() / "corpus"


# --------------------------------------------------------------------------------------------------
# The project's corpus: data/corpus/prompts.jsonl (English, labels, responses, split, pair)
#                      + data/corpus/translations/<lang>.jsonl ({"id", "text", "method"} per prompt)
#                      + data/corpus/answers/<lang>.jsonl (the same, for benign dev/test answers)

_CORPUS_FIELDS = ("id", "category", "harmful", "borderline", "pair", "split", "en", "response", "rejected")


def _corpus_prompt(where: str, row: dict, require_split: bool) -> Prompt:
    allowed = set(_CORPUS_FIELDS) if require_split else set(_CORPUS_FIELDS) - {"split"}
    unknown = sorted(set(row) - allowed)
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(sorted(allowed))}")
    missing = [f for f in sorted(allowed - {"rejected", "pair"}) if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    if row["category"] not in CORPUS_CATEGORIES:
        raise DataError(f"{where}: field 'category': unknown category {row['category']!r}; "
                        f"known: {', '.join(CORPUS_CATEGORIES)}")
    if not isinstance(row["en"], str) or not row["en"].strip():
        raise DataError(f"{where}: field 'en': empty or not a string ({row['en']!r})")
    prompt = Prompt(id=row["id"], text={"en": row["en"]}, harmful=row["harmful"], category=row["category"],
                    split=row.get("split", "train"), source=CORPUS_SOURCE, borderline=row["borderline"],
                    response=row["response"], rejected=row.get("rejected"), method={"en": "original"},
                    pair=row.get("pair"))
    check_prompt_at(prompt, where)
    if prompt.response is None:
        raise DataError(f"{where}: field 'response': every corpus prompt needs an English response")
    if prompt.harmful != (prompt.rejected is not None):
        raise DataError(f"{where}: field 'rejected': required for harmful prompts and null for benign ones")
    return prompt


def _check_pairs(prompts: Sequence[Prompt], where: Sequence[str]) -> None:
    """Contrast pairs must point at an existing prompt that points back, same category, other label."""
    by_id = {p.id: p for p in prompts}
    for p, here in zip(prompts, where):
        if p.pair is None:
            continue
        q = by_id.get(p.pair)
        problem = ("no prompt has that id" if q is None else
                   f"{q.id!r} pairs with {q.pair!r} instead" if q.pair != p.id else
                   f"category differs ({p.category} vs {q.category})" if q.category != p.category else
                   "both halves have the same harmful label" if q.harmful == p.harmful else None)
        if problem:
            raise DataError(f"{here}: field 'pair': {p.pair!r}: {problem}")


def _read_corpus_file(path: Path, require_split: bool) -> tuple[list[Prompt], list[str]]:
    prompts, where = [], []
    for here, row in read_jsonl_numbered(path):
        prompts.append(_corpus_prompt(here, row, require_split))
        where.append(here)
    return prompts, where


def load_corpus_parts(paths: Sequence[str | Path]) -> PromptSet:
    """English corpus parts (no ``split`` field) as one validated set — the input of build_corpus."""
    prompts, where = [], []
    for path in paths:
        p, w = _read_corpus_file(Path(path), require_split=False)
        prompts += p
        where += w
    check_unique_ids(prompts, "corpus parts", where)
    _check_pairs(prompts, where)
    return PromptSet(prompts, "mlcwb-corpus")


def save_corpus(prompts: PromptSet, path: str | Path | None = None) -> Path:
    """Write the English corpus file (``prompts.jsonl``) that ``load_corpus`` reads."""
    path = Path(path) if path is not None else corpus_dir() / "prompts.jsonl"
    rows = [{"id": p.id, "category": p.category, "harmful": p.harmful, "borderline": p.borderline,
             "pair": p.pair, "split": p.split, "en": p.text["en"], "response": p.response,
             "rejected": p.rejected} for p in prompts]
    return write_jsonl(path, rows)


def corpus_translation_files(directory: str | Path | None = None, folder: str = "translations") -> dict[str, Path]:
    """``{lang: <folder>/<lang>.jsonl}`` in registry order; each file name must be a language code.

    ``folder`` is ``translations`` (the prompts) or ``answers`` (the benign reference answers).
    """
    root = Path(directory) if directory is not None else corpus_dir()
    files: dict[str, Path] = {}
    for path in sorted((root / folder).glob("*.jsonl")):
        try:
            code = get_language(path.stem).code
        except LanguageError as exc:
            raise LanguageError(f"{path}: file name is not a language code: {exc}") from None
        if code != path.stem:
            raise LanguageError(f"{path}: name the file {code}.jsonl (the canonical code)")
        if code == "en":
            raise LanguageError(f"{path}: English lives in prompts.jsonl, not in {folder}/")
        files[code] = path
    order = list(LANGUAGES)
    return {code: files[code] for code in sorted(files, key=order.index)}


def _read_translations(path: Path, ids: Collection[str], complete: bool = True,
                       kind: str = "a prompt in prompts.jsonl") -> tuple[dict[str, str], dict[str, str]]:
    """``{id: text}`` and ``{id: method}`` of one language file; ``ids`` are the ids it may name
    (``kind`` says what they are) and ``complete`` requires a line for each."""
    texts: dict[str, str] = {}
    methods: dict[str, str] = {}
    first: dict[str, str] = {}
    for where, row in read_jsonl_numbered(path):
        unknown = sorted(set(row) - {"id", "text", "method"})
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                            "allowed: id, text, method")
        prompt_id, text, method = row.get("id"), row.get("text"), row.get("method", "unknown")
        if not isinstance(prompt_id, str) or prompt_id not in ids:
            raise DataError(f"{where}: field 'id': {prompt_id!r} is not {kind} "
                            "(extra or misspelt id)")
        if prompt_id in first:
            raise DataError(f"{where}: field 'id': duplicate id {prompt_id!r} (first at {first[prompt_id]})")
        first[prompt_id] = where
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'text': empty or missing translation for {prompt_id!r}")
        if not isinstance(method, str) or not method.strip():
            raise DataError(f"{where}: field 'method': must be a non-empty string, got {method!r}")
        texts[prompt_id] = text
        methods[prompt_id] = method
    missing = [i for i in ids if i not in texts]
    if complete and missing:
        raise DataError(f"{path}: field 'id': no translation for {len(missing)} prompt(s) "
                        f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                        "every prompt in prompts.jsonl needs one line")
    return texts, methods


def load_corpus(langs: str | Sequence[str] | None = None, directory: str | Path | None = None) -> PromptSet:
    """The project's corpus (``data/corpus/``), validated on load.

    ``langs=None`` loads English and every language with a translation file; otherwise exactly
    ``langs`` in that order. Every error names the file, the line and the field.
    """
    root = Path(directory) if directory is not None else corpus_dir()
    path = root / "prompts.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found; build it from data/corpus/parts with "
                        "`python tools/build_corpus.py`")
    prompts, where = _read_corpus_file(path, require_split=True)
    check_unique_ids(prompts, path, where)
    _check_pairs(prompts, where)
    files = corpus_translation_files(root)
    wanted = ["en", *files] if langs is None else language_codes(langs)
    absent = [lang for lang in wanted if lang != "en" and lang not in files]
    if absent:
        raise LanguageError(f"no translation file for {', '.join(absent)} in {root / 'translations'}; "
                            f"available: {', '.join(['en', *files])}")
    ids = {p.id: i for i, p in enumerate(prompts)}
    for lang in wanted:
        if lang == "en":
            continue
        texts, methods = _read_translations(files[lang], ids)
        for p in prompts:
            p.text[lang] = texts[p.id]
            p.method[lang] = methods[p.id]
    return PromptSet([p.copy(wanted) for p in prompts], "mlcwb-corpus")


def load_corpus_answers(langs: str | Sequence[str] | None = None,
                        directory: str | Path | None = None) -> dict[str, dict[str, str]]:
    """``{lang: {prompt id: reference answer}}`` for the corpus's benign prompts.

    English is each benign prompt's ``response``; other languages come from
    ``answers/<lang>.jsonl``, translations of those answers for the dev and test splits only, so
    utility (perplexity of a good answer) can be measured in every language while training stays
    free of target-language responses, as the paper's setting requires. ``langs=None``: English and
    every language with an answers file.
    """
    root = Path(directory) if directory is not None else corpus_dir()
    english = load_corpus(["en"], root)
    answers = {"en": {p.id: p.response for p in english if not p.harmful and p.response}}
    files = corpus_translation_files(root, "answers")
    wanted = ["en", *files] if langs is None else language_codes(langs)
    absent = [lang for lang in wanted if lang != "en" and lang not in files]
    if absent:
        raise LanguageError(f"no reference answers for {', '.join(absent)} in {root / 'answers'}; "
                            f"available: {', '.join(['en', *files])}")
    for lang in wanted:
        if lang != "en":
            answers[lang] = _read_translations(files[lang], answers["en"], complete=False,
                                               kind="a benign prompt in prompts.jsonl")[0]
    return {lang: answers[lang] for lang in wanted}


def corpus_summary(prompts: PromptSet | None = None, by: str = "category") -> pd.DataFrame:
    """Counts for the datasheet (``data/README.md``), from the corpus as it is on disk by default.

    ``by="category"``: one row per category (+ ``total``), columns ``<label>_<split>`` for label in
    harmful/benign, plus ``borderline`` (benign look-risky probes) and ``total``.
    ``by="language"``: one row per language: name, resource level, prompts with text, how made,
    median characters.
    """
    prompts = load_corpus() if prompts is None else prompts
    if by == "category":
        df = pd.DataFrame({"category": [p.category for p in prompts],
                           "label": ["harmful" if p.harmful else "benign" for p in prompts],
                           "split": [p.split for p in prompts],
                           "borderline": [p.borderline for p in prompts]})
        columns = [f"{label}_{s}" for label in ("harmful", "benign") for s in SPLITS]
        table = (pd.crosstab(df["category"], df["label"] + "_" + df["split"])
                 .reindex(columns=columns, fill_value=0))
        table["borderline"] = df.groupby("category")["borderline"].sum()
        table["total"] = df.groupby("category").size()
        order = [c for c in CORPUS_CATEGORIES if c in table.index]
        table = table.reindex(order + sorted(set(table.index) - set(order))).astype(int)
        table.loc["total"] = table.sum()
        table.columns.name = None
        return table
    if by == "language":
        langs = prompts._all_languages()
        rows = []
        for lang in langs:
            texts = [p.text[lang] for p in prompts if lang in p.text]
            methods = sorted({p.method.get(lang, "unknown") for p in prompts if lang in p.text})
            info = LANGUAGES[lang]
            rows.append({"language": lang, "name": info.name, "resource": info.resource,
                         "prompts": len(texts), "harmful": sum(p.harmful for p in prompts if lang in p.text),
                         "benign": sum(not p.harmful for p in prompts if lang in p.text),
                         "method": ", ".join(methods),
                         "median_chars": int(np.median([len(t) for t in texts]))})
        return pd.DataFrame(rows).set_index("language")
    raise ConfigError(f"corpus_summary: by must be 'category' or 'language', got {by!r}")
