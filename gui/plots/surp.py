"""Figures of issue 13's methods: SuRP's rate-distortion curves against global magnitude, and the `ga` search's
fitness per generation and chosen channels per group.

Inputs are the engine's plain data: `RDPoint.to_dict()` rows (engine.surp_rd) and the `ga` result's
`meta["ga_groups"]` log (engine.methods.ga); no Streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
_COLOURS = {"surp": "#d62728", "surp-mask": "#ff9896", "magnitude": "#1f77b4"}
_LABELS = {
    "surp": "SuRP",
    "surp-mask": "SuRP mask + original weights",
    "magnitude": "global magnitude (normalised)",
}


def rate_distortion_figure(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Left: val top-1 vs sparsity; right: logit MSE vs bits per weight; one line per method."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("val top-1 vs weight sparsity", "distortion vs rate"))
    for method in dict.fromkeys(p["method"] for p in points):
        rows = sorted((p for p in points if p["method"] == method), key=lambda p: p["sparsity"])
        style = {"color": _COLOURS.get(method)}
        name = _LABELS.get(method, method)
        fig.add_trace(
            go.Scatter(
                x=[p["sparsity"] for p in rows],
                y=[p["val_acc"] for p in rows],
                name=name,
                mode="lines+markers",
                line=style,
                legendgroup=method,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=[p["bits_per_weight"] for p in rows],
                y=[p["logit_mse"] for p in rows],
                name=name,
                mode="lines+markers",
                line=style,
                legendgroup=method,
                showlegend=False,
                text=[f"sparsity {p['sparsity']:.3f}" for p in rows],
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="fraction of weights zero", row=1, col=1)
    fig.update_yaxes(title_text="val top-1 %", row=1, col=1)
    fig.update_xaxes(title_text="bits per weight", type="log", row=1, col=2)
    fig.update_yaxes(title_text="logit MSE on val", type="log", row=1, col=2)
    fig.update_layout(height=380, margin=_MARGIN, legend={"orientation": "h", "y": -0.2})
    return fig


def ga_fitness_figure(groups: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Step-1 fitness (negative reconstruction error) per generation, best and mean, one colour per group."""
    fig = go.Figure()
    for g in groups:
        best, mean = list(g.get("best") or []), list(g.get("mean") or [])
        if not best:
            continue
        gens = list(range(1, len(best) + 1))
        fig.add_trace(
            go.Scatter(
                x=gens, y=best, name=f"{g['group']} best", mode="lines+markers", legendgroup=g["group"]
            )
        )
        fig.add_trace(
            go.Scatter(
                x=gens,
                y=mean,
                name=f"{g['group']} mean",
                mode="lines",
                line={"dash": "dot"},
                legendgroup=g["group"],
                showlegend=False,
            )
        )
    fig.update_layout(
        title="GA fitness per generation (higher = better reconstruction)",
        height=380,
        margin=_MARGIN,
        xaxis_title="generation",
        yaxis_title="fitness",
    )
    return fig


def ga_channels_figure(groups: Sequence[Mapping[str, Any]], *, channels: Mapping[str, int]) -> go.Figure:
    """Rows = groups, columns = channels: 1 where the GA kept the channel (groups of unequal width padded)."""
    rows = [g for g in groups if g.get("chosen") is not None]
    width = max((int(channels.get(g["group"], 0)) for g in rows), default=0)
    z = []
    for g in rows:
        kept = set(g["chosen"])
        size = int(channels.get(g["group"], len(kept)))
        z.append([1 if c in kept else 0 if c < size else None for c in range(width)])
    fig = go.Figure(
        go.Heatmap(
            z=z,
            y=[f"{g['group']} ({len(g['chosen'])})" for g in rows],
            x=list(range(width)),
            colorscale=[[0, "#eeeeee"], [1, "#2ca02c"]],
            showscale=False,
        )
    )
    fig.update_layout(
        title="Channels kept per group",
        height=max(260, 18 * len(rows) + 90),
        margin=_MARGIN,
        xaxis_title="channel",
        yaxis={"autorange": "reversed", "tickfont": {"size": 9}},
    )
    return fig
