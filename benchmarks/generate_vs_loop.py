"""Batched generation (mlcwb.generation.generate) vs one prompt at a time, on the default model.

Measures responses per second for both with greedy decoding and 48 new tokens, and counts the
prompts whose batched answer differs from the one-at-a-time answer (it should be none). The
loop is slow, so it is timed on the first ``--loop-subset`` prompts and its rate is used.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from mlcwb.bench import Measurement, write_result
from mlcwb.generation import generate, generate_texts
from mlcwb.models import load_model
from mlcwb.paths import shared_data_dir


def english_prompts(n: int) -> tuple[list[str], str]:
    """The corpus's English prompts if the corpus loads, else MultiJail's English column."""
    try:
        from mlcwb.data import load_corpus

        texts = load_corpus(["en"]).texts("en")
        if len(texts) >= n:
            return texts[:n], "mlcwb corpus (en)"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to MultiJail
        logging.warning("corpus unavailable (%s); using MultiJail", exc)
    import pandas as pd

    frame = pd.read_csv(shared_data_dir() / "multijail" / "MultiJail.csv")
    return frame["en"].tolist()[:n], "MultiJail (en)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loop-subset", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    texts, source = english_prompts(args.prompts)
    measurement = Measurement.start()

    start = time.perf_counter()
    batched = generate(model, tokenizer, texts, ["en"], args.max_new_tokens, args.batch_size,
                       progress=False)["response"].tolist()
    batched_s = time.perf_counter() - start

    subset = texts[:args.loop_subset]
    start = time.perf_counter()
    single = [generate_texts(model, tokenizer, [t], args.max_new_tokens)[0] for t in subset]
    loop_s = time.perf_counter() - start

    mismatches = [i for i, s in enumerate(single) if s != batched[i]]
    batched_rate, loop_rate = len(texts) / batched_s, len(subset) / loop_s
    path = write_result(
        "generate_vs_loop", "greedy responses per second, default model, CPU", "responses/s",
        baseline=("one prompt at a time (model.generate per prompt)", round(loop_rate, 4)),
        candidate=(f"batched mlcwb.generation.generate (batch {args.batch_size}, left padding, "
                   f"KV cache)", round(batched_rate, 4)),
        target=4.0, measurement=measurement,
        extra={"prompts": len(texts), "prompt_source": source, "max_new_tokens": args.max_new_tokens,
               "batched_seconds": round(batched_s, 1), "loop_prompts": len(subset),
               "loop_seconds": round(loop_s, 1),
               "loop_note": f"loop timed on the first {len(subset)} prompts; its rate is compared",
               "greedy_compared": len(subset), "greedy_mismatches": len(mismatches),
               "mismatch_indices": mismatches, "torch_threads": torch.get_num_threads(),
               "note": "other jobs on the machine slow both passes; the load averages say how busy it was"},
    )
    print(path)


if __name__ == "__main__":
    main()
