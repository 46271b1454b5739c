"""Choose the ``quick`` preset's alignment by measurement: does English-only alignment leave room?

The MLC experiment only means something where English-only alignment makes English safe while the
other languages stay clearly less safe, and benign prompts are still answered everywhere. This
sweep trains each candidate (English-only SFT or DPO, no MLC) on the corpus train split, answers
harmful and benign *test* prompts in every language of the quick preset, and scores each
candidate by the room it leaves:

    room = safety(en) - mean safety(other languages), with a benign-answer constraint.

Results go to ``benchmarks/results/quick_preset_sweep.json`` (one row per candidate and
language), which ``mlcwb.reproduce`` cites as the reason for the preset's sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

from mlcwb.bench import machine_info
from mlcwb.data import load_corpus
from mlcwb.generation import generate
from mlcwb.io import atomic_write_json
from mlcwb.judge_markers import RefusalJudge
from mlcwb.judges import apply_judge
from mlcwb.models import load_model
from mlcwb.paths import repo_root
from mlcwb.metrics import language_metrics
from mlcwb.train import train
from mlcwb.train_config import TrainConfig

LANGS = ["en", "zh", "ru", "ar", "fr", "es"]
# (name, align, train prompts, epochs, lr): sizes that take minutes on 2 cores.
CANDIDATES = [
    ("dpo-32x1-2e-5", "dpo", 32, 1, 2e-5),
    ("dpo-64x1-1e-4", "dpo", 64, 1, 1e-4),
    ("dpo-64x2-1e-4", "dpo", 64, 2, 1e-4),
    ("sft-32x1-5e-5", "sft", 32, 1, 5e-5),
    ("sft-64x1-5e-5", "sft", 64, 1, 5e-5),
    ("sft-64x2-1e-4", "sft", 64, 2, 1e-4),
    # second round: more distinct prompts at a moderate rate (the first round refused harmful and
    # benign prompts alike: too few examples to learn which is which)
    ("sft-144x1-2e-5", "sft", 144, 1, 2e-5),
    ("sft-144x1-5e-5", "sft", 144, 1, 5e-5),
    ("sft-288x1-2e-5", "sft", 288, 1, 2e-5),
    ("dpo-144x1-5e-5", "dpo", 144, 1, 5e-5),
]


def evaluate(source: str, prompts, judge: RefusalJudge, max_new_tokens: int) -> list[dict]:
    model, tok = load_model(source, device="cpu")
    frame = generate(model, tok, prompts, LANGS, max_new_tokens=max_new_tokens, batch_size=16)
    metrics = language_metrics(apply_judge(frame, judge), n_boot=200)
    del model
    gc.collect()
    cols = ["safety_rate", "over_refusal", "borderline_over_refusal", "lang_match"]
    return [{"lang": lang, **{c: round(float(row[c]), 1) for c in cols}}
            for lang, row in metrics.iterrows()]


def room(rows: list[dict]) -> dict[str, float]:
    by = {r["lang"]: r for r in rows}
    others = [by[lang]["safety_rate"] for lang in LANGS[1:]]
    return {"en_safety": by["en"]["safety_rate"],
            "others_safety_mean": round(sum(others) / len(others), 1),
            "room": round(by["en"]["safety_rate"] - sum(others) / len(others), 1),
            "worst_over_refusal": max(r["over_refusal"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="anything mlcwb.models.load_model accepts (results are kept per model)")
    parser.add_argument("--model-label", help="name to record for --model (default: --model)")
    parser.add_argument("--model-note", help="how the model was obtained, recorded beside its label")
    parser.add_argument("--n-harmful", type=int, default=12)
    parser.add_argument("--n-benign", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--out", default=str(repo_root() / "benchmarks" / "results" / "quick_preset_sweep.json"))
    args = parser.parse_args()

    corpus = load_corpus()
    test = corpus.select(langs=LANGS, split="test")
    ids = test.select(harmful=True).ids[:args.n_harmful] + test.select(harmful=False).ids[:args.n_benign]
    prompts = test.select(ids=ids)
    train_set = corpus.select(langs=LANGS, split="train")
    judge = RefusalJudge()

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    results = {(r["model"], r["name"]): r for r in previous.get("candidates", [])}
    label = args.model_label or args.model
    models = {**previous.get("models", {}), **({label: args.model_note} if args.model_note else {})}
    todo = [c for c in [("raw", None, 0, 0, 0.0), *CANDIDATES] if not args.only or c[0] in args.only]
    for name, align, n, epochs, lr in todo:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mlcwb-sweep-") as tmp:
            source, steps = args.model, 0
            if align:
                cfg = TrainConfig(model=args.model, mlc_languages=LANGS, align=align, train_prompts=n,
                                  epochs=epochs, batch_size=2, lr=lr, seed=0, device="cpu",
                                  mlc=None, output_dir=tmp, resume=False)
                result = train(cfg, prompts=train_set)
                source, steps = str(result.final_dir), result.steps
            train_s = time.perf_counter() - t0
            rows = evaluate(source, prompts, judge, args.max_new_tokens)
        results[(label, name)] = {"name": name, "model": label, "align": align, "train_prompts": n,
                         "epochs": epochs, "lr": lr, "steps": steps,
                         "train_s": round(train_s, 1), "total_s": round(time.perf_counter() - t0, 1),
                         "n_harmful": args.n_harmful, "n_benign": args.n_benign,
                         **room(rows), "per_language": rows}
        print(json.dumps({k: v for k, v in results[(label, name)].items() if k != "per_language"}),
              flush=True)
        atomic_write_json(out, {
            "name": "quick_preset_sweep",
            "what": "English-only alignment candidates for the quick preset: safety (% harmful "
                    "refused) and over-refusal (% benign refused) per language",
            "setup": {"languages": LANGS, "max_new_tokens": args.max_new_tokens, "batch_size": 2, "seed": 0,
                      "judge": "RefusalJudge", "split": "test"},
            "models": models, "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
            "candidates": list(results.values())})


if __name__ == "__main__":
    main()
