"""A conv layer's motif subgraph as GNN-RL embeds it: input -> one node per input channel -> per-channel
kernel outputs -> one summed output node (2*c_in + 2 nodes, 3*c_in edges).

Only builds the small graph; embedding it is engine.rl's job.
"""

from __future__ import annotations

import networkx as nx


def conv_motif(
    in_channels: int, *, layer: str = "", kernel: tuple[int, ...] = (), depthwise: bool = False
) -> nx.DiGraph:
    """The motif of one conv filter over `in_channels` inputs.

    Args:
        in_channels: current (possibly pruned) input channels of the layer; at least 1.
        layer: the layer's module name, stored as a graph attribute.
        kernel: the kernel size, stored as a graph attribute.
        depthwise: a depthwise conv (same shape of motif; marked on the graph).

    Returns:
        A DiGraph with nodes 0 (input), 1..c (split), c+1..2c (kernel outputs), 2c+1 (sum).

    Raises:
        ValueError: `in_channels` < 1.
    """
    if in_channels < 1:
        raise ValueError(f"a motif needs in_channels >= 1, got {in_channels}")
    c = int(in_channels)
    motif = nx.DiGraph(layer=layer, kernel=tuple(kernel), depthwise=depthwise, in_channels=c)
    motif.add_node(0, role="input")
    motif.add_nodes_from(range(1, c + 1), role="channel")
    motif.add_nodes_from(range(c + 1, 2 * c + 1), role="kernel")
    motif.add_node(2 * c + 1, role="sum")
    for i in range(1, c + 1):
        motif.add_edge(0, i)
        motif.add_edge(i, c + i)
        motif.add_edge(c + i, 2 * c + 1)
    return motif
