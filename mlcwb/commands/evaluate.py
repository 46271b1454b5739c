"""``mlcwb evaluate``: generate responses, judge them with the refusal judge, print rates per language."""

from __future__ import annotations

import argparse

from mlcwb.defaults import DEFAULT_MODEL


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
    p.add_argument("--out", required=True, help="JSONL file for the responses (resumable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlcwb.data import load_corpus, load_multijail
    from mlcwb.evaluate import generate
    from mlcwb.judges import RefusalJudge, apply_judge
    from mlcwb.models import load_model
    from mlcwb.report import language_metrics

    prompts = load_multijail(args.multijail) if args.multijail else load_corpus(args.langs)
    if args.split and not args.multijail:
        prompts = prompts.select(split=args.split)
    if args.limit:
        prompts = type(prompts)(prompts.prompts[:args.limit], name=prompts.name)
    model, tokenizer = load_model(args.model, device=args.device)
    frame = generate(model, tokenizer, prompts, args.langs, args.max_new_tokens, args.batch_size,
                     out_path=args.out)
    judged = apply_judge(frame, RefusalJudge())
    print(language_metrics(judged).to_string())
    return 0
