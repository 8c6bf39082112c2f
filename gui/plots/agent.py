"""Figures of the Agent page: episode curves (one axis per quantity, smoothing, best marked), action bars,
embedding PCA, keep-ratio heatmap across episodes, and the episodes as CSV.

Pure functions on plain lists/dicts (what gui.jobs snapshots hold); no Streamlit, no engine.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """TensorBoard's smoothing: a debiased exponential moving average with `weight` in [0, 1) (0 = raw);
    None (an episode with no score) stays None and does not move the average."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out: list[float | None] = []
    last, n = 0.0, 0
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
            continue
        n += 1
        last = last * weight + (1.0 - weight) * float(v)
        out.append(last / (1.0 - weight**n))
    return out


def best_index(values: Sequence[float | None]) -> int | None:
    """Index of the largest value (the first one on ties), None when there is none."""
    best = None
    for i, v in enumerate(values):
        if (
            v is not None
            and not (isinstance(v, float) and math.isnan(v))
            and (best is None or v > values[best])
        ):
            best = i
    return best


def _differs(a: Sequence[float | None], b: Sequence[float | None]) -> bool:
    return any(
        x is not None and (y is None or abs(float(x) - float(y)) > 1e-9) for x, y in zip(a, b, strict=False)
    )


def episode_curves_figure(
    val_accs: Sequence[float | None],
    *,
    method_rewards: Sequence[float | None] | None = None,
    smoothing: float = 0.0,
    reward_title: str = "method reward",
    title: str = "Episodes",
) -> go.Figure:
    """Val top-1 % per episode (the common score) with best-so-far, the best episode starred; the method's own
    reward on its own axis below when it is not the same numbers. With `smoothing` > 0 the raw points are drawn
    faint and a smoothed line over them."""
    episodes = list(range(1, len(val_accs) + 1))
    two = (
        method_rewards is not None
        and any(r is not None for r in method_rewards)
        and _differs(method_rewards, val_accs)
    )
    fig = make_subplots(rows=2 if two else 1, cols=1, shared_xaxes=True, vertical_spacing=0.12)
    raw_style = {"opacity": 0.35} if smoothing > 0 else {}
    fig.add_trace(
        go.Scatter(
            x=episodes,
            y=list(val_accs),
            mode="lines+markers",
            name="val top-1 %",
            line={"color": "#4C78A8"},
            **raw_style,
        ),
        row=1,
        col=1,
    )
    if smoothing > 0:
        fig.add_trace(
            go.Scatter(
                x=episodes,
                y=smooth(val_accs, smoothing),
                mode="lines",
                name=f"val top-1 % (smoothed {smoothing:g})",
                line={"color": "#4C78A8", "width": 3},
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=episodes,
            y=best_so_far(val_accs),
            mode="lines",
            name="best so far",
            line={"dash": "dot", "color": "#54A24B"},
        ),
        row=1,
        col=1,
    )
    best = best_index(val_accs)
    if best is not None:
        fig.add_trace(
            go.Scatter(
                x=[best + 1],
                y=[val_accs[best]],
                mode="markers+text",
                name="best episode",
                text=[f"best: episode {best + 1}"],
                textposition="bottom center",
                marker={"symbol": "star", "size": 16, "color": "#E45756"},
            ),
            row=1,
            col=1,
        )
    fig.update_yaxes(title_text="val top-1 %", row=1, col=1)
    if two:
        rewards = list(method_rewards or [])
        fig.add_trace(
            go.Scatter(
                x=episodes,
                y=rewards,
                mode="lines+markers",
                name=reward_title,
                line={"color": "#F58518"},
                **raw_style,
            ),
            row=2,
            col=1,
        )
        if smoothing > 0:
            fig.add_trace(
                go.Scatter(
                    x=episodes,
                    y=smooth(rewards, smoothing),
                    mode="lines",
                    name=f"{reward_title} (smoothed)",
                    line={"color": "#F58518", "width": 3},
                ),
                row=2,
                col=1,
            )
        fig.update_yaxes(title_text=reward_title, row=2, col=1)
    fig.update_xaxes(title_text="episode", row=2 if two else 1, col=1)
    if len(episodes) <= 20:
        fig.update_xaxes(dtick=1)
    fig.update_layout(
        title=title, height=460 if two else 320, margin=_MARGIN, legend={"orientation": "h", "y": -0.2}
    )
    return fig


def episodes_csv(events: Sequence[Mapping[str, Any]], *, groups: Sequence[str] = ()) -> str:
    """The episodes as CSV: episode, val top-1 %, the method's reward, MACs kept, then one keep ratio per group."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["episode", "val_acc", "method_reward", "macs_ratio", *[f"keep:{g}" for g in groups]])
    for i, e in enumerate(events):
        keep = e.get("keep_ratios") or {}
        writer.writerow(
            [
                int(e.get("episode", i)) + 1,
                e.get("val_acc"),
                e.get("method_reward"),
                e.get("macs_ratio"),
                *[keep.get(g) for g in groups],
            ]
        )
    return buf.getvalue()


def reward_curve_figure(
    rewards: Sequence[float | None],
    *,
    val_accs: Sequence[float | None] | None = None,
    title: str = "Reward per episode",
) -> go.Figure:
    """Reward per episode with its best-so-far line; val accuracy (%) on a second axis when given."""
    episodes = list(range(1, len(rewards) + 1))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=episodes, y=list(rewards), mode="lines+markers", name="reward"))
    fig.add_trace(
        go.Scatter(x=episodes, y=best_so_far(rewards), mode="lines", name="best so far", line={"dash": "dot"})
    )
    if val_accs is not None and any(v is not None for v in val_accs):
        fig.add_trace(
            go.Scatter(
                x=episodes,
                y=list(val_accs),
                mode="markers",
                name="val top-1 %",
                yaxis="y2",
                marker={"symbol": "diamond"},
            )
        )
        fig.update_layout(yaxis2={"title": "val top-1 %", "overlaying": "y", "side": "right"})
    fig.update_layout(
        title=title,
        height=300,
        margin=_MARGIN,
        xaxis_title="episode",
        yaxis_title="reward",
        legend={"orientation": "h", "y": -0.25},
    )
    if len(episodes) <= 20:
        fig.update_xaxes(dtick=1)
    return fig


def action_bars_figure(
    actions: Mapping[str, float], *, title: str = "Last action (keep ratio per group)"
) -> go.Figure:
    """One bar per group: the keep ratio the agent just chose."""
    names = list(actions)
    fig = go.Figure(go.Bar(x=names, y=[float(actions[n]) for n in names], marker_color="#4C78A8"))
    fig.update_layout(
        title=title,
        height=280,
        margin=_MARGIN,
        yaxis={"range": [0, 1], "title": "keep ratio"},
        xaxis={"tickangle": -45, "tickfont": {"size": 9}},
    )
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


_STAGE_COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#B279A2", "#72B7B2", "#FF9DA6", "#9D755D")


def embedding_pca_figure(
    embeddings: Sequence[Sequence[float]],
    *,
    names: Sequence[str],
    stages: Sequence[Any],
    title: str = "Group embeddings (PCA)",
    label_limit: int = 40,
) -> go.Figure:
    """The GNN's per-group embeddings projected to 2-D (PCA), one distinct colour per stage; each point is
    labelled with its group's name (hover only above `label_limit` groups, where labels would pile up)."""
    xy = pca_2d(embeddings)
    fig = go.Figure()
    stage_list = [str(s) for s in stages]
    labelled = len(names) <= label_limit
    for k, stage in enumerate(sorted(set(stage_list), key=lambda s: (len(s), s))):
        idx = [i for i, s in enumerate(stage_list) if s == stage]
        fig.add_trace(
            go.Scatter(
                x=xy[idx, 0] if len(xy) else [],
                y=xy[idx, 1] if len(xy) else [],
                mode="markers+text" if labelled else "markers",
                name=f"stage {stage}",
                text=[names[i] for i in idx],
                textposition="top center",
                textfont={"size": 10},
                hoverinfo="text",
                marker={"size": 10, "color": _STAGE_COLOURS[k % len(_STAGE_COLOURS)]},
            )
        )
    fig.update_layout(
        title=title, height=340, margin=_MARGIN, xaxis_title="PC 1 (relative)", yaxis_title="PC 2 (relative)"
    )
    return fig


def keep_ratio_heatmap_figure(
    history: Sequence[Mapping[str, float]],
    *,
    groups: Sequence[str] | None = None,
    title: str = "Keep ratio per group across episodes",
    best_episode: int | None = None,
) -> go.Figure:
    """Heatmap: rows = groups, columns = episodes, colour = keep ratio (how the policy evolved); blank cells are
    episodes that produced no plan. `best_episode` (1-based) is outlined and labelled."""
    if groups is None:
        seen: dict[str, None] = {}
        for row in history:
            for g in row:
                seen.setdefault(g, None)
        groups = list(seen)
    z = [[(row.get(g) if row.get(g) is not None else None) for row in history] for g in groups]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(1, len(history) + 1)),
            y=list(groups),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": {"text": "keep"}},
        )
    )
    fig.update_layout(
        title=title,
        height=max(260, 14 * len(groups) + 80),
        margin=_MARGIN,
        xaxis_title="episode",
        yaxis={"tickfont": {"size": 9}, "autorange": "reversed"},
    )
    if len(history) <= 20:
        fig.update_xaxes(dtick=1)
    if best_episode is not None and 1 <= best_episode <= len(history):
        fig.add_shape(
            type="rect",
            x0=best_episode - 0.5,
            x1=best_episode + 0.5,
            y0=0,
            y1=1,
            yref="paper",
            line={"color": "#E45756", "width": 3},
        )
        fig.add_annotation(
            x=best_episode,
            y=1,
            yref="paper",
            yanchor="bottom",
            text="best",
            showarrow=False,
            font={"color": "#E45756"},
        )
    return fig
