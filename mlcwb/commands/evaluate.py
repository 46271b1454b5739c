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
    p.add_argument("--langs", nargs="+", default=None, help="language codes (default: all present)")
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
    from mlcwb.data import load_corpus, load_multijail
    from mlcwb.generation import generate, judged_csv_path, save_judged
    from mlcwb.judges import apply_judge, make_judge
    from mlcwb.models import load_model
    from mlcwb.metrics import language_metrics

    judge = make_judge(args.judge, device=args.device)  # a bad spec fails before generation
    prompts = load_multijail(args.multijail) if args.multijail else load_corpus(args.langs)
    if args.split and not args.multijail:
        prompts = prompts.select(split=args.split)
    if args.limit:
        prompts = type(prompts)(prompts.prompts[:args.limit], name=prompts.name)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    frame = generate(model, tokenizer, prompts, args.langs, args.max_new_tokens, args.batch_size,
                     out_path=args.out)
    judged = apply_judge(frame, judge)
    csv = save_judged(judged, judged_csv_path(args.out, judge.name))
    log.info("judged rows (%s %s): %s", judge.name, judge.version, csv)
    print(language_metrics(judged).to_string())
    return 0
