"""Cross-lingual geometry of hidden states: do translations of one prompt land together?

Every metric takes a :class:`mlcwb.representations.Representations` (``values`` shaped
``(prompts, languages, layers, hidden)``; layers counted like ``hidden_states``: 0 = embeddings,
i = output of block i, the last = after the final norm) and returns a tidy pandas DataFrame with one
row per layer (and per language or language pair), so the notebook can plot any of them per layer
and a before/after comparison is a ``pd.concat`` with a ``model`` column.

All metrics look at directions (rows are L2-normalised), because that is what the MLC loss sees and
because raw hidden-state norms vary by orders of magnitude between layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mlcwb.errors import ConfigError, DataError, LanguageError, MLCWBError

if TYPE_CHECKING:
    from mlcwb.representations import Representations

log = logging.getLogger(__name__)

Projection = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- selection helpers

def _present(wanted: Sequence | None, available: Sequence, error: type[MLCWBError], what: str,
             listing: str) -> list:
    """``wanted`` (all of ``available`` when ``None``), after checking every item is there."""
    if wanted is None:
        return list(available)
    missing = [x for x in wanted if x not in available]
    if missing:
        raise error(f"{what} {missing} are not in these representations; {listing}: {list(available)}")
    return list(wanted)


def checked_layers(reps: Representations, layers: Sequence[int] | None) -> list[int]:
    """``layers`` (all of ``reps``' when None), each checked to be present: a clear error, not a KeyError."""
    return _present(layers, reps.layers, ConfigError, "layers", "available hidden-state indices")


def checked_languages(reps: Representations, langs: Sequence[str] | None) -> list[str]:
    """``langs`` (all of ``reps``' when None), each checked to be present."""
    return _present(langs, reps.languages, LanguageError, "languages", "available")


def states(reps: Representations, layer: int, langs: Sequence[str] | None = None) -> np.ndarray:
    """Hidden states of one layer as float64 ``(prompts, languages, hidden)`` in ``langs`` order."""
    (layer,) = checked_layers(reps, [layer])
    langs = checked_languages(reps, langs)
    x = np.asarray(reps.layer(layer), dtype=np.float64)
    return x[:, [reps.languages.index(lang) for lang in langs], :]


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero rather than becoming NaN)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _need_prompts(reps: Representations, n: int, what: str) -> None:
    if len(reps.prompt_ids) < n:
        raise DataError(f"{what} needs at least {n} prompts; these representations hold "
                        f"{len(reps.prompt_ids)}. Extract more prompts.")


# --------------------------------------------------------------------------- 1. collinearity

def _apply(projection: Projection, z: torch.Tensor) -> torch.Tensor:
    params = list(projection.parameters()) if isinstance(projection, torch.nn.Module) else []
    if params:
        z = z.to(device=params[0].device, dtype=params[0].dtype)
    return projection(z).float().cpu()


def collinearity(reps: Representations, layers: Sequence[int] | None = None,
                 langs: Sequence[str] | None = None, tau: float = 0.2,
                 weights: torch.Tensor | Sequence[float] | None = None,
                 projection: Projection | None = None) -> pd.DataFrame:
    """How close each prompt's translations are to one direction (the MLC objective), per layer.

    ``mlc_loss`` is the training loss itself (``mlcwb.mlc.mlc_loss``, the same code path, under
    ``torch.no_grad()``) on the raw hidden states, or on ``projection(states)`` when a projection
    such as a trained MLC extractor is given. ``first_sv_share`` is σ₁²/Σσ² of each prompt's
    row-normalised (uncentred) language matrix, averaged over prompts: 1 for collinear rows,
    1/L for orthogonal ones. The loss is not 0 at collinearity, so read it between ``floor``
    (all rows collinear: ŝ = [1, 0, ...], ``log(1 + (L-1)·e^(-1/τ))``) and ``ceiling`` (all
    singular values equal, orthogonal rows: ``log L``).
    """
    from mlcwb.mlc import mlc_floor, mlc_loss

    langs = checked_languages(reps, langs)
    if len(langs) < 2:
        raise ConfigError(f"collinearity compares languages; got only {langs}")
    rows = []
    for layer in checked_layers(reps, layers):
        z = torch.from_numpy(states(reps, layer, langs)).float()
        with torch.no_grad():
            if projection is not None:
                z = _apply(projection, z)
            loss = float(mlc_loss(z, tau=tau, weights=weights))
        s = np.linalg.svd(unit(z.double().numpy()), compute_uv=False)
        share = (s[:, 0] ** 2 / np.maximum((s ** 2).sum(axis=1), 1e-24)).mean()
        k = min(len(langs), z.shape[-1])
        rows.append({"layer": layer, "mlc_loss": loss, "floor": mlc_floor(k, tau),
                     "ceiling": math.log(k), "first_sv_share": float(share),
                     "n_prompts": z.shape[0], "n_langs": len(langs), "tau": tau})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 2-3. cross-lingual pairs

def _pairs(reps: Representations, layers: Sequence[int] | None, langs: Sequence[str] | None):
    """Yield (layer, lang_a, lang_b, cosine matrix P×P) for every ordered pair of distinct languages."""
    langs = checked_languages(reps, langs)
    for layer in checked_layers(reps, layers):
        x = unit(states(reps, layer, langs))
        for i, a in enumerate(langs):
            for j, b in enumerate(langs):
                if i != j:
                    yield layer, a, b, x[:, i, :] @ x[:, j, :].T


def similarity_margin(reps: Representations, layers: Sequence[int] | None = None,
                      langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean cosine of a prompt and its own translation minus that to other prompts' translations.

    Raw hidden states are anisotropic (every pair has cosine ≈ 0.9 at some layers), so the plain
    same-prompt cosine says little; the margin is > 0 exactly when translations are closer to each
    other than to unrelated prompts. Rows: one per layer and ordered language pair (a ≠ b).
    """
    _need_prompts(reps, 2, "similarity_margin")
    rows = []
    for layer, a, b, cos in _pairs(reps, layers, langs):
        n = cos.shape[0]
        same = float(np.trace(cos) / n)
        different = float((cos.sum() - np.trace(cos)) / (n * n - n))
        rows.append({"layer": layer, "lang_a": a, "lang_b": b, "same": same,
                     "different": different, "margin": same - different})
    return pd.DataFrame(rows)


def cosine_to_english(reps: Representations, layers: Sequence[int] | None = None,
                      ref: str = "en") -> pd.DataFrame:
    """Per layer and language, the mean cosine of a prompt to its own English original
    (``matched``) and to the English states of other prompts (``mismatched``).

    The question behind English-only alignment: does a translation land near the English prompt
    the alignment was trained on? These are ``similarity_margin``'s rows towards ``ref``, named
    for that question and labelled with the pooling, so two poolings stack into one table.
    """
    checked_languages(reps, [ref])
    margin = similarity_margin(reps, layers)
    rows = margin[margin["lang_b"] == ref].reset_index(drop=True)
    return pd.DataFrame({"layer": rows["layer"], "language": rows["lang_a"], "pooling": reps.pooling,
                         "matched": rows["same"], "mismatched": rows["different"]})


def retrieval_accuracy(reps: Representations, layers: Sequence[int] | None = None,
                       langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Share of prompts in language ``lang_a`` whose nearest neighbour (cosine) among all prompts
    in ``lang_b`` is their own translation; ``chance`` = 1/prompts. One row per layer and pair."""
    _need_prompts(reps, 2, "retrieval_accuracy")
    rows = []
    for layer, a, b, cos in _pairs(reps, layers, langs):
        n = cos.shape[0]
        hits = cos.argmax(axis=1) == np.arange(n)
        rows.append({"layer": layer, "lang_a": a, "lang_b": b, "accuracy": float(hits.mean()),
                     "chance": 1.0 / n})
    return pd.DataFrame(rows)


def pair_matrix(frame: pd.DataFrame, value: str, layer: int) -> pd.DataFrame:
    """One layer of a pairwise metric as a language × language matrix (diagonal NaN)."""
    if layer not in set(frame["layer"]):
        raise ConfigError(f"layer {layer} is not in this frame; it has {sorted(set(frame['layer']))}")
    part = frame[frame["layer"] == layer]
    order = list(dict.fromkeys([*part["lang_a"], *part["lang_b"]]))
    return part.pivot(index="lang_a", columns="lang_b", values=value).reindex(index=order,
                                                                               columns=order)


# --------------------------------------------------------------------------- 4. clustering

def silhouette(reps: Representations, layers: Sequence[int] | None = None,
               langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Cosine silhouette of all (prompt, language) states grouped by language and by prompt id.

    ``by_prompt`` > ``by_language`` means meaning organises the space more than language does:
    the picture the MLC idea wants. Both lie in [-1, 1].
    """
    from sklearn.metrics import silhouette_score

    _need_prompts(reps, 2, "silhouette")
    langs = checked_languages(reps, langs)
    if len(langs) < 2:
        raise ConfigError(f"silhouette by language needs at least 2 languages; got {langs}")
    n_prompts = len(reps.prompt_ids)
    by_lang = np.tile(np.arange(len(langs)), n_prompts)
    by_prompt = np.repeat(np.arange(n_prompts), len(langs))
    rows = []
    for layer in checked_layers(reps, layers):
        x = unit(states(reps, layer, langs)).reshape(n_prompts * len(langs), -1)
        rows.append({"layer": layer,
                     "by_language": float(silhouette_score(x, by_lang, metric="cosine")),
                     "by_prompt": float(silhouette_score(x, by_prompt, metric="cosine"))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 5. probe transfer

def probe_transfer(reps: Representations, train_lang: str = "en",
                   layers: Sequence[int] | None = None, langs: Sequence[str] | None = None,
                   n_splits: int = 5, C: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """A harmful-vs-benign linear probe trained on ``train_lang`` states, scored in every language.

    Scoring is k-fold over prompt ids (stratified by label): each fold's probe (standardise +
    logistic regression, fitted on the training folds' ``train_lang`` states only) predicts the
    held-out prompts in every language, ``train_lang`` included. So the in-language score and the
    transfer scores are measured on the same held-out prompts, and no translation of a test prompt
    is ever seen in training. Accuracy uses threshold 0.5; AUROC pools the out-of-fold scores.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if reps.harmful is None:
        raise DataError("probe_transfer needs harmful/benign labels; these representations have "
                        "harmful=None. Extract from a PromptSet (it carries the labels).")
    y = np.asarray(reps.harmful, dtype=int)
    smaller = int(min(y.sum(), len(y) - y.sum()))
    if smaller < 2:
        raise DataError(f"probe_transfer needs at least 2 harmful and 2 benign prompts; got "
                        f"{int(y.sum())} harmful and {len(y) - int(y.sum())} benign.")
    if n_splits < 2:
        raise ConfigError(f"n_splits must be >= 2, got {n_splits}")
    if smaller < n_splits:
        log.info("probe_transfer: only %d prompts in the smaller class; using %d folds", smaller,
                 smaller)
    folds = StratifiedKFold(n_splits=min(n_splits, smaller), shuffle=True, random_state=seed)
    langs = checked_languages(reps, langs)
    if train_lang not in reps.languages:
        raise LanguageError(f"train_lang {train_lang!r} is not in these representations; "
                            f"available: {list(reps.languages)}")
    order = [train_lang, *[lang for lang in langs if lang != train_lang]]
    rows = []
    for layer in checked_layers(reps, layers):
        x = states(reps, layer, order)
        scores = np.zeros((len(y), len(order)))
        for train, test in folds.split(np.zeros(len(y)), y):
            probe = make_pipeline(StandardScaler(),
                                  LogisticRegression(C=C, max_iter=2000, random_state=seed))
            # BLAS threads on these small matrices only contend (50x slower on a busy 2-core box)
            with threadpool_limits(limits=1):
                probe.fit(x[train, 0, :], y[train])
                for j in range(len(order)):
                    scores[test, j] = probe.predict_proba(x[test, j, :])[:, 1]
        for j, lang in enumerate(order):
            rows.append({"layer": layer, "lang": lang, "train_lang": train_lang,
                         "in_language": lang == train_lang,
                         "accuracy": float(((scores[:, j] >= 0.5) == y).mean()),
                         "auroc": float(roc_auc_score(y, scores[:, j])),
                         "n_prompts": len(y), "n_folds": folds.get_n_splits()})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- all at once

def all_metrics(reps: Representations, layers: Sequence[int] | None = None,
                langs: Sequence[str] | None = None, train_lang: str = "en",
                tau: float = 0.2) -> dict[str, pd.DataFrame]:
    """Every metric above on the same layers and languages (probe only when labels exist)."""
    out = {
        "collinearity": collinearity(reps, layers, langs, tau=tau),
        "similarity": similarity_margin(reps, layers, langs),
        "retrieval": retrieval_accuracy(reps, layers, langs),
        "silhouette": silhouette(reps, layers, langs),
    }
    if reps.harmful is not None and len(set(reps.harmful)) == 2:
        out["probe"] = probe_transfer(reps, train_lang, layers, langs)
    return out
