"""Benchmark results in one schema (DESIGN.md section 9), so runs can be compared over time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

from mlcwb.io import atomic_write_json
from mlcwb.paths import repo_root


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


def write_result(name: str, what: str, unit: str, baseline: tuple[str, float],
                 candidate: tuple[str, float], target: float | None,
                 higher_is_better: bool = True, extra: dict[str, Any] | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json``; ``ratio`` > 1 means the candidate is better."""
    base, cand = float(baseline[1]), float(candidate[1])
    ratio = cand / base if higher_is_better else base / cand
    result = {
        "name": name, "what": what, "unit": unit,
        "baseline": {"label": baseline[0], "value": base},
        "candidate": {"label": candidate[0], "value": cand},
        "ratio": round(ratio, 3), "target": target,
        "meets_target": None if target is None else bool(ratio >= target),
        "machine": machine_info(), "date": _dt.date.today().isoformat(),
        **({"extra": extra} if extra else {}),
    }
    out = Path(out_dir) if out_dir else repo_root() / "benchmarks" / "results"
    return atomic_write_json(out / f"{name}.json", result)
