"""Recompute the transfer run's intervals of differences from its counts (no new answers).

The transfer run's summary (``benchmarks/results/transfer_run.json``) stored percentile-bootstrap
intervals for discrimination and for paired changes, which collapse to ``[0, 0]`` when both rates
are 0. Its counts are all there: a rate and its ``n`` give ``k``; a paired comparison's ``n``,
before and after rates and discordant counts ``b``, ``c`` give the whole 2x2 table. So the
score intervals (``mlcwb.metrics.diff_ci``: Newcombe's hybrid score interval for discrimination;
``paired_diff_ci``: Newcombe's paired interval for changes) are computed from them here and
written back, with the smallest detectable differences, and the discrimination table of docs/results.md
is printed. Every other number stays as the run made it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlcwb.io import atomic_write_text
from mlcwb.metrics import detectable_difference, diff_ci, paired_diff_ci
from mlcwb.paths import repo_root

NAMES = {"raw": "raw model", "align": "English-only SFT", "mlc": "+ MLC joint",
         "mlc_seq": "+ MLC sequential", "mlc_only": "MLC only"}
MLC_LANGS = ["en", "zh", "ru", "ja", "ar"]


def _count(rate: float, n: int) -> int:
    k = rate / 100 * n
    if abs(k - round(k)) > 1e-6:
        raise ValueError(f"rate {rate} is not a whole count of {n}")
    return int(round(k))


def discrimination(row: dict, n_harmful: int, n_benign: int) -> tuple[float, float]:
    """Newcombe's interval from the stored safety rate and discrimination (all benign prompts)."""
    kh = _count(row["safety_rate"], n_harmful)
    kb = _count(row["safety_rate"] - row["discrimination"], n_benign)
    lo, hi = diff_ci(kh, n_harmful, kb, n_benign)
    return 100 * lo, 100 * hi


def paired(row: dict) -> tuple[float, float]:
    """Newcombe's paired interval from n, before/after rates and the discordant counts."""
    n, b, c = row["n"], row["b"], row["c"]
    before = _count(row["before"], n)
    a = before - b  # refused before and after
    d = n - a - b - c
    x = np.r_[np.ones(a + b), np.zeros(c + d)].astype(bool)
    y = np.r_[np.ones(a), np.zeros(b), np.ones(c), np.zeros(d)].astype(bool)
    lo, hi = paired_diff_ci(x, y)
    return 100 * lo, 100 * hi


def _cell(value: float, lo: float, hi: float) -> str:
    sign = lambda v: f"{v:+.0f}".replace("-", "−") if round(v) else "0"  # noqa: E731
    return f"{sign(value)} [{sign(lo)}, {sign(hi)}]"


def main() -> None:
    path = repo_root() / "benchmarks" / "results" / "transfer_run.json"
    run = json.loads(Path(path).read_text(encoding="utf-8"))
    nh, nb = run["n_harmful"], run["n_benign"]
    for rows in run["methods"].values():
        for row in rows.values():
            row["discrimination_lo"], row["discrimination_hi"] = discrimination(row, nh, nb)
    for kinds in run["paired"].values():
        for rows in kinds.values():
            for row in rows.values():
                row["change_lo"], row["change_hi"] = paired(row)
    run["intervals"] = ("rates: Wilson; discrimination: Newcombe's hybrid score interval; paired "
                        "changes: Newcombe's paired interval (method 10); recomputed from the "
                        "stored counts by benchmarks/transfer_intervals.py")
    run["detectable_difference"] = {
        "discrimination": round(100 * detectable_difference(nh, nb), 1),
        "change": round(100 * detectable_difference(nh, nh), 1), "power": 0.8, "alpha": 0.05,
        "base_rate": 0.5}
    atomic_write_text(path, json.dumps(run, indent=1) + "\n")  # the layout the run wrote
    langs = list(run["methods"]["raw"])
    print("| method | " + " | ".join(lang if lang in MLC_LANGS else f"{lang}*" for lang in langs) + " |")
    print("|---|" + "---:|" * len(langs))
    for method, rows in run["methods"].items():
        cells = [_cell(rows[lang]["discrimination"], rows[lang]["discrimination_lo"],
                       rows[lang]["discrimination_hi"]) for lang in langs]
        print(f"| {NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    print(run["detectable_difference"])


if __name__ == "__main__":
    main()
