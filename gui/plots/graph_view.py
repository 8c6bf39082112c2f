"""Pure graph functions behind the Topology page: collapse an op graph by stage/block, lay it out, query it.

networkx in, networkx / dicts out; no plotly, no Streamlit, no engine calls. The op graph is the engine's
``Topology.graph`` (node attrs per CONTRACT.md: name, op, module, shapes, channels, params, macs, memory_bytes,
stage, block, ...); missing attributes are tolerated. Figures are drawn in gui.plots.topology.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

LEVELS = ("stages", "blocks", "layers")
DENSE_EDGE_RATIO = 1.5  # edges per node above which the layout uses the transitive reduction
DOT_EDGE_LIMIT = 1500  # above this, dot's crossing minimisation can take minutes: use the layered fallback


def as_float(value: Any) -> float:
    """A node attribute as a float (0.0 when missing or not a number)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(out) else out


def node_module(attrs: Mapping[str, Any], node: Any) -> str:
    """The module name of an op node (its qualified name; the node id when it is not a module call)."""
    return str(attrs.get("module") or attrs.get("name") or node)


def _stage_key(stage: Any) -> str:
    return (
        "stem/head" if stage is None or (isinstance(stage, (int, float)) and stage < 0) else f"stage {stage}"
    )


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
                key,
                label=key if kind != "op" else str(attrs.get("name") or node),
                kind=kind,
                op=kind if kind != "op" else str(attrs.get("op") or ""),
                members=[],
                modules=[],
                macs=0.0,
                params=0.0,
                memory_bytes=0.0,
                stage=attrs.get("stage"),
                block=block_for(attrs),
            )
        data = view.nodes[key]
        data["members"].append(str(node))
        module = node_module(attrs, node)
        if module not in data["modules"]:
            data["modules"].append(module)
        for attr in ("macs", "params", "memory_bytes"):
            data[attr] += as_float(attrs.get(attr))
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


def search_nodes(view: nx.DiGraph, query: str) -> list[str]:
    """View nodes whose label, op or any member module contains `query` (case-insensitive)."""
    q = query.strip().lower()
    if not q:
        return []
    hits = []
    for node, attrs in view.nodes(data=True):
        texts = [
            str(node),
            str(attrs.get("label", "")),
            str(attrs.get("op", "")),
            *map(str, attrs.get("modules", ())),
        ]
        if any(q in t.lower() for t in texts):
            hits.append(node)
    return hits


def group_nodes(view: nx.DiGraph, group_name: str | None, module_to_group: Mapping[str, str]) -> set[str]:
    """View nodes holding any module of the coupled group `group_name`."""
    if not group_name:
        return set()
    return {
        node
        for node, attrs in view.nodes(data=True)
        if any(module_to_group.get(m) == group_name for m in attrs.get("modules", ()))
    }


def node_details(graph: nx.DiGraph, view: nx.DiGraph, node: str) -> list[dict[str, Any]]:
    """One row per op under view node `node` with the attributes a person wants to read."""
    if node not in view:
        return []
    by_id = {str(n): n for n in graph.nodes}
    rows = []
    for member in view.nodes[node].get("members", ()):
        attrs = graph.nodes[by_id[member]] if member in by_id else {}
        row = {"node": member}
        for key in (
            "name",
            "op",
            "module",
            "in_shape",
            "out_shape",
            "in_channels",
            "out_channels",
            "kernel",
            "stride",
            "groups",
            "params",
            "macs",
            "memory_bytes",
            "prunable",
            "stage",
            "block",
        ):
            if key in attrs and attrs[key] is not None:
                value = attrs[key]
                row[key] = str(value) if isinstance(value, (tuple, list, dict, set)) else value
        rows.append(row)
    return rows
