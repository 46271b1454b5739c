"""`mlcwb reproduce` end to end on the tiny preset, stage skipping, and clear preflight errors."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

import mlcwb.reproduce as reproduce_module
import mlcwb.run_report
from mlcwb.errors import ConfigError, ModelFetchError
from mlcwb.notebooks import notebook_paths
from mlcwb.presets import RENAMED_PARAMETERS, Preset, load_preset, preset_names
from mlcwb.reproduce import library_fingerprint, preflight, reproduce, stage_parameters


def test_every_preset_names_only_parameters_the_notebooks_declare(tmp_path):
    for preset in map(load_preset, preset_names()):
        for notebook in notebook_paths():
            params = stage_parameters(preset, notebook, tmp_path)
            assert params["run_dir"] == str(tmp_path)


def test_unknown_preset_parameter_is_an_error(tmp_path):
    bad = Preset("bad", "x", {"model_name": "tiny-random-llama"}, {"00_quickstart": {"nope": 1}})
    with pytest.raises(ConfigError, match="nope"):
        stage_parameters(bad, notebook_paths()[0], tmp_path)


@pytest.mark.parametrize(("stem", "old", "new"), [(stem, old, new) for stem, names in RENAMED_PARAMETERS.items()
                                                   for old, new in names.items()])
def test_a_renamed_parameter_is_an_error_naming_its_new_name(tmp_path, stem, old, new):
    notebook = next(path for path in notebook_paths() if path.stem == stem)
    declared = stage_parameters(load_preset("tiny"), notebook, tmp_path)
    assert old not in declared and (new in declared or new in reproduce_module._parameter_defaults(notebook))
    bad = Preset("bad", "x", {"model_name": "tiny-random-llama"}, {stem: {old: 1}})
    with pytest.raises(ConfigError, match=f"{stem}.{old} is now called {new!r}"):
        stage_parameters(bad, notebook, tmp_path)


def test_a_common_key_no_notebook_declares_is_an_error():
    for key, message in [("lam", "common sets \\['lam'\\], which no notebook declares. lam is now called 'mlc_lam'"),
                         ("epochz", "common sets \\['epochz'\\], which no notebook declares.$")]:
        bad = Preset("bad", "x", {**load_preset("tiny").common, key: 1})
        with pytest.raises(ConfigError, match=message):
            reproduce_module._check_common(bad)
    for name in preset_names():
        reproduce_module._check_common(load_preset(name))


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
        preflight(load_preset("paper"))


# ------------------------------------------------------------------ stage keys (no real notebooks)

STAGES = ["00_a", "01_b", "02_c"]


def _write_notebook(path: Path, parameters: str, code: str = "pass") -> Path:
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def fake_series(tmp_path, monkeypatch):
    """Three tiny notebooks and an execute_notebook that only records the stage and writes the
    output file, so skipping and rerunning are tested in milliseconds."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    paths = [_write_notebook(folder / f"{stem}.ipynb", "run_dir = ''\nx = 0") for stem in STAGES]
    ran: list[str] = []

    def fake_execute(source, output, parameters=None, **kwargs):
        ran.append(source.stem)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(source.read_text())
        return 0.0

    monkeypatch.setattr(reproduce_module, "notebook_paths", lambda: paths)
    monkeypatch.setattr(reproduce_module, "execute_notebook", fake_execute)
    monkeypatch.setattr(reproduce_module, "preflight", lambda preset: None)
    monkeypatch.setattr(mlcwb.run_report, "write_report", lambda *args: [])
    return ran


def _preset(x_of_b: int = 1) -> Preset:
    return Preset("fake", "three stages", {"model_name": "tiny-random-llama"},
                  {"00_a": {"x": 0}, "01_b": {"x": x_of_b}, "02_c": {"x": 2}})


def test_nothing_changed_means_every_stage_is_skipped(fake_series, tmp_path):
    first = reproduce(tmp_path / "run", _preset())
    assert fake_series == STAGES and not any(s["skipped"] for s in first.values())
    fake_series.clear()
    again = reproduce(tmp_path / "run", _preset())
    assert fake_series == [] and all(s["skipped"] for s in again.values())


def test_changed_parameters_rerun_that_stage_and_every_later_one(fake_series, tmp_path):
    reproduce(tmp_path / "run", _preset(x_of_b=1))
    fake_series.clear()
    stages = reproduce(tmp_path / "run", _preset(x_of_b=5))
    assert fake_series == ["01_b", "02_c"]
    assert [s["skipped"] for s in stages.values()] == [True, False, False]
    stamp = json.loads((tmp_path / "run" / "stages" / "01_b.json").read_text())
    assert stamp["parameters"]["x"] == 5 and set(stamp["inputs"]) >= {"notebook", "upstream", "library"}


def test_keys_chain_through_an_interrupted_rerun(fake_series, tmp_path, monkeypatch):
    """01_b reran with new parameters but 02_c never ran (a crash): 02_c is still stale next time."""
    reproduce(tmp_path / "run", _preset(x_of_b=1))
    real_fake = reproduce_module.execute_notebook

    def crash_on_c(source, output, parameters=None, **kwargs):
        if source.stem == "02_c":
            raise KeyboardInterrupt
        return real_fake(source, output, parameters, **kwargs)

    monkeypatch.setattr(reproduce_module, "execute_notebook", crash_on_c)
    with pytest.raises(KeyboardInterrupt):
        reproduce(tmp_path / "run", _preset(x_of_b=5))
    monkeypatch.setattr(reproduce_module, "execute_notebook", real_fake)
    fake_series.clear()
    reproduce(tmp_path / "run", _preset(x_of_b=5))
    assert fake_series == ["02_c"]


def test_a_deleted_executed_notebook_reruns_it_and_everything_after(fake_series, tmp_path):
    reproduce(tmp_path / "run", _preset())
    (tmp_path / "run" / "notebooks" / "01_b.ipynb").unlink()
    fake_series.clear()
    reproduce(tmp_path / "run", _preset())
    assert fake_series == ["01_b", "02_c"]


def test_a_changed_library_reruns_every_stage(fake_series, tmp_path, monkeypatch):
    reproduce(tmp_path / "run", _preset())
    fake_series.clear()
    monkeypatch.setattr(reproduce_module, "library_fingerprint", lambda: "another-mlcwb")
    stages = reproduce(tmp_path / "run", _preset())
    assert fake_series == STAGES and not any(s["skipped"] for s in stages.values())


def test_from_stage_keeps_earlier_stages_whatever_changed_and_reruns_the_rest(fake_series, tmp_path,
                                                                             monkeypatch):
    reproduce(tmp_path / "run", _preset())
    fake_series.clear()
    monkeypatch.setattr(reproduce_module, "library_fingerprint", lambda: "another-mlcwb")
    stages = reproduce(tmp_path / "run", _preset(), from_stage="01")
    assert fake_series == ["01_b", "02_c"]
    assert stages["00_a"]["kept"] and not stages["01_b"]["skipped"] and "kept" not in stages["02_c"]
    fake_series.clear()
    reproduce(tmp_path / "run", _preset())  # the kept stage is stale now: a plain run redoes it all
    assert fake_series == STAGES
    with pytest.raises(ConfigError, match="'09' is not a stage; stages: 00_a, 01_b, 02_c"):
        reproduce(tmp_path / "run", _preset(), from_stage="09")
    with pytest.raises(ConfigError, match="00_a, 01_b never ran in"):
        reproduce(tmp_path / "fresh", _preset(), from_stage="02_c")


def test_library_fingerprint_follows_the_version_and_the_source(monkeypatch):
    import mlcwb

    before = library_fingerprint()
    assert before == library_fingerprint()
    monkeypatch.setattr(mlcwb, "__version__", "99.0", raising=False)
    assert library_fingerprint() != before


@pytest.mark.slow
def test_tiny_preset_end_to_end_and_restart(tmp_path):
    out = tmp_path / "run"
    stages = reproduce(out, "tiny")
    assert [s for s in stages] == [p.stem for p in notebook_paths()]
    assert not any(s["skipped"] for s in stages.values())
    report = (out / "report.md").read_text()
    safety = json.loads((out / "metrics" / "05_safety.json").read_text())
    assert set(safety["methods"]) == {"raw", "align", "mlc", "mlc_seq", "mlc_only"}
    assert set(safety["languages"]) == {"en", "zh"}
    for label in ("raw model", "English-only alignment", "+ MLC (joint)", "+ MLC (sequential)", "MLC only"):
        assert label in report
    assert (out / "report.html").is_file()
    again = reproduce(out, "tiny")  # a rerun finds every stage up to date
    assert all(s["skipped"] for s in again.values())


# ------------------------------------------------------------------ failed stages: one clear message

def test_a_failing_cell_names_stage_cell_error_and_executed_copy(tmp_path):
    from mlcwb.notebooks import NotebookError, execute_notebook

    source = _write_notebook(tmp_path / "07_broken.ipynb", "x = 0",
                             "a = 1\nraise ValueError('no prompts left')\nb = 2")
    executed = tmp_path / "run" / "07_broken.ipynb"
    with pytest.raises(NotebookError) as info:
        execute_notebook(source, executed, {"x": 1})
    message = str(info.value)
    assert "stage 07_broken failed in cell [" in message
    assert "ValueError: no prompts left" in message
    assert "line 2: raise ValueError('no prompts left')" in message
    assert str(executed) in message and executed.is_file()
    assert "Traceback" not in message and "\x1b[" not in message


def test_a_cell_past_its_timeout_is_a_clear_error(tmp_path):
    from mlcwb.notebooks import NotebookError, execute_notebook

    source = _write_notebook(tmp_path / "08_slow.ipynb", "x = 0",
                             "import time\nfor _ in range(600):\n    time.sleep(0.1)")
    executed = tmp_path / "run" / "08_slow.ipynb"
    with pytest.raises(NotebookError) as info:
        execute_notebook(source, executed, cell_timeout=2)
    message = str(info.value)
    assert "stage 08_slow failed in cell [" in message and "per-cell timeout of 2 s" in message
    assert str(executed) in message and "Traceback" not in message


def test_no_cell_timeout_by_default():
    import inspect

    from mlcwb.notebooks import execute_notebook

    assert inspect.signature(execute_notebook).parameters["cell_timeout"].default is None
    assert all(load_preset(name).cell_timeout is None for name in preset_names())


def test_reproduce_passes_the_preset_timeout_and_a_failed_stage_is_not_done(fake_series, tmp_path,
                                                                             monkeypatch):
    from mlcwb.notebooks import NotebookError

    seen = []

    def failing(source, output, parameters=None, cell_timeout=None, **kwargs):
        seen.append(cell_timeout)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        raise NotebookError(f"stage {source.stem} failed")

    reproduce(tmp_path / "run", _preset())
    monkeypatch.setattr(reproduce_module, "execute_notebook", failing)
    timed = Preset("fake", "x", _preset().common, _preset().notebooks, cell_timeout=5.0)
    with pytest.raises(NotebookError, match="stage 00_a failed"):
        reproduce(tmp_path / "run", timed, force=True)
    assert seen == [5.0]
    assert not (tmp_path / "run" / "stages" / "00_a.json").exists()


def test_cli_reproduce_prints_only_the_stage_message(fake_series, tmp_path, monkeypatch, capsys):
    from mlcwb.cli import main
    from mlcwb.notebooks import NotebookError

    def failing(source, output, parameters=None, **kwargs):
        raise NotebookError(f"stage {source.stem} failed in cell [3]: ValueError: x\n  open {output}")

    monkeypatch.setattr(reproduce_module, "execute_notebook", failing)
    monkeypatch.setattr(reproduce_module, "load_preset", lambda name, config=None: _preset())
    assert main(["reproduce", "--preset", "tiny", "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "stage 00_a failed in cell [3]: ValueError: x" in err and "Traceback" not in err


def test_config_file_numbers_that_yaml_1_1_reads_as_strings(fake_series, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("cell_timeout: 60\n"
                      "notebooks: {04_mlc_training: {lr: 6e-7, mlc_only_lr: '1e-6', epochs: 2}}\n")
    preset = load_preset("tiny", config)
    assert preset.cell_timeout == 60.0
    trained = preset.notebooks["04_mlc_training"]
    assert trained["lr"] == 6e-7 and isinstance(trained["lr"], float)  # YAML 1.2's number
    assert trained["mlc_only_lr"] == "1e-6" and trained["epochs"] == 2  # quoted: a string...
    params = stage_parameters(Preset("p", "x", {}, {"01_b": {"x": "6e-7"}}),
                              reproduce_module.notebook_paths()[1], tmp_path)
    assert params["x"] == 6e-7  # ...which the stage makes the number the notebook's default is
    with pytest.raises(ConfigError, match="01_b.x: 'fast' is not a number"):
        stage_parameters(Preset("p", "x", {}, {"01_b": {"x": "fast"}}),
                         reproduce_module.notebook_paths()[1], tmp_path)
    config.write_text("cell_timeout: soon\n")
    with pytest.raises(ConfigError, match="cell_timeout"):
        load_preset("tiny", config)
    config.write_text("common: [1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_preset("tiny", config)


# ------------------------------------------------------------------ progress while stages run

def _chatty_notebook(path: Path) -> Path:
    """A parameter, a cell that prints to stdout and stderr around a tqdm.auto loop (a widget in
    a kernel), and a markdown cell in between."""
    source = _write_notebook(path, "x = 0", "import sys, time\nfrom tqdm.auto import tqdm\n"
                             "for _ in tqdm(range(3), desc='work'):\n    time.sleep(0.05)\n"
                             "print('hello from the notebook', x)\nprint('to stderr', file=sys.stderr)")
    nb = nbformat.read(source, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("# between"))
    nbformat.write(nb, source)
    return source


def _outputs(path: Path) -> list:
    """What a reader sees of an executed notebook: per output its type and stream text."""
    cells = nbformat.read(path, as_version=4).cells
    return [[(o.output_type, o.get("name"), o.get("text")) for o in c.get("outputs", [])]
            for c in cells]


def test_progress_logs_cells_printed_lines_and_bars_and_keeps_the_output(tmp_path, caplog):
    from mlcwb.notebooks import execute_notebook

    source = _chatty_notebook(tmp_path / "09_chatty.ipynb")
    quiet, loud = tmp_path / "quiet.ipynb", tmp_path / "loud.ipynb"
    with caplog.at_level("INFO", logger="mlcwb.notebooks"):
        execute_notebook(source, quiet, {"x": 5})
        assert "hello from the notebook" not in caplog.text  # off by default
        execute_notebook(source, loud, {"x": 5}, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "mlcwb.notebooks"]
    assert "09_chatty | hello from the notebook 5" in lines
    assert "09_chatty | to stderr" in lines
    assert any(line.startswith("09_chatty | work: 100%") and "3/3" in line for line in lines)
    assert [line for line in lines if ": cell " in line] == [
        "09_chatty: cell 1/3: x = 0", "09_chatty: cell 2/3: x = 5",
        "09_chatty: cell 3/3: import sys, time"]
    assert _outputs(loud) == _outputs(quiet)
    assert ("stream", "stdout", "hello from the notebook 5\n") in _outputs(loud)[-1]


def test_stream_lines_join_chunks_and_keep_the_latest_redraw():
    from mlcwb.notebooks import _StreamLines

    shown: list[str] = []
    lines = _StreamLines(shown.append, interval=3600)
    lines.feed("hel")
    lines.feed("lo\nwor")
    lines.feed("ld\n\n")
    lines.feed("\r 10%|#  |\r 50%|##  |")  # a text bar redrawn in place, faster than interval
    lines.feed("\r100%|####|\n")
    lines.feed("no newline at the end")
    lines.flush()
    assert shown == ["hello", "world", "100%|####|", "no newline at the end"]


def test_widget_bars_follow_the_right_hand_text():
    from mlcwb.notebooks import _WidgetBars

    shown: list[str] = []
    bars = _WidgetBars(shown.append, interval=3600)
    state = {"box": {"_model_name": "HBoxModel",
                     "children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]},
             "l": {"_model_name": "HTMLModel", "value": "gen:\u20070%"},
             "p": {"_model_name": "FloatProgressModel", "value": 0, "max": 4},
             "r": {"_model_name": "HTMLModel", "value": "\u20070/4\u2007[00:00&lt;?]"}}
    bars.updated(state, "r")
    state["l"]["value"], state["r"]["value"], state["p"]["value"] = "gen: 50%", "2/4", 2
    bars.updated(state, "r")  # within the interval: not shown
    bars.updated(state, "l")  # the left text is not the signal
    state["l"]["value"], state["r"]["value"], state["p"]["value"] = "gen: 100%", "4/4", 4
    bars.updated(state, "r")  # full: shown at once
    bars.updated(state, "x")
    assert shown == ["gen: 0% 0/4 [00:00<?]", "gen: 100% 4/4"]


def test_reproduce_ends_with_a_line_per_stage(fake_series, tmp_path, caplog):
    with caplog.at_level("INFO", logger="mlcwb.reproduce"):
        reproduce(tmp_path / "run", _preset())
        first = caplog.text
        caplog.clear()
        reproduce(tmp_path / "run", _preset(x_of_b=2))
    for stem in STAGES:
        assert f"stage {stem:<24} ran      0 s" in first
    assert "3 of 3 stages ran, 0 skipped" in first
    assert f"stage {'00_a':<24} skipped  (up to date; took 0 s when it ran)" in caplog.text
    assert f"stage {'01_b':<24} ran" in caplog.text and "2 of 3 stages ran, 1 skipped" in caplog.text


def test_reproduce_asks_for_progress_by_default(fake_series, tmp_path, monkeypatch):
    seen = []

    def recording(source, output, parameters=None, progress=False, **kwargs):
        seen.append(progress)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(source.read_text())
        return 0.0

    monkeypatch.setattr(reproduce_module, "execute_notebook", recording)
    reproduce(tmp_path / "run", _preset())
    reproduce(tmp_path / "quiet", _preset(), progress=False)
    assert seen == [True] * 3 + [False] * 3
