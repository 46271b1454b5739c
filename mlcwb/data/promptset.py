"""Prompt sets: one prompt id, many languages, labels and splits.

Every later stage (translation, extraction, MLC training, evaluation) works on *aligned* prompts: the
same request in several languages under one id. ``PromptSet`` keeps that alignment explicit, so a
split or a selection can never separate a prompt from its translations, and so "this language is
missing for some prompts" is an error at load time rather than a silent shape mismatch later.

The loaders live next door: ``mlcwb.data.corpus`` (the project's corpus) and ``mlcwb.data.external``
(MultiJail, PKU-SafeRLHF, generic tables).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcwb.errors import ConfigError, DataError, LanguageError
from mlcwb.io import write_jsonl
from mlcwb.languages import get_language, language_codes

SPLITS = ("train", "dev", "test")


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


def check_prompt_at(p: Prompt, where: str) -> None:
    """``_check_prompt`` with ``where`` (file and line, set name) prefixed to its message."""
    try:
        _check_prompt(p)
    except DataError as exc:
        raise type(exc)(f"{where}: {exc}") from None


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
            check_prompt_at(p, f"{name}: prompt {p.id!r}")
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

    def balanced(self, n: int, seed: int = 0) -> PromptSet:
        """``n`` prompts, half harmful and half benign (as many as there are), drawn with ``seed``,
        in set order: a probe or a discrimination score needs both labels, and a set's first
        ``n`` prompts may all carry one."""
        import random

        rng = random.Random(seed)
        harmful = [p.id for p in self.prompts if p.harmful]
        benign = [p.id for p in self.prompts if not p.harmful]
        half = min(n // 2, len(harmful))
        keep = set(rng.sample(harmful, half)) | set(rng.sample(benign, min(n - half, len(benign))))
        return self.select(ids=[p.id for p in self.prompts if p.id in keep])

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
            return default if is_missing(v) else (v.item() if isinstance(v, np.generic) else v)

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

    def to_hf(self) -> Any:
        """A ``datasets.Dataset`` with the columns of ``to_pandas`` (the ``hf`` extra: pip install
        'mlcwb[hf]'); its info names the set and its languages. ``from_hf`` reads it back."""
        import datasets

        frame = self.to_pandas()
        features = datasets.Features({  # typed even where a column is all None
            c: datasets.Value("bool" if c in ("harmful", "borderline") else "string") for c in frame})
        info = datasets.DatasetInfo(features=features, dataset_name=self.name, description=(
            f"mlcwb PromptSet {self.name!r}: {len(self)} prompts; languages "
            f"{', '.join(self._all_languages())} (text_<lang>, method_<lang>); every prompt has "
            f"{', '.join(self.languages)}. Read it back with mlcwb's PromptSet.from_hf."))
        return datasets.Dataset.from_pandas(frame, info=info, preserve_index=False)

    @classmethod
    def from_hf(cls, source: Any, split: str | None = None, name: str | None = None,
                **load_kwargs: Any) -> PromptSet:
        """A set from a ``datasets.Dataset``, a ``DatasetDict`` (``split`` picks one), a folder
        written by ``save_to_disk`` or a hub id (``datasets.load_dataset(source, split=split,
        **load_kwargs)``; needs the hub or its cache). Columns as ``to_hf`` writes them: ``id``,
        ``harmful`` and ``text_<lang>`` at least; the others take the ``Prompt`` defaults."""
        import datasets

        where = str(source) if isinstance(source, (str, Path)) else type(source).__name__
        if isinstance(source, (str, Path)):
            try:
                source = (datasets.load_from_disk(str(source)) if Path(source).exists()
                          else datasets.load_dataset(str(source), split=split, **load_kwargs))
            except Exception as exc:  # any loader failure means the same to the user
                raise DataError(f"from_hf: cannot load {where} ({type(exc).__name__}: {exc}). Pass a "
                                "folder written by Dataset.save_to_disk, or a hub id reachable from "
                                "here (or in the local datasets cache).") from None
        if isinstance(source, datasets.DatasetDict):
            if split is None and len(source) != 1 or split is not None and split not in source:
                raise DataError(f"from_hf: {where} has splits {sorted(source)}; pass split= with one "
                                f"of them" + (f" ({split!r} is not one)" if split else ""))
            source = source[split] if split is not None else next(iter(source.values()))
        if not isinstance(source, datasets.Dataset):
            raise DataError(f"from_hf: expected a datasets.Dataset, DatasetDict, a save_to_disk "
                            f"folder or a hub id, got {type(source).__name__}")
        columns = list(source.column_names)
        missing = [c for c in ("id", "harmful") if c not in columns]
        if not any(c.startswith("text_") for c in columns):
            missing.append("text_<lang> (e.g. text_en)")
        if missing:
            raise DataError(f"from_hf: {where} lacks column(s) {', '.join(missing)}; it has "
                            f"{columns}. Rename yours first, e.g. dataset.rename_column('prompt', "
                            f"'text_en') or .rename_columns({{'label': 'harmful'}}).")
        frame = source.to_pandas()
        if "category" not in frame.columns:
            frame["category"] = ""
        return cls.from_pandas(frame, name or source.info.dataset_name or where)

    def save(self, path: str | Path) -> Path:
        """JSONL, one prompt per line (all fields); written atomically."""
        return write_jsonl(path, (dataclasses.asdict(p) for p in self.prompts))

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> PromptSet:
        path = Path(path)
        fields = {f.name for f in dataclasses.fields(Prompt)}
        prompts = []
        for where, row in read_jsonl_numbered(path):
            unknown = sorted(set(row) - fields)
            if unknown:
                raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}")
            try:
                prompt = Prompt(**row)
            except TypeError as exc:
                raise DataError(f"{where}: {exc}") from None
            check_prompt_at(prompt, where)
            prompts.append(prompt)
        check_unique_ids(prompts, path)
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


def is_missing(v: Any) -> bool:
    """An empty cell as any reader gives it: None, NaN or pandas' NA (an empty string is text)."""
    return v is None or (not isinstance(v, (str, list, dict)) and bool(pd.isna(v)))


def check_unique_ids(prompts: Sequence[Prompt], path: Path | str, where: Sequence[str] | None = None) -> None:
    """Every id once: a DataError names the duplicated id and both places (``where``: one per prompt)."""
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p.id in first:
            here = where[i] if where else str(path)
            there = where[first[p.id]] if where else str(path)
            raise DataError(f"{here}: field 'id': duplicate id {p.id!r} (first at {there})")
        first[p.id] = i


def read_jsonl_numbered(path: Path) -> Iterator[tuple[str, dict]]:
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
