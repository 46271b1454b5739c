"""Benchmark results: the quiet-machine rule and the fields every result carries (no timing)."""

from __future__ import annotations

import json

import pytest

import mlcwb.bench as bench
from mlcwb.bench import Measurement, load_threshold, validity, write_result

FAKE_PEAK = {"gflops": 100.0, "what": "fake", "repeats": 1, "seconds": 0.5, "torch_threads": 2}


@pytest.fixture
def fake_machine(monkeypatch):
    """Two cores, a settable load average, and no real peak measurement."""
    load = {"now": (0.2, 0.3, 0.4)}
    monkeypatch.setattr(bench.os, "getloadavg", lambda: load["now"])
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench, "peak_gflops", lambda *a, **k: FAKE_PEAK)
    return load


@pytest.mark.parametrize("cores, limit", [(1, 1.0), (2, 1.5), (16, 8.5)])
def test_threshold_is_half_the_cores_plus_a_half(cores, limit):
    assert load_threshold(cores) == limit


@pytest.mark.parametrize("load1, valid", [(0.0, True), (1.5, True), (1.51, False), (3.0, False)])
def test_validity_on_two_cores(load1, valid):
    verdict = validity([load1, 0.0, 0.0], cores=2)
    assert verdict["valid"] is valid
    assert (verdict["reason"] is None) == valid
    if not valid:
        assert f"{load1:.2f}" in verdict["reason"] and "1.50" in verdict["reason"]


def test_no_load_average_means_unknown_not_valid():
    assert validity(None)["valid"] is None


def test_a_busy_machine_still_writes_the_result_marked_invalid(fake_machine, tmp_path):
    fake_machine["now"] = (2.7, 1.0, 0.5)
    measurement = Measurement.start()
    fake_machine["now"] = (3.1, 1.2, 0.6)
    path = write_result("busy", "x", "s", ("a", 2.0), ("b", 1.0), target=1.5, higher_is_better=False,
                        out_dir=tmp_path, measurement=measurement)
    result = json.loads(path.read_text())
    assert result["valid"] is False and "2.70" in result["reason"]
    assert result["load_average"]["before"] == [2.7, 1.0, 0.5]
    assert result["load_average"]["after"] == [3.1, 1.2, 0.6]
    assert result["ratio"] == 2.0 and result["meets_target"] is True


def test_a_quiet_machine_is_valid_and_reports_the_peak_share(fake_machine, tmp_path):
    with bench.measuring() as measurement:
        pass
    path = write_result("quiet", "x", "items/s", ("a", 1.0), ("b", 3.0), target=None,
                        out_dir=tmp_path, measurement=measurement, candidate_gflops=25.0)
    result = json.loads(path.read_text())
    assert result["valid"] is True and result["reason"] is None and "cores" in result["rule"]
    assert result["peak"]["gflops"] == 100.0 and result["candidate_share_of_peak"] == 0.25
    assert result["load_average"]["measured_seconds"] is not None


def test_without_a_measurement_the_load_at_write_time_decides(fake_machine, tmp_path):
    fake_machine["now"] = (5.0, 5.0, 5.0)
    result = json.loads(write_result("late", "x", "s", ("a", 1.0), ("b", 1.0), target=None,
                                     out_dir=tmp_path).read_text())
    assert result["valid"] is False and "write time" in result["checked"]
    assert result["load_average"]["before"] is None and result["candidate_share_of_peak"] is None


def test_peak_microbenchmark_reports_gflops():
    peak = bench.peak_gflops.__wrapped__(size=64, seconds=0.01)
    assert peak["gflops"] > 0 and peak["repeats"] >= 1 and "64x64" in peak["what"]


def test_measuring_waits_for_the_load_to_settle(fake_machine, monkeypatch):
    loads = iter([(2.4, 1, 1), (1.9, 1, 1), (1.2, 1, 1)])
    sleeps = []
    monkeypatch.setattr(bench.os, "getloadavg", lambda: next(loads, (1.2, 1, 1)))
    monkeypatch.setattr(bench.time, "sleep", sleeps.append)
    measurement = bench.measuring(settle_s=60)
    assert len(sleeps) == 2 and measurement.load_before == [1.2, 1, 1]
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (3.0, 1, 1))
    assert bench.measuring().load_before == [3.0, 1, 1]  # no settling asked: measured at once
