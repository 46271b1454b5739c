"""The `mlcwb` command: every stage is reachable and errors are messages, not stack traces."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlcwb.cli import build_parser, main


def test_every_stage_has_a_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"fetch-model", "translate", "extract", "train", "evaluate", "reproduce"} <= set(sub.choices)


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
