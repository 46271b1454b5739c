"""Presets are data: YAML files that ship in the package, load by name or by path, are checked
when read (one message naming the file and the key), and `mlcwb presets` lists and prints them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import mlcwb.reproduce as reproduce_module
from mlcwb.cli import main
from mlcwb.errors import ConfigError
from mlcwb.languages import PAPER_LANGUAGES
from mlcwb.notebooks import notebook_paths
from mlcwb.paths import repo_root
from mlcwb.presets import PRESET_DIR, SCHEMA, Preset, load_preset, preset_names, preset_text
from mlcwb.reproduce import stage_parameters

SHIPPED = {"tiny", "quick", "transfer", "cpu-full", "paper"}


def _printed(capsys, *argv: str) -> str:
    assert main(["presets", *argv]) == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------ the shipped presets

def test_the_presets_ship_as_files_named_after_the_preset():
    assert set(preset_names()) == SHIPPED
    for name in preset_names():
        path = PRESET_DIR / f"{name}.yaml"
        assert yaml.safe_load(path.read_text())["name"] == name
        by_name, by_path = load_preset(name), load_preset(path)
        assert by_name == by_path and by_name.name == name and by_name.model


def test_the_schema_is_the_preset_dataclass():
    assert set(SCHEMA) == {f.name for f in dataclasses.fields(Preset)}


def test_shipped_values_are_plain_json_with_no_numbers_left_as_strings():
    """config.json and the stage keys take these values as they are: a YAML 1.1 number string
    ("6e-7") or a YAML-only type (a date) would change what a run records."""
    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for name in preset_names():
        preset = load_preset(name)
        values = {"common": preset.common, "notebooks": preset.notebooks}
        assert json.loads(json.dumps(values)) == values, name
        for text in strings(values):
            with pytest.raises(ValueError):
                float(text)


def test_preset_languages_relate_as_the_experiment_needs():
    transfer, paper = load_preset("transfer"), load_preset("paper")
    langs = transfer.common["languages"]
    assert transfer.notebooks["04_mlc_training"]["mlc_languages"] == langs[:5]
    assert transfer.notebooks["01_translation"]["target_languages"] == langs[1:]
    assert paper.common["languages"] == PAPER_LANGUAGES
    assert paper.notebooks["01_translation"]["target_languages"] == PAPER_LANGUAGES[1:]
    for name in preset_names():
        reproduce_module._check_languages(load_preset(name))  # every code is known


def test_every_cited_sweep_is_committed():
    for preset in map(load_preset, preset_names()):
        assert preset.sweep is None or (repo_root() / preset.sweep).is_file(), preset.name


# ------------------------------------------------------------------ a copy of a preset, edited

def test_a_printed_preset_loads_back_to_the_same_preset(tmp_path, capsys):
    for name in preset_names():
        text = _printed(capsys, name)
        assert text == preset_text(name) and text.startswith("# ")  # comments included
        (tmp_path / f"{name}.yaml").write_text(text)
        assert load_preset(tmp_path / f"{name}.yaml") == load_preset(name)
        (tmp_path / "mine.yaml").write_text(text)
        assert load_preset(tmp_path / "mine.yaml") == dataclasses.replace(load_preset(name), name="mine")


def test_a_copied_and_edited_preset_runs_through_stage_parameters(tmp_path, monkeypatch):
    text = preset_text("quick")
    assert "lr: 5e-5" in text and "max_new_tokens: 32" in text
    mine = tmp_path / "mine.yaml"
    mine.write_text(text.replace("lr: 5e-5", "lr: 2e-5")
                    .replace("max_new_tokens: 32", "max_new_tokens: 8"))
    preset, quick = load_preset(str(mine)), load_preset("quick")
    assert preset.name == "mine" and preset.description == quick.description
    for notebook in notebook_paths():
        params = stage_parameters(preset, notebook, tmp_path)
        before = stage_parameters(quick, notebook, tmp_path)
        changed = {k for k in params if params[k] != before[k]}
        expected = {"04_mlc_training": {"lr"}, "05_safety_comparison": {"max_new_tokens"}}
        assert changed == expected.get(notebook.stem, set()), notebook.stem
    assert stage_parameters(preset, notebook_paths()[4], tmp_path)["lr"] == 2e-5

    seen = {}
    monkeypatch.setattr(reproduce_module, "reproduce",
                        lambda out, preset, **kwargs: seen.update(out=out, preset=preset))
    assert main(["reproduce", "--preset", str(mine)]) == 0
    assert seen == {"out": "runs/mine", "preset": str(mine)}  # its own run directory


def test_a_minimal_preset_file_needs_only_its_model(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("common: {model_name: tiny-random-llama}\ncell_timeout: 30\n")
    preset = load_preset(path)
    assert preset == Preset("small", f"from {path}", {"model_name": "tiny-random-llama"},
                            cell_timeout=30.0)


# ------------------------------------------------------------------ bad input: one clear message

BAD = [
    ("name: x\nsweeps: a.json\ncommon: {model_name: m}\n",
     r"unknown key sweeps; allowed: name, description, measured, common, notebooks, notes, sweep, "
     r"cell_timeout"),
    ("description: [a, b]\ncommon: {model_name: m}\n",
     r"description must be a string, got \['a', 'b'\]"),
    ("common: [model_name, m]\n", r"common must be a mapping of parameter names to values"),
    ("common: {model_name: 3}\n", r"common.model_name must be a model's name, got 3"),
    ("common: {model_name: m}\ncell_timeout: soon\n",
     r"cell_timeout must be a positive number of seconds \(or null for no limit\), got 'soon'"),
    ("common: {model_name: m}\nnotebooks: {04_mlc_training: 3}\n",
     r"notebooks.04_mlc_training must be a mapping of parameters, got 3"),
    ("common: {model_name: m}\nnotebooks: {06_extra: {x: 1}}\n",
     r"notebooks.06_extra is not a notebook of the series; the notebooks are 00_quickstart, "
     r"01_translation, .*05_safety_comparison"),
    ("description: no model\ncommon: {languages: [en]}\n", r"common.model_name is missing"),
    ("[1, 2]\n", r"is a mapping with common: and notebooks: mappings, got list"),
    ("common: {model_name: m\n", r"is not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_preset_file_is_one_message_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_preset(path)
    assert str(path) in str(info.value)


def test_an_unknown_name_or_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="Unknown preset 'quik'; choose one of cpu-full, paper, "
                                          "quick, tiny, transfer, or give the path of a preset file"):
        load_preset("quik")
    with pytest.raises(ConfigError, match="Preset file .*nothing.yaml does not exist"):
        load_preset(tmp_path / "nothing.yaml")


def test_a_config_file_may_override_only_what_it_may(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("common: {model_name: tiny-random-t5}\nsweep: x.json\n")
    with pytest.raises(ConfigError, match="unknown key sweep; allowed: common, notebooks, "
                                          "description, cell_timeout"):
        load_preset("tiny", config)
    config.write_text("notebooks: {07_more: {x: 1}}\n")
    with pytest.raises(ConfigError, match="notebooks.07_more is not a notebook of the series"):
        load_preset("tiny", config)
    config.write_text("common: {model_name: tiny-random-t5}\n")
    preset = load_preset("quick", config)
    assert preset.name == "quick+c" and preset.model == "tiny-random-t5" and preset.measured is None


def test_cli_reproduce_with_a_bad_preset_file_stops_before_the_run_directory(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("common: {model_name: tiny-random-llama}\nnotebook: {}\n")
    out = tmp_path / "run"
    assert main(["reproduce", "--preset", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown key notebook; allowed:" in err and "Traceback" not in err
    assert not out.exists()


# ------------------------------------------------------------------ mlcwb presets

def test_mlcwb_presets_lists_each_preset_with_its_description_and_measured_time(capsys):
    out = _printed(capsys)
    starts = [line.split()[0] for line in out.splitlines() if line and not line[0].isspace()]
    assert starts[:5] == preset_names() and set(starts[:5]) == SHIPPED
    flat = " ".join(out.split())
    measured = [p for p in map(load_preset, preset_names()) if p.measured]
    assert {p.name for p in measured} >= {"quick", "transfer"}
    for preset in map(load_preset, preset_names()):
        assert " ".join(preset.description.split()) in flat
    for preset in measured:
        assert f"measured: {preset.measured}" in flat
    assert max(map(len, out.splitlines())) <= 99


def test_mlcwb_presets_with_an_unknown_name_is_a_message(capsys):
    assert main(["presets", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Unknown preset 'nope'" in err and "Traceback" not in err


def test_presets_dir_is_inside_the_package():
    import mlcwb

    assert PRESET_DIR.parent == Path(mlcwb.__file__).resolve().parent
