"""A run directory has one owner: a second process stops at once, a dead owner's lock is taken
over, the owner's children share it, and Ctrl-C in `mlcwb reproduce` leaves a resumable run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

import mlcwb.reproduce as reproduce_module
import mlcwb.run_report
from mlcwb.errors import RunLockedError
from mlcwb.paths import open_run_dir
from mlcwb.presets import Preset
from mlcwb.run_lock import LOCK_NAME, OWNER_ENV, RunLock, process_token
from tests.test_reproduce import STAGES, _preset, _write_notebook, fake_series  # noqa: F401

HOLD = textwrap.dedent("""
    import os, signal, sys
    from mlcwb.run_lock import RunLock
    with RunLock(sys.argv[1], command="the holder"):
        print("held", flush=True)
        if sys.argv[2] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.read()
""")

OPEN = "import sys; from mlcwb.paths import open_run_dir; open_run_dir(sys.argv[1]); print('opened')"


@pytest.fixture(autouse=True)
def no_inherited_owner(monkeypatch):
    """Tokens this test process announced in another test must not make a rival look like a child."""
    monkeypatch.delenv(OWNER_ENV, raising=False)


def _env(inherit: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not inherit:
        env.pop(OWNER_ENV, None)
    return env


def _holder(run_dir, how: str = "hold") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env(inherit=False))
    assert proc.stdout.readline().strip() == "held"
    return proc


def _open_in_child(run_dir, inherit: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", OPEN, str(run_dir)], capture_output=True, text=True,
                          env=_env(inherit), timeout=120)


def test_a_second_owner_is_refused_with_who_holds_it_and_what_to_do(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        owner = json.loads((run / LOCK_NAME).read_text())
        assert owner["pid"] == holder.pid and owner["command"] == "the holder"
        assert set(owner) >= {"hostname", "started", "token"}
        with pytest.raises(RunLockedError) as info:
            RunLock(run).__enter__()
        message = str(info.value)
        assert f"PID {holder.pid}" in message and "the holder" in message
        assert str(run / LOCK_NAME) in message and "another directory" in message
        with pytest.raises(RunLockedError):
            open_run_dir(run)  # a notebook
        child = _open_in_child(run, inherit=False)
        assert child.returncode != 0 and "RunLockedError" in child.stderr
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not (run / LOCK_NAME).exists()
    with RunLock(run):  # free once the holder is done
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_killed_owners_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    holder = _holder(run, "die")
    holder.wait(timeout=60)
    assert holder.returncode == -9 and (run / LOCK_NAME).exists()  # left behind
    with caplog.at_level(logging.WARNING, logger="mlcwb.run_lock"), RunLock(run):
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"stale lock of PID {holder.pid}" in caplog.text and "the holder" in caplog.text
    assert not (run / LOCK_NAME).exists()


def test_a_stale_lock_file_from_a_dead_pid_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "hostname": os.uname().nodename,
                                             "started": "2025-01-01T00:00:00", "command": "old run",
                                             "token": "elsewhere"}))
    with caplog.at_level(logging.WARNING, logger="mlcwb.run_lock"), RunLock(run):
        assert json.loads((run / LOCK_NAME).read_text())["token"] == process_token()
    assert len(caplog.records) == 1 and f"PID {pid}" in caplog.text


def test_the_owners_children_share_the_directory_and_others_do_not(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        assert process_token() in os.environ[OWNER_ENV]
        child = _open_in_child(run, inherit=True)  # a notebook kernel reproduce started
        assert child.returncode == 0 and "opened" in child.stdout, child.stderr
        stranger = _open_in_child(run, inherit=False)
        assert stranger.returncode != 0 and "is in use by PID" in stranger.stderr
        assert (run / LOCK_NAME).exists()  # the child did not take or free the parent's lock
        with RunLock(run):  # the same process again: counted, not refused
            pass
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="boom"), RunLock(run):
        raise ValueError("boom")
    assert not (run / LOCK_NAME).exists()
    assert _open_in_child(run, inherit=False).returncode == 0


def test_ctrl_c_in_a_reproduce_stage_says_how_to_resume_and_exits_130(fake_series, tmp_path,  # noqa: F811
                                                                      monkeypatch, caplog, capsys):
    from mlcwb.cli import main

    run = tmp_path / "run"
    real = reproduce_module.execute_notebook

    def interrupted(source, output, parameters=None, **kwargs):
        if source.stem == "01_b":
            raise KeyboardInterrupt
        return real(source, output, parameters, **kwargs)

    monkeypatch.setattr(reproduce_module, "execute_notebook", interrupted)
    monkeypatch.setattr(reproduce_module, "load_preset", lambda name, config=None: _preset())
    with caplog.at_level(logging.INFO):
        assert main(["reproduce", "--preset", "tiny", "--out", str(run)]) == 130
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "01_b interrupted (Ctrl-C)" in said[0].getMessage()
    assert "again to resume" in said[0].getMessage()
    assert "Traceback" not in capsys.readouterr().err
    assert (run / "stages" / "00_a.json").is_file() and not (run / "stages" / "01_b.json").exists()
    assert not (run / LOCK_NAME).exists()

    monkeypatch.setattr(reproduce_module, "execute_notebook", real)
    fake_series.clear()
    assert main(["reproduce", "--preset", "tiny", "--out", str(run)]) == 0
    assert fake_series == STAGES[1:]  # the interrupted stage and what follows it


def test_a_notebook_kernel_reproduce_starts_shares_its_run_directory(tmp_path, monkeypatch):
    """A real kernel (papermill) opens the run directory reproduce holds, as every notebook does."""
    code = ("from mlcwb.paths import open_run_dir\nimport json, os\nrun = open_run_dir(run_dir)\n"
            "(run / 'kernel.json').write_text(json.dumps({'pid': os.getpid(), "
            "'lock': json.loads((run / 'mlcwb.lock').read_text())['pid']}))")
    notebook = _write_notebook(tmp_path / "00_open.ipynb", "run_dir = ''", code)
    monkeypatch.setattr(reproduce_module, "notebook_paths", lambda: [notebook])
    monkeypatch.setattr(reproduce_module, "preflight", lambda preset: None)
    monkeypatch.setattr(mlcwb.run_report, "write_report", lambda *args: [])
    run = tmp_path / "run"
    reproduce_module.reproduce(run, Preset("one", "one stage", {}, {}), progress=False)
    seen = json.loads((run / "kernel.json").read_text())
    assert seen["lock"] == os.getpid() != seen["pid"]  # the kernel ran under reproduce's lock
    assert not (run / LOCK_NAME).exists()


def test_notebooks_of_a_series_share_their_directory_and_take_no_lock(tmp_path):
    """Opened in JupyterLab (no reproduce above it), a kernel checks the lock but takes none, so
    notebook 01 opens the directory while notebook 00's kernel is still alive."""
    from mlcwb.notebooks import execute_notebook

    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", OPEN + "; import sys; sys.stdin.read()", str(run)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(inherit=False))
    try:
        assert first.stdout.readline().strip() == "opened"  # notebook 00's kernel, still running
        code = ("from mlcwb.paths import open_run_dir\nrun = open_run_dir(run_dir)\n"
                "open_run_dir(run_dir)\n"  # a cell run twice
                "print('opened too')")
        notebook = _write_notebook(tmp_path / "open.ipynb", "run_dir = ''", code)
        execute_notebook(notebook, tmp_path / "out.ipynb", {"run_dir": str(run)})
        assert "opened too" in (tmp_path / "out.ipynb").read_text()
        assert not (run / LOCK_NAME).exists()
    finally:
        first.communicate("")


def test_a_stale_lock_file_does_not_stop_a_notebook(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run, "die")
    holder.wait(timeout=60)
    assert (run / LOCK_NAME).exists()
    assert open_run_dir(run) == run.resolve()  # checked, nobody holds it: no error, nothing taken


INTERRUPTED = textwrap.dedent("""
    import sys
    from pathlib import Path
    import mlcwb.reproduce as r, mlcwb.run_report
    from mlcwb.cli import main
    from mlcwb.presets import Preset
    from tests.test_reproduce import _write_notebook
    d = Path(sys.argv[1])
    code = ("from mlcwb.paths import open_run_dir\\nrun = open_run_dir(run_dir)\\n"
            "(run / 'started').write_text('')\\nimport time\\ntime.sleep(300)")
    r.notebook_paths = lambda: [_write_notebook(d / "00_sleep.ipynb", "run_dir = ''", code)]
    r.preflight = lambda preset: None
    r.load_preset = lambda name, config=None: Preset("one", "one stage", {}, {})
    mlcwb.run_report.write_report = lambda *args: []
    sys.exit(main(["reproduce", "--out", str(d / "run")]))
""")


def test_a_real_ctrl_c_stops_the_kernel_quietly_and_exits_130(tmp_path):
    """SIGINT while a real kernel runs a cell: one line, no traceback (the kernel's included),
    no stamp, no lock, status 130."""
    import signal
    import time

    from mlcwb.paths import repo_root

    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path)], cwd=repo_root(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(inherit=False),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "run"
    deadline = time.monotonic() + 180
    while not (run / "started").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("interrupted (Ctrl-C)") == 1
    assert not (run / LOCK_NAME).exists() and not (run / "stages" / "00_sleep.json").exists()
