"""Actor and critic heads over an encoder, shared by the PPO and DDPG agents.

The actor head is shared by all groups (it reads [group embedding, graph embedding] and emits one action per
group), so one agent fits any number of groups and an encoder or whole agent transfers across models.
Sampling, losses and optimisers live in ppo.py / ddpg.py. Nothing here sets torch's thread count: that is a
process setting (on a loaded 2-core machine a search runs ~10x faster with `torch.set_num_threads(1)` or
OMP_NUM_THREADS=1, set once at start-up), never switched per call, which would leak into other threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.utils import scatter

from engine.rl.gnn import GROUP_FEATURES, EncoderOutput, build_encoder

__all__ = ["PolicyOutput", "ActorCritic", "GroupQCritic", "batch_states", "mlp"]


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Two-layer tanh MLP."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


def batch_states(states: list[Data]) -> Batch:
    """Collate pruning states into one batch (offsets every index field of MultiStageData)."""
    return Batch.from_data_list(states)


@dataclass
class PolicyOutput:
    """Actor mean per group and critic value per graph for a (batched) state.

    Attributes:
        mean: (num_groups_total,) policy mean action in [-1, 1] per group.
        value: (num_graphs,) state value.
        encoded: the encoder's embeddings (for the GUI's PCA and for DDPG's critic).
    """

    mean: Tensor
    value: Tensor
    encoded: EncoderOutput


class ActorCritic(nn.Module):
    """Encoder + per-group actor head (tanh mean) + per-graph critic head.

    Args:
        encoder_kind: "gnn" (multi-stage GNN) or "features" (no-GNN ablation).
        dim: embedding width.
        hidden: head width.
        num_layers: stage-2 layers of the GNN.
    """

    def __init__(
        self,
        *,
        encoder_kind: str = "gnn",
        dim: int = 32,
        hidden: int = 64,
        num_layers: int = 2,
        join_group_features: bool = False,
    ):
        super().__init__()
        self.encoder_kind = encoder_kind
        self.encoder = build_encoder(encoder_kind, dim=dim, num_layers=num_layers)
        # The GNN's mean-pooled group embeddings start nearly identical (mean pairwise distance 0.016 against 0.57
        # for the hand-made features), so a shared head first sets one action for every group. Joining each
        # group's structural features (position, sizes, MACs shares, its keep ratio: `group_x`) and normalising
        # both parts before the head keeps the groups apart from the first episode.
        self.join = bool(join_group_features) and encoder_kind == "gnn"
        self.group_in = nn.Linear(GROUP_FEATURES, dim) if self.join else None
        self.norm = nn.LayerNorm(dim) if self.join else None
        self.actor = mlp((3 if self.join else 2) * dim, hidden, 1)
        self.critic = mlp(dim, hidden, 1)
        # Start from a near-zero mean so the first actions are driven by exploration, not by the init.
        with torch.no_grad():
            self.actor[-1].weight.mul_(0.1)
            self.actor[-1].bias.zero_()

    def forward(self, data: Data) -> PolicyOutput:
        enc = self.encoder(data)
        parts = [enc.group_embeddings, enc.graph_embedding[enc.group_graph]]
        if self.join:
            parts = [
                self.norm(enc.group_embeddings),
                parts[1],
                self.norm(torch.tanh(self.group_in(data.group_x))),
            ]
        per_group = torch.cat(parts, dim=-1)
        mean = torch.tanh(self.actor(per_group)).squeeze(-1)  # (groups_total,)
        value = self.critic(enc.graph_embedding).squeeze(-1)  # (graphs,)
        return PolicyOutput(mean, value, enc)


class GroupQCritic(nn.Module):
    """Q(s, a) for DDPG: per-group MLP over [group emb, graph emb, a_g], averaged per graph."""

    def __init__(self, *, encoder_kind: str = "gnn", dim: int = 32, hidden: int = 64, num_layers: int = 2):
        super().__init__()
        self.encoder = build_encoder(encoder_kind, dim=dim, num_layers=num_layers)
        self.head = mlp(2 * dim + 1, hidden, 1)

    def forward(self, data: Data, action: Tensor) -> Tensor:
        enc = self.encoder(data)
        x = torch.cat([enc.group_embeddings, enc.graph_embedding[enc.group_graph], action.unsqueeze(-1)], -1)
        q_group = self.head(x).squeeze(-1)  # (groups_total,)
        n_graphs = enc.graph_embedding.size(0)
        return scatter(q_group, enc.group_graph, dim=0, dim_size=n_graphs, reduce="mean")  # (graphs,)
