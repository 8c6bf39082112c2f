"""Pure builders for the Topology page: collapse an op graph by stage/block, lay it out, draw it.

Data in, networkx / dicts / go.Figure out; no Streamlit here, no engine calls. The op graph is the
engine's ``Topology.graph`` (nx.DiGraph, node attrs per CONTRACT.md: name, op, module, shapes, channels,
params, macs, memory_bytes, stage, block, ...); missing attributes are tolerated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import plotly.graph_objects as go

LEVELS = ("stages", "blocks", "layers")
METRICS = ("op type", "MACs", "params", "activation memory", "sensitivity", "keep ratio", "coupled group")
NUMERIC_ATTRS = {"MACs": "macs", "params": "params", "activation memory": "memory_bytes"}
DENSE_EDGE_RATIO = 1.5  # edges per node above which the layout uses the transitive reduction
DOT_EDGE_LIMIT = 1500  # above this, dot's crossing minimisation can take minutes: use the layered fallback
WEBGL_NODE_LIMIT = 1200  # SVG Scatter stays clickable and crisp up to about here
LABEL_NODE_LIMIT = 120  # draw text labels only when they can be read
PX_PER_POINT = 1.6  # screen pixels per Graphviz point at the initial zoom
VISIBLE_WIDTH_PX = 1100.0
QUALITATIVE = (
    "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D",
    "#BAB0AC", "#1F77B4", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#17BECF",
)


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(out) else out


def node_module(attrs: Mapping[str, Any], node: Any) -> str:
    """The module name of an op node (its qualified name; the node id when it is not a module call)."""
    return str(attrs.get("module") or attrs.get("name") or node)


def _stage_key(stage: Any) -> str:
    return "stem/head" if stage is None or (isinstance(stage, (int, float)) and stage < 0) else f"stage {stage}"


def _block_of(attrs: Mapping[str, Any]) -> str | None:
    block = attrs.get("block")
    return str(block) if block not in (None, "") else None


def collapse_graph(graph: nx.DiGraph, *, level: str = "blocks", expanded: Iterable[str] = ()) -> nx.DiGraph:
    """The op graph collapsed to stages, blocks, or left at layers; `expanded` names collapsed nodes to open.

    Every returned node has: label, kind ("op" | "block" | "stage"), op, members (op node ids), modules,
    macs, params, memory_bytes (sums over members), stage, block. Node ids are strings.

    Raises:
        ValueError: `level` is not one of LEVELS.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    expanded = set(expanded)
    known_blocks = {b for _, a in graph.nodes(data=True) if (b := _block_of(a)) is not None}

    def block_for(attrs: Mapping[str, Any]) -> str | None:
        block = _block_of(attrs)
        scope = attrs.get("scope")
        if block is None and scope:  # e.g. a residual add traced at its block's own scope
            for b in known_blocks:
                if scope == b or str(scope).startswith(b + "."):
                    return b
        return block

    def key_of(node: Any, attrs: Mapping[str, Any]) -> tuple[str, str]:
        block = block_for(attrs)
        if level == "stages":
            stage_key = _stage_key(attrs.get("stage"))
            if stage_key not in expanded:
                return stage_key, "stage"
        if level in ("stages", "blocks") and block is not None and block not in expanded:
            return block, "block"
        return str(node), "op"

    view = nx.DiGraph()
    owner: dict[Any, str] = {}
    for node, attrs in graph.nodes(data=True):
        key, kind = key_of(node, attrs)
        owner[node] = key
        if key not in view:
            view.add_node(
                key, label=key if kind != "op" else str(attrs.get("name") or node), kind=kind,
                op=kind if kind != "op" else str(attrs.get("op") or ""), members=[], modules=[], macs=0.0,
                params=0.0, memory_bytes=0.0, stage=attrs.get("stage"), block=block_for(attrs),
            )
        data = view.nodes[key]
        data["members"].append(str(node))
        module = node_module(attrs, node)
        if module not in data["modules"]:
            data["modules"].append(module)
        for attr in ("macs", "params", "memory_bytes"):
            data[attr] += _num(attrs.get(attr))
    for u, v in graph.edges():
        a, b = owner[u], owner[v]
        if a != b:
            view.add_edge(a, b)
    return view


def _layered_positions(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Fallback layout: x = longest-path depth, y = lane within that depth (used above DOT_EDGE_LIMIT)."""
    depth: dict[Any, int] = {}
    order = list(nx.topological_sort(graph)) if nx.is_directed_acyclic_graph(graph) else list(graph.nodes)
    for node in order:
        preds = [depth[p] for p in graph.predecessors(node) if p in depth]
        depth[node] = 1 + max(preds) if preds else 0
    lanes: dict[int, int] = {}
    pos = {}
    for node in order:
        d = depth[node]
        lane = lanes.get(d, 0)
        lanes[d] = lane + 1
        pos[node] = (float(d) * 60.0, -float(lane) * 40.0)
    return pos


def layout_skeleton(graph: nx.DiGraph) -> nx.DiGraph:
    """The edges that shape the layout: a dense DAG (DenseNet's concats) is laid out on its transitive reduction.

    An edge u -> w that is implied by a longer path u -> ... -> w adds nothing to the left-to-right order but
    makes dot's crossing minimisation explode (DenseNet-121's block view: 10 s -> 0.02 s). Sparse graphs (ResNet
    skips, which already have a node on each lane) are kept as they are. Every edge is still drawn.
    """
    if graph.number_of_edges() <= DENSE_EDGE_RATIO * graph.number_of_nodes():
        return graph
    if not nx.is_directed_acyclic_graph(graph):
        return graph
    return nx.transitive_reduction(graph)


def layout_positions(graph: nx.DiGraph, *, rankdir: str = "LR") -> dict[str, tuple[float, float]]:
    """Node -> (x, y) from Graphviz `dot` (left to right: residual branches become parallel lanes).

    Falls back to a layered layout when pygraphviz is missing or the graph has over DOT_EDGE_LIMIT edges.
    """
    if graph.number_of_nodes() == 0:
        return {}
    graph = layout_skeleton(graph)
    if graph.number_of_edges() > DOT_EDGE_LIMIT:
        return _layered_positions(graph)
    try:
        import pygraphviz
    except ImportError:
        return _layered_positions(graph)
    names = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    agraph = pygraphviz.AGraph(directed=True, strict=False)
    agraph.graph_attr.update(rankdir=rankdir, nodesep="0.15", ranksep="0.3")
    agraph.node_attr.update(shape="box", width="0.35", height="0.25", fixedsize="true", label="")
    for node in graph.nodes:
        agraph.add_node(names[node])
    for u, v in graph.edges:
        agraph.add_edge(names[u], names[v])
    agraph.layout(prog="dot")
    pos = {}
    for node, name in names.items():
        x, y = agraph.get_node(name).attr["pos"].split(",")[:2]
        pos[node] = (float(x), float(y))
    return pos


def module_groups(groups: Iterable[Any]) -> dict[str, str]:
    """Module name -> name of the channel group whose output channels it produces/carries ("out" members).

    `groups` are the engine's ChannelGroup objects (or anything with ``name`` and ``members``).
    """
    out: dict[str, str] = {}
    for group in groups:
        for member in getattr(group, "members", ()):
            module, side = (member[0], member[1]) if isinstance(member, (tuple, list)) else (member, "out")
            if side == "out":
                out.setdefault(str(module), str(group.name))
    return out


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
            out[node] = _num(attrs.get(NUMERIC_ATTRS[metric]))
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


def search_nodes(view: nx.DiGraph, query: str) -> list[str]:
    """View nodes whose label, op or any member module contains `query` (case-insensitive)."""
    q = query.strip().lower()
    if not q:
        return []
    hits = []
    for node, attrs in view.nodes(data=True):
        texts = [str(node), str(attrs.get("label", "")), str(attrs.get("op", "")), *map(str, attrs.get("modules", ()))]
        if any(q in t.lower() for t in texts):
            hits.append(node)
    return hits


def group_nodes(view: nx.DiGraph, group_name: str | None, module_to_group: Mapping[str, str]) -> set[str]:
    """View nodes holding any module of the coupled group `group_name`."""
    if not group_name:
        return set()
    return {
        node for node, attrs in view.nodes(data=True)
        if any(module_to_group.get(m) == group_name for m in attrs.get("modules", ()))
    }


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
    lines.append(f"MACs {_fmt(_num(attrs.get('macs')))} · params {_fmt(_num(attrs.get('params')))}")
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
        scatter(x=ex, y=ey, mode="lines", hoverinfo="skip", line={"color": "#b8b8b8", "width": 1}, name="edges")
    ]
    xs = [pos[n][0] for n in nodes]
    ys = [pos[n][1] for n in nodes]
    raw = [values.get(n) for n in nodes]
    numeric = all(v is None or isinstance(v, (int, float)) for v in raw) and any(v is not None for v in raw)
    marker: dict[str, Any] = {"size": 13 if len(nodes) < 300 else 9, "symbol": "square",
                              "line": {"width": 0.5, "color": "#444"}}
    missing = [n for n, v in zip(nodes, raw, strict=True) if v is None] if numeric else []
    if numeric:
        low = min(v for v in raw if v is not None)
        marker.update(
            color=[v if v is not None else low for v in raw], colorscale="Viridis", showscale=True,
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
            x=xs, y=ys, mode="markers+text" if show_text else "markers", marker=marker,
            text=[short_label(attrs[n], n) for n in nodes] if show_text else None,
            textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(nodes))],
            textfont={"size": 10},
            customdata=[[n] for n in nodes], hovertext=[_hover(n, attrs[n], values.get(n), metric) for n in nodes],
            hoverinfo="text", name="nodes", unselected={"marker": {"opacity": 1.0}},
        )
    )
    traces.append(scatter(x=[pos[n][0] for n in missing], y=[pos[n][1] for n in missing], mode="markers",
                          marker={"symbol": "square", "size": marker["size"], "color": "#d9d9d9",
                                  "line": {"width": 0.5, "color": "#888"}}, hoverinfo="skip", name="no value"))
    for name, members, style in (
        ("coupled group", highlight, {"size": 21, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "#ff7f0e"}}),
        ("search", matches, {"size": 25, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "#d62728"},
                             "symbol": "circle"}),
    ):
        members = [n for n in members if n in pos]
        traces.append(scatter(x=[pos[n][0] for n in members], y=[pos[n][1] for n in members], mode="markers",
                              marker={"symbol": "square", **style}, hoverinfo="skip", name=name))
    sel = [selected] if selected in pos else []
    traces.append(scatter(x=[pos[n][0] for n in sel], y=[pos[n][1] for n in sel], mode="markers",
                          marker={"symbol": "star", "size": 20, "color": "#d62728"}, hoverinfo="skip",
                          name="selected"))
    fig = go.Figure(traces)
    if height_px is None:
        y_span = (max(ys) - min(ys)) if ys else 0.0
        height_px = int(min(720, max(280, 140 + y_span * PX_PER_POINT)))
    fig.update_layout(
        clickmode="event+select", dragmode="pan", showlegend=False, height=height_px,
        margin={"l": 10, "r": 10, "t": 10, "b": 10}, plot_bgcolor="white",
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


def node_details(graph: nx.DiGraph, view: nx.DiGraph, node: str) -> list[dict[str, Any]]:
    """One row per op under view node `node` with the attributes a person wants to read."""
    if node not in view:
        return []
    by_id = {str(n): n for n in graph.nodes}
    rows = []
    for member in view.nodes[node].get("members", ()):
        attrs = graph.nodes[by_id[member]] if member in by_id else {}
        row = {"node": member}
        for key in ("name", "op", "module", "in_shape", "out_shape", "in_channels", "out_channels", "kernel",
                    "stride", "groups", "params", "macs", "memory_bytes", "prunable", "stage", "block"):
            if key in attrs and attrs[key] is not None:
                value = attrs[key]
                row[key] = str(value) if isinstance(value, (tuple, list, dict, set)) else value
        rows.append(row)
    return rows


def sensitivity_curve_figure(keep_ratios: Iterable[float], val_acc: Iterable[float], *, base_acc: float | None,
                             title: str) -> go.Figure:
    """Val accuracy of one group against its keep ratio, the unpruned accuracy dashed."""
    ks = [1.0, *list(keep_ratios)] if base_acc is not None else list(keep_ratios)
    accs = [base_acc, *list(val_acc)] if base_acc is not None else list(val_acc)
    fig = go.Figure(go.Scatter(x=ks, y=accs, mode="lines+markers", name=title))
    if base_acc is not None:
        fig.add_hline(y=base_acc, line_dash="dash", line_color="#888")
    fig.update_layout(height=240, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title=title,
                      xaxis_title="keep ratio", yaxis_title="val top-1 %")
    fig.update_xaxes(autorange="reversed")
    return fig
