"""Loaders for outside datasets and for the formats people have.

- ``load_multijail``     MultiJail (Deng et al., 2024): a local CSV or the hub id
- ``load_pku_sft`` / ``load_pku_preference``  PKU-SafeRLHF multilingual, in the two shapes the MLC
                         paper's code publishes (Alpaca-style SFT rows; ShareGPT-style preference rows)
- ``load_table``         any CSV/JSONL with one column per language
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcwb.data.promptset import (Prompt, PromptSet, check_prompt_at, check_unique_ids, is_missing,
                                  read_jsonl_numbered)
from mlcwb.errors import DataError, LanguageError
from mlcwb.languages import LANGUAGES, get_language
from mlcwb.paths import shared_data_dir

MULTIJAIL_HUB_ID = "DAMO-NLP-SG/MultiJail"
MULTIJAIL_COLUMNS = ("id", "source", "tags", "en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


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
    check_unique_ids(prompts, path, where)
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
        return path, list(read_jsonl_numbered(path))
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
    check_unique_ids(prompts, path, where)
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


def _detect_text_columns(path: Path, columns: list[str], taken: set[str | None]) -> dict[str, str]:
    """Language -> column for every column named ``text_<code>`` or ``<code>`` (a registry code)
    that no label took; the first such column of a language wins."""
    found: dict[str, str] = {}
    for column in columns:
        code = column[len("text_"):] if column.startswith("text_") else column
        if column not in taken and code in LANGUAGES:
            found.setdefault(code, column)
    if not found:
        raise DataError(f"{path}: no text columns found (text_<lang> or <lang>); pass text_columns=")
    return found


def _row_text(row: dict[str, Any], text_columns: dict[str, str], here: str) -> dict[str, str]:
    """One row's prompt text per language; an empty cell is an error naming the row and column."""
    text = {}
    for lang, column in text_columns.items():
        value = row.get(column)
        if is_missing(value) or not str(value).strip():
            raise DataError(f"{here}: field {column!r}: empty text")
        text[lang] = str(value)
    return text


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
        text_columns = _detect_text_columns(path, columns, {id_col, harmful_col, *label_cols.values()})
    else:
        text_columns = {get_language(lang).code: column_for(col, "")
                        for lang, col in text_columns.items()}
    prompts, where = [], []
    for i, (here, row) in enumerate(records, start=1):
        text = _row_text(row, text_columns, here)

        def label(field_name: str) -> Any:
            column = label_cols[field_name]
            value = row.get(column) if column else None
            return None if is_missing(value) or value == "" else value

        is_harmful = (harmful if isinstance(harmful, bool)
                      else _parse_bool(row.get(harmful_col), here, harmful_col))
        prompt = Prompt(
            id=str(row[id_col]) if id_col else f"{path.stem}-{i}", text=text, harmful=is_harmful,
            category=str(label("category") or ""), split=str(label("split") or "train"),
            source=str(label("source") or path.name),
            borderline=_parse_bool(label("borderline") or False, here, "borderline"),
            response=label("response"), rejected=label("rejected"),
            method={lang: "original" for lang in text})
        check_prompt_at(prompt, here)
        prompts.append(prompt)
        where.append(here)
    check_unique_ids(prompts, path, where)
    return PromptSet(prompts, name or path.stem)
