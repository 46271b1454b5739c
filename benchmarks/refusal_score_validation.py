"""Can the refusal score stand in for generated and judged answers? Measured on two methods.

The raw Qwen2.5-Coder-0.5B-Instruct and one English-only alignment of it (the transfer sweep's
``dpo-lora-64-5e-5``: DPO with LoRA on 64 English train pairs, lr 5e-5, one epoch, the cheapest
candidate to train and one that moved refusal a lot: English safety 75% -> 12% on dev) answer the corpus's
dev **and** test prompts (24 + 24 harmful/benign each) in en zh ru ja ar, greedy fp32, 32 new
tokens; the marker judge labels each answer and the generation records each answer's refusal
score (first-step log-odds of a refusal opening). Reported:

* per language, AUROC of the score against the verdict (pooled over both methods), and whether
  it reaches 0.9, the level from which the sweep may screen with it;
* per (method, language): judged refusal rate and mean refusal probability, their Spearman
  correlation, and the share of method-vs-method differences whose sign the score keeps;
* the screen's cost: training the candidate plus one prefill per dev prompt in 5 languages
  (target: at most 5 minutes), against training plus generating.

Results: ``benchmarks/results/refusal_score_validation.json``; the judged rows are kept beside it
(``refusal_score_validation/<method>.jsonl``) so a rerun reuses every answer.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

from mlcwb.bench import machine_info, measuring, quality_fields
from mlcwb.data import load_corpus
from mlcwb.generation import generate
from mlcwb.io import atomic_write_json
from mlcwb.judge_markers import RefusalJudge
from mlcwb.judges import apply_judge
from mlcwb.models import load_model
from mlcwb.paths import repo_root
from mlcwb.screen import SCREEN_AUROC, prefill_scores, validate_scores
from mlcwb.train import train

sys.path.insert(0, str(Path(__file__).parent))
from transfer_sweep import CANDIDATES, LANGS, MODEL, candidate_config  # noqa: E402

CANDIDATE = "dpo-lora-64-5e-5"


def answer(source: str, prompts, out: Path, args) -> tuple[object, float]:
    model, tok = load_model(source, device="cpu")
    start = time.perf_counter()
    frame = generate(model, tok, prompts, LANGS, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, out_path=out)
    seconds = time.perf_counter() - start
    del model
    gc.collect()
    return frame, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=48)
    args = parser.parse_args()
    results = repo_root() / "benchmarks" / "results"
    rows_dir = results / "refusal_score_validation"
    corpus = load_corpus()
    prompts = corpus.select(langs=LANGS, split=["dev", "test"])
    dev = corpus.select(langs=LANGS, split="dev")
    judge = RefusalJudge()
    with measuring() as m, tempfile.TemporaryDirectory(prefix="mlcwb-validate-") as tmp:
        t0 = time.perf_counter()
        trained = train(candidate_config(CANDIDATES[CANDIDATE], args.model, tmp),
                        prompts=corpus.select(langs=LANGS, split="train"))
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        model, tok = load_model(str(trained.final_dir), device="cpu")
        prefill_scores(model, tok, dev, LANGS, batch_size=24, progress=False)
        screen_s = time.perf_counter() - t1
        del model
        gc.collect()
        judged, gen_s = {}, {}
        for method, source in [("raw", args.model), (CANDIDATE, str(trained.final_dir))]:
            frame, gen_s[method] = answer(source, prompts, rows_dir / f"{method}.jsonl", args)
            judged[method] = apply_judge(frame, judge)
    validation = validate_scores(judged)
    atomic_write_json(results / "refusal_score_validation.json", {
        "name": "refusal_score_validation",
        "what": f"refusal score (first-step log-odds of a refusal opening) against the marker "
                f"judge's verdicts, {args.model} raw and {CANDIDATE}, dev + test splits, {LANGS}",
        "screen_threshold_auroc": SCREEN_AUROC,
        "per_language": json.loads(validation["per_language"].round(4).reset_index().to_json(orient="records")),
        "rates": json.loads(validation["rates"].round(2).reset_index().to_json(orient="records")),
        "agreement": json.loads(validation["agreement"].round(4).to_json(orient="records"))[0],
        "screen": {"candidate": CANDIDATE, "train_s": round(train_s, 1),
                   "prefill_screen_s": round(screen_s, 1), "screen_total_s": round(train_s + screen_s, 1),
                   "target_s": 300, "generate_s": {k: round(v, 1) for k, v in gen_s.items()},
                   "answers_per_method": len(judged["raw"])},
        **quality_fields(m), "machine": machine_info(), "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
