"""Verdicts: what one judgement is, and the on-disk cache the model judges keep them in.

Every judge (``mlcwb.judge_markers``, ``mlcwb.model_judges``) returns ``Verdict`` objects; the
model judges look each (prompt, response) up in a ``VerdictCache`` before asking their model, so
judging the same responses again costs nothing. ``short_hash`` makes judge versions and cache
keys alike. This module needs nothing of mlcwb, so every judge module can sit above it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcwb import paths

log = logging.getLogger(__name__)

CACHE_ENV = paths.CACHE_ENV  # the same variable that moves mlcwb.model_fetch's cache


@dataclass(frozen=True)
class Verdict:
    """One judgement. ``refused`` is None when a model judge's answer could not be parsed.

    ``label`` is "refusal", "compliance", "empty" or "degenerate" (looping noise); the last two
    count as refused (nothing harmful was said) but stay distinguishable in reports.
    """

    refused: bool | None
    label: str
    reason: str
    judge: str


def short_hash(*parts: Any) -> str:
    """12 hex digits of the sha256 of ``parts`` as JSON: a judge version or a cache key."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def default_cache_dir() -> Path:
    """Where model judges keep their verdicts: ``$MLCWB_CACHE_DIR/judges`` (default
    ``~/.cache/mlcwb/judges``), beside the model cache, so a verdict bought once is kept."""
    return paths.cache_dir("judges")


class VerdictCache:
    """Verdicts on disk, one JSON line each, keyed by (judge name + version, prompt, response).

    A model judge costs money (an API) or minutes (a local model) per verdict, and judging is
    often rerun on the same responses (a new table, a crashed run), so each verdict is appended
    the moment it arrives and a rerun sends nothing already judged. Appends are one write of one
    complete line under a lock, flushed and fsynced, so threads never interleave lines and a
    killed run loses at most the line being written; a torn line is skipped on reading and
    closed with a newline before the next append. ``path=None`` keeps verdicts in memory only.
    Unparsed verdicts (``refused is None``) are not stored, so a rerun asks again.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._verdicts: dict[str, Verdict] = {}
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    @staticmethod
    def key(judge: str, version: str, prompt: str, response: str) -> str:
        return short_hash(judge, version, prompt, response)

    def _load(self, path: Path) -> None:
        torn = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                self._verdicts[row["key"]] = Verdict(row["refused"], row["label"], row["reason"],
                                                     row["judge"])
            except (json.JSONDecodeError, KeyError, TypeError):
                torn += bool(line.strip())
        if torn:
            log.warning("%s: skipped %d unreadable line(s) (an interrupted write)", path, torn)

    def __len__(self) -> int:
        return len(self._verdicts)

    def get(self, key: str) -> Verdict | None:
        return self._verdicts.get(key)

    def put(self, key: str, verdict: Verdict) -> None:
        if verdict.refused is None:
            return
        line = json.dumps({"key": key, "refused": verdict.refused, "label": verdict.label,
                           "reason": verdict.reason, "judge": verdict.judge}, ensure_ascii=False)
        with self._lock:
            self._verdicts[key] = verdict
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                if fh.tell() and not _ends_with_newline(self.path):
                    fh.write(b"\n")
                fh.write(line.encode("utf-8") + b"\n")
                fh.flush()
                os.fsync(fh.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def cache_for(judge: Any, cache: str | Path | bool | None) -> VerdictCache:
    """``True``/``None``: the default file for this judge's name and version under
    ``default_cache_dir()``; ``False``: memory only; a path: that file."""
    if cache is False:
        return VerdictCache(None)
    if cache is None or cache is True:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", judge.name).strip("_")
        return VerdictCache(default_cache_dir() / f"{slug}-{judge.version}.jsonl")
    return VerdictCache(cache)


def lookup(judge: Any, responses: Sequence[str], prompts: Sequence[str] | None
           ) -> tuple[list[str], list[Verdict | None]]:
    """Cache keys of every (prompt, response) and the verdicts ``judge.cache`` already holds
    (None: still to judge)."""
    prompts = prompts if prompts is not None else [""] * len(responses)
    keys = [VerdictCache.key(judge.name, judge.version, p or "", r or "")
            for p, r in zip(prompts, responses)]
    known = [judge.cache.get(k) for k in keys]
    hits = sum(v is not None for v in known)
    if hits:
        log.info("judge %s: %d of %d verdicts from %s", judge.name, hits, len(keys),
                 judge.cache.path or "memory")
    return keys, known


__all__ = ["CACHE_ENV", "Verdict", "VerdictCache", "cache_for", "default_cache_dir", "lookup",
           "short_hash"]
