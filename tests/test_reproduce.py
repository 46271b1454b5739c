"""`mlcwb reproduce` end to end on the tiny preset, stage skipping, and clear preflight errors."""

from __future__ import annotations

import json

import pytest

from mlcwb.errors import ConfigError, ModelFetchError
from mlcwb.notebooks import notebook_paths
from mlcwb.reproduce import PRESETS, Preset, load_preset, preflight, reproduce, stage_parameters


def test_every_preset_names_only_parameters_the_notebooks_declare(tmp_path):
    for preset in PRESETS.values():
        for notebook in notebook_paths():
            params = stage_parameters(preset, notebook, tmp_path)
            assert params["run_dir"] == str(tmp_path)


def test_unknown_preset_parameter_is_an_error(tmp_path):
    bad = Preset("bad", "x", {"model_name": "tiny-random-llama"}, {"00_quickstart": {"nope": 1}})
    with pytest.raises(ConfigError, match="nope"):
        stage_parameters(bad, notebook_paths()[0], tmp_path)


def test_config_file_overrides_and_rejects_unknown_keys(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("common: {languages: [en, ru]}\nnotebooks: {00_quickstart: {max_new_tokens: 2}}\n")
    preset = load_preset("tiny", good)
    assert preset.common["languages"] == ["en", "ru"]
    assert preset.notebooks["00_quickstart"]["max_new_tokens"] == 2
    bad = tmp_path / "b.yaml"
    bad.write_text("steps: 3\n")
    with pytest.raises(ConfigError, match="steps"):
        load_preset("tiny", bad)


def test_paper_preset_fails_with_a_message_about_the_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFetchError, match="huggingface-cli download Qwen/Qwen2.5-7B-Instruct"):
        preflight(PRESETS["paper"])


@pytest.mark.slow
def test_tiny_preset_end_to_end_and_restart(tmp_path):
    out = tmp_path / "run"
    stages = reproduce(out, "tiny")
    assert [s for s in stages] == [p.stem for p in notebook_paths()]
    assert not any(s["skipped"] for s in stages.values())
    report = (out / "report.md").read_text()
    safety = json.loads((out / "metrics" / "05_safety.json").read_text())
    assert set(safety["methods"]) == {"raw", "align", "mlc", "mlc_seq"}
    assert set(safety["languages"]) == {"en", "zh"}
    for label in ("raw model", "English-only alignment", "+ MLC (joint)", "+ MLC (sequential)"):
        assert label in report
    assert (out / "report.html").is_file()
    again = reproduce(out, "tiny")  # a rerun finds every stage up to date
    assert all(s["skipped"] for s in again.values())
