"""Benchmark: notebook 02's extraction stage, two passes vs one pass with the shared prefix reused.

Baseline (the stage as it was): two ``mlcwb.extract`` calls over the same prompts, one per pooling
(``last``, then ``content_mean``), every prompt run whole (``reuse_prefix=False``). Candidate: one
call with both poolings, the chat template's shared prefix run once and its keys/values reused by
every batch. Both write their results to a fresh cache directory, as the notebook does, so saving
is timed too. The two must give the same states: the largest difference, relative to each state
vector's norm, is recorded per pooling.

Prompts: the corpus's dev split (balanced harmful/benign) in every requested language the corpus
has; all layers of the packaged default model. Baseline and candidate alternate ``--repeats``
times after one warm-up call, in one process (one model load); the fastest run of each is
compared, and every run's seconds are recorded.

    python benchmarks/extract_stage.py [--langs en,zh,ru,ja,ar] [--n 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

POOLINGS = ["last", "content_mean"]


def load_prompts(n: int, langs: list[str]) -> tuple[Any, list[str]]:
    """``n`` dev prompts, half harmful and half benign, and the requested languages they all have."""
    from mlcwb.data import PromptSet, load_corpus

    dev = load_corpus().select(split="dev")
    present = [lang for lang in langs if lang in dev.languages]
    harmful, benign = dev.select(harmful=True).prompts, dev.select(harmful=False).prompts
    half = n // 2
    if len(harmful) < half or len(benign) < n - half:
        raise SystemExit(f"the dev split has {len(harmful)} harmful and {len(benign)} benign prompts; "
                         f"lower --n")
    picked = sorted(harmful[:half] + benign[:n - half], key=lambda p: p.id)
    return PromptSet(picked, name="dev").select(langs=present), present


def baseline(model: Any, tok: Any, prompts: Any, langs: list[str], batch_size: int) -> dict[str, Any]:
    """The stage as it was: one whole-prompt pass per pooling."""
    from mlcwb.extract import extract

    with tempfile.TemporaryDirectory() as cache:
        return {p: extract(model, tok, prompts, langs=langs, pooling=p, batch_size=batch_size,
                           cache_dir=cache, progress=False, reuse_prefix=False) for p in POOLINGS}


def candidate(model: Any, tok: Any, prompts: Any, langs: list[str], batch_size: int) -> dict[str, Any]:
    """One pass for both poolings, the shared prefix run once."""
    from mlcwb.extract import extract

    with tempfile.TemporaryDirectory() as cache:
        return extract(model, tok, prompts, langs=langs, pooling=POOLINGS, batch_size=batch_size,
                       cache_dir=cache, progress=False)


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def max_relative_diff(a: Any, b: Any) -> float:
    """Largest entry difference of two state arrays, relative to each state vector's norm."""
    import numpy as np

    return float((np.abs(a - b).max(-1) / np.linalg.norm(b, axis=-1)).max())


def positions(model: Any, tok: Any, prompts: Any, langs: list[str], prefix: int) -> tuple[int, int]:
    """Token positions the blocks compute: ``(baseline, candidate)``, padding aside."""
    from mlcwb.models import encode_prompts

    texts = [p.text[lang] for p in prompts.prompts for lang in langs]
    tokens = int(encode_prompts(tok, texts)["attention_mask"].sum())
    return len(POOLINGS) * tokens, tokens - (len(texts) - 1) * prefix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=48, help="dev prompts (half harmful, half benign)")
    ap.add_argument("--langs", default="en,zh,ru,ja,ar")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from mlcwb.bench import Measurement, write_result
    from mlcwb.backbone import backbone
    from mlcwb.models import load_model

    prompts, langs = load_prompts(args.n, args.langs.split(","))
    model, tok = load_model(args.model, device="cpu")
    candidate(model, tok, prompts.select(ids=[p.id for p in prompts.prompts[:4]]), langs,
              args.batch_size)  # warm-up: first-call costs belong to neither side
    measurement = Measurement.start()
    runs: dict[str, list[float]] = {"baseline": [], "candidate": []}
    for _ in range(args.repeats):
        seconds, base = timed(baseline, model, tok, prompts, langs, args.batch_size)
        runs["baseline"].append(round(seconds, 3))
        seconds, cand = timed(candidate, model, tok, prompts, langs, args.batch_size)
        runs["candidate"].append(round(seconds, 3))
    measurement.stop()
    prefix = cand["last"].meta["prefix_tokens"]
    base_pos, cand_pos = positions(model, tok, prompts, langs, prefix)
    block_params = sum(p.numel() for p in backbone(model).blocks.parameters())
    best_base, best_cand = min(runs["baseline"]), min(runs["candidate"])
    path = write_result(
        "extract_stage",
        what=f"seconds for notebook 02's extraction stage: {len(prompts)} dev prompts x {len(langs)} "
             f"languages ({','.join(langs)}), all {cand['last'].values.shape[2]} layers of "
             f"{args.model}, poolings {' + '.join(POOLINGS)}",
        unit="seconds",
        baseline=("two extract calls, one per pooling, every prompt run whole (reuse_prefix=False)",
                  best_base),
        candidate=(f"one extract call with both poolings, the {prefix}-token shared prefix run once",
                   best_cand),
        target=2.0, higher_is_better=False, measurement=measurement,
        candidate_gflops=2 * block_params * cand_pos / best_cand / 1e9,
        extra={
            "languages": langs, "n_prompts": len(prompts), "n_texts": len(prompts) * len(langs),
            "harmful": sum(bool(p.harmful) for p in prompts.prompts), "batch_size": args.batch_size,
            "seconds_per_run": runs, "compared": f"fastest of {args.repeats} alternating runs",
            "prefix_tokens": prefix,
            "positions_through_blocks": {"baseline": base_pos, "candidate": cand_pos,
                                         "ratio": round(base_pos / cand_pos, 3)},
            "max_relative_diff": {p: max_relative_diff(cand[p].values, base[p].values)
                                  for p in POOLINGS},
            "relative_diff_rule": "max over entries of |candidate - baseline|, divided by the "
                                  "baseline state vector's L2 norm",
            "torch_threads": torch.get_num_threads(),
        },
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
