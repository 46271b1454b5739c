"""Find saved hidden states in a run directory's ``reps/`` that suit a new analysis.

Notebook 02 saves its extractions there (``Representations.save``); notebook 03 reuses one rather
than running the model again. The search lives here, not in the notebook, so that a damaged or
foreign file in ``reps/`` is skipped for a stated reason while a real bug still raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlcwb.errors import CacheError, DataError

if TYPE_CHECKING:
    from mlcwb.representations import Representations

log = logging.getLogger(__name__)


def fits(reps: Representations, model: str, pooling: str, langs: Sequence[str] | None = None,
         layers: Sequence[int] | None = None) -> bool:
    """Whether ``reps`` can serve the geometry analysis of ``model`` pooled with ``pooling``.

    Besides the model, pooling, languages and layers asked for, the English harmfulness probe
    needs both harmful and benign labels, and cross-lingual metrics need two languages at least.
    """
    return (reps.meta.get("model") == model and reps.pooling == pooling
            and reps.harmful is not None and len(set(reps.harmful)) == 2
            and len(reps.languages) >= 2
            and set(langs or []) <= set(reps.languages) and set(layers or []) <= set(reps.layers))


def find_representations(reps_dir: str | Path, model: str, pooling: str,
                         langs: Sequence[str] | None = None,
                         layers: Sequence[int] | None = None) -> Representations | None:
    """The newest saved ``Representations`` in ``reps_dir`` that ``fits``; ``None`` if none does.

    A pair that cannot be read (damaged, half-written, not ours) is logged and skipped, since a
    cache miss only costs a new extraction; any other error is a bug and propagates.
    """
    from mlcwb.representations import Representations

    sidecars = sorted(Path(reps_dir).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in sidecars:
        try:
            reps = Representations.load(path)
        except (CacheError, DataError, OSError) as exc:
            log.info("skipping %s: %s", path.name, exc)
            continue
        if fits(reps, model, pooling, langs, layers):
            return reps
    return None


__all__ = ["find_representations", "fits"]
