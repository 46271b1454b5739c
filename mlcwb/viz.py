"""Pictures of cross-lingual geometry: projections, explorers, metric charts (plotly + ipywidgets).

The scatter answers the workshop question at a glance: colour = language, symbol = harmful/benign,
grey lines join the translations of a few chosen prompts. If meaning dominates, the lines are short
and colours mix; if each language is an island, the lines cross the plot. ``explorer`` makes that
live in JupyterLab (layer slider, language toggles, UMAP/PCA), ``layer_figure`` is its static twin
(plotly frames, works in exported HTML and under papermill), and ``save_figure`` puts any figure
into the run directory (self-contained HTML, plus a PNG, and an SVG when asked, through kaleido). Passing a mapping ``{"before": reps_a, "after": reps_b}`` anywhere a
Representations is accepted draws the two side by side in ONE projection fitted on both, so
positions are comparable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mlcwb.errors import ConfigError
from mlcwb.geometry import checked_languages, checked_layers, states, unit
from mlcwb.io import atomic_write_bytes, atomic_write_text
from mlcwb.notebooks import use_numba_cache

if TYPE_CHECKING:
    import ipywidgets

    from mlcwb.representations import Representations

log = logging.getLogger(__name__)

use_numba_cache()  # umap (imported lazily below) compiles with numba: its cache must be writable

Reps = Union["Representations", Mapping[str, "Representations"]]
METHODS = ("pca", "umap")
SYMBOLS = {False: "circle", True: "x"}            # benign, harmful
LINE_COLOR = "rgba(90,90,90,0.55)"


def _palette() -> list[str]:
    from plotly.colors import qualitative

    return [*qualitative.Plotly, *qualitative.D3, *qualitative.Dark24]


def language_colors(langs: Sequence[str]) -> dict[str, str]:
    """A fixed colour per language, by position, so every figure of a notebook agrees."""
    palette = _palette()
    return {lang: palette[i % len(palette)] for i, lang in enumerate(langs)}


def _as_mapping(reps: Reps) -> dict[str, Representations]:
    if isinstance(reps, Mapping):
        if not reps:
            raise ConfigError("got an empty mapping of Representations; pass at least one")
        return dict(reps)
    return {"model": reps}


# --------------------------------------------------------------------------- projection

def _embed(x: np.ndarray, method: str, seed: int, n_neighbors: int, min_dist: float) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        k = max(2, min(n_neighbors, len(x) - 1))
        # spectral init needs a connected enough graph; tiny sets (smoke runs) use random init
        init = "spectral" if len(x) > 4 * k else "random"
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, random_state=seed,
                            n_jobs=1, init=init)
        return reducer.fit_transform(x)
    raise ConfigError(f"unknown projection method {method!r}; choose one of {METHODS}")


def project(reps: Reps, layer: int, method: str = "pca", langs: Sequence[str] | None = None,
            seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> pd.DataFrame:
    """2-D coordinates of every (prompt, language) state of one layer, one row per point.

    Rows are L2-normalised first (directions, as the metrics and the MLC loss see them). With a
    mapping of several Representations, ONE projection is fitted on all of them together.
    Columns: model, prompt_id, lang, harmful, text, layer, method, x, y.
    """
    frames, blocks = [], []
    for name, r in _as_mapping(reps).items():
        use = checked_languages(r, langs)
        x = unit(states(r, layer, use))
        n_prompts = len(r.prompt_ids)
        blocks.append(x.reshape(n_prompts * len(use), -1))
        harmful = r.harmful if r.harmful is not None else [None] * n_prompts
        texts = r.texts
        frames.append(pd.DataFrame({
            "model": name,
            "prompt_id": np.repeat(np.asarray(r.prompt_ids, dtype=object), len(use)),
            "lang": np.tile(np.asarray(use, dtype=object), n_prompts),
            "harmful": np.repeat(np.asarray(harmful, dtype=object), len(use)),
            "text": [texts[p][r.languages.index(lang)] if texts else ""
                     for p in range(n_prompts) for lang in use],
        }))
    dims = {b.shape[1] for b in blocks}
    if len(dims) > 1:
        raise ConfigError(f"cannot fit one projection on states of different widths {sorted(dims)}; "
                          "compare Representations of the same model family")
    xy = _embed(np.concatenate(blocks), method, seed, n_neighbors, min_dist)
    points = pd.concat(frames, ignore_index=True)
    points["layer"], points["method"] = layer, method
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    return points


# --------------------------------------------------------------------------- scatter

def _hover(points: pd.DataFrame) -> list[str]:
    def one(row: Any) -> str:
        label = {True: "harmful", False: "benign"}.get(row.harmful, "unlabelled")
        text = str(row.text or "")
        text = text if len(text) <= 160 else text[:157] + "…"
        return f"<b>{row.prompt_id}</b> [{row.lang}] {label}<br>{text}"
    return [one(row) for row in points.itertuples()]


def _lines_xy(points: pd.DataFrame, highlight: Sequence[str],
              visible: set[str] | None) -> tuple[list, list]:
    xs: list = []
    ys: list = []
    for pid in highlight:
        part = points[points["prompt_id"] == pid]
        if visible is not None:
            part = part[part["lang"].isin(visible)]
        if len(part) >= 2:
            xs += [*part["x"], None]
            ys += [*part["y"], None]
    return xs, ys


def _trace_updates(points: pd.DataFrame, models: list[str], langs: list[str],
                   highlight: Sequence[str], visible: set[str] | None = None) -> list[dict]:
    """Data for every trace in the fixed order scatter_figure builds: per model, langs then lines."""
    updates = []
    for model in models:
        mine = points[points["model"] == model]
        for lang in langs:
            part = mine[mine["lang"] == lang]
            updates.append({"x": part["x"].to_numpy(), "y": part["y"].to_numpy(),
                            "hovertext": _hover(part),
                            "customdata": part["prompt_id"].to_numpy(),
                            "marker": {"symbol": [SYMBOLS.get(h, "diamond")
                                                  for h in part["harmful"]]}})
        xs, ys = _lines_xy(mine, highlight, visible)
        updates.append({"x": xs, "y": ys})
    return updates


def scatter_figure(points: pd.DataFrame, highlight: Sequence[str] = (),
                   colors: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Scatter of ``project`` output: colour = language, symbol = harmful (×) / benign (○),
    hover = prompt text, grey lines join the translations of the ``highlight`` prompt ids.
    Several models (before/after) become side-by-side panels on shared axes."""
    models = list(dict.fromkeys(points["model"]))
    langs = list(dict.fromkeys(points["lang"]))
    colors = dict(colors or language_colors(langs))
    fig = make_subplots(rows=1, cols=len(models), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=models if len(models) > 1 else None,
                        horizontal_spacing=0.04)
    updates = iter(_trace_updates(points, models, langs, highlight))
    for col, _model in enumerate(models, start=1):
        for lang in langs:
            data = next(updates)
            fig.add_trace(go.Scatter(
                mode="markers", name=lang, legendgroup=lang, showlegend=col == 1,
                hoverinfo="text", **{k: v for k, v in data.items() if k != "marker"},
                marker={"color": colors.get(lang), "size": 8, "opacity": 0.8,
                        "line": {"width": 0.5, "color": "white"}, **data["marker"]},
            ), row=1, col=col)
        fig.add_trace(go.Scatter(mode="lines", name="translations", legendgroup="translations",
                                 showlegend=col == 1, hoverinfo="skip",
                                 line={"color": LINE_COLOR, "width": 1}, **next(updates)),
                      row=1, col=col)
    for harmful, label in ((False, "benign"), (True, "harmful")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label,
                                 marker={"symbol": SYMBOLS[harmful], "color": "black", "size": 8},
                                 legendgroup="symbols"), row=1, col=1)
    layer, method = points["layer"].iloc[0], points["method"].iloc[0]
    fig.update_layout(title=title or f"{method.upper()} of hidden states, layer {layer}",
                      template="plotly_white", height=520, legend={"itemsizing": "constant"})
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def layer_figure(reps: Reps, layers: Sequence[int] | None = None, method: str = "pca",
                 langs: Sequence[str] | None = None, highlight: Sequence[str] = (),
                 seed: int = 0) -> go.Figure:
    """The explorer without a kernel: one plotly frame per layer and a layer slider, so the
    figure stays explorable in exported HTML and papermill outputs."""
    mapping = _as_mapping(reps)
    first = next(iter(mapping.values()))
    layers = checked_layers(first, layers)
    all_points = [project(mapping, layer, method, langs, seed=seed) for layer in layers]
    fig = scatter_figure(all_points[-1], highlight)
    models = list(mapping)
    langs = list(dict.fromkeys(all_points[-1]["lang"]))
    frames = []
    for layer, points in zip(layers, all_points):
        data = [go.Scatter(**update) for update in _trace_updates(points, models, langs, highlight)]
        frames.append(go.Frame(name=str(layer), data=data, traces=list(range(len(data))),
                               layout={"title": {"text": f"{method.upper()} of hidden states, "
                                                         f"layer {layer}"}}))
    fig.frames = frames
    fig.update_layout(sliders=[{
        "active": len(layers) - 1, "currentvalue": {"prefix": "layer "}, "pad": {"t": 30},
        "steps": [{"label": str(layer), "method": "animate",
                   "args": [[str(layer)], {"mode": "immediate", "frame": {"duration": 0,
                                                                          "redraw": True},
                                           "transition": {"duration": 0}}]}
                  for layer in layers],
    }])
    return fig


# --------------------------------------------------------------------------- live explorer

def _figure_widget_available() -> bool:
    try:
        go.FigureWidget()
    except ImportError:
        return False
    return True


def _explorer_controls(layers: Sequence[int], method: str, langs: Sequence[str]) -> tuple[Any, Any, dict[str, Any], Any]:
    """The explorer's widgets: layer slider, method dropdown, one toggle per language, status line.
    Each carries a CSS class (``mlcwb-...``) so a browser test can find it."""
    import ipywidgets as widgets

    slider = widgets.SelectionSlider(options=[(str(layer), layer) for layer in layers],
                                     value=layers[-1], description="layer",
                                     continuous_update=False)
    slider.add_class("mlcwb-layer-slider")
    dropdown = widgets.Dropdown(options=list(METHODS), value=method, description="method")
    dropdown.add_class("mlcwb-method")
    toggles = {lang: widgets.ToggleButton(value=True, description=lang,
                                          layout=widgets.Layout(width="auto"))
               for lang in langs}
    for toggle in toggles.values():
        toggle.add_class("mlcwb-lang-toggle")
    status = widgets.HTML()
    status.add_class("mlcwb-explorer-status")
    return slider, dropdown, toggles, status


def explorer(reps: Reps, layers: Sequence[int] | None = None, method: str = "pca",
             langs: Sequence[str] | None = None, highlight: Sequence[str] = (),
             seed: int = 0) -> ipywidgets.VBox | go.Figure:
    """Interactive explorer for JupyterLab: layer slider, language toggles, method dropdown.

    Returns an ``ipywidgets.VBox`` (class ``mlcwb-explorer``) whose ``slider`` (description
    "layer", class ``mlcwb-layer-slider``), ``method``, ``toggles`` and ``figure`` (a plotly
    ``FigureWidget``) are attributes; every control's callback rewrites the figure's trace data.
    Projections are computed on first view of a (layer, method) and cached. Where plotly's
    FigureWidget cannot be built (it needs ``anywidget``), returns ``layer_figure`` instead.
    """
    import ipywidgets as widgets

    if method not in METHODS:
        raise ConfigError(f"unknown projection method {method!r}; choose one of {METHODS}")
    mapping = _as_mapping(reps)
    first = next(iter(mapping.values()))
    layers = checked_layers(first, layers)
    if not _figure_widget_available():
        log.warning("plotly FigureWidget needs the 'anywidget' package; showing the static "
                    "layer figure instead (pip install anywidget for the live explorer)")
        return layer_figure(mapping, layers, method, langs, highlight, seed)

    cache: dict[tuple[int, str], pd.DataFrame] = {}

    def points_for(layer: int, how: str) -> pd.DataFrame:
        if (layer, how) not in cache:
            cache[(layer, how)] = project(mapping, layer, how, langs, seed=seed)
        return cache[(layer, how)]

    start = points_for(layers[-1], method)
    models = list(mapping)
    lang_list = list(dict.fromkeys(start["lang"]))
    figure = go.FigureWidget(scatter_figure(start, highlight))
    slider, dropdown, toggles, status = _explorer_controls(layers, method, lang_list)

    def redraw(_change: Any = None) -> None:
        points = points_for(slider.value, dropdown.value)
        visible = {lang for lang, t in toggles.items() if t.value}
        updates = _trace_updates(points, models, lang_list, highlight, visible)
        with figure.batch_update():
            for trace, update in zip(figure.data, updates):
                trace.update(update)
            per_model = len(lang_list) + 1
            for m in range(len(models)):
                for i, lang in enumerate(lang_list):
                    figure.data[m * per_model + i].visible = lang in visible
            figure.layout.title.text = f"{dropdown.value.upper()} of hidden states, layer {slider.value}"
        status.value = (f"layer {slider.value} · {dropdown.value} · "
                        f"{len(points[points['lang'].isin(visible)])} points")

    for control in (slider, dropdown, *toggles.values()):
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([slider, dropdown]),
                        widgets.HBox(list(toggles.values())), status, figure])
    box.add_class("mlcwb-explorer")
    box.slider, box.method, box.toggles, box.figure, box.status = (slider, dropdown, toggles,
                                                                   figure, status)
    return box


# --------------------------------------------------------------------------- metric charts

def matrix_figure(frame: pd.DataFrame, value: str, layers: Sequence[int] | None = None,
                  title: str | None = None, zmin: float | None = None,
                  zmax: float | None = None) -> go.Figure:
    """Language × language heatmap of a pairwise metric (``similarity_margin``,
    ``retrieval_accuracy``), rows = ``lang_a``; a slider steps through layers (last shown)."""
    from mlcwb.geometry import pair_matrix

    layers = list(layers) if layers is not None else sorted(set(frame["layer"]))
    lo = frame[value].min() if zmin is None else zmin
    hi = frame[value].max() if zmax is None else zmax
    fig = go.Figure()
    for i, layer in enumerate(layers):
        m = pair_matrix(frame, value, layer)
        fig.add_trace(go.Heatmap(z=m.to_numpy(), x=list(m.columns), y=list(m.index),
                                 zmin=lo, zmax=hi, colorscale="Viridis", name=f"layer {layer}",
                                 texttemplate="%{z:.2f}", visible=i == len(layers) - 1,
                                 hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(
        title=title or f"{value} by language pair", template="plotly_white", height=480,
        xaxis_title="lang_b", yaxis_title="lang_a", yaxis_autorange="reversed",
        sliders=[{"active": len(layers) - 1, "currentvalue": {"prefix": "layer "},
                  "steps": [{"label": str(layer), "method": "restyle",
                             "args": [{"visible": [j == i for j in range(len(layers))]}]}
                            for i, layer in enumerate(layers)]}])
    return fig


def _line_kw(frame: pd.DataFrame) -> dict[str, Any]:
    return {"line_dash": "model"} if "model" in frame.columns else {}


def collinearity_figure(frame: pd.DataFrame) -> go.Figure:
    """MLC loss per layer between its floor (all collinear) and ceiling (orthogonal), and the
    share of variance on the first singular direction. A ``model`` column draws one line each."""
    import plotly.express as px

    fig = make_subplots(rows=1, cols=2, subplot_titles=("MLC loss (lower = more collinear)",
                                                        "variance share of σ₁ (higher = more "
                                                        "collinear)"))
    for col, y in ((1, "mlc_loss"), (2, "first_sv_share")):
        for trace in px.line(frame, x="layer", y=y, markers=True, **_line_kw(frame)).data:
            trace.showlegend = col == 1 and "model" in frame.columns
            fig.add_trace(trace, row=1, col=col)
    for y, name in (("floor", "floor (collinear)"), ("ceiling", "ceiling (orthogonal)")):
        fig.add_trace(go.Scatter(x=frame["layer"], y=frame[y], mode="lines", name=name,
                                 line={"dash": "dot", "color": "grey"}), row=1, col=1)
    fig.update_xaxes(title_text="layer (0 = embeddings)")
    fig.update_layout(template="plotly_white", height=420, title="Collinearity of translations")
    return fig


def training_figures(curves: pd.DataFrame, align: str, mlc_floor: float | None = None) -> dict[str, go.Figure]:
    """The training logs of several runs (``curves``: their log rows with a ``run`` column): the
    alignment loss; where MLC ran, its term under the trained extractor and the fixed reference
    projection (a gap between them means the extractor, not the model, did the work), and the
    collapse watch (translations' cosine against different prompts')."""
    import plotly.express as px

    figs = {"04_align_loss": px.line(curves.dropna(subset=["align_loss"]), x="step", y="align_loss",
                                     color="run", title=f"{align.upper()} loss (English)")}
    mlc_rows = curves.dropna(subset=["mlc_loss"]) if "mlc_loss" in curves else curves.iloc[:0]
    if mlc_rows.empty:
        return figs
    pairs = {"04_mlc_loss": (["mlc_loss", "mlc_loss_ref"],
                             "MLC term (trained extractor vs fixed reference projection)"),
             "04_collapse_watch": (["pair_cos", "prompt_cos"],
                                   "Translations vs different prompts (cosine of MLC states)")}
    for name, (columns, title) in pairs.items():
        long = mlc_rows.melt(id_vars=["step", "run"], value_vars=columns)
        figs[name] = px.line(long, x="step", y="value", color="run", line_dash="variable", title=title)
    if mlc_floor is not None:
        figs["04_mlc_loss"].add_hline(y=mlc_floor, line_dash="dot", annotation_text="floor")
    return figs


def probe_figure(frame: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """Probe transfer per layer: one line per language; the training language is the
    in-language (held-out) score, every other line is transfer; chance is 0.5."""
    import plotly.express as px

    train = frame["train_lang"].iloc[0]
    fig = px.line(frame, x="layer", y=metric, color="lang", markers=True, **_line_kw(frame),
                  title=f"Harmful-vs-benign probe trained on {train}: {metric} per language")
    for trace in fig.data:
        if trace.name.split(",")[0] == train:
            trace.line.width = 4
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(template="plotly_white", height=420, xaxis_title="layer (0 = embeddings)",
                      yaxis_range=[0, 1.02])
    return fig


def silhouette_figure(frame: pd.DataFrame) -> go.Figure:
    """Silhouette by language vs by prompt id per layer: which one organises the space."""
    import plotly.express as px

    long = frame.melt(id_vars=[c for c in ("layer", "model") if c in frame.columns],
                      value_vars=["by_language", "by_prompt"], var_name="grouping",
                      value_name="silhouette")
    fig = px.line(long, x="layer", y="silhouette", color="grouping", markers=True,
                  **_line_kw(long), title="Clustering: by language vs by meaning (prompt id)")
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(template="plotly_white", height=420, xaxis_title="layer (0 = embeddings)")
    return fig


def pairs_by_layer_figure(frame: pd.DataFrame, value: str, ref: str = "en",
                          title: str | None = None) -> go.Figure:
    """A pairwise metric between ``ref`` and each other language per layer (mean of both
    directions), e.g. the similarity margin or retrieval accuracy to English."""
    import plotly.express as px

    keys = [c for c in ("layer", "model") if c in frame.columns]
    part = frame[(frame["lang_a"] == ref) ^ (frame["lang_b"] == ref)].copy()
    if part.empty:
        raise ConfigError(f"no pairs with {ref!r} in this frame; languages: "
                          f"{sorted(set(frame['lang_a']))}")
    part["lang"] = np.where(part["lang_a"] == ref, part["lang_b"], part["lang_a"])
    mean = part.groupby([*keys, "lang"], sort=False)[value].mean().reset_index()
    fig = px.line(mean, x="layer", y=value, color="lang", markers=True, **_line_kw(mean),
                  title=title or f"{value} to {ref} per layer")
    fig.update_layout(template="plotly_white", height=420, xaxis_title="layer (0 = embeddings)")
    return fig


# --------------------------------------------------------------------------- saving

IMAGE_FORMATS = ("png", "svg")  # what save_figure can write beside the HTML


def _kaleido_missing() -> str | None:
    """Why PNG/SVG cannot be written here, or None. kaleido 1.x starts a headless Chrome/Chromium:
    ``$BROWSER_PATH``, else ``$MLCWB_CHROMIUM``, else one it finds (``/usr/bin/chromium``)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install 'kaleido>=1.0'; it also needs Chrome or Chromium)"
    if os.environ.get("MLCWB_CHROMIUM"):
        os.environ.setdefault("BROWSER_PATH", os.environ["MLCWB_CHROMIUM"])
    return None


def save_figure(fig: go.Figure, run_dir: str | Path, name: str,
                formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write ``run_dir/figures/<name>.html``, plus ``<name>.png`` (``.svg`` if asked) where kaleido can.

    The one way every notebook and the reproduce report save a figure. The HTML carries plotly.js
    inline (about 4.6 MB) and references nothing on the network, so a figure opens offline, years
    later. PNG/SVG (for papers) need kaleido (the dev extra) and a Chrome or Chromium; without them
    one log line says why (a missing picture must not stop a run). Returns the paths written.
    """
    import plotly.io as pio

    unknown = sorted(set(formats) - set(IMAGE_FORMATS))
    if unknown:
        raise ConfigError(f"save_figure writes HTML plus {IMAGE_FORMATS}; unknown formats {unknown}")
    fig = go.Figure(fig)  # also turns a FigureWidget into a plain figure
    out = Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(out / f"{name}.html",
                               pio.to_html(fig, include_plotlyjs=True, full_html=True))]
    if formats and (missing := _kaleido_missing()):
        log.info("figure %s: HTML only, PNG/SVG skipped: %s", name, missing)
        return paths
    for i, fmt in enumerate(formats):
        try:  # MathJax off: kaleido would fetch it from a CDN, and no figure here uses LaTeX
            import kaleido

            image = kaleido.calc_fig_sync(fig, opts={"format": fmt}, kopts={"mathjax": False})
        except Exception as exc:  # kaleido and its browser driver fail in types of their own
            log.warning("figure %s: %s not written (%s: %s); install Chromium (tools/install_browser.sh) "
                        "or set BROWSER_PATH to a Chrome", name, "/".join(formats[i:]).upper(),
                        type(exc).__name__, " ".join(str(exc).split())[:300])
            break
        paths.append(atomic_write_bytes(out / f"{name}.{fmt}", image))
    return paths
