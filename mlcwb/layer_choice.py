"""Which layer the MLC term should look at, chosen from the geometry (``mlc.layer: auto``).

At the last layer's last prompt token the state already decides the first answer token, its
language included, and there the raw model's translations lie far apart; made collinear there, the
model learns to start every answer alike (measured: in English). The layer where translations are
*already* closest relative to other prompts is where consistency asks the least of the model:
there the English prompt's nearest neighbour in each other language is most often its own
translation (en→x retrieval), and the margin (own translation's cosine minus other prompts')
breaks ties.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlcwb.errors import ConfigError
from mlcwb.geometry import retrieval_accuracy, similarity_margin
from mlcwb.representations import Representations

log = logging.getLogger(__name__)

TIE = 0.02  # retrieval accuracies this close count as equal; the margin decides
AUTO_PROMPTS = 64  # prompts whose states choose the layer in training


@dataclass(frozen=True)
class LayerChoice:
    """The chosen ``hidden_states`` index and the per-layer table it was chosen from."""

    layer: int
    table: pd.DataFrame  # layer, retrieval (mean en→x accuracy), margin (mean en→x)

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "table": self.table.round(4).to_dict(orient="records")}


def layer_table(reps: Representations, ref: str = "en", langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Per layer (embeddings left out: they see tokens, not meaning), the mean en→x retrieval
    accuracy and similarity margin over the other languages."""
    langs = list(langs or reps.languages)
    if ref not in langs or len(langs) < 2:
        raise ConfigError(f"Choosing a layer needs {ref!r} and at least one other language; got {langs}.")
    layers = [layer for layer in reps.layers if layer != 0]
    if not layers:
        raise ConfigError("Choosing a layer needs states above the embeddings (layer 0 only was extracted).")
    retrieval = retrieval_accuracy(reps, layers, langs)
    margin = similarity_margin(reps, layers, langs)
    towards = lambda frame: frame[frame["lang_a"] == ref].groupby("layer")  # noqa: E731
    return pd.DataFrame({"retrieval": towards(retrieval)["accuracy"].mean(),
                         "margin": towards(margin)["margin"].mean()}).reset_index()


def choose_layer(reps: Representations, ref: str = "en", langs: Sequence[str] | None = None) -> LayerChoice:
    """The layer with the best en→x retrieval; within ``TIE`` of it, the largest margin."""
    table = layer_table(reps, ref, langs)
    best = table["retrieval"].max()
    close = table[table["retrieval"] >= best - TIE]
    layer = int(close.loc[close["margin"].idxmax(), "layer"])
    log.info("mlc.layer auto: layer %d (en→x retrieval %.2f, margin %.3f)", layer,
             float(table.set_index("layer").loc[layer, "retrieval"]),
             float(table.set_index("layer").loc[layer, "margin"]))
    return LayerChoice(layer, table)


__all__ = ["AUTO_PROMPTS", "LayerChoice", "choose_layer", "layer_table"]
