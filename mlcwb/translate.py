"""Translate prompt sets into more languages: translator backends, a disk cache, PromptSet filling.

Step 2 of the MLC recipe needs every prompt in every language. Where a human or reference translation
exists (our corpus, MultiJail) we look it up; otherwise a seq2seq MT model (NLLB-200, M2M100,
MarianMT) or a chat LLM writes one. Every backend is a ``Translator``: a stable ``name`` that says
which system and weights made a text (it goes into ``Prompt.method`` and the cache key) and a batched
``translate(texts, src, tgt)``. Quality checks live in ``mlcwb.translation_checks``.

Backends are chosen by a short spec string, the same in notebooks and on the command line:
``corpus`` | ``corpus:<file>`` | ``mt:<model>`` | ``llm:<model>`` (see ``make_translator``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm

from mlcwb.errors import CacheError, ConfigError, DataError, TranslationError
from mlcwb.io import atomic_write_text
from mlcwb.languages import LANGUAGES, get_language, language_codes

if TYPE_CHECKING:
    from mlcwb.data import PromptSet

log = logging.getLogger(__name__)


class Translator(Protocol):
    """A translation system: ``name`` identifies system + weights + decoding; ``translate`` is batched."""

    name: str

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]: ...


# --------------------------------------------------------------------------------------------------
# Corpus lookup


class CorpusTranslator:
    """Exact lookup of translations already present in a PromptSet (or a parallel file).

    Reference translations beat any MT system, and looking them up through the same interface lets a
    notebook switch between "the corpus's own translations" and "what NLLB would write" by one
    parameter. A text the set does not hold is an error, not a silent gap.
    """

    def __init__(self, prompts: PromptSet, name: str | None = None):
        self.prompts = prompts
        self.name = name or f"corpus:{prompts.name}"
        self._table: dict[tuple[str, str], dict[str, str]] = {}
        for p in prompts:
            for src, text in p.text.items():
                self._table.setdefault((src, text.strip()), {}).update(p.text)

    @classmethod
    def from_file(cls, path: str | Path) -> CorpusTranslator:
        """A parallel file: a PromptSet JSONL (``PromptSet.save``) or a CSV/TSV/JSONL with one column
        per language (``en``, ``zh`` ... or ``text_en`` ...)."""
        from mlcwb.data import PromptSet, load_table

        path = Path(path)
        try:
            prompts = PromptSet.load(path)
        except DataError:
            prompts = load_table(path, harmful=False)
        return cls(prompts, name=f"corpus:{path.name}")

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        src, tgt = get_language(src).code, get_language(tgt).code
        out, missing = [], []
        for text in texts:
            found = self._table.get((src, text.strip()), {}).get(tgt)
            if found is None:
                missing.append(text)
            out.append(found)
        if missing:
            raise TranslationError(
                f"{self.name}: {len(missing)} of {len(texts)} {src} text(s) have no {tgt} translation in "
                f"the set (e.g. {missing[0][:80]!r}); use an MT or LLM backend (mt:<model>, llm:<model>) "
                "for texts outside it.")
        return out


# --------------------------------------------------------------------------------------------------
# Seq2seq MT (NLLB-200, M2M100, MarianMT, T5-style prefixes)


def _pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad for an encoder (its attention mask hides the padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, :len(seq)] = 1
    return ids, mask


def _short_name(model: Any, fallback: str) -> str:
    """Stable id for a model: its load name plus a weights fingerprint (so fine-tunes don't collide)."""
    from mlcwb.models import model_fingerprint

    base = getattr(model, "mlcwb_name", None) or getattr(model.config, "name_or_path", "") or fallback
    return f"{base}@{model_fingerprint(model)[:8]}"


def _load(model: str | tuple[Any, Any], device: str | torch.device | None) -> tuple[Any, Any, str]:
    """Load by name on ``device``; a given ``(model, tokenizer)`` stays on the device it is on."""
    from mlcwb.models import load_model

    if isinstance(model, str):
        loaded, tokenizer = load_model(model, device=device)
        return loaded, tokenizer, model
    loaded, tokenizer = model
    return loaded, tokenizer, getattr(loaded, "mlcwb_name", "model")


def _in_batches(texts: Sequence[str], batch_size: int, run: Callable[[list[str]], list[str]]) -> list[str]:
    """Length-sorted batches (less padding), run without autograd, results back in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        with torch.inference_mode():
            for i, text in zip(idx, run([texts[i] for i in idx])):
                out[i] = text
    return out


class HFSeq2SeqTranslator:
    """A Hugging Face encoder-decoder MT model, with each family's way of naming the languages.

    - NLLB-200: source = FLORES-200 code token (``zho_Hans``) before the text; target = the same kind of
      token forced as the first generated token (``forced_bos_token_id``).
    - M2M100: ``__zh__``-style tokens, used the same way.
    - MarianMT: one model per direction; multi-target models take a ``>>zho<<`` prefix in the source.
    - T5-style (anything else): a text prefix ``translate English to German: ``.
    The family is read from the config and vocabulary; pass ``family=`` to override.
    """

    FAMILIES = ("nllb", "m2m100", "marian", "t5")

    def __init__(self, model: str | tuple[Any, Any], device: str | torch.device | None = "auto",
                 batch_size: int = 16, max_new_tokens: int = 256, num_beams: int = 1,
                 family: str | None = None):
        self.model, self.tokenizer, label = _load(model, device)
        if not self.model.config.is_encoder_decoder:
            raise ConfigError(f"{label} is not an encoder-decoder model; use llm:{label} for chat LMs")
        self.family = family or self._detect_family()
        if self.family not in self.FAMILIES:
            raise ConfigError(f"family must be one of {', '.join(self.FAMILIES)}, got {self.family!r}")
        self.batch_size, self.max_new_tokens, self.num_beams = batch_size, max_new_tokens, num_beams
        self._multi_target = self.family == "marian" and any(t.startswith(">>") for t in self.tokenizer.get_vocab())
        self.name = f"mt:{_short_name(self.model, label)}" + (f"/beams{num_beams}" if num_beams > 1 else "")

    def _detect_family(self) -> str:
        kind = self.model.config.model_type
        if kind == "marian":
            return "marian"
        if kind == "m2m_100":
            return "nllb" if self._token_id("eng_Latn") is not None else "m2m100"
        return "t5"

    def _token_id(self, token: str) -> int | None:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        return None if tid is None or tid == self.tokenizer.unk_token_id else int(tid)

    def language_token(self, lang: str) -> str:
        """The vocabulary token that names ``lang`` for this family (NLLB/M2M100/Marian multi-target)."""
        info = get_language(lang)
        if self.family == "nllb":
            candidates = [info.flores]
        elif self.family == "m2m100":
            candidates = [f"__{info.code}__"]
        else:
            candidates = [f">>{info.flores.split('_')[0]}<<", f">>{info.code}<<", f">>{info.flores}<<"]
        for token in candidates:
            if self._token_id(token) is not None:
                return token
        raise TranslationError(f"{self.name}: the {self.family} vocabulary has no token for {info.name} "
                               f"(tried {', '.join(candidates)}); this model does not translate into or from "
                               "it — pick another model or language.")

    def _encode(self, texts: list[str], src: str, tgt: str) -> list[list[int]]:
        tok = self.tokenizer
        if self.family == "t5":
            texts = [f"translate {get_language(src).name} to {get_language(tgt).name}: {t}" for t in texts]
        if self._multi_target:
            texts = [f"{self.language_token(tgt)} {t}" for t in texts]
        body = tok(texts, add_special_tokens=False)["input_ids"]
        prefix = [self._token_id(self.language_token(src))] if self.family in ("nllb", "m2m100") else []
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return [prefix + ids + eos for ids in body]

    def generation_kwargs(self, tgt: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                  "do_sample": False}
        if self.family in ("nllb", "m2m100"):
            kwargs["forced_bos_token_id"] = self._token_id(self.language_token(tgt))
        return kwargs

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        src, tgt = get_language(src).code, get_language(tgt).code
        return _in_batches(texts, self.batch_size, lambda batch: self._batch(batch, src, tgt))

    def _batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = _pad(self._encode(texts, src, tgt), pad)
        out = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                  **self.generation_kwargs(tgt))
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


# --------------------------------------------------------------------------------------------------
# LLM prompting

LLM_PROMPT = ("Translate the following text from {src} to {tgt}. Reply with the {tgt} translation only, "
              "without explanations.\n\n{text}")

_PREAMBLE = re.compile(
    r"^(?:(?:sure|okay|ok|certainly|of course)[!,.]*\s*)?"
    r"(?:here(?:'s| is| are)\b[^\n:：]*|(?:the\s+)?(?:[\w-]+\s+)?translation\b[^\n:：]{0,40}"
    r"|(?P<language>[^\W\d_][\w ()-]{0,30}))\s*[:：]\s*", re.IGNORECASE)
_QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("„", "“"), ("«", "»"), ("「", "」"), ("『", "』"), ("‘", "’")]
_TRAILING_NOTE = re.compile(r"\n+\s*[(\[]?\s*(?:note|explanation|translation note)s?\s*:.*\Z",
                            re.IGNORECASE | re.DOTALL)


def _is_language_name(word: str) -> bool:
    word = word.split("(")[0].strip()
    if word in {lang.native for lang in LANGUAGES.values()}:
        return True
    try:
        get_language(word)
    except DataError:
        return False
    return True


def clean_llm_output(text: str) -> str:
    """Strip what chat models wrap around a translation: a preamble ("Here is the translation:",
    "Chinese (Simplified):"), code fences, one pair of surrounding quotes, trailing "Note: ..." paragraphs.

    A bare "Word:" opening is removed only when the word names a language, so "Step 1: ..." survives.
    """
    out = re.sub(r"^```[\w-]*\n?|\n?```$", "", text.strip()).strip()
    match = _PREAMBLE.match(out)
    if match and (match.group("language") is None or _is_language_name(match.group("language"))):
        out = out[match.end():].strip()
    out = _TRAILING_NOTE.sub("", out).strip()
    for left, right in _QUOTES:
        inner = out[len(left):-len(right)]
        if len(out) >= 2 and out.startswith(left) and out.endswith(right) and left not in inner and right not in inner:
            out = inner.strip()
            break
    return out


class LLMTranslator:
    """Any chat causal LM asked to translate (greedy), with its answer cleaned by ``clean_llm_output``.

    Small models translate poorly; this backend exists for the paper's "self-generated data" direction
    and for large instruction models on a GPU. It answers through ``mlcwb.generation.generate_texts``, the
    same greedy generation (chat template, stop tokens) the safety evaluation uses.
    """

    def __init__(self, model: str | tuple[Any, Any], device: str | torch.device | None = "auto",
                 batch_size: int = 8, max_new_tokens: int = 256, prompt: str = LLM_PROMPT):
        self.model, self.tokenizer, label = _load(model, device)
        if self.model.config.is_encoder_decoder:
            raise ConfigError(f"{label} is an encoder-decoder model; use mt:{label}")
        self.batch_size, self.max_new_tokens, self.prompt = batch_size, max_new_tokens, prompt
        self.name = f"llm:{_short_name(self.model, label)}"

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        src, tgt = get_language(src).code, get_language(tgt).code
        return _in_batches(texts, self.batch_size, lambda batch: self._batch(batch, src, tgt))

    def _batch(self, texts: list[str], src: str, tgt: str) -> list[str]:
        from mlcwb.generation import generate_texts

        names = get_language(src).name, get_language(tgt).name
        prompts = [self.prompt.format(src=names[0], tgt=names[1], text=t) for t in texts]
        answers = generate_texts(self.model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens)
        return [clean_llm_output(t) for t in answers]


def make_translator(spec: str, device: str | torch.device | None = "auto", batch_size: int = 16,
                    max_new_tokens: int = 256) -> Translator:
    """``corpus`` (the project corpus), ``corpus:<file>``, ``mt:<model>``, ``llm:<model>``."""
    kind, _, target = spec.partition(":")
    if kind == "corpus":
        if target:
            return CorpusTranslator.from_file(target)
        from mlcwb.data import load_corpus

        return CorpusTranslator(load_corpus())
    if kind in ("mt", "llm") and target:
        cls = HFSeq2SeqTranslator if kind == "mt" else LLMTranslator
        return cls(target, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)
    raise ConfigError(f"unknown translation backend {spec!r}; use corpus, corpus:<file>, mt:<model> "
                      "(e.g. mt:facebook/nllb-200-distilled-600M) or llm:<model> (e.g. llm:smollm2-135m-instruct)")


# --------------------------------------------------------------------------------------------------
# Cache

CACHE_FORMAT = "mlcwb-translation-cache"
CACHE_VERSION = 1


def _cache_key(backend: str, src: str, tgt: str, text: str) -> str:
    return hashlib.sha256(json.dumps([backend, src, tgt, text], ensure_ascii=False).encode()).hexdigest()


class TranslationCache:
    """Translations on disk, keyed by (backend name, src, tgt, text).

    One JSONL file: a header line ``{"format", "version", "count", "sha256"}`` (sha256 of the body) and
    one entry per line. The file is rewritten atomically, so a crash leaves the previous version; a file
    damaged some other way (truncated, edited, garbage) fails the header check, is moved aside to
    ``<name>.corrupt`` with a warning, and the cache starts empty — it is never half-used.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, str]] = self._read()

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        try:
            return self._parse(self.path.read_bytes())
        except CacheError as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            self.path.replace(aside)
            log.warning("translation cache %s is corrupt (%s); moved it to %s and starting an empty cache",
                        self.path, exc, aside)
            return {}

    def _parse(self, data: bytes) -> dict[str, dict[str, str]]:
        try:
            head, _, body = data.decode("utf-8").partition("\n")
            header = json.loads(head)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(f"unreadable header ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
            raise CacheError("not a translation cache (header format differs)")
        if header.get("version") != CACHE_VERSION:
            raise CacheError(f"cache version {header.get('version')} != {CACHE_VERSION}")
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != header.get("sha256"):
            raise CacheError("checksum mismatch (truncated or edited)")
        entries = {}
        for line in body.splitlines():
            row = json.loads(line)
            entries[row["key"]] = row
        if len(entries) != header.get("count"):
            raise CacheError(f"{len(entries)} entries, header says {header.get('count')}")
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, backend: str, src: str, tgt: str, text: str) -> str | None:
        row = self.entries.get(_cache_key(backend, src, tgt, text))
        return None if row is None else row["translation"]

    def put(self, backend: str, src: str, tgt: str, texts: Iterable[str], translations: Iterable[str]) -> None:
        for text, translation in zip(texts, translations):
            self.entries[_cache_key(backend, src, tgt, text)] = {
                "key": _cache_key(backend, src, tgt, text), "backend": backend, "src": src, "tgt": tgt,
                "text": text, "translation": translation}

    def save(self) -> Path:
        """Merge with what another process may have written meanwhile, then replace the file atomically."""
        if self.path.exists():
            try:
                self.entries = {**self._parse(self.path.read_bytes()), **self.entries}
            except CacheError:
                pass  # ours is complete; the damaged file is about to be replaced
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.entries.values())
        header = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "count": len(self.entries),
                  "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}
        return atomic_write_text(self.path, json.dumps(header) + "\n" + body)


class CachedTranslator:
    """Wrap a translator with a ``TranslationCache``: only texts never seen by this backend are sent to it.

    ``calls``/``translated`` count backend calls and texts (a second run over the same texts: both 0).
    The cache is saved after every backend call, so an interrupted long run resumes where it stopped.
    """

    def __init__(self, translator: Translator, cache: TranslationCache | str | Path, chunk_size: int = 64):
        self.translator = translator
        self.cache = cache if isinstance(cache, TranslationCache) else TranslationCache(cache)
        self.name, self.chunk_size = translator.name, chunk_size
        self.calls = self.translated = 0

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        src, tgt = get_language(src).code, get_language(tgt).code
        todo = list(dict.fromkeys(t for t in texts if self.cache.get(self.name, src, tgt, t) is None))
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            out = self.translator.translate(chunk, src, tgt)
            if len(out) != len(chunk):
                raise TranslationError(f"{self.name} returned {len(out)} translations for {len(chunk)} texts")
            self.calls += 1
            self.translated += len(chunk)
            self.cache.put(self.name, src, tgt, chunk, out)
            self.cache.save()
        return [self.cache.get(self.name, src, tgt, t) for t in texts]  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Prompt sets


def translate_rows(prompts: PromptSet, translator: Translator, langs: str | Sequence[str], src: str = "en",
                   cache: TranslationCache | str | Path | None = None, chunk_size: int = 32,
                   progress: bool = True) -> pd.DataFrame:
    """Translate every prompt's ``src`` text into each of ``langs``, one row per (prompt, language).

    Columns ``id, src, tgt, source, translation, method`` — the table ``check_translations`` reads.
    ``chunk_size`` texts go to the backend per call (the progress bar's step).
    """
    src = get_language(src).code
    targets = [lang for lang in language_codes(langs) if lang != src]
    sources = prompts.texts(src)
    if cache is not None and not isinstance(translator, CachedTranslator):
        translator = CachedTranslator(translator, cache)
    rows = []
    with tqdm(total=len(sources) * len(targets), desc=f"translate ({translator.name})", unit="text",
              disable=not progress) as bar:
        for tgt in targets:
            out: list[str] = []
            for start in range(0, len(sources), chunk_size):
                out += translator.translate(sources[start:start + chunk_size], src, tgt)
                bar.update(min(chunk_size, len(sources) - start))
            rows += [{"id": p.id, "src": src, "tgt": tgt, "source": s, "translation": t, "method": translator.name}
                     for p, s, t in zip(prompts, sources, out)]
    return pd.DataFrame(rows, columns=["id", "src", "tgt", "source", "translation", "method"])


def fill_from_rows(prompts: PromptSet, rows: pd.DataFrame) -> PromptSet:
    """A PromptSet with each row's translation filled in (``method`` recorded per cell).

    Empty outputs cannot live in a PromptSet; they are an error that names them, so look at the
    quality table (``check_translations``) and choose another backend for those.
    """
    empty = rows[rows["translation"].str.strip() == ""]
    if len(empty):
        raise TranslationError(f"{len(empty)} translation(s) came back empty (e.g. {empty['id'].iloc[0]} -> "
                               f"{empty['tgt'].iloc[0]}); check them with check_translations and retry with "
                               "another backend")
    out = prompts
    for tgt, group in rows.groupby("tgt", sort=False):
        by_id = dict(zip(group["id"], zip(group["translation"], group["method"])))
        texts = [by_id[p.id][0] if p.id in by_id else p.text.get(tgt) for p in out]
        if any(t is None for t in texts):
            raise DataError(f"rows for {tgt} do not cover every prompt; translate the whole set")
        methods = [by_id[p.id][1] if p.id in by_id else p.method.get(tgt, "unknown") for p in out]
        out = out.with_texts(tgt, texts, methods)
    return out


def translate_promptset(prompts: PromptSet, translator: Translator, langs: str | Sequence[str], src: str = "en",
                        cache: TranslationCache | str | Path | None = None, overwrite: bool = False,
                        progress: bool = True) -> PromptSet:
    """Fill languages missing from ``prompts`` (all of ``langs`` with ``overwrite``) with ``translator``.

    Only prompts lacking a language are translated; the method per cell is the translator's name.
    """
    from mlcwb.data import PromptSet

    out = prompts
    for tgt in language_codes(langs):
        if tgt == get_language(src).code:
            continue
        need = [p.id for p in out if overwrite or tgt not in p.text]
        if not need:
            continue
        subset = PromptSet([out[i] for i in need], out.name)
        rows = translate_rows(subset, translator, [tgt], src=src, cache=cache, progress=progress)
        out = fill_from_rows(out, rows)
    return out
