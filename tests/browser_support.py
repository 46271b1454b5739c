"""Helpers for the browser tests: a private JupyterLab server and a headless Chromium driving it.

Why this exists: papermill proves a notebook runs, not that a workshop attendee sees its plots and
that its widgets answer. These helpers start JupyterLab from the project's own environment on
127.0.0.1 (free port, random token, isolated config/settings/runtime dirs so a developer's own
JupyterLab setup cannot change what the test sees), open it in Debian's Chromium through
Playwright (which must never download a browser of its own), and tear everything down - server,
kernels, browser - even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

# Flags from the machine notes: without the networking ones Chromium keeps trying to reach hosts
# this sandboxed machine cannot reach. The profile dir is passed separately (a fresh one per run).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# JupyterLab user settings for a quiet, deterministic UI: no news toast, no update check, every
# cell kept in the DOM (windowing would detach cells scrolled out of view and hide their outputs),
# and the notebook's kernel started without a "Select Kernel" dialog.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"windowingMode": "none", "autoStartDefaultKernel": True},
}




def chromium_path() -> str | None:
    """Debian's Chromium (package ``chromium``), or ``$MLCWB_CHROMIUM``; None when absent."""
    candidates = [os.environ.get("MLCWB_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                  shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here (for ``pytest.skip``), or None when they can."""
    if chromium_path() is None:
        return ("Chromium not found: install Debian's package with `sh tools/install_browser.sh` "
                "(needs root + apt), or point $MLCWB_CHROMIUM at a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: `pip install -e '.[dev]'` (or `pip install playwright`)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "JupyterLab is not installed in this environment: `pip install -e .`"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inject_parameters(source: Path, dest: Path, parameters: Mapping[str, Any],
                      extra_code: str = "") -> Path:
    """Copy ``source`` to ``dest`` with a cell after the ``parameters`` cell, as papermill does.

    The injected cell (tag ``injected-parameters``) assigns ``parameters`` and then runs
    ``extra_code`` (used by the negative test to break a widget on purpose).
    """
    nb = nbformat.read(source, as_version=4)
    index = next((i for i, c in enumerate(nb.cells)
                  if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError(f"{source.name} has no cell tagged 'parameters'")
    lines = ["# Parameters injected by the browser test"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    if extra_code:
        lines += ["", extra_code.strip()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


@dataclass
class LabServer:
    """A running JupyterLab: ``url``, ``token``, ``root``, and its log (server + kernel stderr)."""

    process: subprocess.Popen
    url: str
    token: str
    root: Path
    log_path: Path
    _kernel_pids: set[int] = field(default_factory=set)

    def api(self, path: str, method: str = "GET", timeout: float = 10) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kernel_tracebacks(self, since: int = 0) -> list[str]:
        """Tracebacks in the server log after byte ``since`` (kernel stderr lands there)."""
        text = self.log()[since:]
        return [text[max(0, m.start() - 200): m.start() + 1500] for m in
                re.finditer(r"Traceback \(most recent call last\)", text)]

    def remember_kernels(self) -> None:
        """Note the kernel processes now alive, so teardown can kill them if the API fails."""
        import psutil

        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._kernel_pids.add(child.pid)

    def shutdown_kernels(self) -> None:
        """Shut every session's kernel down through the REST API (as the Kernel menu does)."""
        with contextlib.suppress(Exception):
            for session in self.api("/api/sessions"):
                with contextlib.suppress(Exception):
                    self.api(f"/api/sessions/{session['id']}", method="DELETE", timeout=15)
        with contextlib.suppress(Exception):
            for kernel in self.api("/api/kernels"):
                with contextlib.suppress(Exception):
                    self.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=15)

    def stop(self) -> None:
        """Shut kernels down, then the server; escalate to signals when either does not go."""
        self.remember_kernels()
        if self.process.poll() is None:
            self.shutdown_kernels()
            with contextlib.suppress(Exception):
                self.api("/api/shutdown", method="POST")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        _kill_pids(self._kernel_pids)


def _kill_pids(pids: set[int]) -> None:
    import psutil

    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            alive.append(proc)
    psutil.wait_procs(alive, timeout=10)


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if pytest itself is killed (no teardown runs then); the
    server's SIGTERM handler shuts its kernels down."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def jupyter_lab(root: Path, startup_timeout: float = 120) -> Iterator[LabServer]:
    """Run ``python -m jupyter lab`` of this environment serving ``root``; always shut down."""
    port, token = free_port(), secrets.token_hex(16)
    home = root.parent / f"{root.name}-jupyter"
    settings = home / "settings"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_PREFER_ENV_PATH": "1",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI and containers run as root
        cmd.append("--allow-root")
    log_path = home / "jupyterlab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    server = LabServer(process, f"http://127.0.0.1:{port}", token, root, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {process.returncode} at start:\n"
                                   f"{server.log()[-3000:]}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                if "started" in server.api("/api/status", timeout=2):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not answer /api/status within "
                                   f"{startup_timeout:.0f} s:\n{server.log()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def chromium_context(profile_dir: Path, viewport: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """A Playwright browser context in Debian's Chromium with a fresh profile; always closed."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError(missing_requirement() or "Chromium not found")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]}, timeout=60_000)
        try:
            yield context
        finally:
            context.close()
