"""What the MLC term adds to an alignment step (DPO, default model, 10 languages).

Each variant runs in its own subprocess (a clean peak-memory reading) through ``mlcwb.train.train``
with the step times it logs: DPO pairs with ~256-token answers and ~40-token prompts, batch of 2
pairs, MLC batch of 2 prompts x 10 languages, ``aux_every = 2``. The first step of each run is a
warm-up and not counted.

Baseline: alignment-only step. Candidate: the average step of alignment + MLC (ours: prompt-only
backbone forward, the shared template prefix run once, the rest in length buckets) with
aux_every = 2. Also measured: the same with the MLC rows in one padded batch (``buckets="none"``),
to show what the buckets buy. ``ratio`` = baseline / candidate (``mlcwb.bench.write_result``), so
the issue's target "MLC adds at most 1.5x on average" is ratio >= 0.667. Beside it: the floor set by
the token counts (the MLC prompts are tokens no implementation can skip).

``mlc_vs_official_batching.py`` reuses ``run_variant`` for the paper's batching.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

N_LANGS = ["en", "zh", "ru", "ja", "ar", "bn", "sw", "ur", "ps", "ku"]
ANSWER_TOKENS = 256
PAIRS = 2
MLC_PROMPTS = 2


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="utf-8") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the process's resident memory every 20 ms (CPU torch has no allocator stats)."""

    def __init__(self) -> None:
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_prompts(tokenizer, n: int):
    """Corpus prompts where the corpus has them (English), stretched answers, stand-in translations.

    Token counts are what the benchmark measures; where the corpus lacks a language the prompt is
    the English text tagged with the language code (said so in the result JSON).
    """
    from mlcwb.data import Prompt, PromptSet, load_corpus

    try:
        corpus = load_corpus()
    except Exception:  # noqa: BLE001 - a benchmark falls back to synthetic text
        corpus = None
    real = [p for p in corpus if p.harmful] if corpus is not None else []
    have = corpus.languages if corpus is not None else []
    prompts = []
    for i in range(n):
        base = real[i % len(real)] if real else None
        en = base.text["en"] if base else f"Explain in detail how one would do task number {i} quickly."
        answer = (base.response if base else "Here is a long answer. ") * 40
        reject = (base.rejected if base and base.rejected else "Sure, here is how. ") * 40
        text = {lang: (base.text[lang] if base and lang in have else f"[{lang}] {en}") for lang in N_LANGS}
        prompts.append(Prompt(id=f"bench-{i}", text=text, harmful=True, category="bench",
                              response=_cut(tokenizer, answer), rejected=_cut(tokenizer, reject)))
    synthetic = [lang for lang in N_LANGS if lang not in have]
    return PromptSet(prompts, "bench"), synthetic


def _cut(tokenizer, text: str) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:ANSWER_TOKENS - 1]
    return tokenizer.decode(ids)


def run_variant(variant: str, steps: int, model_name: str) -> dict:
    """One measured run in this process: ``align``, ``ours`` or ``official``."""
    import torch

    from mlcwb.mlc import MLCConfig
    from mlcwb.models import load_model
    from mlcwb.train import train
    from mlcwb.train_config import TrainConfig

    model, tok = load_model(model_name, device="cpu", dtype=torch.float32)
    prompts, synthetic = synthetic_prompts(tok, PAIRS * steps)
    mlc = None if variant == "align" else MLCConfig(  # ours | ours_one_batch | ours_every_step | official
        batch_size=MLC_PROMPTS, aux_every=1 if variant in ("ours_every_step", "official") else 2,
        batching="official" if variant == "official" else "separate",
        buckets="none" if variant == "ours_one_batch" else "auto")
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=model_name, mlc_languages=N_LANGS, batch_size=PAIRS, epochs=1,
                             max_steps=steps, lr=1e-6, precision="no", device="cpu", mlc=mlc,
                             output_dir=out, resume=False)
        before = _rss_mb()
        with PeakRSS() as peak:
            result = train(config, model, tok, prompts)
    rows = result.log[1:]  # step 1 warms up
    mlc_rows = [r for r in rows if "mlc_loss" in r]
    plain_rows = [r for r in rows if "mlc_loss" not in r]
    mean = lambda rs, k: statistics.fmean(r[k] for r in rs) if rs else None  # noqa: E731
    return {"variant": variant, "steps_measured": len(rows),
            "step_s": mean(rows, "seconds"), "mlc_step_s": mean(mlc_rows, "seconds"),
            "plain_step_s": mean(plain_rows, "seconds"),
            "mlc_step_tokens": mean(mlc_rows, "tokens"), "plain_step_tokens": mean(plain_rows, "tokens"),
            "mlc_step_positions": mean(mlc_rows, "positions"),
            "rss_before_train_mb": round(before, 1), "peak_rss_mb": round(peak.peak, 1),
            "synthetic_languages": synthetic, "threads": torch.get_num_threads()}


def measure(variant: str, steps: int, model_name: str) -> dict:
    """Run a variant in a fresh subprocess and return its measurements."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--steps", str(steps),
           "--model", model_name]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.steps, args.model)))
        return
    from mlcwb.bench import Measurement, write_result

    measurement = Measurement.start()
    align = measure("align", args.steps, args.model)
    ours = measure("ours", args.steps, args.model)
    one_batch = measure("ours_one_batch", args.steps, args.model)
    avg = (ours["mlc_step_s"] + ours["plain_step_s"]) / 2  # aux_every = 2
    plain_tokens, mlc_tokens = ours["plain_step_tokens"], ours["mlc_step_tokens"] - ours["plain_step_tokens"]
    extra = {
        "align_only": align, "align_plus_mlc_ours": ours, "align_plus_mlc_one_padded_batch": one_batch,
        "overhead_mlc_step": round(ours["mlc_step_s"] / align["step_s"], 3),
        "overhead_mlc_step_one_padded_batch": round(one_batch["mlc_step_s"] / align["step_s"], 3),
        "buckets_speedup_mlc_step": round(one_batch["mlc_step_s"] / ours["mlc_step_s"], 3),
        "overhead_average_aux_every_2": round(avg / align["step_s"], 3),
        "overhead_average_within_run": round(avg / ours["plain_step_s"], 3),
        "overhead_average_within_run_one_padded_batch": round(
            (one_batch["mlc_step_s"] + one_batch["plain_step_s"]) / 2 / one_batch["plain_step_s"], 3),
        "token_floor_mlc_step": round((plain_tokens + mlc_tokens) / plain_tokens, 3),
        "token_floor_average_aux_every_2": round(1 + mlc_tokens / (2 * plain_tokens), 3),
        "setup": {"model": args.model, "languages": N_LANGS, "dpo_pairs": PAIRS,
                  "answer_tokens": ANSWER_TOKENS, "mlc_prompts": MLC_PROMPTS, "aux_every": 2,
                  "note": "2 shared CPU cores; step times from mlcwb.train's log, first step dropped; "
                          "languages listed in synthetic_languages are English text tagged with the "
                          "code (the corpus had no translation for them yet): same token shape"},
    }
    path = write_result("mlc_step_overhead",
                        "DPO step time: alignment-only vs alignment + MLC (ours, aux_every=2 average)",
                        "s/step", ("alignment-only", align["step_s"]), ("alignment+MLC ours", avg),
                        target=round(1 / 1.5, 3), higher_is_better=False, extra=extra,
                        measurement=measurement)
    print(path.read_text())


if __name__ == "__main__":
    main()
