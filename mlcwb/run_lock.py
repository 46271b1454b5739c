"""One owner per run directory: the lock file ``mlcwb.lock`` in it.

Two processes writing one run directory (two ``mlcwb reproduce``, a ``mlcwb train`` into the
same ``output_dir``, a notebook started while a reproduce runs) would overwrite each other's
stages and checkpoints without an error. Runs hold the lock (``acquire``, ``RunLock``); a notebook
only checks it (``check``), so the notebooks of a series, open in JupyterLab together, share
their directory. The first to open a directory writes ``mlcwb.lock``
(JSON: ``pid``, ``hostname``, ``started``, ``command``, ``token``) and holds an exclusive
``flock`` on it while it works; the next one stops at once with a ``RunLockedError`` naming the
owner. The operating system drops the ``flock`` when its process dies, however it dies, so a lock
left behind by a killed run is free to take: it is taken over with a warning.

The owner's children may use the directory: ``mlcwb reproduce`` runs each notebook in a kernel
that opens the same run directory. Every owner adds its token to ``$MLCWB_RUN_LOCK_OWNER``, which
child processes inherit, and a lock whose token is listed there is the parent's, not a rival's.
Within one process a directory is held once, however often it is opened (a notebook cell rerun).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from mlcwb.errors import RunLockedError

LOCK_NAME = "mlcwb.lock"
OWNER_ENV = "MLCWB_RUN_LOCK_OWNER"  # comma-separated tokens of the locks this process tree holds

log = logging.getLogger(__name__)


@dataclass
class _Held:
    fd: int
    pid: int
    count: int = 1


_held: dict[Path, _Held] = {}
_mutex = threading.RLock()
_tokens: dict[int, str] = {}


def process_token() -> str:
    """This process's token (a forked child gets its own)."""
    pid = os.getpid()
    if pid not in _tokens:
        _tokens[pid] = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:12]}"
    return _tokens[pid]


def _inherited() -> set[str]:
    return {t for t in os.environ.get(OWNER_ENV, "").split(",") if t}


def _announce() -> None:
    """Put this process's token in the environment its children inherit."""
    tokens = [t for t in os.environ.get(OWNER_ENV, "").split(",") if t]
    if process_token() not in tokens:
        os.environ[OWNER_ENV] = ",".join([*tokens, process_token()])


def _command(command: str | None) -> str:
    if command:
        return command
    argv = " ".join(sys.argv) or sys.executable
    return f"a Jupyter kernel ({argv})" if "ipykernel" in argv else argv


def _owner(command: str | None) -> dict[str, Any]:
    return {"pid": os.getpid(), "hostname": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": _command(command), "token": process_token()}


def _parse(text: str) -> dict[str, Any]:
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _read_owner(path: Path, tries: int = 10) -> dict[str, Any]:
    """The holder's JSON; it writes it just after taking the flock, so an empty read is retried."""
    for _ in range(tries):
        with contextlib.suppress(OSError):
            owner = _parse(path.read_text(encoding="utf-8"))
            if owner:
                return owner
        time.sleep(0.05)
    return {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown process (its lock file is empty or unreadable)"
    return (f"PID {owner.get('pid')} on {owner.get('hostname')}, since {owner.get('started')}, "
            f"running `{owner.get('command')}`")


def _refusal(run_dir: Path, owner: dict[str, Any]) -> RunLockedError:
    return RunLockedError(
        f"{run_dir} is in use by {_describe(owner)}. Wait for it to finish or stop it, or use "
        f"another directory "
        f"(--out, output_dir, run_dir). If that process is gone and the directory is free, delete "
        f"{run_dir / LOCK_NAME} and try again.")


def _flock(fd: int) -> bool | None:
    """True: taken; False: another process holds it; None: this filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _same_file(fd: int, path: Path) -> bool:
    """The open lock file is still the one at ``path`` (not unlinked by a releasing owner)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _take(run_dir: Path, command: str | None) -> bool:
    """Own ``run_dir``'s lock: True when this process now holds it, False when an ancestor
    does (``$MLCWB_RUN_LOCK_OWNER``); raises ``RunLockedError`` when another process does."""
    path = run_dir / LOCK_NAME
    for _ in range(20):
        try:
            fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only copy of a run: nothing here can write to it either
            log.warning("%s: no lock file could be written (%s); going on without one", run_dir, exc)
            return False
        try:
            got = _flock(fd)
            if got is not False and not _same_file(fd, path):
                continue  # the owner released (unlinked) it between our open and flock: again
            previous = _read_owner(path, tries=1 if got else 10)
            alive = got is False or (got is None and previous.get("token") != process_token()
                                     and _pid_alive(previous.get("pid"))
                                     and previous.get("hostname") == socket.gethostname())
            if alive:
                if previous.get("token") in _inherited():
                    return False
                raise _refusal(run_dir, previous)
            if previous:
                log.warning("%s: taking over a stale lock of %s, which no longer holds it (the run "
                            "was killed or crashed); its results may be incomplete.",
                            run_dir, _describe(previous))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner(command), indent=1).encode(), 0)
            os.fsync(fd)
            _held[run_dir] = _Held(fd, os.getpid())
            fd = None
            _announce()
            return True
        finally:
            if fd is not None:
                os.close(fd)
    raise RunLockedError(f"{path} kept changing while mlcwb tried to take it; try again.")


def acquire(run_dir: str | Path, command: str | None = None) -> bool:
    """Hold ``run_dir`` for this process (created if missing); True when this call counts toward
    this process's hold (undo it with ``release``), False when an ancestor process holds it."""
    run_dir = Path(run_dir).resolve()
    with _mutex:
        held = _held.get(run_dir)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            return True
        run_dir.mkdir(parents=True, exist_ok=True)
        return _take(run_dir, command)


def check(run_dir: str | Path) -> None:
    """Raise ``RunLockedError`` when another run (not this process or an ancestor) holds
    ``run_dir``; take nothing. What a notebook does: it must not write into a directory a running
    ``mlcwb reproduce`` or ``mlcwb train`` owns, but two notebooks of the series open in
    JupyterLab, one after the other, share their run directory as a class expects."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / LOCK_NAME
    with _mutex:
        held = _held.get(run_dir)
        if (held is not None and held.pid == os.getpid()) or not path.is_file():
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return  # nobody holds it: a stale file, left for the next owner to take over
            except BlockingIOError:
                owner = _read_owner(path)
            except OSError:
                return
        finally:
            os.close(fd)
    if owner.get("token") not in _inherited():
        raise _refusal(run_dir, owner)


def release(run_dir: str | Path) -> None:
    """Undo one ``acquire``; the last one deletes the lock file and frees the directory."""
    run_dir = Path(run_dir).resolve()
    with _mutex:
        held = _held.get(run_dir)
        if held is None or held.pid != os.getpid():
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[run_dir]
        try:
            if _same_file(held.fd, run_dir / LOCK_NAME):
                (run_dir / LOCK_NAME).unlink()
        except OSError:
            pass
        finally:
            os.close(held.fd)


@atexit.register
def _release_all() -> None:
    """A process that opened a run directory without a ``with`` (a notebook) frees it at exit."""
    with _mutex:
        for run_dir, held in list(_held.items()):
            if held.pid == os.getpid():
                held.count = 1
                release(run_dir)


class RunLock:
    """``with RunLock(run_dir):`` holds the directory for the block, and frees it on the way out,
    an exception or Ctrl-C included."""

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.command = command
        self._counted = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_NAME

    def __enter__(self) -> RunLock:
        self._counted = acquire(self.run_dir, self.command)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._counted:
            self._counted = False
            release(self.run_dir)


__all__ = ["LOCK_NAME", "OWNER_ENV", "RunLock", "acquire", "release", "process_token"]
