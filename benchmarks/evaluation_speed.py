"""Evaluation's cost per answer, measured in one run: prefix reuse, bfloat16, utility, the screen.

On one model (default: Qwen2.5-Coder-0.5B-Instruct, the transfer experiment's) and the corpus's
**dev** split in five languages, it times, after one warm-up batch:

1. generation, greedy fp32, the template's shared prefix recomputed per prompt (baseline) vs run
   once (``reuse_prefix``), and the share of identical answers (must be 1.0);
2. generation in bfloat16 (prefix reused) against (1)'s fp32: speed, identical answers, verdict
   agreement with the marker judge per language; the default stays fp32 unless verdicts agree on
   at least 99% of answers;
3. utility: the previous computation (LM head at every position, no prefix) vs answer positions
   only after the shared prefix, the perplexities compared, and a rerun from the cache;
4. the refusal score: one prefill per prompt (``mlcwb.screen.prefill_scores``) against the
   generation, their agreement with the score generation recorded, and the score's AUROC against
   the judge's verdicts per language.

Writes ``generate_prefix_reuse``, ``generate_bf16``, ``utility_answer_positions`` and
``refusal_screen`` under ``benchmarks/results/`` (each with machine info and load averages), and
the fp32 judged rows to ``benchmarks/results/refusal_score_rows.jsonl`` for later validation.
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import numpy as np
import torch

from mlcwb.bench import measuring, write_result
from mlcwb.data import load_corpus, load_corpus_answers
from mlcwb.generation import generate
from mlcwb.io import write_jsonl
from mlcwb.judge_markers import RefusalJudge
from mlcwb.judges import apply_judge
from mlcwb.logprobs import utility
from mlcwb.models import encode_prompts, load_model
from mlcwb.paths import repo_root
from mlcwb.screen import prefill_scores, validate_scores

LANGS = ["en", "zh", "ru", "ja", "ar"]


@torch.inference_mode()
def full_logits_perplexity(model, tok, prompts: list[str], answers: list[str], batch_size: int = 8) -> float:
    """The previous utility computation: prompt + answer right-padded, logits at every position."""
    total, count = 0.0, 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        heads = [encode_prompts(tok, [prompts[i]])["input_ids"][0].tolist() for i in chunk]
        tails = [tok(answers[i], add_special_tokens=False)["input_ids"] for i in chunk]
        width = max(len(h) + len(t) for h, t in zip(heads, tails))
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for r, (h, t) in enumerate(zip(heads, tails)):
            ids[r, :len(h) + len(t)] = torch.tensor(h + t)
            mask[r, :len(h) + len(t)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for r, (h, t) in enumerate(zip(heads, tails)):
            total += sum(float(logp[r, len(h) - 1 + k, tok_id]) for k, tok_id in enumerate(t))
            count += len(t)
    return math.exp(-total / count)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_generation(model, tok, prompts, args, judge, measurement):
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    generate(model, tok, prompts.select(ids=prompts.ids[:4]), ["en"], **kw)  # warm-up
    plain, t_plain = timed(generate, model, tok, prompts, LANGS, reuse_prefix=False, **kw)
    reused, t_reused = timed(generate, model, tok, prompts, LANGS, **kw)
    same = float((plain["response"] == reused["response"]).mean())
    n = len(plain)
    write_result("generate_prefix_reuse", f"greedy answers/s, {n} dev prompts x {LANGS}, "
                 f"{args.max_new_tokens} new tokens, batch {args.batch_size}, fp32, {args.model}",
                 "answers/s", ("prefix recomputed per prompt", n / t_plain),
                 ("shared prefix run once", n / t_reused), target=1.3,
                 extra={"identical_answers": same, "seconds": [round(t_plain, 1), round(t_reused, 1)]},
                 measurement=measurement)
    return apply_judge(reused, judge), t_reused


def bf16_support() -> dict:
    """Whether this CPU computes bfloat16 natively: without AVX512_BF16 (or AMX) oneDNN emulates
    it, and bfloat16 runs slower than float32."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        flags = ""
    return {"cpu_avx512_bf16": "avx512_bf16" in flags, "cpu_amx_bf16": "amx_bf16" in flags,
            "onednn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def bench_bf16(model_bf16, tok, prompts, args, judge, fp32_judged, t_fp32, measurement):
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    generate(model_bf16, tok, prompts.select(ids=prompts.ids[:4]), ["en"], **kw)  # warm-up
    half, t_half = timed(generate, model_bf16, tok, prompts, LANGS, **kw)
    half = apply_judge(half, judge)
    merged = fp32_judged.merge(half, on=["id", "lang"], suffixes=("_32", "_16"))
    per_lang = {lang: {"identical": round(float((g.response_32 == g.response_16).mean()), 3),
                       "verdict_agreement": round(float((g.refused_32 == g.refused_16).mean()), 3),
                       "score_corr": round(float(np.corrcoef(g.refusal_score_32, g.refusal_score_16)[0, 1]), 4)}
                for lang, g in merged.groupby("lang", sort=False)}
    agree = float((merged.refused_32 == merged.refused_16).mean())
    n = len(half)
    write_result("generate_bf16", f"greedy answers/s, {n} dev prompts x {LANGS}, shared prefix, "
                 f"{args.model}: float32 vs bfloat16 weights and activations", "answers/s",
                 ("float32", n / t_fp32), ("bfloat16", n / t_half), target=None,
                 extra={"identical_answers": round(float((merged.response_32 == merged.response_16).mean()), 3),
                        "verdict_agreement": round(agree, 4), "per_language": per_lang,
                        "default_stays_fp32": agree < 0.99,
                        **bf16_support(),
                        "rule": "bfloat16 becomes the default only if verdicts agree on >= 99% of answers"},
                 measurement=measurement)


def bench_utility(model, tok, dev, args, measurement):
    answers = load_corpus_answers()
    benign = [p for p in dev.select(harmful=False)][:args.utility_answers]
    pairs = {lang: ([p.text[lang] for p in benign if answers.get(lang, {}).get(p.id)],
                    [answers[lang][p.id] for p in benign if answers.get(lang, {}).get(p.id)])
             for lang in LANGS}
    old, t_old = timed(lambda: {lang: full_logits_perplexity(model, tok, q, a) for lang, (q, a) in pairs.items()})
    cache = repo_root() / "benchmarks" / "results" / ".utility-cache.json"
    cache.unlink(missing_ok=True)
    subset = dev.select(ids=[p.id for p in benign])
    new, t_new = timed(utility, model, tok, subset, {lang: answers[lang] for lang in LANGS}, cache=cache)
    _, t_rerun = timed(utility, model, tok, subset, {lang: answers[lang] for lang in LANGS}, cache=cache)
    cache.unlink(missing_ok=True)
    write_result("utility_answer_positions", f"seconds for utility (perplexity of {len(benign)} benign "
                 f"dev reference answers x {LANGS}), {args.model}", "s",
                 ("LM head at every position, no prefix reuse", t_old),
                 ("LM head at answer positions, shared prefix", t_new), target=1.5, higher_is_better=False,
                 extra={"rerun_from_cache_s": round(t_rerun, 3),
                        "max_relative_perplexity_difference": max(abs(new[k] / old[k] - 1) for k in old),
                        "perplexity": {k: [round(old[k], 4), round(new[k], 4)] for k in old}},
                 measurement=measurement)


def bench_screen(model, tok, prompts, judged, t_generate, measurement):
    screen, t_screen = timed(prefill_scores, model, tok, prompts, LANGS, progress=False)
    merged = judged.merge(screen, on=["id", "lang"], suffixes=("", "_prefill"))
    diff = float(np.max(np.abs(merged.refusal_score - merged.refusal_score_prefill)))
    validation = validate_scores({"raw": judged})
    per_lang = validation["per_language"].round(3).reset_index().to_dict(orient="records")
    write_result("refusal_screen", f"seconds for the refusal score of {len(screen)} dev prompts x "
                 f"{LANGS}: generation (answers + score) vs one prefill (score only)", "s",
                 ("generate and judge", t_generate), ("prefill_scores", t_screen), target=None,
                 higher_is_better=False,
                 extra={"max_abs_difference_generation_vs_prefill": diff, "auroc_vs_judge": per_lang},
                 measurement=measurement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--utility-answers", type=int, default=16)
    args = parser.parse_args()
    dev = load_corpus(LANGS).select(split="dev")
    judge = RefusalJudge()
    model, tok = load_model(args.model, device="cpu")
    with measuring() as m:
        judged, t_gen = bench_generation(model, tok, dev, args, judge, m)
    write_jsonl(repo_root() / "benchmarks" / "results" / "refusal_score_rows.jsonl",
                judged.drop(columns=["settings"]).to_dict(orient="records"))
    with measuring(settle_s=180) as m:
        bench_screen(model, tok, dev, judged, t_gen, m)
    with measuring(settle_s=180) as m:
        bench_utility(model, tok, dev, args, m)
    with measuring(settle_s=180) as m:
        bench_bf16(model.to(torch.bfloat16), tok, dev, args, judge, judged, t_gen, m)
    del model
    gc.collect()


if __name__ == "__main__":
    main()
