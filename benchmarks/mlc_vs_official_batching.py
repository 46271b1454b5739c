"""An MLC step of ours vs one with the paper's batching (DPO, default model, 10 languages).

Ours: the 2 x 10 prompt-only rows go through the backbone in their own forward (no LM head, no
padding to the answer length; on a CPU the shared template prefix runs once and the rest in length
buckets). Official: the same rows are appended to the DPO batch, padded to
its length, and logits are computed for every position. Both run every step with MLC
(aux_every = 1) in fresh subprocesses (see ``mlc_step_overhead.py`` for the setup). ``ratio`` =
official / ours step time (target >= 3); beside it the floor set by token counts.
"""

from __future__ import annotations

import argparse

from mlc_step_overhead import MLC_PROMPTS, N_LANGS, PAIRS, measure

from mlcwb.bench import Measurement, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    measurement = Measurement.start()
    ours = measure("ours_every_step", args.steps, args.model)
    official = measure("official", args.steps, args.model)
    rows = MLC_PROMPTS * len(N_LANGS)
    extra = {
        "ours": ours, "official": official,
        "peak_memory_ratio": round(official["peak_rss_mb"] / ours["peak_rss_mb"], 3),
        "step_memory_ratio": round((official["peak_rss_mb"] - official["rss_before_train_mb"])
                                   / (ours["peak_rss_mb"] - ours["rss_before_train_mb"]), 3),
        "mlc_rows": rows,
        "token_floor": round(official["mlc_step_positions"] / ours["mlc_step_positions"], 3),
        "note": "token_floor: positions computed per MLC step, official (MLC rows padded to the "
                "DPO length) / ours; the step-time ratio can exceed it because official also "
                "computes LM-head logits on every position of every row.",
        "setup": {"model": args.model, "dpo_pairs": PAIRS, "languages": N_LANGS, "aux_every": 1},
    }
    path = write_result("mlc_vs_official_batching", "DPO+MLC step time: ours vs official batching",
                        "s/step", ("official batching", official["mlc_step_s"]),
                        ("ours (prompt-only backbone forward)", ours["mlc_step_s"]),
                        target=3.0, higher_is_better=False, extra=extra,
                        measurement=measurement)
    print(path.read_text())


if __name__ == "__main__":
    main()
