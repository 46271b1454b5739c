"""How long ``mlcwb --help`` takes, against what building the parser used to cost.

Candidate: ``mlcwb --help`` in a fresh process, as a user types it; the parser comes from
``mlcwb.commands``, which import no stage module. Baseline: importing the stage modules the old
parser imported to call their ``add_cli`` (``mlcwb.train``, ``evaluate``, ``extract``,
``translate``, ``reproduce``), which pulls in torch and transformers; that import was what made
``--help`` take seconds. Both run in the same invocation, each once to warm the disk cache and then
alternating, median of 5. The target is absolute (well under 1 s); ``python -c pass`` is recorded
as the floor, and the nice level too; mlcwb.bench records the load average around the runs and
marks the result invalid when the machine was busy.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlcwb.bench import Measurement, write_result

RUNS = 5
TARGET_S = 1.0
STAGES = ("mlcwb.train", "mlcwb.generation", "mlcwb.extract", "mlcwb.translate", "mlcwb.reproduce")


def _command() -> tuple[list[str], str]:
    """The installed console script where there is one, else ``python -m mlcwb.cli``."""
    script = Path(sys.executable).with_name("mlcwb")
    if script.is_file():
        return [str(script), "--help"], "mlcwb --help"
    return [sys.executable, "-m", "mlcwb.cli", "--help"], "python -m mlcwb.cli --help"


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 4)


def main() -> None:
    candidate, label = _command()
    baseline = [sys.executable, "-c", "import " + ", ".join(STAGES)]
    floor = [sys.executable, "-c", "pass"]
    for argv in (candidate, baseline, floor):  # warm the disk cache; not counted
        _seconds(argv)
    measurement = Measurement.start()
    samples: dict[str, list[float]] = {"candidate": [], "baseline": [], "floor": []}
    for _ in range(RUNS):
        samples["candidate"].append(_seconds(candidate))
        samples["baseline"].append(_seconds(baseline))
        samples["floor"].append(_seconds(floor))
    measurement.stop()
    median = {name: statistics.median(values) for name, values in samples.items()}
    path = write_result(
        "cli_help", what=f"wall time of `{label}` in a fresh process, median of {RUNS}",
        unit="s", baseline=(f"importing the stage modules the old parser imported ({', '.join(STAGES)})",
                            median["baseline"]),
        candidate=(f"{label} (parser from mlcwb.commands)", median["candidate"]), target=None,
        higher_is_better=False, measurement=measurement,
        extra={"target_seconds": TARGET_S, "meets_target_seconds": median["candidate"] < TARGET_S,
               "python_startup_seconds": median["floor"], "runs": RUNS,
               "samples_seconds": samples, "nice": os.nice(0)})
    print(f"{label}: {median['candidate']:.3f} s; stage imports: {median['baseline']:.3f} s; "
          f"python startup: {median['floor']:.3f} s -> {path}")


if __name__ == "__main__":
    main()
