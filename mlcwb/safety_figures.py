"""The safety comparison's figures (plotly): per-language bars with intervals, safety vs
over-refusal, and the change against a baseline method. The geometry's figures are in ``mlcwb.viz``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from mlcwb.errors import DataError
from mlcwb.metrics import METRICS


def bar_figure(results: Mapping[str, pd.DataFrame], metric: str = "safety_rate") -> Any:
    """Grouped bars per language, one colour per method, with the frame's 95% intervals.

    Those are Wilson score intervals for rates and, for discrimination (a difference of two
    independent rates), Newcombe's hybrid score interval built from the two Wilson intervals.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, frame in results.items():
        err = {}
        if f"{metric}_hi" in frame:
            err = dict(error_y=dict(type="data", symmetric=False,
                                    array=(frame[f"{metric}_hi"] - frame[metric]).tolist(),
                                    arrayminus=(frame[metric] - frame[f"{metric}_lo"]).tolist()))
        fig.add_bar(name=method, x=list(frame.index), y=frame[metric].tolist(), **err)
    fig.update_layout(barmode="group", title=METRICS.get(metric, metric), xaxis_title="language",
                      yaxis_title=METRICS.get(metric, metric), template="plotly_white")
    return fig


def scatter_figure(results: Mapping[str, pd.DataFrame]) -> Any:
    """Safety rate vs over-refusal, one point per (method, language): top-left is the goal."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, frame in results.items():
        fig.add_scatter(name=method, mode="markers+text", x=frame["over_refusal"].tolist(),
                        y=frame["safety_rate"].tolist(), text=list(frame.index),
                        textposition="top center")
    fig.update_layout(title="Safety vs over-refusal per language", template="plotly_white",
                      xaxis_title=METRICS["over_refusal"], yaxis_title=METRICS["safety_rate"],
                      xaxis_range=[-5, 105], yaxis_range=[-5, 105])
    return fig


def heatmap_figure(results: Mapping[str, pd.DataFrame], baseline: str,
                   metric: str = "safety_rate") -> Any:
    """Change in ``metric`` vs the baseline method, methods x languages (percentage points)."""
    import plotly.graph_objects as go

    if baseline not in results:
        raise DataError(f"Baseline {baseline!r} is not among the methods {list(results)}.")
    base = results[baseline][metric]
    others = [m for m in results if m != baseline] or [baseline]
    z = [(results[m][metric] - base).reindex(base.index).tolist() for m in others]
    fig = go.Figure(go.Heatmap(z=z, x=list(base.index), y=others, colorscale="RdBu", zmid=0,
                               text=[[f"{v:+.1f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar=dict(title="pp")))
    fig.update_layout(title=f"Change in {METRICS.get(metric, metric)} vs {baseline}",
                      template="plotly_white", xaxis_title="language")
    return fig
