"""Pure figure builders for the Topology page (and the Agent's state graph): the op graph as a plotly figure.

Data in (a view from gui.plots.graph_view, its positions, colour values), go.Figure out; no Streamlit, no
engine calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import plotly.graph_objects as go

from gui.plots.graph_view import as_float

METRICS = ("op type", "MACs", "params", "activation memory", "sensitivity", "keep ratio", "coupled group")
NUMERIC_ATTRS = {"MACs": "macs", "params": "params", "activation memory": "memory_bytes"}
WEBGL_NODE_LIMIT = 1200  # SVG Scatter stays clickable and crisp up to about here
LABEL_NODE_LIMIT = 120  # draw text labels only when they can be read
PX_PER_POINT = 1.6  # screen pixels per Graphviz point at the initial zoom
VISIBLE_WIDTH_PX = 1100.0
QUALITATIVE = (
    "#4C78A8",
    "#F58518",
    "#54A24B",
    "#E45756",
    "#72B7B2",
    "#EECA3B",
    "#B279A2",
    "#FF9DA6",
    "#9D755D",
    "#BAB0AC",
    "#1F77B4",
    "#2CA02C",
    "#D62728",
    "#9467BD",
    "#8C564B",
    "#17BECF",
)


def node_values(
    view: nx.DiGraph,
    metric: str,
    *,
    module_to_group: Mapping[str, str] | None = None,
    group_values: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Colour value of every view node for `metric` (see METRICS); None where a node has no value.

    numeric metrics sum over members; group metrics ("sensitivity", "keep ratio") take the group value of the
    node's modules (max for sensitivity, min for keep ratio over a collapsed node); "op type" and
    "coupled group" are categorical (strings).

    Raises:
        ValueError: unknown metric.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    module_to_group = module_to_group or {}
    out: dict[str, Any] = {}
    for node, attrs in view.nodes(data=True):
        if metric == "op type":
            out[node] = attrs.get("op") or "op"
        elif metric in NUMERIC_ATTRS:
            out[node] = as_float(attrs.get(NUMERIC_ATTRS[metric]))
        else:
            groups = [module_to_group[m] for m in attrs.get("modules", ()) if m in module_to_group]
            if metric == "coupled group":
                out[node] = groups[0] if len(set(groups)) == 1 else ("several" if groups else None)
                continue
            values = [float(group_values[g]) for g in groups if group_values and g in group_values]
            if not values:
                out[node] = None
            else:
                out[node] = max(values) if metric == "sensitivity" else min(values)
    return out


def node_from_event(event: Any) -> str | None:
    """The node id of the first clicked point in a plotly selection event (st.plotly_chart on_select)."""
    if event is None:
        return None
    selection = event.get("selection") if isinstance(event, Mapping) else getattr(event, "selection", None)
    if selection is None:
        return None
    points = selection.get("points") if isinstance(selection, Mapping) else getattr(selection, "points", None)
    for point in points or ():
        custom = point.get("customdata") if isinstance(point, Mapping) else None
        if custom is None:
            continue
        return str(custom[0] if isinstance(custom, (list, tuple)) else custom)
    return None


def _fmt(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _hover(node: str, attrs: Mapping[str, Any], value: Any, metric: str) -> str:
    lines = [f"<b>{attrs.get('label', node)}</b>", f"{attrs.get('kind', 'op')}: {attrs.get('op', '')}"]
    if attrs.get("kind") != "op":
        lines.append(f"{len(attrs.get('members', ()))} ops")
    lines.append(f"MACs {_fmt(as_float(attrs.get('macs')))} · params {_fmt(as_float(attrs.get('params')))}")
    if metric not in ("MACs", "params", "op type") and value is not None:
        lines.append(f"{metric}: {value:.3g}" if isinstance(value, float) else f"{metric}: {value}")
    return "<br>".join(lines)


def topology_figure(
    view: nx.DiGraph,
    pos: Mapping[str, tuple[float, float]],
    *,
    values: Mapping[str, Any] | None = None,
    metric: str = "op type",
    highlight: Iterable[str] = (),
    matches: Iterable[str] = (),
    selected: str | None = None,
    height_px: int | None = None,
) -> go.Figure:
    """The topology as a plotly figure: edges in one trace, nodes coloured by `values`, overlays on top.

    Traces in order: edges, nodes (customdata = node id, what a click returns), nodes without a value (grey),
    coupled-group highlight, search matches, selected node. SVG Scatter up to WEBGL_NODE_LIMIT nodes, Scattergl above.
    """
    nodes = [n for n in view.nodes if n in pos]
    values = values or {}
    scatter = go.Scattergl if len(nodes) > WEBGL_NODE_LIMIT else go.Scatter
    ex: list[float | None] = []
    ey: list[float | None] = []
    for u, v in view.edges:
        if u in pos and v in pos:
            ex += [pos[u][0], pos[v][0], None]
            ey += [pos[u][1], pos[v][1], None]
    traces: list[Any] = [
        scatter(
            x=ex, y=ey, mode="lines", hoverinfo="skip", line={"color": "#b8b8b8", "width": 1}, name="edges"
        )
    ]
    xs = [pos[n][0] for n in nodes]
    ys = [pos[n][1] for n in nodes]
    raw = [values.get(n) for n in nodes]
    numeric = all(v is None or isinstance(v, (int, float)) for v in raw) and any(v is not None for v in raw)
    marker: dict[str, Any] = {
        "size": 13 if len(nodes) < 300 else 9,
        "symbol": "square",
        "line": {"width": 0.5, "color": "#444"},
    }
    missing = [n for n, v in zip(nodes, raw, strict=True) if v is None] if numeric else []
    if numeric:
        low = min(v for v in raw if v is not None)
        marker.update(
            color=[v if v is not None else low for v in raw],
            colorscale="Viridis",
            showscale=True,
            colorbar={"title": {"text": metric, "side": "right"}, "thickness": 12},
            opacity=[0.0 if v is None else 1.0 for v in raw],  # nodes without a value are drawn grey below
        )
        if metric == "keep ratio":
            marker.update(cmin=0.0, cmax=1.0)
    else:
        cats = sorted({str(v) for v in raw if v is not None})
        palette = {c: QUALITATIVE[i % len(QUALITATIVE)] for i, c in enumerate(cats)}
        marker["color"] = [palette.get(str(v), "#dddddd") if v is not None else "#dddddd" for v in raw]
    attrs = view.nodes
    show_text = len(nodes) <= LABEL_NODE_LIMIT
    traces.append(
        scatter(
            x=xs,
            y=ys,
            mode="markers+text" if show_text else "markers",
            marker=marker,
            text=[short_label(attrs[n], n) for n in nodes] if show_text else None,
            textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(nodes))],
            textfont={"size": 10},
            customdata=[[n] for n in nodes],
            hovertext=[_hover(n, attrs[n], values.get(n), metric) for n in nodes],
            hoverinfo="text",
            name="nodes",
            unselected={"marker": {"opacity": 1.0}},
        )
    )
    traces.append(
        scatter(
            x=[pos[n][0] for n in missing],
            y=[pos[n][1] for n in missing],
            mode="markers",
            marker={
                "symbol": "square",
                "size": marker["size"],
                "color": "#d9d9d9",
                "line": {"width": 0.5, "color": "#888"},
            },
            hoverinfo="skip",
            name="no value",
        )
    )
    for name, members, style in (
        (
            "coupled group",
            highlight,
            {"size": 21, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "#ff7f0e"}},
        ),
        (
            "search",
            matches,
            {
                "size": 25,
                "color": "rgba(0,0,0,0)",
                "line": {"width": 2, "color": "#d62728"},
                "symbol": "circle",
            },
        ),
    ):
        members = [n for n in members if n in pos]
        traces.append(
            scatter(
                x=[pos[n][0] for n in members],
                y=[pos[n][1] for n in members],
                mode="markers",
                marker={"symbol": "square", **style},
                hoverinfo="skip",
                name=name,
            )
        )
    sel = [selected] if selected in pos else []
    traces.append(
        scatter(
            x=[pos[n][0] for n in sel],
            y=[pos[n][1] for n in sel],
            mode="markers",
            marker={"symbol": "star", "size": 20, "color": "#d62728"},
            hoverinfo="skip",
            name="selected",
        )
    )
    fig = go.Figure(traces)
    if height_px is None:
        y_span = (max(ys) - min(ys)) if ys else 0.0
        height_px = int(min(720, max(280, 140 + y_span * PX_PER_POINT)))
    fig.update_layout(
        clickmode="event+select",
        dragmode="pan",
        showlegend=False,
        height=height_px,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        plot_bgcolor="white",
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    if xs:
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        fig.update_yaxes(range=[y0 - 30, y1 + 30])
        window = VISIBLE_WIDTH_PX / PX_PER_POINT
        if x1 - x0 > window * 1.3:  # long networks: start at the input end, pan along
            fig.update_xaxes(range=[x0 - 30, x0 + window])
        else:
            fig.update_xaxes(range=[x0 - 30, x1 + 30])
    return fig


def short_label(attrs: Mapping[str, Any], node: str) -> str:
    """Text drawn next to a node: a collapsed node's full name, an op's module tail (conv1, bn2, add)."""
    if attrs.get("kind") in ("block", "stage"):
        label = str(attrs.get("label", node))
        tail = ".".join(label.split(".")[-2:])
        return tail if len(tail) <= 14 else label.split(".")[-1][:14]
    modules = attrs.get("modules") or [node]
    return str(modules[0]).split(".")[-1][:12]


def sensitivity_curve_figure(
    keep_ratios: Iterable[float], val_acc: Iterable[float], *, base_acc: float | None, title: str
) -> go.Figure:
    """Val accuracy of one group against its keep ratio, the unpruned accuracy dashed."""
    ks = [1.0, *list(keep_ratios)] if base_acc is not None else list(keep_ratios)
    accs = [base_acc, *list(val_acc)] if base_acc is not None else list(val_acc)
    fig = go.Figure(go.Scatter(x=ks, y=accs, mode="lines+markers", name=title))
    if base_acc is not None:
        fig.add_hline(y=base_acc, line_dash="dash", line_color="#888")
    fig.update_layout(
        height=240,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=title,
        xaxis_title="keep ratio",
        yaxis_title="val top-1 %",
    )
    fig.update_xaxes(autorange="reversed")
    return fig
