"""Figures of the Sensitivity page: groups x keep-ratio heatmap, per-group curves, MACs share vs sensitivity.

Input is the engine's SensitivityTable as a dict (``SensitivityTable.to_dict()``); no Streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

_MARGIN = {"l": 10, "r": 10, "t": 36, "b": 10}


def mean_drop(group: Mapping[str, Any]) -> float:
    """A group's mean accuracy drop over the keep-ratio grid (its one-number sensitivity)."""
    drops = [float(d) for d in group.get("drop", ()) if d is not None]
    return sum(drops) / len(drops) if drops else 0.0


def sensitivity_heatmap_figure(table: Mapping[str, Any]) -> go.Figure:
    """Rows = groups, columns = keep ratios, colour = val accuracy drop (points of top-1)."""
    groups = table.get("groups", [])
    fig = go.Figure(
        go.Heatmap(
            z=[g["drop"] for g in groups],
            x=[f"{k:.2f}" for k in table.get("keep_ratios", [])],
            y=[g["name"] for g in groups],
            colorscale="Reds",
            colorbar={"title": {"text": "drop %"}},
        )
    )
    fig.update_layout(
        title="Accuracy drop when only this group is pruned",
        height=max(300, 16 * len(groups) + 90),
        margin=_MARGIN,
        xaxis_title="keep ratio",
        yaxis={"autorange": "reversed", "tickfont": {"size": 9}},
    )
    fig.update_xaxes(type="category")  # one cell per ratio of the grid, labelled by it (not a numeric axis)
    return fig


def sensitivity_curves_figure(table: Mapping[str, Any], *, groups: Sequence[str] | None = None) -> go.Figure:
    """Val accuracy vs keep ratio, one line per group (all groups when `groups` is None)."""
    fig = go.Figure()
    ks = [1.0, *table.get("keep_ratios", [])]
    base = table.get("base_acc")
    for g in table.get("groups", []):
        if groups is not None and g["name"] not in groups:
            continue
        fig.add_trace(go.Scatter(x=ks, y=[base, *g["val_acc"]], mode="lines+markers", name=g["name"]))
    fig.update_layout(
        title="Val accuracy vs keep ratio",
        height=340,
        margin=_MARGIN,
        xaxis_title="keep ratio",
        yaxis_title="val top-1 %",
    )
    fig.update_xaxes(autorange="reversed")
    return fig


def share_vs_sensitivity_figure(table: Mapping[str, Any]) -> go.Figure:
    """Each group's share of the MACs against its mean accuracy drop: cheap-to-prune groups sit bottom right."""
    groups = table.get("groups", [])
    fig = go.Figure(
        go.Scatter(
            x=[100 * float(g.get("macs_share", 0.0)) for g in groups],
            y=[mean_drop(g) for g in groups],
            mode="markers",
            text=[g["name"] for g in groups],
            hovertemplate="%{text}<br>MACs share %{x:.1f}%<br>mean drop %{y:.2f}<extra></extra>",
            marker={
                "size": 11,
                "color": [g.get("stage", 0) for g in groups],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": "stage"}},
            },
        )
    )
    fig.update_layout(
        title="MACs share vs sensitivity",
        height=340,
        margin=_MARGIN,
        xaxis_title="MACs share (%)",
        yaxis_title="mean accuracy drop (points)",
    )
    return fig
