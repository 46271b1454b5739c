"""Benchmark: mlcwb.extract vs the naive loop, on the default model.

Naive loop: one prompt at a time, the full model (LM head included) with output_hidden_states=True,
last-token states of the requested layers taken from the returned tuple. Candidate:
``mlcwb.extract`` (length-sorted batches, inference_mode, backbone only, stops after the deepest
requested block). Both get the same chat-formatted prompts and must agree (max abs diff recorded).

Each phase runs in its own child process (model loaded there), so its memory is measured alone:
peak RSS sampled every 5 ms from /proc/self/statm during the phase (``rss_peak_mb``), its rise over
the RSS at phase start (``rss_rise_mb``), and the process's lifetime ``ru_maxrss`` (includes the
model load). tracemalloc is not used: it does not see torch's tensor allocations.

The naive loop is slow, so by default it is timed on an evenly spaced subset of the prompts
(``--naive-n`` per language) and compared by prompts/s (tokens/s is recorded too, since the subset's
lengths differ a little from the whole set's).

    python benchmarks/extract_vs_naive.py [--n 300] [--naive-n 60] [--layers 10,20,30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak resident memory of this process while the block runs (sampled, MB)."""

    def __enter__(self) -> "RssSampler":
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def load_texts(n: int, langs: list[str]) -> tuple[list[str], list[str], str]:
    """``n`` prompts x ``langs`` from the project corpus (MultiJail if the corpus lacks them)."""
    from mlcwb.data import load_corpus, load_multijail
    from mlcwb.errors import MLCWBError

    try:
        prompts, source = load_corpus(langs), "mlcwb corpus (data/corpus)"
    except MLCWBError:
        prompts, source = load_multijail(), "MultiJail"
    prompts = prompts.select(langs=langs)
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} prompts have {langs}; lower --n")
    items = prompts.prompts[:n]
    return [p.text[lang] for p in items for lang in langs], [p.id for p in items], source


def child(phase: str, spec_path: str, out_path: str) -> None:
    import numpy as np
    import torch

    from mlcwb.extract import extract
    from mlcwb.models import encode_prompts, load_model

    spec = json.loads(Path(spec_path).read_text())
    model, tok = load_model(spec["model"], device="cpu")
    texts, layers = spec["texts"], spec["layers"]
    n_tokens = int(encode_prompts(tok, texts)["attention_mask"].sum())
    # Dense FLOPs of the blocks the candidate runs (2 x weights x tokens; attention's quadratic
    # term is small at prompt lengths): the figure its share of the machine's peak is taken from.
    blocks = model.get_decoder().layers[:max(layers)]
    gflop = 2 * sum(p.numel() for p in blocks.parameters()) * n_tokens / 1e9
    with RssSampler() as mem:
        start = time.perf_counter()
        if phase == "naive":
            rows = []
            with torch.no_grad():
                for text in texts:
                    enc = encode_prompts(tok, [text])
                    hs = model(**enc, output_hidden_states=True).hidden_states
                    rows.append(torch.stack([hs[i][0, -1] for i in layers]).numpy())
            values = np.stack(rows)
        else:
            values = extract(model, tok, texts, layers=layers, batch_size=spec["batch_size"],
                             progress=False).values[:, 0]
        seconds = time.perf_counter() - start
    np.save(out_path + ".npy", values)
    Path(out_path).write_text(json.dumps({
        "seconds": seconds, "n_prompts": len(texts), "n_tokens": n_tokens,
        "prompts_per_s": len(texts) / seconds, "tokens_per_s": n_tokens / seconds,
        "gflop": gflop,
        "rss_peak_mb": round(mem.peak, 1), "rss_rise_mb": round(mem.peak - mem.start, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }))


def run_phase(phase: str, spec: dict, tmp: Path) -> tuple[dict, "object"]:
    import numpy as np

    spec_path, out_path = tmp / f"{phase}.spec.json", tmp / f"{phase}.out.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--child", phase, str(spec_path), str(out_path)],
                   check=True)
    return json.loads(out_path.read_text()), np.load(str(out_path) + ".npy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=300, help="prompts per language (candidate)")
    ap.add_argument("--naive-n", type=int, default=60, help="prompts per language timed naively "
                    "(evenly spaced subset; 0 = all)")
    ap.add_argument("--langs", default="en,zh,ar,sw")
    ap.add_argument("--layers", default="10,20,30", help="hidden_states indices")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    import numpy as np

    from mlcwb.bench import Measurement, write_result

    langs = args.langs.split(",")
    layers = [int(x) for x in args.layers.split(",")]
    texts, ids, source = load_texts(args.n, langs)
    naive_n = args.naive_n or args.n
    step = args.n / naive_n
    subset_prompts = sorted({int(i * step) for i in range(naive_n)})
    subset = [p * len(langs) + j for p in subset_prompts for j in range(len(langs))]
    base = {"model": args.model, "layers": layers, "batch_size": args.batch_size}
    measurement = Measurement.start()
    with tempfile.TemporaryDirectory() as tmp:
        fast, fast_values = run_phase("fast", {**base, "texts": texts}, Path(tmp))
        naive, naive_values = run_phase("naive", {**base, "texts": [texts[i] for i in subset]},
                                        Path(tmp))
    diff = float(np.abs(fast_values[subset] - naive_values).max())
    path = write_result(
        "extract_vs_naive",
        what=f"prompts/s extracting last-token states of {len(layers)} layers {layers} of "
             f"{args.model}, {args.n} prompts x {len(langs)} languages ({','.join(langs)})",
        unit="prompts/s",
        baseline=("naive loop: one prompt at a time, full model + LM head, output_hidden_states",
                  round(naive["prompts_per_s"], 3)),
        candidate=(f"mlcwb.extract (length-sorted batches of {args.batch_size}, backbone only, "
                   f"no LM head, stops after layer {max(layers)})", round(fast["prompts_per_s"], 3)),
        target=5.0, measurement=measurement, candidate_gflops=fast["gflop"] / fast["seconds"],
        extra={
            "texts_from": source, "languages": langs, "layers": layers,
            "n_prompts_candidate": len(texts), "n_prompts_naive": len(subset),
            "naive_timed_on": f"evenly spaced subset of {len(subset_prompts)} prompts x "
                              f"{len(langs)} languages; prompts/s compared directly (not scaled)",
            "tokens_per_s": {"naive": round(naive["tokens_per_s"], 1),
                             "candidate": round(fast["tokens_per_s"], 1),
                             "ratio": round(fast["tokens_per_s"] / naive["tokens_per_s"], 3)},
            "mean_tokens_per_prompt": {"naive": round(naive["n_tokens"] / naive["n_prompts"], 1),
                                       "candidate": round(fast["n_tokens"] / fast["n_prompts"], 1)},
            "seconds": {"naive": round(naive["seconds"], 2), "candidate": round(fast["seconds"], 2)},
            "max_abs_diff_naive_vs_candidate": diff,
            "memory_mb": {"method": "each phase in its own process; rss_peak = peak RSS sampled "
                                    "every 5 ms from /proc/self/statm during the phase, rss_rise = "
                                    "that peak minus RSS at phase start, ru_maxrss = process "
                                    "lifetime peak incl. model load (resource.getrusage)",
                          "naive": {k: naive[k] for k in ("rss_peak_mb", "rss_rise_mb", "ru_maxrss_mb")},
                          "candidate": {k: fast[k] for k in ("rss_peak_mb", "rss_rise_mb",
                                                             "ru_maxrss_mb")}},
            "torch_threads": fast["threads"],
        },
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
