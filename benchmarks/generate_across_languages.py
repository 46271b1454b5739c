"""Batches sorted by length across languages against batches sorted within each language.

``mlcwb.generation.generate`` used to sort its jobs by (language, length), so a batch of 64 that
spanned the end of one language and the start of the next held that language's shortest prompts
beside the next one's longest, and every row was padded to the longest. It now sorts by length
over all languages. This benchmark times both orders on the same model in one run, greedy fp32,
the shared prefix run once in both, and counts how many answers stay identical and how many
marker-judge verdicts agree per language (a different batch is a different matrix shape, so fp32
rounding may differ; the answers must not).

Default: Qwen2.5-Coder-0.5B-Instruct (the transfer experiment's model) on MultiJail's first 24
prompts in each of its languages, batch 64, 32 new tokens: the transfer preset's MultiJail pass.
It also counts the padded prefill tokens of both orders for that set and for the corpus's test
split in the transfer preset's eleven languages (no model needed for that). Writes
``benchmarks/results/generate_across_languages.json``.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from mlcwb.bench import measuring, write_result
from mlcwb.data import load_corpus, load_multijail
from mlcwb.generation import answer_rows, generate, prompt_jobs
from mlcwb.judge_markers import RefusalJudge
from mlcwb.judges import apply_judge
from mlcwb.models import load_model
from mlcwb.prefix import compute_prefix, prompt_rows

TRANSFER_LANGS = ["en", "zh", "ru", "ja", "ar", "fr", "de", "es", "bn", "sw", "ur"]


def within_language_order(jobs, rows) -> list[int]:
    """The previous order: by language, then longest first."""
    return sorted(range(len(jobs)), key=lambda i: (jobs[i].lang, -len(rows[i])))


@torch.inference_mode()
def generate_within_languages(model, tok, prompts, langs, batch_size: int, max_new_tokens: int) -> dict:
    """The previous ``generate`` loop (batches cut from the within-language order), answers by key."""
    jobs = prompt_jobs(prompts, langs)
    rows = prompt_rows(tok, [j.prompt for j in jobs], True)
    order = within_language_order(jobs, rows)
    prefix = compute_prefix(model, rows)
    answers = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        texts, _ = answer_rows(model, tok, [rows[i] for i in chunk], prefix, [jobs[i].lang for i in chunk],
                               max_new_tokens)
        answers.update({(jobs[i].id, jobs[i].lang): t for i, t in zip(chunk, texts)})
    return answers


def padded_tokens(tok, prompts, langs, batch_size: int) -> dict[str, int]:
    """Prefill tokens each order computes (every row padded to its batch's longest), and the real ones."""
    jobs = prompt_jobs(prompts, langs)
    lengths = [len(r) for r in prompt_rows(tok, [j.prompt for j in jobs], True)]

    def padded(order: list[int]) -> int:
        return sum(max(lengths[i] for i in order[s:s + batch_size]) * len(order[s:s + batch_size])
                   for s in range(0, len(order), batch_size))

    across = sorted(range(len(jobs)), key=lambda i: -lengths[i])
    return {"within_languages": padded(sorted(range(len(jobs)), key=lambda i: (jobs[i].lang, -lengths[i]))),
            "across_languages": padded(across), "real": sum(lengths), "answers": len(jobs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--per-language", type=int, default=24, help="MultiJail prompts per language")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    model, tok = load_model(args.model)
    jail = load_multijail()
    jail = jail.select(ids=jail.ids[:args.per_language])
    langs = jail.languages
    tokens = {"multijail": padded_tokens(tok, jail, langs, args.batch_size),
              "corpus_test_split": padded_tokens(tok, load_corpus().select(split="test"), TRANSFER_LANGS,
                                                 args.batch_size)}
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    generate(model, tok, jail.select(ids=jail.ids[:4]), ["en"], **kw)  # warm-up
    with measuring(settle_s=60) as measurement:
        start = time.perf_counter()
        within = generate_within_languages(model, tok, jail, langs, args.batch_size, args.max_new_tokens)
        t_within = time.perf_counter() - start
        start = time.perf_counter()
        across = generate(model, tok, jail, langs, **kw)
        t_across = time.perf_counter() - start
    judge = RefusalJudge()
    previous = [within[key] for key in zip(across["id"], across["lang"])]
    before = apply_judge(across.assign(response=previous), judge)
    across = apply_judge(across, judge)
    same = pd.DataFrame({"lang": across["lang"], "identical": across["response"] == before["response"],
                         "verdict_agreement": across["refused"] == before["refused"]})
    per_lang = same.groupby("lang", sort=False)[["identical", "verdict_agreement"]].mean().round(3)
    n = len(across)
    write_result("generate_across_languages",
                 f"greedy answers/s, MultiJail {args.per_language} prompts x {len(langs)} languages, batch "
                 f"{args.batch_size}, {args.max_new_tokens} new tokens, fp32, shared prefix, {args.model}",
                 "answers/s", ("batches sorted within each language", n / t_within),
                 ("batches sorted by length across languages", n / t_across), target=None,
                 extra={"seconds": [round(t_within, 1), round(t_across, 1)],
                        "identical_answers": round(float(same["identical"].mean()), 4),
                        "verdict_agreement": round(float(same["verdict_agreement"].mean()), 4),
                        "per_language": per_lang.to_dict(orient="index"), "prefill_tokens": tokens},
                 measurement=measurement)


if __name__ == "__main__":
    main()
