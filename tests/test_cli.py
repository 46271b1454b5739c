"""The `mlcwb` command: every stage is reachable, help needs no torch, errors are messages, not
stack traces, and `mlcwb config train` prints a config that `mlcwb train` accepts unchanged."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from mlcwb.cli import COMMANDS, build_parser, main

STAGES = {"fetch-model", "translate", "extract", "train", "evaluate", "reproduce"}
HEAVY = ("torch", "transformers", "pandas", "numpy")


def _subcommands() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_every_stage_has_a_subcommand():
    assert STAGES | {"config", "notebooks", "presets"} <= set(_subcommands())


def test_unknown_model_is_a_message_with_the_known_names(capsys):
    assert main(["fetch-model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "smollm2-135m-instruct" in err and "Traceback" not in err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "mlcwb.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "reproduce" in proc.stdout


def test_version_is_the_package_version(capsys):
    import mlcwb

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"mlcwb {mlcwb.__version__}"


HELP_EVERYWHERE = f"""
import contextlib, io, sys
import mlcwb.cli
parser = mlcwb.cli.build_parser()
for argv in [["--help"]] + [[name, "--help"] for name in {sorted(STAGES | {"config", "notebooks", "presets"})!r}]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_help_imports_no_torch_transformers_pandas_or_numpy():
    """`mlcwb --help` and each `mlcwb CMD --help` build their text without importing a stage."""
    proc = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"building the parser imported {proc.stdout.strip()}"


def test_each_command_module_registers_what_it_runs():
    for command in COMMANDS:
        assert callable(command.register), command.__name__
    defaults = {name: p.get_default("func") for name, p in _subcommands().items()}
    assert all(callable(func) for func in defaults.values()), defaults


def test_light_copies_agree_with_the_library():
    """The command line keeps these out of torch-importing modules; they must not drift."""
    from mlcwb import backbone, models
    from mlcwb.commands import extract as extract_command
    from mlcwb.defaults import DEFAULT_MODEL, POOLINGS

    assert extract_command.POOLINGS is POOLINGS is backbone.POOLINGS
    assert models.DEFAULT_MODEL == DEFAULT_MODEL
    for name in ("extract", "evaluate"):
        assert _subcommands()[name].get_default("model") == DEFAULT_MODEL


def test_bad_layers_fail_before_any_model_loads(capsys):
    assert main(["extract", "--layers", "0,x", "--out", "unused", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "--layers" in err and "no-such-model" not in err


# ------------------------------------------------------------------ mlcwb config train

def _printed_config(capsys) -> str:
    assert main(["config", "train"]) == 0
    return capsys.readouterr().out


def test_config_train_loads_back_to_the_defaults(capsys, tmp_path):
    from mlcwb.train_config import TrainConfig

    path = tmp_path / "train.yaml"
    path.write_text(_printed_config(capsys), encoding="utf-8")
    assert TrainConfig.from_yaml(path) == TrainConfig()


def test_config_train_comments_every_key(capsys):
    from mlcwb.train_config import ALIGNS, TrainConfig

    lines = _printed_config(capsys).splitlines()
    keys = [line.split(":")[0] for line in lines if line and not line.startswith(("#", " "))]
    assert keys == [f.name for f in dataclasses.fields(TrainConfig)]
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"
    assert any(f"one of {', '.join(ALIGNS)}" in line for line in lines)


def test_python_dash_m_mlcwb_is_the_mlcwb_command(tmp_path, capsys, monkeypatch):
    """`python -m mlcwb train CONFIG` (what `accelerate launch -m mlcwb train` runs) is `mlcwb train`."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["mlcwb", "train", str(tmp_path / "missing.yaml"), "--max-steps", "1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mlcwb", run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mlcwb train: error:") and "missing.yaml" in err


# ------------------------------------------------------------------ mlcwb notebooks DIR

def test_notebooks_copies_the_series_and_keeps_existing_copies(tmp_path, capsys):
    from mlcwb.notebooks import notebook_paths

    names = [p.name for p in notebook_paths()]
    assert main(["notebooks", str(tmp_path / "nb")]) == 0
    assert sorted(p.name for p in (tmp_path / "nb").iterdir()) == names
    (tmp_path / "nb" / names[0]).write_text("my edits")
    capsys.readouterr()
    assert main(["notebooks", str(tmp_path / "nb")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "nb" / names[0]).read_text() == "my edits"
    assert main(["notebooks", str(tmp_path / "nb"), "--force"]) == 0
    assert (tmp_path / "nb" / names[0]).read_bytes() == notebook_paths()[0].read_bytes()


def test_train_config_with_a_wrong_type_is_a_message(tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text("lr: fast\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "lr: 'fast' is not a float" in err and "Traceback" not in err


def test_reproduce_with_an_unknown_language_stops_before_any_notebook(tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text("common: {languages: [en, xx]}\n")
    out = tmp_path / "run"
    assert main(["reproduce", "--preset", "tiny", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "common.languages: unknown language 'xx'" in err and "Traceback" not in err
    assert not (out / "notebooks").exists() and not (out / "stages").exists()


def test_evaluate_takes_a_precision_into_the_resume_key(tmp_path, capsys):
    from mlcwb.io import read_jsonl

    out = tmp_path / "eval.jsonl"
    args = ["evaluate", "--model", "tiny-random-llama", "--langs", "en", "--limit", "2",
            "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    assert {r["settings"].get("dtype") for r in read_jsonl(out)} == {"bfloat16"}
    assert main(args) == 0  # float32: its own rows, not the bfloat16 ones
    assert [r["settings"].get("dtype") for r in read_jsonl(out)] == ["bfloat16"] * 2 + [None] * 2
    assert "en" in capsys.readouterr().out
