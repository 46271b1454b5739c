"""``mlc.layer: auto``: the layer where translations are already closest relative to other prompts."""

from __future__ import annotations

import numpy as np
import pytest

from mlcwb.errors import ConfigError
from mlcwb.layer_choice import choose_layer, layer_table
from mlcwb.representations import Representations


def _reps(aligned_layer: int, n_prompts: int = 12, n_layers: int = 5, dim: int = 16, seed: int = 0):
    """Layer ``aligned_layer`` holds content + small language noise (translations match); the
    others hold a large per-language offset + unrelated noise (translations do not)."""
    rng = np.random.default_rng(seed)
    langs = ["en", "zh", "ru"]
    values = np.empty((n_prompts, len(langs), n_layers, dim), dtype=np.float32)
    content = rng.normal(size=(n_prompts, 1, dim))
    for layer in range(n_layers):
        if layer == aligned_layer:
            values[:, :, layer] = content + 0.1 * rng.normal(size=(n_prompts, len(langs), dim))
        else:
            values[:, :, layer] = 3 * rng.normal(size=(1, len(langs), dim)) + rng.normal(size=(n_prompts, len(langs), dim))
    return Representations(values, [f"p{i}" for i in range(n_prompts)], langs, list(range(n_layers)),
                           "last", "fp")


@pytest.mark.parametrize("aligned", [1, 3, 4])
def test_the_layer_where_translations_match_is_chosen(aligned):
    choice = choose_layer(_reps(aligned))
    assert choice.layer == aligned
    table = choice.table.set_index("layer")
    assert table.loc[aligned, "retrieval"] == 1.0
    assert table["retrieval"].drop(aligned).max() < 0.6
    assert set(choice.as_dict()) == {"layer", "table"}


def test_embeddings_are_never_chosen():
    table = layer_table(_reps(0))
    assert 0 not in set(table["layer"])


def test_ties_in_retrieval_go_to_the_larger_margin():
    reps = _reps(2)
    reps.values[:, :, 3] = reps.values[:, :, 2] * 0.5 + 0.5 * reps.values[:, :1, 2]  # also retrieves, larger margin
    table = layer_table(reps).set_index("layer")
    assert table.loc[3, "retrieval"] == table.loc[2, "retrieval"] == 1.0
    assert table.loc[3, "margin"] > table.loc[2, "margin"]
    assert choose_layer(reps).layer == 3


def test_bad_inputs_say_what_is_missing():
    with pytest.raises(ConfigError, match="'en'"):
        layer_table(_reps(1), langs=["zh", "ru"])
    only_embeddings = _reps(1)
    only_embeddings = Representations(only_embeddings.values[:, :, :1], only_embeddings.prompt_ids,
                                      only_embeddings.languages, [0], "last", "fp")
    with pytest.raises(ConfigError, match="above the embeddings"):
        layer_table(only_embeddings)
