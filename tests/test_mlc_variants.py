"""The language-centred and label-aware forms of the MLC term (issue: a form of MLC that carries the
harmful/benign decision): what each rewards, what collapse costs under each, the running means."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from mlcwb.errors import ConfigError
from mlcwb.mlc import (Extractor, MLCConfig, centre_languages, contrastive_loss, label_contrastive_loss,
                       mlc_floor, mlc_objective, mlc_term)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _content_plus_offsets(n_prompts: int = 6, n_langs: int = 4, dim: int = 32, offset: float = 3.0):
    """State = the prompt's content + a large per-language offset (the raw model's geometry)."""
    content = _randn(n_prompts, 1, dim, seed=1)
    offsets = offset * _randn(1, n_langs, dim, seed=2)
    return content + offsets


def test_batch_centring_makes_content_plus_offset_collinear():
    z = _content_plus_offsets()
    official = MLCConfig(batch_size=6)
    centred = MLCConfig(batch_size=6, centre="batch")
    floor = mlc_floor(4, official.tau)
    assert mlc_objective(z, official).item() > floor + 0.2  # the offsets keep languages apart
    assert mlc_objective(z, centred).item() == pytest.approx(floor, abs=1e-4)


def test_collapse_is_the_worst_case_once_centred_and_the_best_without():
    collapsed = _randn(1, 1, 32, seed=3).expand(6, 4, 32).clone()
    random_rows = _randn(6, 4, 32, seed=4)
    official, centred = MLCConfig(batch_size=6), MLCConfig(batch_size=6, centre="batch")
    assert mlc_objective(collapsed, official).item() == pytest.approx(mlc_floor(4, 0.2), abs=1e-5)
    worst = mlc_objective(collapsed, centred).item()
    assert worst == pytest.approx(math.log(4), abs=1e-5)  # zero rows: every singular value equal
    assert worst > mlc_objective(random_rows, centred).item()


def test_centred_collapse_gradient_is_finite():
    z = _randn(1, 1, 16, seed=5).expand(3, 4, 16).clone().requires_grad_(True)
    mlc_objective(z, MLCConfig(batch_size=3, centre="batch")).backward()
    assert torch.isfinite(z.grad).all()


def test_running_means_follow_the_offsets_and_centre_later_batches():
    n_langs, dim = 4, 32
    offsets = 3.0 * _randn(1, n_langs, dim, seed=2)
    extractor = Extractor(dim, dim, "identity", n_langs=n_langs)
    for step in range(30):
        batch = _randn(4, 1, dim, seed=100 + step) + offsets
        means = extractor.language_means(batch, momentum=0.8)
    assert int(extractor.lang_steps) == 30
    # the means point along each language's offset (the content averages out)
    cos = torch.nn.functional.cosine_similarity(means, offsets[0], dim=-1)
    assert (cos > 0.9).all()
    config = MLCConfig(batch_size=2, centre="running")
    pair = _randn(2, 1, dim, seed=7) + offsets
    centred = mlc_objective(pair, config, means=means).item()
    assert centred < mlc_objective(pair, MLCConfig(batch_size=2)).item()
    # evaluation mode reads the means without moving them
    extractor.eval()
    assert torch.equal(extractor.language_means(pair, 0.8), means)
    assert int(extractor.lang_steps) == 30


def test_running_means_travel_in_the_extractor_state_dict():
    extractor = Extractor(8, 4, "linear", n_langs=3)
    extractor.language_means(_randn(2, 3, 4, seed=8), 0.9)
    again = Extractor(8, 4, "linear", n_langs=3)
    again.load_state_dict(extractor.state_dict())
    assert torch.equal(again.lang_means, extractor.lang_means)
    with pytest.raises(ConfigError, match="n_langs"):
        Extractor(8, 4).language_means(_randn(2, 3, 4), 0.9)


def test_centre_languages_subtracts_each_languages_mean():
    z = _randn(3, 2, 5, seed=9)
    out = centre_languages(z)
    assert torch.allclose(out, z - z.mean(0), atol=1e-6)
    assert torch.allclose(out.sum(0), torch.zeros(2, 5), atol=1e-5)
    means = _randn(2, 5, seed=13)
    assert torch.allclose(centre_languages(z, means), z - means, atol=1e-6)


def _labelled_batch(shared: bool, n_langs: int = 3, dim: int = 32):
    """Two harmful and two benign prompts, each prompt's translations near-collinear. ``shared``:
    the harmful prompts share one direction and the benign the opposite one; otherwise every
    prompt has its own orthogonal direction."""
    basis = torch.linalg.qr(_randn(dim, dim, seed=10))[0].T
    if shared:
        h, b = basis[0], -basis[0]
        dirs = torch.stack([h + 0.3 * basis[1], h + 0.3 * basis[2], b + 0.3 * basis[3], b + 0.3 * basis[4]])
    else:
        dirs = basis[:4]
    noise = 0.01 * _randn(4, n_langs, dim, seed=11)
    return dirs.unsqueeze(1) + noise, torch.tensor([True, True, False, False])


def test_label_aware_contrastive_does_not_push_a_shared_harmful_direction_apart():
    shared, labels = _labelled_batch(shared=True)
    separate, _ = _labelled_batch(shared=False)
    # the plain contrastive form charges for harmful prompts that share a direction ...
    assert contrastive_loss(shared).item() > contrastive_loss(separate).item() + 0.5
    # ... the label-aware form does not (a shared direction costs nothing against separate ones) ...
    assert label_contrastive_loss(shared, labels).item() <= label_contrastive_loss(separate, labels).item()
    # ... and rewards it over the same geometry shared across the labels (harmful beside benign)
    crossed = torch.tensor([True, False, True, False])
    assert label_contrastive_loss(shared, labels).item() < label_contrastive_loss(shared, crossed).item() - 0.5


def test_label_aware_contrastive_charges_collapse_and_skips_one_label_batches():
    _, labels = _labelled_batch(shared=True)
    collapsed = _randn(1, 1, 32, seed=12).expand(4, 3, 32).clone()
    good, _ = _labelled_batch(shared=True)
    n_pos, n_neg = 2, 6  # per row: its 2 other languages, the other label's 2 prompts x 3 languages
    assert label_contrastive_loss(collapsed, labels).item() == pytest.approx(math.log(n_pos + n_neg), abs=1e-4)
    assert label_contrastive_loss(good, labels).item() < 0.5 * math.log(n_pos + n_neg)
    one_label = torch.ones(4, dtype=torch.bool)
    assert label_contrastive_loss(good, one_label).item() == 0.0


def test_label_contrastive_through_mlc_term_needs_labels():
    config = MLCConfig(variant="label_contrastive", batch_size=4)
    z, labels = _labelled_batch(shared=True)
    rows = z.reshape(12, -1)
    assert mlc_term(rows, 3, config, labels=labels).item() == pytest.approx(
        label_contrastive_loss(z, labels).item(), abs=1e-6)
    with pytest.raises(ConfigError, match="label"):
        mlc_term(rows, 3, config)
    with pytest.raises(ConfigError, match="one label per prompt"):
        label_contrastive_loss(z, labels[:3])


@pytest.mark.parametrize("bad, match", [
    ({"centre": "median"}, "mlc.centre"),
    ({"centre": "batch", "batch_size": 1}, "batch_size must be >= 2"),
    ({"centre_momentum": 1.0}, "centre_momentum"),
    ({"variant": "label_contrastive", "batch_size": 1}, "contrasts prompts"),
])
def test_new_settings_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        MLCConfig(**bad).validate()


# ------------------------------------------------------------------ in training (tiny model)

def test_training_with_centred_label_aware_mlc_at_an_auto_layer(tmp_path):
    import json

    from mlcwb.checkpoints import load_extractor
    from mlcwb.train import train
    from tests.test_train import tiny_config, tiny_prompts

    mlc = MLCConfig(batch_size=2, extractor_dim=16, aux_every=1, variant="label_contrastive",
                    centre="running", layer="auto")
    result = train(tiny_config(tmp_path, mlc=mlc, align="none", max_steps=3), prompts=tiny_prompts(8))
    summary = json.loads((result.output_dir / "summary.json").read_text())
    table = summary["mlc_layer_choice"]
    assert summary["mlc_layer"] in [row["layer"] for row in table] and 0 not in [row["layer"] for row in table]
    best = max(r["retrieval"] for r in table)
    chosen = next(r for r in table if r["layer"] == summary["mlc_layer"])
    assert chosen["retrieval"] >= best - 0.02  # the rule itself is tested above, on made-up states
    assert all(np.isfinite(r["mlc_loss"]) for r in result.log)
    # the running means were updated every MLC step and travel with the checkpoint
    extractor = load_extractor(result.final_dir)
    assert int(extractor.lang_steps) == 3 and extractor.lang_means.abs().sum() > 0
    assert extractor.lang_means.shape == (3, 16)


def test_label_aware_training_sees_the_batch_labels(tmp_path, monkeypatch):
    import mlcwb.mlc_side as mlc_side
    from mlcwb.train import train
    from tests.test_train import tiny_config, tiny_prompts

    seen = []
    original = mlc_side.mlc_term

    def spy(z, n_langs, config, weights=None, labels=None, means=None):
        seen.append(None if labels is None else labels.tolist())
        return original(z, n_langs, config, weights, labels, means)

    monkeypatch.setattr(mlc_side, "mlc_term", spy)
    mlc = MLCConfig(batch_size=4, extractor_dim=16, aux_every=1, variant="label_contrastive")
    train(tiny_config(tmp_path, mlc=mlc, align="none", max_steps=2), prompts=tiny_prompts(8))
    assert seen and all(labels is not None and len(labels) == 4 for labels in seen)
    # tiny_prompts: even ids harmful; the batch's labels are its prompts' labels, not a constant
    assert any(set(labels) == {True, False} for labels in seen)
