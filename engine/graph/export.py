"""Write a Topology's op graph as node-link JSON or GraphML (for `topoprune graph --export`).

GraphML allows only scalar attributes, so tuples and lists are written as JSON strings there. Reading
graphs back in is left to networkx.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

if TYPE_CHECKING:
    from engine.graph.topology import Topology

FORMATS = (".json", ".graphml")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_node_link(topology: Topology) -> dict:
    """The op graph plus groups and stages as one JSON-ready dict (networkx node-link layout)."""
    graph = nx.DiGraph()
    for node, data in topology.graph.nodes(data=True):
        graph.add_node(node, **{k: _plain(v) for k, v in data.items()})
    graph.add_edges_from(topology.graph.edges())
    data = nx.node_link_data(graph, edges="edges")
    data["model"] = topology.model_name
    data["input_shape"] = list(topology.input_shape)
    data["groups"] = [
        {
            "index": g.index,
            "name": g.name,
            "channels": g.channels,
            "prunable": g.prunable,
            "stage": g.stage,
            "block": g.block,
            "members": [list(m) for m in g.members],
            "macs_per_channel": g.macs_per_channel,
            "params_per_channel": g.params_per_channel,
            "memory_bytes_per_channel": g.memory_bytes_per_channel,
            "reason": g.reason,
        }
        for g in topology.groups
    ]
    data["stages"] = [
        {"index": s.index, "resolution": _plain(s.resolution), "blocks": s.blocks, "layers": s.layers}
        for s in topology.stages
    ]
    return data


def _graphml_value(value):
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(_plain(value))


def export_graph(topology: Topology, path: str | Path) -> Path:
    """Write the op graph to `path`: node-link JSON (.json) or GraphML (.graphml).

    Raises:
        ValueError: the file suffix is neither .json nor .graphml.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot export a graph to {path.name!r}: use a .json or .graphml file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(json.dumps(to_node_link(topology), indent=1))
        return path
    graph = nx.DiGraph(model=topology.model_name)
    for node, data in topology.graph.nodes(data=True):
        graph.add_node(node, **{k: _graphml_value(v) for k, v in data.items()})
    graph.add_edges_from(topology.graph.edges())
    nx.write_graphml(graph, path)
    return path
