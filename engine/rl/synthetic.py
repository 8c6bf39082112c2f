"""A tiny synthetic pruning environment whose best plan is known, for checking that an agent learns.

The "network" is a chain of convs, one group each; the reward at the end of an episode is minus the mean
distance (in keep-ratio points x 100) between the plan and a hidden target plan. No model, no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.rl.gnn import GROUP_FEATURES, MOTIF_FEATURES, NODE_FEATURES, MultiStageData

__all__ = ["chain_state", "SyntheticEnv", "SyntheticStep"]


def _motif(c_in: int) -> tuple[Tensor, Tensor]:
    """Edges (undirected) and role ids of one conv motif with c_in input channels (2*c_in+2 nodes)."""
    src, dst = [], []
    out = 2 * c_in + 1
    for i in range(1, c_in + 1):
        src += [0, i, c_in + i]
        dst += [i, c_in + i, out]
    e = torch.tensor([src, dst])
    roles = torch.tensor([0] + [1] * c_in + [2] * c_in + [3])
    return torch.cat([e, e.flip(0)], dim=1), roles


def chain_state(keep: list[float], *, channels: int = 4) -> MultiStageData:
    """State of a chain of len(keep) convs; node and group features carry each group's keep ratio."""
    g = len(keep)
    n = g + 1
    x = torch.zeros(n, NODE_FEATURES)
    x[:, 0] = torch.linspace(0, 1, n)  # depth
    x[1:, 1] = torch.tensor(keep)
    x[1:, 2] = torch.arange(g) % 3 / 2.0  # a little structural variety
    x[0, 3] = 1.0  # input node
    edge_index = torch.stack([torch.arange(g), torch.arange(1, n)])
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    edge_attr = torch.cat([x[1:], x[1:]], dim=0)
    motif_x, motif_e, motif_batch = [], [], []
    offset = 0
    for i in range(g):
        c_in = channels if i == 0 else max(1, round(channels * keep[i - 1]))
        e, roles = _motif(c_in)
        f = torch.zeros(roles.numel(), MOTIF_FEATURES)
        f[torch.arange(roles.numel()), roles] = 1.0
        f[:, 4] = keep[i]
        f[:, 5] = i / max(1, g - 1)
        motif_x.append(f)
        motif_e.append(e + offset)
        motif_batch.append(torch.full((roles.numel(),), i))
        offset += roles.numel()
    group_x = torch.zeros(g, GROUP_FEATURES)
    group_x[:, 0] = torch.arange(g) / max(1, g - 1)
    group_x[:, 10] = torch.tensor(keep)
    return MultiStageData(
        x=x,
        edge_index=edge_index,
        edge_attr=edge_attr,
        conv_edge=torch.arange(2 * g),
        conv_edge_motif=torch.cat([torch.arange(g), torch.arange(g)]),
        motif_x=torch.cat(motif_x),
        motif_edge_index=torch.cat(motif_e, dim=1),
        motif_batch=torch.cat(motif_batch),
        motif_graph=torch.zeros(g, dtype=torch.long),
        group_node=torch.arange(1, n),
        group_member=torch.arange(g),
        group_graph=torch.zeros(g, dtype=torch.long),
        group_x=group_x,
    )


@dataclass
class SyntheticStep:
    state: MultiStageData
    reward: float
    done: bool
    keep: list[float]


class SyntheticEnv:
    """reset()/step(action): keep <- clip(keep * (1 + max_change * a), 0.05, 1); reward = -100 * mean |keep - target|.

    Args:
        target: the hidden target keep ratios (one per group).
        max_steps: steps per episode (reward only at the last one).
        max_change: bound of the multiplicative change per step.
    """

    def __init__(self, target: list[float], *, max_steps: int = 1, max_change: float = 0.5) -> None:
        self.target = torch.tensor(target)
        self.max_steps = max_steps
        self.max_change = max_change
        self.keep = torch.ones(len(target))
        self.t = 0

    def reset(self) -> MultiStageData:
        self.keep = torch.ones(len(self.target))
        self.t = 0
        return chain_state(self.keep.tolist())

    def step(self, action: Tensor) -> SyntheticStep:
        a = action.clamp(-1, 1)
        self.keep = (self.keep * (1 + self.max_change * a)).clamp(0.05, 1.0)
        self.t += 1
        done = self.t >= self.max_steps
        reward = -100.0 * float((self.keep - self.target).abs().mean()) if done else 0.0
        return SyntheticStep(chain_state(self.keep.tolist()), reward, done, self.keep.tolist())
