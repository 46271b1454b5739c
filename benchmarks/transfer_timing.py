"""Record the `transfer` preset's stage times from a run directory, beside the run before the
cheaper evaluation (``benchmarks/results/transfer_run.json``), as ratios.

Stages are timed by ``mlcwb reproduce`` itself (``runs/NAME/stages/<stage>.json``, ``seconds``).
A stage counts only if it ran in one sitting on a quiet machine: give the load averages seen at
its start and end (``--load``), and name what else shared the cores (``--note``). Stages measured
on different days may be recorded one at a time; each keeps its own date and load.

    python benchmarks/transfer_timing.py --run runs/transfer --stages 05_safety_comparison \\
        --load "0.25 2.09 2.97" "1.02 1.05 1.01" --note "stage 05 alone (--from-stage 05)"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlcwb.bench import machine_info
from mlcwb.io import atomic_write_json
from mlcwb.paths import repo_root

RESULTS = repo_root() / "benchmarks" / "results"
BEFORE = RESULTS / "transfer_run.json"
OUT = RESULTS / "transfer_timing.json"
# What the earlier run's stage 05 did not yet contain: per-language utility was added by a rerun
# (`--from-stage 05`, no new answers) that took this long (transfer_run.json, stage_note).
BEFORE_UTILITY_RERUN_S = 1578.0


def before_seconds() -> dict[str, float]:
    """The earlier run's stage times, stage 05 with its utility rerun, so both sides do the same work."""
    stages = dict(json.loads(BEFORE.read_text(encoding="utf-8"))["stage_seconds"])
    stages["05_safety_comparison"] += BEFORE_UTILITY_RERUN_S
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the run directory (runs/transfer)")
    parser.add_argument("--stages", nargs="+", required=True, help="the stages to record")
    parser.add_argument("--load", nargs=2, required=True, metavar=("START", "END"),
                        help="/proc/loadavg's three load averages at the start and at the end")
    parser.add_argument("--note", default="", help="how the stages ran, and what else did")
    args = parser.parse_args()

    before = before_seconds()
    record = json.loads(OUT.read_text(encoding="utf-8")) if OUT.is_file() else {
        "name": "transfer_timing",
        "what": "mlcwb reproduce --preset transfer, seconds per stage as reproduce records them, "
                "against the run before the cheaper evaluation (stage 05 there + its utility rerun)",
        "after": {}}
    record["before"] = before
    for stage in args.stages:
        stamp = json.loads((Path(args.run) / "stages" / f"{stage}.json").read_text(encoding="utf-8"))
        seconds = float(stamp["seconds"])
        record["after"][stage] = {
            "seconds": seconds, "ratio_before_over_after": round(before[stage] / seconds, 3),
            "date": time.strftime("%Y-%m-%d"), "load_start": args.load[0], "load_end": args.load[1],
            "note": args.note, "machine": machine_info()}
    done = record["after"]
    record["complete"] = sorted(done) == sorted(before)
    if record["complete"]:
        total = sum(row["seconds"] for row in done.values())
        record["total_minutes"] = {"before": round(sum(before.values()) / 60, 1), "after": round(total / 60, 1)}
    atomic_write_json(OUT, record)
    print(json.dumps({stage: {k: row[k] for k in ("seconds", "ratio_before_over_after")}
                      for stage, row in done.items()}, indent=1))


if __name__ == "__main__":
    main()
