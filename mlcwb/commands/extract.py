"""``mlcwb extract``: pooled hidden states of the corpus into ``RUN_DIR/reps/``."""

from __future__ import annotations

import argparse

from mlcwb.defaults import DEFAULT_MODEL, POOLINGS
from mlcwb.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract", help="extract pooled hidden states of the corpus",
        description="Pooled hidden states of the project corpus, saved (and cached) in RUN_DIR/reps/.")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--languages", "--langs", dest="languages", default=None,
                   help="comma-separated codes (default: all in corpus)")
    p.add_argument("--layers", default="all",
                   help="comma-separated hidden_states indices, negatives from the end, or 'all'")
    p.add_argument("--pooling", default="last", choices=POOLINGS)
    p.add_argument("--split", default=None, help="train, dev, test or a comma list (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="run directory; results go to RUN_DIR/reps/")
    p.set_defaults(func=run)


def parse_layers(spec: str) -> list[int] | None:
    """``--layers``: ``all`` (None) or comma-separated integers."""
    if spec.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in spec.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"--layers takes comma-separated integers or 'all', got {spec!r}.") from exc


def run(args: argparse.Namespace) -> int:
    from mlcwb.data import load_corpus
    from mlcwb.extract import extract
    from mlcwb.models import load_model
    from mlcwb.paths import open_run_dir

    layers = parse_layers(args.layers)  # before loading the model: a typo should fail at once
    langs = [code.strip() for code in args.languages.split(",") if code.strip()] if args.languages else None
    model, tokenizer = load_model(args.model, device=args.device)
    prompts = load_corpus(langs)
    if args.split:
        prompts = prompts.select(split=args.split.split(","))
    out = open_run_dir(args.out, lock=True) / "reps"
    reps = extract(model, tokenizer, prompts, langs=langs, layers=layers,
                   pooling=args.pooling, chat_template=not args.no_chat_template,
                   batch_size=args.batch_size, cache_dir=out)
    print(f"{reps.values.shape} (prompts, languages, layers, hidden) -> {out}")
    return 0
