"""Figures of the Compare page: accuracy-vs-MACs Pareto scatter, metric bars, kept channels per group.

Candidates come in as plain dicts (id, label, method, macs, params, acc, latency_ms, keep); no Streamlit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from gui.plots.topology import QUALITATIVE

_MARGIN = {"l": 10, "r": 10, "t": 36, "b": 10}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower MACs, higher accuracy), ordered by MACs."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_figure(
    candidates: Sequence[Mapping[str, Any]],
    *,
    baseline: Mapping[str, Any] | None = None,
    acc_key: str = "acc",
    acc_label: str = "accuracy (top-1 %)",
) -> go.Figure:
    """Accuracy vs MACs, one colour per method, the Pareto front as a line and the baseline as a star."""
    fig = go.Figure()
    usable = [c for c in candidates if c.get("macs") is not None and c.get(acc_key) is not None]
    methods = sorted({str(c.get("method", "?")) for c in usable})
    for i, method in enumerate(methods):
        rows = [c for c in usable if str(c.get("method", "?")) == method]
        fig.add_trace(
            go.Scatter(
                x=[c["macs"] / 1e6 for c in rows],
                y=[c[acc_key] for c in rows],
                mode="markers",
                name=method,
                marker={"size": 11, "color": QUALITATIVE[i % len(QUALITATIVE)]},
                text=[str(c.get("label", c.get("id"))) for c in rows],
                hovertemplate="%{text}<br>%{x:.2f} M MACs<br>%{y:.2f}%<extra></extra>",
                customdata=[[c.get("id")] for c in rows],
            )
        )
    if usable:
        front = pareto_front([(c["macs"], c[acc_key]) for c in usable])
        fig.add_trace(
            go.Scatter(
                x=[usable[i]["macs"] / 1e6 for i in front],
                y=[usable[i][acc_key] for i in front],
                mode="lines",
                name="Pareto front",
                line={"dash": "dot", "color": "#555"},
                hoverinfo="skip",
            )
        )
    if baseline and baseline.get("macs") is not None and baseline.get(acc_key) is not None:
        fig.add_trace(
            go.Scatter(
                x=[baseline["macs"] / 1e6],
                y=[baseline[acc_key]],
                mode="markers+text",
                name="baseline",
                text=["baseline"],
                textposition="top center",
                marker={"symbol": "star", "size": 18, "color": "#d62728"},
            )
        )
    fig.update_layout(
        title="Accuracy vs MACs",
        height=380,
        margin=_MARGIN,
        xaxis_title="MACs (M)",
        yaxis_title=acc_label,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def latency_text(stats: Mapping[str, Any] | None, median_ms: float | None = None) -> str:
    """A latency as median and spread, e.g. "3.73 ms (IQR 3.60-3.95, range 3.5-4.2, 5 repeats)".

    `stats` is a LatencyStats.to_dict(); without it, a bare `median_ms` is said to be one measurement.
    """
    if stats and stats.get("median_ms") is not None:
        text = (
            f"{stats['median_ms']:.2f} ms (IQR {stats['p25_ms']:.2f}-{stats['p75_ms']:.2f}, range "
            f"{stats['min_ms']:.2f}-{stats['max_ms']:.2f}, {int(stats['repeats'])} repeats)"
        )
        return text + (" - noisy, re-measure" if stats.get("noisy") else "")
    if median_ms is not None:
        return f"{median_ms:.2f} ms (one measurement, spread unknown)"
    return "not measured"


def metric_bars_figure(
    candidates: Sequence[Mapping[str, Any]],
    key: str,
    *,
    title: str,
    unit: str = "",
    baseline: float | None = None,
    spread_keys: tuple[str, str] | None = None,
    baseline_spread: tuple[float, float] | None = None,
) -> go.Figure:
    """One bar per candidate for `key` (latency_ms, params, ...), the baseline as a dashed line.

    With `spread_keys` (low, high), e.g. ("latency_p25", "latency_p75"), each bar gets an error bar over that
    range; `baseline_spread` shades the baseline's range the same way.
    """
    rows = [c for c in candidates if c.get(key) is not None]
    error_y = None
    if spread_keys is not None:
        low, high = spread_keys
        error_y = {
            "type": "data",
            "symmetric": False,
            "color": "#333",
            "array": [max(0.0, (c.get(high) if c.get(high) is not None else c[key]) - c[key]) for c in rows],
            "arrayminus": [
                max(0.0, c[key] - (c.get(low) if c.get(low) is not None else c[key])) for c in rows
            ],
        }
    fig = go.Figure(
        go.Bar(
            x=[str(c.get("label", c.get("id"))) for c in rows],
            y=[c[key] for c in rows],
            marker_color="#4C78A8",
            error_y=error_y,
        )
    )
    if baseline_spread is not None:
        fig.add_hrect(
            y0=baseline_spread[0], y1=baseline_spread[1], fillcolor="#d62728", opacity=0.12, line_width=0
        )
    if baseline is not None:
        fig.add_hline(
            y=baseline,
            line_dash="dash",
            line_color="#d62728",
            annotation_text="baseline",
            annotation_position="top left",
            annotation_bgcolor="rgba(255,255,255,0.7)",
        )
    fig.update_layout(title=title, height=300, margin=_MARGIN, yaxis_title=unit, xaxis={"tickangle": -30})
    return fig


def kept_channels_figure(
    candidates: Sequence[Mapping[str, Any]], *, baseline_channels: Mapping[str, int]
) -> go.Figure:
    """Kept channels per group, candidates side by side, baseline channel counts as grey bars behind."""
    groups = list(baseline_channels)
    fig = go.Figure(
        go.Bar(x=groups, y=[baseline_channels[g] for g in groups], name="baseline", marker_color="#dddddd")
    )
    for i, c in enumerate(candidates):
        keep = c.get("keep") or {}
        fig.add_trace(
            go.Bar(
                x=groups,
                y=[keep.get(g, baseline_channels[g]) for g in groups],
                name=str(c.get("label", c.get("id"))),
                marker_color=QUALITATIVE[i % len(QUALITATIVE)],
            )
        )
    fig.update_layout(
        title="Kept channels per group",
        barmode="group",
        height=340,
        margin=_MARGIN,
        yaxis_title="channels",
        xaxis={"tickangle": -45, "tickfont": {"size": 9}},
        legend={"orientation": "h", "y": -0.35},
    )
    return fig
