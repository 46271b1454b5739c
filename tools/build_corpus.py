"""Rebuild data/corpus/prompts.jsonl from the English parts and refresh the datasheet's count tables.

    python tools/build_corpus.py            # parts -> prompts.jsonl (seeded splits) -> data/README.md tables
    python tools/build_corpus.py --wait 600 --expect 3   # first wait for en_1..en_3 to exist

The split of every prompt comes from PromptSet.assign_splits (seed 0, 70/10/20, stratified by
harmful label and category, contrast pairs kept together), so the file is the same on every rebuild.
Tables in data/README.md between ``<!-- corpus_summary:<by> -->`` and ``<!-- /corpus_summary -->``
markers are regenerated from mlcwb.data.corpus_summary. Translation files that fail validation are
reported and left out of the tables; the command then exits 1.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import pandas as pd

from mlcwb.data import (corpus_dir, corpus_summary, corpus_translation_files, load_corpus, load_corpus_parts,
                        save_corpus)
from mlcwb.errors import MLCWBError
from mlcwb.io import atomic_write_text
from mlcwb.paths import data_dir

log = logging.getLogger("build_corpus")


def markdown_table(df: pd.DataFrame) -> str:
    header = [df.index.name or ""] + [str(c) for c in df.columns]
    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", *align]) + "|"]
    for index, row in df.iterrows():
        lines.append("| " + " | ".join([str(index)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def refresh_datasheet(readme: Path, tables: dict[str, pd.DataFrame]) -> None:
    text = readme.read_text(encoding="utf-8")
    for by, df in tables.items():
        pattern = re.compile(rf"(<!-- corpus_summary:{by} -->\n).*?(<!-- /corpus_summary -->)", re.S)
        if not pattern.search(text):
            log.warning("%s has no <!-- corpus_summary:%s --> marker; table not written", readme, by)
            continue
        text = pattern.sub(lambda m: m.group(1) + markdown_table(df) + "\n" + m.group(2), text)
    atomic_write_text(readme, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expect", type=int, default=3, help="number of parts en_*.jsonl to wait for")
    parser.add_argument("--wait", type=float, default=0, help="seconds to poll for the parts (0: no wait)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    root = corpus_dir()
    deadline = time.monotonic() + args.wait
    while len(parts := sorted((root / "parts").glob("en_*.jsonl"))) < args.expect and time.monotonic() < deadline:
        time.sleep(10)
    if len(parts) < args.expect:
        log.warning("only %d of %d parts present: %s", len(parts), args.expect, [p.name for p in parts])
    try:
        prompts = load_corpus_parts(parts).assign_splits(seed=args.seed)
        save_corpus(prompts, root / "prompts.jsonl")
        log.info("wrote %s: %d prompts from %s", root / "prompts.jsonl", len(prompts), [p.name for p in parts])
        good, bad = ["en"], {}
        for lang in corpus_translation_files(root):
            try:
                load_corpus(["en", lang])
                good.append(lang)
            except MLCWBError as exc:
                bad[lang] = str(exc)
        corpus = load_corpus(good)
    except MLCWBError as exc:
        log.error("%s", exc)
        return 1
    refresh_datasheet(data_dir() / "README.md", {"category": corpus_summary(corpus, "category"),
                                                 "language": corpus_summary(corpus, "language")})
    log.info("datasheet tables refreshed for languages: %s", " ".join(good))
    for lang, message in bad.items():
        log.error("translations/%s.jsonl left out: %s", lang, message)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
