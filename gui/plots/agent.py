"""Figures of the Agent page: reward curve, action bars, embedding PCA, keep-ratio heatmap across episodes.

Pure functions on plain lists/dicts (what gui.jobs snapshots hold); no Streamlit, no engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

_MARGIN = {"l": 10, "r": 10, "t": 36, "b": 10}


def best_so_far(values: Sequence[float | None]) -> list[float | None]:
    """Running maximum, skipping None."""
    out: list[float | None] = []
    best: float | None = None
    for v in values:
        if v is not None and (best is None or v > best):
            best = float(v)
        out.append(best)
    return out


def reward_curve_figure(rewards: Sequence[float | None], *, val_accs: Sequence[float | None] | None = None,
                        title: str = "Reward per episode") -> go.Figure:
    """Reward per episode with its best-so-far line; val accuracy (%) on a second axis when given."""
    episodes = list(range(1, len(rewards) + 1))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=episodes, y=list(rewards), mode="lines+markers", name="reward"))
    fig.add_trace(go.Scatter(x=episodes, y=best_so_far(rewards), mode="lines", name="best so far",
                             line={"dash": "dot"}))
    if val_accs is not None and any(v is not None for v in val_accs):
        fig.add_trace(go.Scatter(x=episodes, y=list(val_accs), mode="markers", name="val top-1 %", yaxis="y2",
                                 marker={"symbol": "diamond"}))
        fig.update_layout(yaxis2={"title": "val top-1 %", "overlaying": "y", "side": "right"})
    fig.update_layout(title=title, height=300, margin=_MARGIN, xaxis_title="episode", yaxis_title="reward",
                      legend={"orientation": "h", "y": -0.25})
    if len(episodes) <= 20:
        fig.update_xaxes(dtick=1)
    return fig


def action_bars_figure(actions: Mapping[str, float], *, title: str = "Last action (keep ratio per group)") -> go.Figure:
    """One bar per group: the keep ratio the agent just chose."""
    names = list(actions)
    fig = go.Figure(go.Bar(x=names, y=[float(actions[n]) for n in names], marker_color="#4C78A8"))
    fig.update_layout(title=title, height=280, margin=_MARGIN, yaxis={"range": [0, 1], "title": "keep ratio"},
                      xaxis={"tickangle": -45, "tickfont": {"size": 9}})
    return fig


def pca_2d(x: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Rows of `x` projected on their first two principal components, shape (n, 2) (zeros pad a rank < 2)."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return np.zeros((0, 2))
    centred = arr - arr.mean(axis=0, keepdims=True)  # (n, dim)
    if arr.shape[0] == 1:
        return np.zeros((1, 2))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2].T  # (dim, <=2)
    out = centred @ comps  # (n, <=2)
    if out.shape[1] < 2:
        out = np.hstack([out, np.zeros((out.shape[0], 2 - out.shape[1]))])
    # fix the sign so the picture does not flip between episodes
    for j in range(2):
        if out[:, j].size and out[np.argmax(np.abs(out[:, j])), j] < 0:
            out[:, j] *= -1
    return out


def embedding_pca_figure(embeddings: Sequence[Sequence[float]], *, names: Sequence[str],
                         stages: Sequence[Any]) -> go.Figure:
    """The GNN's per-group embeddings projected to 2-D (PCA), one colour per stage."""
    xy = pca_2d(embeddings)
    fig = go.Figure()
    stage_list = [str(s) for s in stages]
    for stage in sorted(set(stage_list), key=lambda s: (len(s), s)):
        idx = [i for i, s in enumerate(stage_list) if s == stage]
        fig.add_trace(go.Scatter(x=xy[idx, 0] if len(xy) else [], y=xy[idx, 1] if len(xy) else [],
                                 mode="markers", name=f"stage {stage}", text=[names[i] for i in idx],
                                 hoverinfo="text", marker={"size": 10}))
    fig.update_layout(title="Group embeddings (PCA)", height=300, margin=_MARGIN, xaxis_title="PC 1",
                      yaxis_title="PC 2")
    return fig


def keep_ratio_heatmap_figure(history: Sequence[Mapping[str, float]], *, groups: Sequence[str] | None = None,
                              title: str = "Keep ratio per group across episodes") -> go.Figure:
    """Heatmap: rows = groups, columns = episodes, colour = keep ratio (how the policy evolved)."""
    if groups is None:
        seen: dict[str, None] = {}
        for row in history:
            for g in row:
                seen.setdefault(g, None)
        groups = list(seen)
    z = [[(row.get(g) if row.get(g) is not None else None) for row in history] for g in groups]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(1, len(history) + 1)), y=list(groups), zmin=0, zmax=1,
                               colorscale="Viridis", colorbar={"title": {"text": "keep"}}))
    fig.update_layout(title=title, height=max(260, 14 * len(groups) + 80), margin=_MARGIN, xaxis_title="episode",
                      yaxis={"tickfont": {"size": 9}, "autorange": "reversed"})
    if len(history) <= 20:
        fig.update_xaxes(dtick=1)
    return fig
