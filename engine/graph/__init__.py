"""Model -> topology: op graph, coupled channel groups, multi-stage hierarchy, motifs, graph export.

Public API: build_topology, Topology, ChannelGroup, export_graph, to_node_link, conv_motif.
"""

from engine.graph.export import export_graph, to_node_link
from engine.graph.groups import ChannelGroup, MemberMap
from engine.graph.hierarchy import Block, Stage
from engine.graph.motif import conv_motif
from engine.graph.topology import Topology, build_topology

__all__ = [
    "Block",
    "ChannelGroup",
    "MemberMap",
    "Stage",
    "Topology",
    "build_topology",
    "conv_motif",
    "export_graph",
    "to_node_link",
]
