"""The README's two pictures of the transfer run, drawn from its committed numbers.

``benchmarks/results/transfer_run.json`` holds every method's per-language rates with their
intervals (Newcombe's for discrimination, recomputed by ``transfer_intervals.py``). This draws
discrimination (refusal of harmful minus refusal of benign prompts) and the share of answers in the
prompt's language per language and arm, with ``mlcwb.safety_figures.bar_figure``, and writes them as
PNG through ``mlcwb.viz.save_figure`` (kaleido + Chromium) into ``docs/figures/``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from mlcwb.paths import repo_root
from mlcwb.run_report import METHOD_LABELS
from mlcwb.safety_figures import bar_figure
from mlcwb.viz import save_figure

MLC_LANGUAGES = ["en", "zh", "ru", "ja", "ar"]  # the rest were never seen by MLC (marked *)


def frames(run: dict) -> dict[str, pd.DataFrame]:
    """One frame per method: languages (unseen ones starred) x the stored metrics."""
    out = {}
    for method, by_lang in run["methods"].items():
        frame = pd.DataFrame(by_lang).T
        frame.index = [lang if lang in MLC_LANGUAGES else f"{lang}*" for lang in frame.index]
        out[METHOD_LABELS.get(method, method)] = frame
    return out


def main() -> None:
    root = repo_root()
    run = json.loads((root / "benchmarks" / "results" / "transfer_run.json").read_text())
    results = frames(run)
    out = root / "docs" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    titles = {"discrimination": "Discrimination (refusal of harmful − refusal of benign, points; 95% Newcombe)",
              "lang_match": "Answers in the prompt's language (%)"}
    with tempfile.TemporaryDirectory() as tmp:
        for metric, title in titles.items():
            fig = bar_figure(results, metric)
            fig.update_layout(title=f"Qwen2.5-Coder-0.5B, transfer run: {title}; * = unseen by MLC",
                              width=1100, height=420, legend_title_text="arm")
            written = [p for p in save_figure(fig, tmp, f"transfer_{metric}") if p.suffix == ".png"]
            if not written:
                raise SystemExit("no PNG written: kaleido and a Chrome/Chromium are needed (make browser-deps)")
            shutil.copy(written[0], out / written[0].name)
            print(out / written[0].name)


if __name__ == "__main__":
    main()
