"""Encoders that turn a pruning state into per-group and whole-network embeddings.

`MultiStageGNN` is GNN-RL's multi-stage encoder: stage 1 embeds every conv layer's motif graph (GCN + mean
pooling), stage 2 passes messages over the network graph whose edges are operations (message = x_j * e_ij,
e_ij = the stage-1 embedding of the conv on that edge, or a learned embedding of a non-conv op's structural
features). `GroupFeatureEncoder` is the no-GNN ablation over AMC-style per-group features. Both read a
`MultiStageData` (built by `engine.rl.features`) and batch correctly with `torch_geometric.data.Batch`.
This module builds no graphs and knows nothing about RL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv, MessagePassing
from torch_geometric.utils import scatter

__all__ = [
    "MOTIF_FEATURES",
    "NODE_FEATURES",
    "GROUP_FEATURES",
    "MultiStageData",
    "EncoderOutput",
    "MultiStageGNN",
    "GroupFeatureEncoder",
    "build_encoder",
]

# Feature widths; engine.rl.features fills tensors of exactly these widths.
MOTIF_FEATURES = 10
NODE_FEATURES = 22
GROUP_FEATURES = 11


class MultiStageData(Data):
    """One pruning state as a PyG `Data` that batches its two stages and its groups consistently.

    Attributes (per graph; `Batch.from_data_list` offsets every index field):
        x: (num_nodes, NODE_FEATURES) stage-2 node (feature-map) features.
        edge_index: (2, num_edges) stage-2 edges; each edge is one operation.
        edge_attr: (num_edges, NODE_FEATURES) structural features of the edge's operation.
        conv_edge: (num_conv_edges,) indices of the stage-2 edges that are conv layers.
        conv_edge_motif: (num_conv_edges,) the motif graph (conv layer) of each of those edges.
        motif_x: (num_motif_nodes, MOTIF_FEATURES) stage-1 node features of all motif graphs.
        motif_edge_index: (2, num_motif_edges) stage-1 edges.
        motif_batch: (num_motif_nodes,) motif graph of each stage-1 node.
        motif_graph: (num_motifs,) zeros; becomes the graph index of each motif after batching.
        group_node: (num_memberships,) stage-2 nodes that belong to a channel group.
        group_member: (num_memberships,) the group of each of those nodes.
        group_graph: (num_groups,) zeros; becomes the graph index of each group after batching.
        group_x: (num_groups, GROUP_FEATURES) AMC-style per-group features (the ablation's state).
    """

    def __inc__(self, key: str, value, *args, **kwargs):  # noqa: ANN001
        if key == "motif_edge_index":
            return self.motif_x.size(0)
        if key in ("motif_batch", "conv_edge_motif"):
            return self.motif_graph.numel()
        if key == "conv_edge":
            return self.edge_index.size(1)
        if key == "group_node":
            return self.x.size(0)
        if key == "group_member":
            return self.group_graph.numel()
        if key in ("motif_graph", "group_graph"):
            return 1
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value, *args, **kwargs):  # noqa: ANN001
        if key == "motif_edge_index":
            return -1
        return super().__cat_dim__(key, value, *args, **kwargs)


@dataclass
class EncoderOutput:
    """What an encoder returns for a (batched) state.

    Attributes:
        graph_embedding: (num_graphs, dim) one vector per network.
        group_embeddings: (num_groups_total, dim) one vector per channel group, graphs concatenated.
        group_graph: (num_groups_total,) the graph index of each group.
    """

    graph_embedding: Tensor
    group_embeddings: Tensor
    group_graph: Tensor


def _num_graphs(data: Data) -> int:
    return int(data.num_graphs) if hasattr(data, "num_graphs") and data.num_graphs is not None else 1


class OperationConv(MessagePassing):
    """Stage-2 layer: h_i' = tanh(W * sum_j norm_ij * (x_j * e_ij)), self-loops carry e = 1.

    Normalisation is symmetric over in-degree (with self-loops), as in the paper's released encoder.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(aggr="add")
        self.lin = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_emb: Tensor) -> Tensor:
        n = x.size(0)
        loops = torch.arange(n, device=x.device)
        edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
        edge_emb = torch.cat([edge_emb, torch.ones(n, edge_emb.size(1), dtype=x.dtype)], dim=0)
        deg = scatter(torch.ones(edge_index.size(1), dtype=x.dtype), edge_index[1], dim=0, dim_size=n)
        inv_sqrt = deg.pow(-0.5)
        norm = inv_sqrt[edge_index[0]] * inv_sqrt[edge_index[1]]  # (edges,)
        out = self.propagate(edge_index, x=x, edge_emb=edge_emb, norm=norm)
        return torch.tanh(self.lin(out))

    def message(self, x_j: Tensor, edge_emb: Tensor, norm: Tensor) -> Tensor:  # type: ignore[override]
        return norm.unsqueeze(-1) * x_j * edge_emb


class MultiStageGNN(nn.Module):
    """GNN-RL's two-stage encoder, correctly batched (one embedding per graph in the batch).

    Args:
        dim: width of operation embeddings, node states and the output embeddings.
        motif_hidden: width of the stage-1 GCN.
        num_layers: stage-2 message-passing layers (the paper uses 1; more widen each group's view).
    """

    kind = "gnn"

    def __init__(self, *, dim: int = 32, motif_hidden: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be >= 1")
        self.dim = dim
        self.motif_conv = GCNConv(MOTIF_FEATURES, motif_hidden)
        self.motif_out = nn.Linear(motif_hidden, dim)
        self.op_embed = nn.Linear(NODE_FEATURES, dim)  # non-conv operations: learned, never random
        self.node_in = nn.Linear(NODE_FEATURES, dim)
        self.layers = nn.ModuleList(OperationConv(dim, dim) for _ in range(num_layers))
        self.graph_out = nn.Linear(dim, dim)

    def embed_motifs(self, data: Data) -> Tensor:
        """Stage 1: one embedding per motif graph, (num_motifs, dim)."""
        n_motifs = data.motif_graph.numel()
        h = torch.tanh(self.motif_conv(data.motif_x, data.motif_edge_index))  # (motif_nodes, hidden)
        pooled = scatter(h, data.motif_batch, dim=0, dim_size=n_motifs, reduce="mean")  # (motifs, hidden)
        return torch.tanh(self.motif_out(pooled))

    def forward(self, data: Data) -> EncoderOutput:
        motif_emb = self.embed_motifs(data)  # (motifs, dim)
        edge_emb = torch.tanh(self.op_embed(data.edge_attr))  # (edges, dim)
        if data.conv_edge.numel():
            edge_emb = edge_emb.index_copy(0, data.conv_edge, motif_emb[data.conv_edge_motif])
        h = torch.tanh(self.node_in(data.x))  # (nodes, dim)
        for layer in self.layers:
            h = layer(h, data.edge_index, edge_emb)
        n_graphs = _num_graphs(data)
        node_graph = (
            data.batch
            if getattr(data, "batch", None) is not None
            else torch.zeros(h.size(0), dtype=torch.long)
        )
        graph_emb = torch.tanh(
            self.graph_out(scatter(h, node_graph, dim=0, dim_size=n_graphs, reduce="mean"))
        )
        n_groups = data.group_graph.numel()
        group_emb = scatter(h[data.group_node], data.group_member, dim=0, dim_size=n_groups, reduce="mean")
        return EncoderOutput(graph_emb, group_emb, data.group_graph)


class GroupFeatureEncoder(nn.Module):
    """The no-GNN ablation: a shared MLP over AMC's hand-made per-group features, mean-pooled per graph."""

    kind = "features"

    def __init__(self, *, dim: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(GROUP_FEATURES, dim), nn.Tanh(), nn.Linear(dim, dim), nn.Tanh())
        self.graph_out = nn.Linear(dim, dim)

    def forward(self, data: Data) -> EncoderOutput:
        group_emb = self.mlp(data.group_x)  # (groups, dim)
        n_graphs = _num_graphs(data)
        pooled = scatter(group_emb, data.group_graph, dim=0, dim_size=n_graphs, reduce="mean")
        return EncoderOutput(torch.tanh(self.graph_out(pooled)), group_emb, data.group_graph)


def build_encoder(kind: str, *, dim: int = 32, num_layers: int = 2) -> nn.Module:
    """Make an encoder by kind: "gnn" (multi-stage GNN) or "features" (the no-GNN ablation)."""
    if kind == "gnn":
        return MultiStageGNN(dim=dim, num_layers=num_layers)
    if kind == "features":
        return GroupFeatureEncoder(dim=dim)
    raise ValueError(f"encoder kind {kind!r} is unknown; use 'gnn' or 'features'")
