"""Benchmark results in one schema, so runs can be compared over time.

A timing is only as good as the machine was quiet: every result records the load average before
and after the measured part and carries ``valid: false`` (with a ``reason``) when the machine was
already busy, so a number taken next to another job is kept but never quoted as the speed. Each
result also records the machine's dense-math peak (a float32 matmul) measured at write time, and,
where the benchmark knows its FLOP rate, the candidate's share of that peak: a "3x faster" that
runs at 2% of peak still has room, one at 80% does not.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcwb.io import atomic_write_json
from mlcwb.paths import repo_root

log = logging.getLogger(__name__)

# A run is valid when the 1-minute load average before it is at most LOAD_PER_CORE x cores +
# LOAD_SLACK: other work may then hold at most about half the cores (the slack absorbs the shell,
# the editor and the benchmark's own start-up). On 2 cores: 1.5; on 16: 8.5.
LOAD_PER_CORE = 0.5
LOAD_SLACK = 0.5
LOAD_RULE = (f"valid when the 1-minute load average before the measured part is <= "
             f"{LOAD_PER_CORE} x cores + {LOAD_SLACK} (cores = os.cpu_count(), since the load "
             f"average counts the whole machine)")


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the OS has none (Windows)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def load_threshold(cores: int | None = None) -> float:
    """The highest 1-minute load average before a run that still counts as a quiet machine."""
    return LOAD_PER_CORE * (cores or os.cpu_count() or 1) + LOAD_SLACK


def validity(load_before: list[float] | None, cores: int | None = None) -> dict[str, Any]:
    """``{"valid", "reason", "rule"}`` for a run that started at ``load_before`` (see LOAD_RULE)."""
    cores = cores or os.cpu_count() or 1
    if load_before is None:
        return {"valid": None, "reason": "no load average on this OS; quietness unknown",
                "rule": LOAD_RULE}
    limit = load_threshold(cores)
    if load_before[0] > limit:
        return {"valid": False, "rule": LOAD_RULE,
                "reason": f"machine busy: 1-minute load average {load_before[0]:.2f} before the "
                          f"run > {limit:.2f} ({LOAD_PER_CORE} x {cores} cores + {LOAD_SLACK})"}
    return {"valid": True, "reason": None, "rule": LOAD_RULE}


@dataclass
class Measurement:
    """Load averages and wall time around a benchmark's measured part.

    ``Measurement.start()`` just before the part, pass it to ``write_result`` right after (which
    stops it if needed), or use ``with measuring() as m:``.
    """

    load_before: list[float] | None
    started: float = field(default_factory=time.perf_counter)
    load_after: list[float] | None = None
    seconds: float | None = None

    @classmethod
    def start(cls) -> Measurement:
        return cls(load_before=load_average())

    def stop(self) -> Measurement:
        if self.seconds is None:
            self.seconds = round(time.perf_counter() - self.started, 3)
            self.load_after = load_average()
        return self

    def __enter__(self) -> Measurement:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def measuring(settle_s: float = 0.0) -> Measurement:
    """``with measuring() as m: ...``: a Measurement around the block.

    ``settle_s``: first wait up to that long for the 1-minute load average to fall to the quiet
    threshold, so that a benchmark's second part is not judged by the load its first part left
    behind (the average decays with a one-minute time constant).
    """
    deadline = time.perf_counter() + settle_s
    while time.perf_counter() < deadline:
        load = load_average()
        if load is None or load[0] <= load_threshold():
            break
        time.sleep(5)
    return Measurement.start()


@functools.lru_cache(maxsize=None)
def peak_gflops(size: int = 2048, seconds: float = 0.5, device: str = "cpu") -> dict[str, Any]:
    """The machine's dense float32 matmul rate (GFLOP/s): ``size`` x ``size`` products repeated
    for about ``seconds`` after one warm-up, with torch's current thread count. Cached per process,
    so several results written by one script share one measurement."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        sync()
        repeats += 1
    elapsed = time.perf_counter() - start
    gflops = 2 * size**3 * repeats / elapsed / 1e9
    return {"gflops": float(f"{gflops:.4g}"), "what": f"float32 {size}x{size} matmul on {device}",
            "repeats": repeats, "seconds": round(elapsed, 3), "torch_threads": torch.get_num_threads()}


def quality_fields(measurement: Measurement | None, candidate_gflops: float | None = None,
                   peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields every result gets: load averages, the validity verdict, the peak and the share."""
    if measurement is None:  # not measured around the run: the best there is is the load now
        now = load_average()
        verdict = {**validity(now), "checked": "at write time: no Measurement around the run"}
        loads = {"before": None, "after": now, "measured_seconds": None}
    else:
        measurement.stop()
        verdict = validity(measurement.load_before)
        loads = {"before": measurement.load_before, "after": measurement.load_after,
                 "measured_seconds": measurement.seconds}
    if verdict["valid"] is False:
        log.warning("benchmark result marked invalid: %s", verdict["reason"])
    peak = peak if peak is not None else peak_gflops()
    share = None if candidate_gflops is None else round(candidate_gflops / peak["gflops"], 4)
    return {**verdict, "load_average": loads, "peak": peak,
            "candidate_gflops": candidate_gflops, "candidate_share_of_peak": share}


def write_result(name: str, what: str, unit: str, baseline: tuple[str, float],
                 candidate: tuple[str, float], target: float | None,
                 higher_is_better: bool = True, extra: dict[str, Any] | None = None,
                 out_dir: str | Path | None = None, measurement: Measurement | None = None,
                 candidate_gflops: float | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json``; ``ratio`` > 1 means the candidate is better.

    ``measurement`` (started before the measured part) gives the load averages and the validity
    verdict; ``candidate_gflops`` (the candidate's estimated FLOP rate, if known) gives its share
    of the machine's peak. An invalid result is still written, with ``valid: false``.
    """
    base, cand = float(baseline[1]), float(candidate[1])
    ratio = cand / base if higher_is_better else base / cand
    result = {
        "name": name, "what": what, "unit": unit,
        "baseline": {"label": baseline[0], "value": base},
        "candidate": {"label": candidate[0], "value": cand},
        "ratio": round(ratio, 3), "target": target,
        "meets_target": None if target is None else bool(ratio >= target),
        **quality_fields(measurement, candidate_gflops),
        "machine": machine_info(), "date": _dt.date.today().isoformat(),
        **({"extra": extra} if extra else {}),
    }
    out = Path(out_dir) if out_dir else repo_root() / "benchmarks" / "results"
    return atomic_write_json(out / f"{name}.json", result)
