"""``mlcwb evaluate``: generate responses, judge them, write the judged rows as CSV beside the
responses and print rates per language."""

from __future__ import annotations

import argparse
import logging

from mlcwb.defaults import DEFAULT_MODEL

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="generate responses and report safety per language")
    p.add_argument("--model", default=DEFAULT_MODEL, help="alias, local dir or hub id")
    p.add_argument("--languages", "--langs", dest="languages", nargs="+", default=None,
                   help="language codes (default: all present)")
    p.add_argument("--split", default="test", help="corpus split (ignored for --multijail)")
    p.add_argument("--multijail", help="MultiJail CSV path or hub id instead of the corpus")
    p.add_argument("--limit", type=int, default=0, help="first N prompts only (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="evaluation precision (default: the model's own; bfloat16 pays only where "
                        "the hardware computes it natively, and can change answers)")
    p.add_argument("--judge", default="markers",
                   help="markers (multilingual refusal markers, offline; the default), "
                        "hf:<model id or local dir> (a local model judge) or "
                        "http:<base url>#<model> (an OpenAI-compatible endpoint; the API key is "
                        "read from $OPENAI_API_KEY). Model judges cache their verdicts under "
                        "$MLCWB_CACHE_DIR/judges (default ~/.cache/mlcwb/judges).")
    p.add_argument("--out", required=True,
                   help="JSONL file for the responses (resumable); the judged rows go beside it "
                        "as <stem>.<judge name>.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Notebook 05's evaluation (``compare.evaluate_methods``) for one model: the same
    generation, judging, files and metrics, so the command line and the notebook never differ."""
    from pathlib import Path

    from mlcwb.compare import evaluate_methods
    from mlcwb.data import load_corpus, load_multijail
    from mlcwb.errors import ConfigError
    from mlcwb.judges import make_judge

    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise ConfigError(f"--out {out}: give a .jsonl file (the responses; the judged rows go beside it).")
    judge = make_judge(args.judge, device=args.device)  # a bad spec fails before generation
    prompts = load_multijail(args.multijail) if args.multijail else load_corpus(args.languages)
    if args.split and not args.multijail:
        prompts = prompts.select(split=args.split)
    if args.limit:
        prompts = type(prompts)(prompts.prompts[:args.limit], name=prompts.name)
    result = evaluate_methods({out.stem: args.model}, prompts, args.languages, judge, out.parent,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                              n_boot=2000, device=args.device, dtype=args.dtype)
    log.info("judged rows (%s %s) beside %s", judge.name, judge.version, out)
    print(result.metrics[out.stem].to_string())
    return 0
