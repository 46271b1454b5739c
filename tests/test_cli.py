"""The `mlcwb` command: every stage is reachable and errors are messages, not stack traces."""

from __future__ import annotations

import subprocess
import sys


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
