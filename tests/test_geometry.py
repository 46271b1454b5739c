"""Geometry metrics against known answers on synthetic Representations (and once on the real model)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mlcwb import geometry as g
from mlcwb.errors import ConfigError, DataError, LanguageError
from mlcwb.mlc import mlc_floor, mlc_loss
from mlcwb.representations import Representations

LANGS = ["en", "zh", "ru", "ar"]


def make_reps(values: np.ndarray, harmful: list[bool] | None = None,
              langs: list[str] | None = None) -> Representations:
    """values: (prompts, langs, layers, hidden)."""
    p, n_langs, n_layers, _ = values.shape
    langs = langs or LANGS[:n_langs]
    return Representations(values=values.astype(np.float32),
                           prompt_ids=[f"p{i}" for i in range(p)], languages=langs,
                           layers=list(range(n_layers)), pooling="last", model_fingerprint="test",
                           harmful=harmful,
                           texts=[[f"prompt {i} in {lang}" for lang in langs] for i in range(p)])


def collinear(p=12, n_langs=4, n_layers=2, d=16, seed=0) -> Representations:
    """Every language of a prompt is a positive multiple of one vector (different norms)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(p, 1, n_layers, d))
    scale = rng.uniform(0.5, 3.0, size=(p, n_langs, n_layers, 1))
    return make_reps(base * scale)


def meaning_clustered(p=30, n_langs=4, d=32, noise=0.1, seed=0, harmful_shift=0.0,
                      flip_other_langs=False) -> Representations:
    """Translations sit together: prompt vector + small per-language noise (+ a harmful direction)."""
    rng = np.random.default_rng(seed)
    harmful = [bool(i % 2) for i in range(p)]
    x = rng.normal(size=(p, 1, 1, d)) + noise * rng.normal(size=(p, n_langs, 1, d))
    direction = np.zeros(d)
    direction[0] = harmful_shift
    sign = np.ones((1, n_langs, 1, 1))
    if flip_other_langs:
        sign[:, 1:] = -1
    x = x + np.asarray(harmful, dtype=float)[:, None, None, None] * sign * direction
    return make_reps(x, harmful)


def language_clustered(p=30, n_langs=4, d=32, seed=0) -> Representations:
    """Each language is its own island: a large language offset, prompts unrelated across languages."""
    rng = np.random.default_rng(seed)
    x = 5 * rng.normal(size=(1, n_langs, 1, d)) + rng.normal(size=(p, n_langs, 1, d))
    return make_reps(x, [bool(i % 2) for i in range(p)])


# ----------------------------------------------------------------------------- collinearity

def test_collinear_set_sits_on_the_floor():
    out = g.collinearity(collinear())
    assert list(out["layer"]) == [0, 1]
    assert np.allclose(out["floor"], mlc_floor(4))
    assert np.allclose(out["mlc_loss"], out["floor"], atol=1e-5)
    assert np.allclose(out["first_sv_share"], 1.0, atol=1e-6)
    # log(1 + 5·e^(-1/0.2)) for 6 languages: the floor docs/design.md, "The MLC loss", defines
    assert math.isclose(mlc_floor(6), 0.0331, abs_tol=1e-4)


def test_orthogonal_set_sits_on_the_ceiling():
    eye = np.eye(8)[:4]                                # 4 orthonormal rows
    values = np.stack([eye * (i + 1) for i in range(5)])[:, :, None, :]
    out = g.collinearity(make_reps(values)).iloc[0]
    assert math.isclose(out["mlc_loss"], math.log(4), rel_tol=1e-5)
    assert math.isclose(out["ceiling"], math.log(4))
    assert math.isclose(out["first_sv_share"], 0.25, rel_tol=1e-6)


def test_random_set_is_between_and_far_from_floor():
    rng = np.random.default_rng(1)
    out = g.collinearity(make_reps(rng.normal(size=(20, 4, 1, 256)))).iloc[0]
    assert out["floor"] + 0.5 < out["mlc_loss"] < out["ceiling"]
    assert 0.25 < out["first_sv_share"] < 0.4


def test_collinearity_is_the_training_loss_under_no_grad(monkeypatch):
    import mlcwb.mlc

    reps = meaning_clustered(noise=1.0)
    calls = []

    def spy(z, tau=0.2, weights=None):
        calls.append(torch.is_grad_enabled())
        return mlc_loss(z, tau=tau, weights=weights)

    monkeypatch.setattr(mlcwb.mlc, "mlc_loss", spy)
    out = g.collinearity(reps, tau=0.3)
    assert calls == [False]
    expected = mlc_loss(torch.from_numpy(reps.layer(0)), tau=0.3)
    assert math.isclose(out["mlc_loss"].iloc[0], float(expected), rel_tol=1e-6)
    assert math.isclose(out["floor"].iloc[0], mlc_floor(4, 0.3))


def test_collinearity_through_a_projection():
    reps = meaning_clustered(noise=1.0)
    proj = torch.nn.Linear(32, 8)
    out = g.collinearity(reps, projection=proj).iloc[0]
    with torch.no_grad():
        expected = mlc_loss(proj(torch.from_numpy(reps.layer(0))))
    assert math.isclose(out["mlc_loss"], float(expected), rel_tol=1e-5)
    # a projection onto one direction makes everything collinear (up to sign: |cos| = 1)
    flat = g.collinearity(reps, projection=lambda z: z[..., :1].abs() + 1).iloc[0]
    assert flat["first_sv_share"] == pytest.approx(1.0)
    assert flat["floor"] == pytest.approx(mlc_floor(1)) == 0.0


def test_collinearity_language_subset_and_errors():
    reps = collinear()
    out = g.collinearity(reps, layers=[1], langs=["en", "zh"])
    assert list(out["layer"]) == [1] and out["n_langs"].iloc[0] == 2
    assert out["floor"].iloc[0] == pytest.approx(mlc_floor(2))
    with pytest.raises(ConfigError, match="available hidden-state indices"):
        g.collinearity(reps, layers=[7])
    with pytest.raises(LanguageError, match="available"):
        g.collinearity(reps, langs=["en", "xx"])
    with pytest.raises(ConfigError):
        g.collinearity(reps, langs=["en"])


# ----------------------------------------------------------------------------- similarity, retrieval

def test_margin_and_retrieval_exact_on_a_tiny_set():
    e = np.eye(2)
    same = make_reps(np.stack([np.stack([e[0], e[0]]), np.stack([e[1], e[1]])])[:, :, None, :],
                     langs=["en", "zh"])
    swapped = make_reps(np.stack([np.stack([e[0], e[1]]), np.stack([e[1], e[0]])])[:, :, None, :],
                        langs=["en", "zh"])
    m = g.similarity_margin(same)
    assert list(zip(m["lang_a"], m["lang_b"])) == [("en", "zh"), ("zh", "en")]
    assert m[["same", "different", "margin"]].to_numpy().tolist() == [[1, 0, 1]] * 2
    assert g.similarity_margin(swapped)["margin"].tolist() == [-1, -1]
    r = g.retrieval_accuracy(same)
    assert r["accuracy"].tolist() == [1, 1] and r["chance"].tolist() == [0.5, 0.5]
    assert g.retrieval_accuracy(swapped)["accuracy"].tolist() == [0, 0]


def test_meaning_vs_language_clusters():
    meaning, island = meaning_clustered(), language_clustered()
    assert g.similarity_margin(meaning)["margin"].min() > 0.8
    assert abs(g.similarity_margin(island)["margin"]).max() < 0.1
    assert g.retrieval_accuracy(meaning)["accuracy"].min() == 1.0
    assert g.retrieval_accuracy(island)["accuracy"].max() < 0.3
    s_meaning, s_island = g.silhouette(meaning).iloc[0], g.silhouette(island).iloc[0]
    assert s_meaning["by_prompt"] > 0.8 > 0 > s_meaning["by_language"]
    assert s_island["by_language"] > 0.3 > 0 > s_island["by_prompt"]
    for frame in (g.silhouette(meaning), g.silhouette(island)):
        assert frame[["by_language", "by_prompt"]].abs().to_numpy().max() <= 1


def test_pair_matrix():
    frame = g.similarity_margin(meaning_clustered())
    m = g.pair_matrix(frame, "margin", 0)
    assert list(m.index) == list(m.columns) == LANGS
    assert np.isnan(np.diag(m.to_numpy())).all()
    assert m.loc["en", "zh"] == frame.query("lang_a == 'en' and lang_b == 'zh'")["margin"].item()
    with pytest.raises(ConfigError):
        g.pair_matrix(frame, "margin", 3)


# ----------------------------------------------------------------------------- probe transfer

def test_probe_transfers_when_the_direction_is_shared():
    out = g.probe_transfer(meaning_clustered(p=60, d=8, harmful_shift=6.0, noise=0.3))
    assert list(out["lang"]) == LANGS and out["in_language"].tolist() == [True, False, False, False]
    assert out["accuracy"].min() >= 0.9 and out["auroc"].min() >= 0.95
    assert (out["n_folds"] == 5).all()


def test_probe_fails_when_other_languages_flip_the_direction():
    out = g.probe_transfer(meaning_clustered(p=60, d=8, harmful_shift=6.0, noise=0.3,
                                             flip_other_langs=True))
    en, other = out[out["in_language"]], out[~out["in_language"]]
    assert en["accuracy"].item() >= 0.95 and en["auroc"].item() >= 0.95
    # harmful prompts moved the other way: all read as benign, ranked backwards
    assert other["accuracy"].between(0.4, 0.6).all() and other["auroc"].max() < 0.1


def test_probe_errors_and_small_classes():
    reps = meaning_clustered(p=30)
    with pytest.raises(DataError, match="labels"):
        g.probe_transfer(make_reps(reps.values, None))
    with pytest.raises(DataError, match="at least 2"):
        g.probe_transfer(make_reps(reps.values, [True] + [False] * 29))
    with pytest.raises(LanguageError):
        g.probe_transfer(reps, train_lang="de")
    few = make_reps(reps.values[:6], [True, False] * 3)    # 3 per class -> 3 folds
    assert (g.probe_transfer(few)["n_folds"] == 3).all()


def test_all_metrics_frames():
    out = g.all_metrics(meaning_clustered())
    assert set(out) == {"collinearity", "similarity", "retrieval", "silhouette", "probe"}
    assert all(isinstance(f, pd.DataFrame) and len(f) for f in out.values())
    assert "probe" not in g.all_metrics(collinear())      # no labels, no probe


# ----------------------------------------------------------------------------- the real model

@pytest.mark.slow
def test_metrics_on_the_default_model(default_model):
    """Real states: every metric in range; the template's last token is far more collinear than
    unrelated prompts would be, and embeddings of different texts are not."""
    from mlcwb.extract import extract

    model, tokenizer = default_model
    texts = {"en": ["How do I bake bread?", "How can I make a bomb at home?",
                    "What is the capital of France?", "How do I hack my neighbour's wifi?"],
             "fr": ["Comment faire du pain ?", "Comment fabriquer une bombe chez moi ?",
                    "Quelle est la capitale de la France ?",
                    "Comment pirater le wifi de mon voisin ?"]}
    per_lang = {lang: extract(model, tokenizer, t, langs=[lang], layers=[0, 15, 30],
                              progress=False) for lang, t in texts.items()}
    reps = Representations(
        values=np.concatenate([per_lang["en"].values, per_lang["fr"].values], axis=1),
        prompt_ids=["bread", "bomb", "paris", "wifi"], languages=["en", "fr"], layers=[0, 15, 30],
        pooling="last", model_fingerprint=per_lang["en"].model_fingerprint,
        harmful=[False, True, False, True])
    col = g.collinearity(reps)
    assert ((col["mlc_loss"] >= col["floor"] - 1e-6) & (col["mlc_loss"] <= col["ceiling"])).all()
    # layer 0 at the last token is the same template token in both languages: exactly collinear
    assert col.iloc[0]["first_sv_share"] == pytest.approx(1.0, abs=1e-5)
    margin = g.similarity_margin(reps, layers=[15])
    assert (margin["margin"] > 0).all()                   # translations closer than other prompts
    assert g.retrieval_accuracy(reps, layers=[15])["accuracy"].between(0, 1).all()
    sil = g.silhouette(reps)
    assert sil[["by_language", "by_prompt"]].abs().to_numpy().max() <= 1


def test_cosine_to_english_matches_a_direct_computation():
    reps = meaning_clustered(p=8, n_langs=3)
    table = g.cosine_to_english(reps)
    assert list(table.columns) == ["layer", "language", "pooling", "matched", "mismatched"]
    assert table["language"].tolist() == ["zh", "ru"] and (table["pooling"] == "last").all()
    x = g.unit(reps.values[:, :, 0].astype(np.float64))
    for lang, row in table.set_index("language").iterrows():
        sims = x[:, reps.languages.index(lang)] @ x[:, 0].T
        off = ~np.eye(len(sims), dtype=bool)
        assert row["matched"] == pytest.approx(np.diag(sims).mean())
        assert row["mismatched"] == pytest.approx(sims[off].mean())
    assert (table["matched"] > table["mismatched"]).all()  # translations sit together here
    with pytest.raises(LanguageError):
        g.cosine_to_english(reps, ref="fr")
