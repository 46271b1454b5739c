"""Figures carry the traces and data they promise; the explorer's controls rewrite the figure."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from mlcwb import geometry as g
from mlcwb import viz
from mlcwb.errors import ConfigError
from tests.test_geometry import LANGS, make_reps, meaning_clustered


@pytest.fixture(scope="module")
def reps():
    rng = np.random.default_rng(0)
    p, layers, d = 10, 3, 16
    values = rng.normal(size=(p, 1, layers, d)) + 0.2 * rng.normal(size=(p, 4, layers, d))
    return make_reps(values, [bool(i % 2) for i in range(p)])


def test_numba_cache_dir_is_set():
    from mlcwb.notebooks import use_numba_cache

    assert os.environ.get("NUMBA_CACHE_DIR") and use_numba_cache() == os.environ["NUMBA_CACHE_DIR"]


def test_project_pca_columns_and_shared_projection(reps):
    pts = viz.project(reps, 1, "pca")
    assert list(pts.columns) == ["model", "prompt_id", "lang", "harmful", "text", "layer", "method",
                                 "x", "y"]
    assert len(pts) == 40 and set(pts["lang"]) == set(LANGS) and (pts["layer"] == 1).all()
    assert pts.loc[(pts.prompt_id == "p3") & (pts.lang == "zh"), "text"].item() == "prompt 3 in zh"
    both = viz.project({"before": reps, "after": reps}, 1, "pca")
    before, after = both[both.model == "before"], both[both.model == "after"]
    # one projection fitted on both: identical states land on identical points
    assert np.allclose(before[["x", "y"]].to_numpy(), after[["x", "y"]].to_numpy())
    with pytest.raises(ConfigError, match="unknown projection"):
        viz.project(reps, 1, "tsne")


@pytest.mark.slow
def test_project_umap(reps):
    pts = viz.project(reps, 0, "umap")
    assert len(pts) == 40 and np.isfinite(pts[["x", "y"]].to_numpy()).all()


def test_scatter_figure_traces(reps):
    pts = viz.project(reps, 2, "pca")
    fig = viz.scatter_figure(pts, highlight=["p1", "p2"])
    assert [t.name for t in fig.data] == [*LANGS, "translations", "benign", "harmful"]
    en = fig.data[0]
    assert len(en.x) == 10 and list(en.marker.symbol) == ["circle", "x"] * 5
    assert "prompt 1 in en" in en.hovertext[1] and "harmful" in en.hovertext[1]
    lines = fig.data[4]
    assert len(lines.x) == 2 * (4 + 1) and lines.x[4] is None    # two prompts, None-separated
    side = viz.scatter_figure(viz.project({"before": reps, "after": reps}, 2, "pca"))
    assert len(side.data) == 2 * 5 + 2 and side.layout.annotations[1].text == "after"


def test_layer_figure_has_a_frame_per_layer(reps):
    fig = viz.layer_figure(reps, method="pca", highlight=["p0"])
    assert [f.name for f in fig.frames] == ["0", "1", "2"]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "2"]
    assert len(fig.frames[0].data) == 5
    assert not np.allclose(fig.frames[0].data[0].x, fig.frames[2].data[0].x)


def test_explorer_falls_back_to_static_without_figure_widget(reps, monkeypatch):
    monkeypatch.setattr(viz, "_figure_widget_available", lambda: False)
    fig = viz.explorer(reps)
    assert isinstance(fig, go.Figure) and len(fig.frames) == 3


@pytest.mark.slow
def test_explorer_controls_update_the_figure(reps):
    """Slow only for ipywidgets' first-use cost (seconds on a busy 2-core box)."""
    pytest.importorskip("anywidget", reason="plotly's FigureWidget needs anywidget")
    box = viz.explorer(reps, highlight=["p1"])
    assert box.slider.description == "layer" and "mlcwb-layer-slider" in box.slider._dom_classes
    assert box.slider.value == 2 and box.figure.layout.title.text.endswith("layer 2")
    before = np.array(box.figure.data[0].x)
    box.slider.value = 0
    assert not np.allclose(before, box.figure.data[0].x)
    assert box.figure.layout.title.text.endswith("layer 0") and "40 points" in box.status.value
    box.toggles["zh"].value = False
    assert box.figure.data[1].visible is False and "30 points" in box.status.value
    assert len(box.figure.data[4].x) == 3 + 1                # translation line skips hidden zh


def test_metric_figures(reps):
    frames = g.all_metrics(meaning_clustered(p=12))
    heat = viz.matrix_figure(frames["similarity"], "margin")
    assert len(heat.data) == 1 and heat.data[0].visible and heat.data[0].z.shape == (4, 4)
    col = viz.collinearity_figure(frames["collinearity"])
    assert {t.name for t in col.data} >= {"floor (collinear)", "ceiling (orthogonal)"}
    probe = viz.probe_figure(frames["probe"])
    assert [t.name for t in probe.data] == LANGS and probe.data[0].line.width == 4
    sil = viz.silhouette_figure(frames["silhouette"])
    assert [t.name for t in sil.data] == ["by_language", "by_prompt"]
    pairs = viz.pairs_by_layer_figure(frames["retrieval"], "accuracy")
    assert [t.name for t in pairs.data] == LANGS[1:]
    with pytest.raises(ConfigError):
        viz.pairs_by_layer_figure(frames["retrieval"], "accuracy", ref="de")
    # before/after: a model column draws one dashed line per model
    both = pd.concat([frames["collinearity"].assign(model=m) for m in ("before", "after")])
    assert len([t for t in viz.collinearity_figure(both).data if t.name != "floor (collinear)"
                and t.name != "ceiling (orthogonal)"]) == 4


def test_save_figure_writes_self_contained_offline_html(reps, tmp_path):
    import re

    from plotly.offline import get_plotlyjs

    fig = viz.scatter_figure(viz.project(reps, 0, "pca"))
    paths = viz.save_figure(fig, tmp_path, "scatter", formats=())
    html = tmp_path / "figures" / "scatter.html"
    text = html.read_text(encoding="utf-8")
    assert paths == [html] and get_plotlyjs() in text  # plotly.js inline, nothing beside it
    assert re.findall(r"<script[^>]*\bsrc\s*=", text) == []  # no script fetched from anywhere
    # the inlined library names cdn.plot.ly once, as the default map-data URL of geo plots; the
    # page itself never does
    outside = text.replace(get_plotlyjs(), "")
    assert "cdn.plot.ly" not in outside and "https://" not in outside
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["scatter.html"]
    with pytest.raises(ConfigError, match="unknown formats"):
        viz.save_figure(fig, tmp_path, "scatter", formats=("pdf",))


def test_save_figure_without_kaleido_writes_html_and_says_why(reps, tmp_path, caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_kaleido(name, *args, **kwargs):
        if name == "kaleido":
            raise ImportError("no kaleido here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kaleido)
    fig = viz.scatter_figure(viz.project(reps, 0, "pca"))
    with caplog.at_level("INFO", logger="mlcwb.viz"):
        paths = viz.save_figure(fig, tmp_path, "scatter")
    assert paths == [tmp_path / "figures" / "scatter.html"]
    assert "PNG/SVG skipped: kaleido is not installed" in caplog.text


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header: the signature, then the IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_save_figure_writes_png_and_svg_with_kaleido(reps, tmp_path):
    """kaleido 1.x and a Chromium are what `make test` installs (the dev extra,
    tools/install_browser.sh); it skips only where Chromium could not be installed."""
    pytest.importorskip("kaleido", reason="kaleido is not installed (the dev extra has it)")
    from tests.browser_support import chromium_path

    if chromium_path() is None and not os.environ.get("BROWSER_PATH"):
        pytest.skip("no Chromium for kaleido: run sh tools/install_browser.sh")
    assert viz.save_figure.__defaults__ == (("png",),)  # PNG by default, SVG when asked
    fig = viz.scatter_figure(viz.project(reps, 0, "pca"))
    fig.update_layout(width=640, height=480)
    paths = viz.save_figure(fig, tmp_path, "scatter", formats=("png", "svg"))
    png, svg = tmp_path / "figures" / "scatter.png", tmp_path / "figures" / "scatter.svg"
    assert paths == [tmp_path / "figures" / "scatter.html", png, svg]
    assert _png_size(png.read_bytes()) == (640, 480)
    assert b"<svg" in svg.read_bytes()[:500]
    assert not [p for p in (tmp_path / "figures").iterdir() if p.name.endswith(".tmp")]


def test_save_figure_without_a_browser_warns_once_and_writes_html(reps, tmp_path, caplog,
                                                                  monkeypatch):
    pytest.importorskip("kaleido", reason="kaleido is not installed (the dev extra has it)")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome-here"))
    fig = viz.scatter_figure(viz.project(reps, 0, "pca"))
    with caplog.at_level("WARNING"):
        paths = viz.save_figure(fig, tmp_path, "scatter", formats=("png", "svg"))
    assert paths == [tmp_path / "figures" / "scatter.html"]
    warned = [r for r in caplog.records if r.name == "mlcwb.viz"]
    assert len(warned) == 1 and "PNG/SVG not written" in warned[0].getMessage()
    assert "tools/install_browser.sh" in warned[0].getMessage()
