"""find_representations: the newest saved pair that fits, damaged files skipped, bugs not hidden."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mlcwb.reps_cache import find_representations, fits
from tests.test_geometry import make_reps


def _reps(model: str = "m", pooling: str = "last", harmful=(True, False, True, False)):
    reps = make_reps(np.random.default_rng(0).normal(size=(4, 3, 2, 8)), list(harmful))
    reps.meta["model"], reps.pooling = model, pooling
    return reps


def test_newest_fitting_pair_wins_and_damaged_ones_are_skipped(tmp_path):
    old = _reps()
    old.meta["tag"] = "old"
    old.save(tmp_path / "old")
    _reps(pooling="mean").save(tmp_path / "other-pooling")
    _reps().save(tmp_path / "new")
    (tmp_path / "broken.json").write_text("{not json")
    for age, name in enumerate(["broken", "new", "other-pooling", "old"]):  # newest first
        os.utime(tmp_path / f"{name}.json", (1e9 - age, 1e9 - age))
    (tmp_path / "new.safetensors").write_bytes(b"truncated")  # fails its checksum
    found = find_representations(tmp_path, "m", "last", langs=["en", "zh"], layers=[1])
    assert found is not None and found.meta["tag"] == "old"  # "new" is damaged, the other pools by mean
    assert find_representations(tmp_path, "m", "last", langs=["fr"]) is None
    assert find_representations(tmp_path / "missing", "m", "last") is None


def test_fits_needs_both_labels_and_the_asked_layers():
    assert fits(_reps(), "m", "last", langs=["en"], layers=[0, 1])
    assert not fits(_reps(harmful=(True,) * 4), "m", "last")
    assert not fits(_reps(), "m", "last", layers=[5])
    assert not fits(_reps(model="x"), "m", "last")


def test_an_unexpected_error_is_not_swallowed(tmp_path, monkeypatch):
    _reps().save(tmp_path / "a")

    def boom(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr("mlcwb.representations.Representations.load", boom)
    with pytest.raises(RuntimeError):
        find_representations(tmp_path, "m", "last")
