"""Atomic file writes and JSONL helpers.

Every artefact mlcwb writes (caches, checkpoints, run outputs) goes through a temp file in the
same directory followed by ``os.replace``, so an interrupted run never leaves a file that looks
complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlcwb.errors import ConfigError, DataError


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one complete line and flush it: resumable logs lose at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or None when the file is absent (a stage that has not run yet)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}); delete it and rerun the stage "
                        f"that writes it.") from exc


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content (``{}`` for an empty file); a missing file or bad YAML is a
    ConfigError that names ``what`` the file was meant to be."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist.")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def read_jsonl(path: str | Path, skip_partial_last: bool = False) -> list[dict]:
    """Read a JSONL file; a malformed line is an error naming the file and line.

    ``skip_partial_last`` tolerates a truncated final line (a run killed mid-append).
    """
    path = Path(path)
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if skip_partial_last and number == len(lines):
                break
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or delete the line.") from exc
    return rows
