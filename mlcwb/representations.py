"""``Representations``: pooled hidden states per (prompt, language, layer), saved and loaded.

``mlcwb.extract.extract`` makes them (and caches them in a run directory's ``reps/``); geometry,
the viewers and ``mlcwb.reps_cache`` read them. A result is a pair of files: ``<name>.safetensors``
(the values) and ``<name>.json`` (everything else and the values' checksum).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlcwb.errors import CacheError, ExtractionError
from mlcwb.io import atomic_write_bytes, atomic_write_json

CACHE_VERSION = 1


def representation_paths(path: str | Path) -> tuple[Path, Path]:
    """``(values, sidecar)`` files of a ``Representations`` saved at ``path``: ``<path>.safetensors``
    and ``<path>.json``, with a ``.safetensors`` or ``.json`` suffix of ``path`` dropped first."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


@dataclass
class Representations:
    """Pooled hidden states, float32 ``(n_prompts, n_langs, n_layers, hidden)``.

    ``layers`` holds ``hidden_states`` indices (0 = embeddings, ``num_hidden_layers`` = after the
    final norm); ``texts[p][l]`` is the text of prompt ``p`` in language ``languages[l]``.
    """

    values: np.ndarray
    prompt_ids: list[str]
    languages: list[str]
    layers: list[int]
    pooling: str
    model_fingerprint: str
    harmful: list[bool] | None = None
    texts: list[list[str]] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = (len(self.prompt_ids), len(self.languages), len(self.layers))
        if self.values.ndim != 4 or self.values.shape[:3] != want:
            raise ExtractionError(f"values has shape {self.values.shape}; expected {want} + (hidden,) "
                                  f"from prompt_ids, languages and layers.")

    def layer(self, layer: int) -> np.ndarray:
        """``(n_prompts, n_langs, hidden)`` at one ``hidden_states`` index (must have been extracted)."""
        if layer not in self.layers:
            raise ExtractionError(f"Layer {layer} was not extracted; available: {self.layers}.")
        return self.values[:, :, self.layers.index(layer)]

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (values) then ``<path>.json`` (everything else + checksum).

        The sidecar is written last and records the values file's sha256, so a half-written pair
        or a damaged values file is detected on load.
        """
        from safetensors.numpy import save as st_save

        values_path, meta_path = representation_paths(path)
        blob = st_save({"values": np.ascontiguousarray(self.values, dtype=np.float32)})
        atomic_write_bytes(values_path, blob)
        atomic_write_json(meta_path, {
            "format": "mlcwb.Representations", "version": CACHE_VERSION,
            "values_file": values_path.name, "values_sha256": hashlib.sha256(blob).hexdigest(),
            "shape": list(self.values.shape), "prompt_ids": self.prompt_ids,
            "languages": self.languages, "layers": self.layers, "pooling": self.pooling,
            "model_fingerprint": self.model_fingerprint, "harmful": self.harmful,
            "texts": self.texts, "meta": self.meta,
        })
        return values_path

    @classmethod
    def load(cls, path: str | Path) -> "Representations":
        """Read a pair written by ``save``; ``CacheError`` if either file is missing or damaged."""
        from safetensors.numpy import load as st_load

        values_path, meta_path = representation_paths(path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            blob = values_path.read_bytes()
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"Cannot read representations at {values_path} / {meta_path}: {exc}. "
                             f"Delete them to recompute.") from exc
        if meta.get("format") != "mlcwb.Representations" or \
                hashlib.sha256(blob).hexdigest() != meta.get("values_sha256"):
            raise CacheError(f"{values_path} does not match its sidecar {meta_path.name} (truncated "
                             f"or overwritten); delete both to recompute.")
        try:
            values = st_load(blob)["values"]
            return cls(values=values, prompt_ids=meta["prompt_ids"], languages=meta["languages"],
                       layers=meta["layers"], pooling=meta["pooling"],
                       model_fingerprint=meta["model_fingerprint"], harmful=meta.get("harmful"),
                       texts=meta.get("texts"), meta=meta.get("meta") or {})
        except Exception as exc:  # safetensors and __post_init__ raise their own types
            raise CacheError(f"{values_path}: unreadable representations ({exc}); delete it to "
                             f"recompute.") from exc


__all__ = ["CACHE_VERSION", "Representations", "representation_paths"]
