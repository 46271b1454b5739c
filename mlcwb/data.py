"""Prompt sets: one prompt id, many languages, labels and splits — and loaders for the formats people have.

Every later stage (translation, extraction, MLC training, evaluation) works on *aligned* prompts: the
same request in several languages under one id. ``PromptSet`` keeps that alignment explicit, so a
split or a selection can never separate a prompt from its translations, and so "this language is
missing for some prompts" is an error at load time rather than a silent shape mismatch later.

Loaders:
- ``load_corpus``        the project's own corpus in ``data/corpus/`` (see ``data/README.md``)
- ``load_multijail``     MultiJail (Deng et al., 2024): a local CSV or the hub id
- ``load_pku_sft`` / ``load_pku_preference``  PKU-SafeRLHF multilingual, in the two shapes the MLC
                         paper's code publishes (Alpaca-style SFT rows; ShareGPT-style preference rows)
- ``load_table``         any CSV/JSONL with one column per language
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcwb.errors import ConfigError, DataError, LanguageError
from mlcwb.io import write_jsonl
from mlcwb.languages import LANGUAGES, get_language, language_codes
from mlcwb.paths import data_dir, shared_data_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
CORPUS_CATEGORIES = ("violence", "weapons", "cybercrime", "fraud", "drugs", "self_harm", "hate",
                     "harassment", "privacy", "sexual", "misinformation", "theft")
CORPUS_SOURCE = "mlcwb-corpus"
MULTIJAIL_HUB_ID = "DAMO-NLP-SG/MultiJail"
MULTIJAIL_COLUMNS = ("id", "source", "tags", "en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


def corpus_dir() -> Path:
    return data_dir() / "corpus"


# --------------------------------------------------------------------------------------------------
# Prompt and PromptSet


@dataclass
class Prompt:
    id: str
    text: dict[str, str]  # language code -> prompt text
    harmful: bool
    category: str
    split: str = "train"  # "train" | "dev" | "test"
    source: str = ""
    borderline: bool = False  # benign but looks risky: an over-refusal probe
    response: str | None = None  # English safe answer / refusal (SFT target, DPO chosen)
    rejected: str | None = None  # English unsafe-style answer (DPO rejected)
    method: dict[str, str] = field(default_factory=dict)  # language -> how the text was made
    pair: str | None = None  # id of the contrast-pair partner (harmful <-> benign look-alike)

    def copy(self, langs: Sequence[str] | None = None) -> Prompt:
        """A deep-enough copy (fresh dicts); ``langs`` keeps only those languages, in that order."""
        if langs is None:
            return dataclasses.replace(self, text=dict(self.text), method=dict(self.method))
        return dataclasses.replace(self, text={lang: self.text[lang] for lang in langs},
                                   method={lang: self.method[lang] for lang in langs if lang in self.method})


def _check_prompt(p: Prompt) -> None:
    """Raise DataError/LanguageError naming the offending field; callers prefix where it came from."""
    if not isinstance(p.id, str) or not p.id.strip():
        raise DataError(f"field 'id' must be a non-empty string, got {p.id!r}")
    if not isinstance(p.text, dict) or not p.text:
        raise DataError("field 'text' must map at least one language code to a prompt")
    for lang, text in p.text.items():
        canonical = get_language(lang).code
        if canonical != lang:
            raise LanguageError(f"field 'text': write language {lang!r} as {canonical!r}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"field 'text' ({lang}): empty or not a string ({text!r})")
    if not isinstance(p.method, dict) or not all(isinstance(v, str) for v in p.method.values()):
        raise DataError(f"field 'method' must map language codes to strings, got {p.method!r}")
    if not isinstance(p.harmful, bool):
        raise DataError(f"field 'harmful' must be true or false, got {p.harmful!r}")
    if not isinstance(p.borderline, bool):
        raise DataError(f"field 'borderline' must be true or false, got {p.borderline!r}")
    if p.harmful and p.borderline:
        raise DataError("field 'borderline': a harmful prompt cannot be a borderline-benign probe")
    if not isinstance(p.category, str):
        raise DataError(f"field 'category' must be a string, got {p.category!r}")
    if p.split not in SPLITS:
        raise DataError(f"field 'split' must be one of {', '.join(SPLITS)}, got {p.split!r}")
    for name in ("response", "rejected", "pair"):
        value = getattr(p, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DataError(f"field {name!r} must be a non-empty string or null, got {value!r}")


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, (str, bool)) else list(value)


class PromptSet:
    """An ordered list of prompts with unique ids; every method returns a new set (copies)."""

    def __init__(self, prompts: Iterable[Prompt], name: str = "prompts"):
        self.name = name
        self.prompts: list[Prompt] = list(prompts)
        seen: set[str] = set()
        for p in self.prompts:
            try:
                _check_prompt(p)
            except DataError as exc:
                raise type(exc)(f"{name}: prompt {p.id!r}: {exc}") from None
            if p.id in seen:
                raise DataError(f"{name}: duplicate prompt id {p.id!r}; ids must be unique")
            seen.add(p.id)
        self._index = {p.id: i for i, p in enumerate(self.prompts)}

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._index

    def __getitem__(self, key: int | str | slice) -> Prompt | PromptSet:
        if isinstance(key, slice):
            return PromptSet([p.copy() for p in self.prompts[key]], self.name)
        if isinstance(key, str):
            if key not in self._index:
                raise DataError(f"{self.name}: no prompt with id {key!r}")
            return self.prompts[self._index[key]]
        return self.prompts[key]

    def __repr__(self) -> str:
        return f"PromptSet({self.name!r}, {len(self)} prompts, languages={self.languages})"

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    @property
    def languages(self) -> list[str]:
        """Languages present for every prompt: English first, then in the first prompt's order."""
        if not self.prompts:
            return []
        common = set(self.prompts[0].text)
        for p in self.prompts[1:]:
            common &= p.text.keys()
        ordered = [lang for lang in self.prompts[0].text if lang in common]
        return sorted(ordered, key=lambda lang: lang != "en")

    def _require(self, langs: Sequence[str], prompts: Sequence[Prompt] | None = None) -> None:
        for lang in langs:
            missing = [p.id for p in (self.prompts if prompts is None else prompts) if lang not in p.text]
            if missing:
                raise LanguageError(
                    f"{self.name}: language {lang!r} is missing for {len(missing)} prompt(s) "
                    f"(e.g. {', '.join(missing[:3])}); available for all: {self.languages}. "
                    "Translate them first (mlcwb.translate) or choose other languages.")

    def select(self, langs: str | Sequence[str] | None = None, split: str | Sequence[str] | None = None,
               harmful: bool | None = None, category: str | Sequence[str] | None = None,
               ids: Iterable[str] | None = None, borderline: bool | None = None) -> PromptSet:
        """Prompts matching every given filter, in set order; ``langs`` keeps only those languages."""
        splits = _as_list(split)
        for s in splits or []:
            if s not in SPLITS:
                raise DataError(f"unknown split {s!r}; use one of {', '.join(SPLITS)}")
        categories = _as_list(category)
        wanted: set[str] | None = None
        if ids is not None:
            wanted = set(ids)
            unknown = sorted(wanted - self._index.keys())
            if unknown:
                raise DataError(f"{self.name}: {len(unknown)} unknown id(s): {', '.join(unknown[:5])}")
        kept = [p for p in self.prompts
                if (splits is None or p.split in splits)
                and (harmful is None or p.harmful == harmful)
                and (borderline is None or p.borderline == borderline)
                and (categories is None or p.category in categories)
                and (wanted is None or p.id in wanted)]
        if langs is None:
            return PromptSet([p.copy() for p in kept], self.name)
        codes = language_codes(langs)
        self._require(codes, kept)
        return PromptSet([p.copy(codes) for p in kept], self.name)

    def texts(self, lang: str) -> list[str]:
        lang = get_language(lang).code
        self._require([lang])
        return [p.text[lang] for p in self.prompts]

    def batches(self, langs: str | Sequence[str] | None = None, batch_size: int = 8, shuffle: bool = False,
                seed: int = 0) -> Iterator[list[Prompt]]:
        """Aligned batches: each prompt carries exactly ``langs`` (default: all common languages)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        codes = self.languages if langs is None else language_codes(langs)
        self._require(codes)
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield [self.prompts[i].copy(codes) for i in order[start:start + batch_size]]

    def _all_languages(self) -> list[str]:
        langs = list(dict.fromkeys(lang for p in self.prompts for lang in p.text))
        return sorted(langs, key=lambda lang: lang != "en")

    def to_pandas(self) -> pd.DataFrame:
        """One row per prompt: labels, then ``text_<lang>`` and ``method_<lang>`` (None where absent)."""
        langs = self._all_languages()
        rows = []
        for p in self.prompts:
            row = {"id": p.id, "harmful": p.harmful, "category": p.category, "split": p.split,
                   "source": p.source, "borderline": p.borderline, "pair": p.pair,
                   "response": p.response, "rejected": p.rejected}
            row.update({f"text_{lang}": p.text.get(lang) for lang in langs})
            row.update({f"method_{lang}": p.method.get(lang) for lang in langs})
            rows.append(row)
        columns = ["id", "harmful", "category", "split", "source", "borderline", "pair", "response",
                   "rejected"] + [f"text_{lang}" for lang in langs] + [f"method_{lang}" for lang in langs]
        return pd.DataFrame(rows, columns=columns)

    @classmethod
    def from_pandas(cls, df: pd.DataFrame, name: str = "prompts") -> PromptSet:
        """Inverse of ``to_pandas``; missing optional columns take the Prompt defaults."""
        for column in ("id", "harmful", "category"):
            if column not in df.columns:
                raise DataError(f"from_pandas: column {column!r} is missing")
        langs = [c[len("text_"):] for c in df.columns if c.startswith("text_")]
        if not langs:
            raise DataError("from_pandas: no text_<lang> columns")

        def value(row: pd.Series, column: str, default: Any = None) -> Any:
            if column not in row.index:
                return default
            v = row[column]
            return default if _missing(v) else (v.item() if isinstance(v, np.generic) else v)

        prompts = []
        for _, row in df.iterrows():
            texts = {lang: value(row, f"text_{lang}") for lang in langs}
            methods = {lang: value(row, f"method_{lang}") for lang in langs}
            prompts.append(Prompt(
                id=str(value(row, "id")), harmful=value(row, "harmful"), category=value(row, "category", ""),
                split=value(row, "split", "train"), source=value(row, "source", ""),
                borderline=value(row, "borderline", False), pair=value(row, "pair"),
                response=value(row, "response"), rejected=value(row, "rejected"),
                text={lang: t for lang, t in texts.items() if t is not None},
                method={lang: m for lang, m in methods.items() if m is not None}))
        return cls(prompts, name)

    def save(self, path: str | Path) -> Path:
        """JSONL, one prompt per line (all fields); written atomically."""
        return write_jsonl(path, (dataclasses.asdict(p) for p in self.prompts))

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> PromptSet:
        path = Path(path)
        fields = {f.name for f in dataclasses.fields(Prompt)}
        prompts = []
        for where, row in _read_jsonl_numbered(path):
            unknown = sorted(set(row) - fields)
            if unknown:
                raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}")
            try:
                prompt = Prompt(**row)
                _check_prompt(prompt)
            except TypeError as exc:
                raise DataError(f"{where}: {exc}") from None
            except DataError as exc:
                raise type(exc)(f"{where}: {exc}") from None
            prompts.append(prompt)
        _check_unique(prompts, path)
        return cls(prompts, name or path.stem)

    def assign_splits(self, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                      keep_pairs: bool = True) -> PromptSet:
        """Train/dev/test by prompt id, stratified by (harmful, category), seeded and deterministic.

        The split of a prompt depends only on the seed, its stratum and the ids in that stratum, so
        adding translations never moves a prompt. With ``keep_pairs`` a contrast pair (``pair``) is
        one unit: both halves land in the same split, so a test prompt's look-alike was never trained
        on; a category of pairs then gets the same number of harmful and benign prompts in each split.
        Counts per stratum are rounded by largest remainder.
        """
        fractions = [float(f) for f in fractions]
        if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError(f"fractions must be 3 non-negative numbers summing to 1 (train, dev, test), "
                              f"got {fractions}")
        units = self._units(keep_pairs)
        strata: dict[tuple, list[list[str]]] = {}
        for unit in units:
            members = [self[i] for i in unit]
            key = (tuple(sorted({p.harmful for p in members})), tuple(sorted({p.category for p in members})))
            strata.setdefault(key, []).append(unit)
        assigned: dict[str, str] = {}
        for key in sorted(strata):
            group = sorted(strata[key])
            rng = np.random.default_rng([seed, zlib.crc32(repr(key).encode("utf-8"))])
            order = rng.permutation(len(group))
            counts = _largest_remainder(len(group), fractions)
            bounds = np.cumsum([0] + counts)
            for s, split_name in enumerate(SPLITS):
                for i in order[bounds[s]:bounds[s + 1]]:
                    for prompt_id in group[i]:
                        assigned[prompt_id] = split_name
        out = [dataclasses.replace(p.copy(), split=assigned[p.id]) for p in self.prompts]
        return PromptSet(out, self.name)

    def _units(self, keep_pairs: bool) -> list[list[str]]:
        """Sorted id groups that must share a split (connected contrast pairs, else single prompts)."""
        parent = {p.id: p.id for p in self.prompts}

        def root(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        if keep_pairs:
            for p in self.prompts:
                if p.pair in parent:
                    parent[root(p.id)] = root(p.pair)
        groups: dict[str, list[str]] = {}
        for p in self.prompts:
            groups.setdefault(root(p.id), []).append(p.id)
        return [sorted(g) for g in groups.values()]

    def with_texts(self, lang: str, texts: Sequence[str], method: str | Sequence[str]) -> PromptSet:
        """A new set with ``lang`` filled (replaced if present) from ``texts`` in prompt order."""
        lang = get_language(lang).code
        texts = list(texts)
        if len(texts) != len(self):
            raise DataError(f"with_texts({lang!r}): got {len(texts)} texts for {len(self)} prompts")
        methods = [method] * len(self) if isinstance(method, str) else list(method)
        if len(methods) != len(self):
            raise DataError(f"with_texts({lang!r}): got {len(methods)} methods for {len(self)} prompts")
        out = []
        for p, text, how in zip(self.prompts, texts, methods):
            q = p.copy()
            q.text[lang] = text
            q.method[lang] = how
            out.append(q)
        return PromptSet(out, self.name)


def _largest_remainder(n: int, fractions: Sequence[float]) -> list[int]:
    exact = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _missing(v: Any) -> bool:
    return v is None or (not isinstance(v, (str, list, dict)) and bool(pd.isna(v)))


def _check_unique(prompts: Sequence[Prompt], path: Path | str, where: Sequence[str] | None = None) -> None:
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p.id in first:
            here = where[i] if where else str(path)
            there = where[first[p.id]] if where else str(path)
            raise DataError(f"{here}: field 'id': duplicate id {p.id!r} (first at {there})")
        first[p.id] = i


def _read_jsonl_numbered(path: Path) -> Iterator[tuple[str, dict]]:
    """(``"file:line"``, object) for each non-blank line: error messages can point at the line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg}); fix or delete the line") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


# --------------------------------------------------------------------------------------------------
# The project's corpus: data/corpus/prompts.jsonl (English, labels, responses, split, pair)
#                      + data/corpus/translations/<lang>.jsonl ({"id", "text", "method"} per prompt)

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
    try:
        _check_prompt(prompt)
    except DataError as exc:
        raise type(exc)(f"{where}: {exc}") from None
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
    for here, row in _read_jsonl_numbered(path):
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
    _check_unique(prompts, "corpus parts", where)
    _check_pairs(prompts, where)
    return PromptSet(prompts, "mlcwb-corpus")


def save_corpus(prompts: PromptSet, path: str | Path | None = None) -> Path:
    """Write the English corpus file (``prompts.jsonl``) that ``load_corpus`` reads."""
    path = Path(path) if path is not None else corpus_dir() / "prompts.jsonl"
    rows = [{"id": p.id, "category": p.category, "harmful": p.harmful, "borderline": p.borderline,
             "pair": p.pair, "split": p.split, "en": p.text["en"], "response": p.response,
             "rejected": p.rejected} for p in prompts]
    return write_jsonl(path, rows)


def corpus_translation_files(directory: str | Path | None = None) -> dict[str, Path]:
    """``{lang: translations/<lang>.jsonl}`` in registry order; each file name must be a language code."""
    root = Path(directory) if directory is not None else corpus_dir()
    files: dict[str, Path] = {}
    for path in sorted((root / "translations").glob("*.jsonl")):
        try:
            code = get_language(path.stem).code
        except LanguageError as exc:
            raise LanguageError(f"{path}: file name is not a language code: {exc}") from None
        if code != path.stem:
            raise LanguageError(f"{path}: name the file {code}.jsonl (the canonical code)")
        if code == "en":
            raise LanguageError(f"{path}: English lives in prompts.jsonl, not in translations/")
        files[code] = path
    order = list(LANGUAGES)
    return {code: files[code] for code in sorted(files, key=order.index)}


def _read_translations(path: Path, ids: dict[str, int]) -> tuple[dict[str, str], dict[str, str]]:
    texts: dict[str, str] = {}
    methods: dict[str, str] = {}
    first: dict[str, str] = {}
    for where, row in _read_jsonl_numbered(path):
        unknown = sorted(set(row) - {"id", "text", "method"})
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                            "allowed: id, text, method")
        prompt_id, text, method = row.get("id"), row.get("text"), row.get("method", "unknown")
        if not isinstance(prompt_id, str) or prompt_id not in ids:
            raise DataError(f"{where}: field 'id': {prompt_id!r} is not a prompt in prompts.jsonl "
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
    if missing:
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
    _check_unique(prompts, path, where)
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


# --------------------------------------------------------------------------------------------------
# MultiJail


def _looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", value)) and not value.lower().endswith((".csv", ".jsonl"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _fetch_from_hub(repo_id: str, pattern: str) -> Path:
    """Download a dataset's files; every failure becomes a DataError that says how to go offline."""
    how = (f"Download the dataset's CSV (https://huggingface.co/datasets/{repo_id}) on a machine with "
           "network access and pass its local path instead, e.g. load_multijail('/path/to/MultiJail.csv').")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataError(f"loading {repo_id!r} from the hub needs the huggingface_hub package. {how}") from None
    if _hub_offline():
        raise DataError(f"the Hugging Face hub is unreachable: HF_HUB_OFFLINE is set. {how}")
    try:
        local = snapshot_download(repo_id, repo_type="dataset", allow_patterns=[pattern],
                                  endpoint=os.environ.get("HF_ENDPOINT") or None, etag_timeout=10)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure means the same thing to the user
        raise DataError(f"the Hugging Face hub is unreachable or has no {repo_id!r} "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}). {how}") from None
    return Path(local)


def load_multijail(path_or_id: str | Path | None = None) -> PromptSet:
    """MultiJail's 315 harmful prompts in 10 languages (en + 9 human translations).

    ``path_or_id``: a local ``MultiJail.csv``, a directory holding it, or a hub id such as
    ``"DAMO-NLP-SG/MultiJail"``; None uses ``shared_data_dir()/multijail/MultiJail.csv`` when present,
    else the hub. All prompts are harmful and in the ``test`` split (MultiJail is an evaluation set);
    ``category`` is the first tag; ``source`` is ``multijail/<source column>``.
    """
    if path_or_id is None:
        local = shared_data_dir() / "multijail" / "MultiJail.csv"
        path_or_id = local if local.is_file() else MULTIJAIL_HUB_ID
    path = Path(path_or_id)
    if not path.exists() and isinstance(path_or_id, str) and _looks_like_hub_id(path_or_id):
        path = _fetch_from_hub(path_or_id, "*.csv")
    if path.is_dir():
        found = sorted(path.rglob("MultiJail.csv")) or sorted(path.rglob("*.csv"))
        if not found:
            raise DataError(f"{path}: no MultiJail CSV in this directory")
        path = found[0]
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass the path of MultiJail.csv or the hub id "
                        f"{MULTIJAIL_HUB_ID!r}")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({exc})") from None
    missing = [c for c in MULTIJAIL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"MultiJail has {', '.join(MULTIJAIL_COLUMNS)}")
    langs = list(MULTIJAIL_COLUMNS[3:])
    prompts, where = [], []
    for i, row in enumerate(df.to_dict("records"), start=1):
        here = f"{path}: row {i}"
        try:
            tags = ast.literal_eval(row["tags"])
        except (ValueError, SyntaxError):
            raise DataError(f"{here}: field 'tags': not a Python list string ({row['tags'][:60]!r})") from None
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
            raise DataError(f"{here}: field 'tags': expected a non-empty list of names, got {tags!r}")
        for lang in langs:
            if not row[lang].strip():
                raise DataError(f"{here}: field {lang!r}: empty text")
        prompts.append(Prompt(id=row["id"].strip(), text={lang: row[lang] for lang in langs}, harmful=True,
                              category=tags[0], split="test", source=f"multijail/{row['source']}",
                              method={lang: "original" if lang == "en" else "human" for lang in langs}))
        where.append(here)
    _check_unique(prompts, path, where)
    return PromptSet(prompts, "multijail")


# --------------------------------------------------------------------------------------------------
# PKU-SafeRLHF multilingual (the MLC paper's formats) and generic tables


def _read_records(path: str | Path) -> tuple[Path, list[tuple[str, dict]]]:
    """Rows of a .jsonl, .json (list of objects) or .csv/.tsv file, each with where it came from."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return path, list(_read_jsonl_numbered(path))
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects")
        return path, [(f"{path}: record {i}", r) for i, r in enumerate(data, start=1)]
    if suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                         sep="\t" if suffix == ".tsv" else ",")
        return path, [(f"{path}: row {i}", r) for i, r in enumerate(df.to_dict("records"), start=1)]
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .json")


def _message_text(value: Any, roles: tuple[str, ...], where: str, name: str) -> str:
    """The text of a string, a ``{from, value}`` message, or the last message of a role in a list."""
    if isinstance(value, dict):
        value = value.get("value", value.get("content"))
    elif isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and m.get("from", m.get("role")) in roles]
        value = turns[-1].get("value", turns[-1].get("content")) if turns else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {name!r}: no non-empty {'/'.join(roles)} text")
    return value


def _prompt_languages(row: dict, where: str) -> dict[str, str]:
    """``prompt_<lang>`` columns -> {code: column}; unknown codes are errors naming the column."""
    found = {}
    for column in row:
        if column.startswith("prompt_"):
            try:
                found[get_language(column[len("prompt_"):]).code] = column
            except LanguageError as exc:
                raise LanguageError(f"{where}: field {column!r}: {exc}") from None
    return found


def _pku(path: str | Path, kind: str, harmful: bool, category: str) -> PromptSet:
    path, records = _read_records(path)
    prompts, where = [], []
    human, gpt = ("human", "user"), ("gpt", "assistant")
    for i, (here, row) in enumerate(records):
        if kind == "sft":
            for column in ("instruction", "output"):
                if column not in row:
                    raise DataError(f"{here}: missing field {column!r} (SFT rows: instruction, input, output, "
                                    "prompt_<lang>...)")
            english = _message_text(row["instruction"], human, here, "instruction")
            if str(row.get("input") or "").strip():
                english = f"{english}\n{row['input']}"
            response, rejected = _message_text(row["output"], gpt, here, "output"), None
        else:
            for column in ("prompt", "chosen", "rejected"):
                if column not in row:
                    raise DataError(f"{here}: missing field {column!r} (preference rows: prompt, chosen, "
                                    "rejected, prompt_<lang>...)")
            english = _message_text(row["prompt"], human, here, "prompt")
            response = _message_text(row["chosen"], gpt, here, "chosen")
            rejected = _message_text(row["rejected"], gpt, here, "rejected")
        text = {"en": english}
        for lang, column in _prompt_languages(row, here).items():
            text[lang] = _message_text(row[column], human, here, column)
        method = {lang: "original" if lang == "en" else "pku-multilingual" for lang in text}
        prompts.append(Prompt(id=str(row.get("id", f"pku-{i}")), text=text, harmful=harmful,
                              category=category, source=f"pku-saferlhf/{path.name}", response=response,
                              rejected=rejected, method=method))
        where.append(here)
    _check_unique(prompts, path, where)
    return PromptSet(prompts, path.stem)


def load_pku_sft(path: str | Path, harmful: bool = True, category: str = "pku-saferlhf") -> PromptSet:
    """Alpaca-style SFT rows ``instruction, input, output, prompt_<lang>...`` (.json list or .jsonl).

    English prompt = instruction (+ newline + input when present); ``response`` = output. The rows
    carry no label: PKU-SafeRLHF prompts are red-teaming prompts, hence ``harmful=True`` by default.
    """
    return _pku(path, "sft", harmful, category)


def load_pku_preference(path: str | Path, harmful: bool = True, category: str = "pku-saferlhf") -> PromptSet:
    """ShareGPT-style preference rows: ``prompt: [{from: human, value}]``, ``chosen``/``rejected``:
    ``{from: gpt, value}``, ``prompt_<lang>: [...]``. The last human turn is the prompt text."""
    return _pku(path, "preference", harmful, category)


_TRUE = {"true", "1", "yes", "y", "harmful", "unsafe"}
_FALSE = {"false", "0", "no", "n", "benign", "safe", "harmless"}


def _parse_bool(value: Any, where: str, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    key = str(value).strip().lower()
    if key in _TRUE or key in _FALSE:
        return key in _TRUE
    raise DataError(f"{where}: field {name!r}: cannot read {value!r} as a label; use true/false, 1/0, "
                    "harmful/benign or unsafe/safe")


def load_table(path: str | Path, text_columns: dict[str, str] | None = None,
               harmful: str | bool | None = None, id_column: str | None = None,
               category: str | None = None, split: str | None = None, borderline: str | None = None,
               response: str | None = None, rejected: str | None = None, source: str | None = None,
               name: str | None = None) -> PromptSet:
    """Any CSV/TSV/JSONL/JSON table with one text column per language.

    ``text_columns`` maps language -> column; by default every column named ``text_<code>`` or
    ``<code>`` for a registry code. ``harmful`` is a column name, or True/False for a file of only
    harmful/benign prompts; by default the column ``harmful``. The other label arguments name
    columns; left as None each uses the column of the field's own name when the file has it.
    ``id_column`` defaults to ``id`` when present, else ids are ``<file stem>-<row>``.
    """
    path, records = _read_records(path)
    if not records:
        raise DataError(f"{path}: no rows")
    columns = list(records[0][1])

    def column_for(given: str | None, default: str) -> str | None:
        if given is not None:
            if given not in columns:
                raise DataError(f"{path}: no column {given!r}; columns: {', '.join(columns)}")
            return given
        return default if default in columns else None

    id_col = column_for(id_column, "id")
    if harmful is None and "harmful" not in columns:
        raise DataError(f"{path}: no 'harmful' column; pass harmful='<column>' or harmful=True/False")
    harmful_col = column_for(harmful, "harmful") if not isinstance(harmful, bool) else None
    label_cols = {f: column_for(arg, f) for f, arg in (("category", category), ("split", split),
                                                      ("borderline", borderline), ("response", response),
                                                      ("rejected", rejected), ("source", source))}
    if text_columns is None:
        taken = {id_col, harmful_col, *label_cols.values()}
        text_columns = {}
        for column in columns:
            code = column[len("text_"):] if column.startswith("text_") else column
            if column not in taken and code in LANGUAGES:
                text_columns.setdefault(code, column)
        if not text_columns:
            raise DataError(f"{path}: no text columns found (text_<lang> or <lang>); pass text_columns=")
    else:
        text_columns = {get_language(lang).code: column_for(col, "")
                        for lang, col in text_columns.items()}
    prompts, where = [], []
    for i, (here, row) in enumerate(records, start=1):
        text = {}
        for lang, column in text_columns.items():
            value = row.get(column)
            if _missing(value) or not str(value).strip():
                raise DataError(f"{here}: field {column!r}: empty text")
            text[lang] = str(value)

        def label(field_name: str) -> Any:
            column = label_cols[field_name]
            value = row.get(column) if column else None
            return None if _missing(value) or value == "" else value

        is_harmful = (harmful if isinstance(harmful, bool)
                      else _parse_bool(row.get(harmful_col), here, harmful_col))
        is_borderline = label("borderline")
        prompt = Prompt(
            id=str(row[id_col]) if id_col else f"{path.stem}-{i}", text=text, harmful=is_harmful,
            category=str(label("category") or ""), split=str(label("split") or "train"),
            source=str(label("source") or path.name),
            borderline=False if is_borderline is None else _parse_bool(is_borderline, here, "borderline"),
            response=label("response"), rejected=label("rejected"),
            method={lang: "original" for lang in text})
        try:
            _check_prompt(prompt)
        except DataError as exc:
            raise type(exc)(f"{here}: {exc}") from None
        prompts.append(prompt)
        where.append(here)
    _check_unique(prompts, path, where)
    return PromptSet(prompts, name or path.stem)
