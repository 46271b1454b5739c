"""``mlcwb translate``: translate a prompt set into more languages, with quality checks."""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("translate", help="translate a prompt set into more languages, with checks")
    p.add_argument("--input", required=True, help="PromptSet JSONL, or CSV/TSV/JSONL with one column per language")
    p.add_argument("--target-languages", "--langs", dest="target_languages", required=True,
                   help="comma-separated languages to translate into, e.g. zh,ru,sw")
    p.add_argument("--backend", default="corpus", help="corpus | corpus:<file> | mt:<model> | llm:<model>")
    p.add_argument("--out", required=True, help="output PromptSet JSONL")
    p.add_argument("--src", default="en", help="source language (default en)")
    p.add_argument("--cache", help="translation cache file (JSONL); reruns translate only new texts")
    p.add_argument("--checks", help="write the per-translation quality table here (CSV)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=run)


def load_input(path: str) -> Any:
    """A PromptSet file as such, anything else as a table with one column per language."""
    from mlcwb.data import PromptSet, load_table
    from mlcwb.errors import DataError

    try:
        return PromptSet.load(path)
    except DataError:
        return load_table(path, harmful=False)


def run(args: argparse.Namespace) -> int:
    from mlcwb.translate import fill_from_rows, make_translator, translate_rows
    from mlcwb.translation_checks import acceptance_table, check_translations

    prompts = load_input(args.input)
    translator = make_translator(args.backend, device=args.device, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens)
    langs = [code for code in args.target_languages.split(",") if code.strip()]
    rows = translate_rows(prompts, translator, langs, src=args.src, cache=args.cache)
    checked = check_translations(rows)
    filled = fill_from_rows(prompts, rows)
    filled.save(args.out)
    if args.checks:
        checked.to_csv(args.checks, index=False)
    log.info("quality (acceptance = ok / checked):\n%s",
             acceptance_table(checked)[["n", "ok", "flagged", "unchecked", "acceptance"]].to_string())
    print(args.out)
    return 0
