"""Builds GNN-RL's multi-stage state (a `MultiStageData`) from a Topology at the current keep ratios.

Stage 2 is the network graph with nodes = feature maps (one per traced op output) and edges = operations
(the op that consumes one feature map to produce the next; both directions, so a group sees its producers
and its consumers). Stage 1 is one motif graph per conv (input -> c_in channels -> c_in kernel outputs ->
sum, 2*c_in+2 nodes, the structure of H1's `conv_motif`) at the conv's *current* input width, optionally
capped at `max_motif_channels` channel nodes (kept channels subsampled evenly by importance rank) to keep the
encoder cheap on CPU. Every feature is structural and deterministic (op type, channels kept/total, kernel,
stride, MACs and memory shares, depth, stage, weight-norm mass kept); nothing is random. It does not embed
(gnn.py) nor decide anything (env.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.rl.gnn import GROUP_FEATURES, MOTIF_FEATURES, NODE_FEATURES, MultiStageData

__all__ = ["StateBuilder", "OP_TYPES"]

OP_TYPES = ("input", "conv", "dwconv", "linear", "batchnorm", "activation", "add", "pool", "other")
_MAX_KERNEL = 7.0


def _first(value: Any, default: float = 1.0) -> float:
    if value is None:
        return default
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(value[0]) if len(value) else default
    return float(value)


def _motif_template(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Undirected edge_index and role ids (0 input, 1 channel, 2 kernel, 3 sum) of a motif with n channels."""
    from engine.graph.motif import conv_motif  # H1's motif is the reference structure

    motif = conv_motif(n)
    roles = {"input": 0, "channel": 1, "kernel": 2, "sum": 3}
    role = torch.tensor([roles[motif.nodes[i]["role"]] for i in range(2 * n + 2)])
    e = torch.tensor(list(motif.edges), dtype=torch.long).t()  # (2, 3n)
    return torch.cat([e, e.flip(0)], dim=1), role


class StateBuilder:
    """Turns per-group keep ratios into a `MultiStageData` for one Topology (and optionally its weights).

    Args:
        topology: the baseline's Topology (H1).
        model: the baseline model; gives weight-norm features and channel ranks (structure-only if None).
        max_motif_channels: cap on channel nodes per motif (0 = the paper's full 2*c_in+2 nodes).
        group_features: also compute the ablation's AMC-style per-group features (`group_x`).
    """

    def __init__(
        self,
        topology: Any,
        model: nn.Module | None = None,
        *,
        max_motif_channels: int = 16,
        group_features: bool = True,
    ) -> None:
        if max_motif_channels < 0:
            raise ValueError(f"max_motif_channels={max_motif_channels} must be >= 0 (0 = no cap)")
        self.topology = topology
        self.max_motif_channels = max_motif_channels
        self.want_group_features = group_features
        self.groups = [g for g in topology.groups if g.prunable]
        self.channels = np.array([g.channels for g in self.groups], dtype=np.float64)
        self._pos = {g.index: i for i, g in enumerate(self.groups)}
        table = topology.table
        self.table = table
        self.spec_row = {s.name: i for i, s in enumerate(table.specs)}
        self.base_macs = float(table.full.macs) or 1.0
        self.base_memory = float(table.full.memory_bytes) or 1.0
        self.prunable_index = np.array([g.index for g in self.groups], dtype=int)
        self._init_ops()
        self._init_importance(model)
        self._templates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._amc = None
        self._model = model

    # -- static structure -------------------------------------------------------------------------------
    def _init_ops(self) -> None:
        topo = self.topology
        graph = topo.graph
        nodes = sorted(graph.nodes, key=lambda n: graph.nodes[n].get("order", 0))
        self.nodes = nodes
        index = {n: i for i, n in enumerate(nodes)}
        src, dst = [], []
        for u, v in graph.edges:
            src.append(index[u])
            dst.append(index[v])
        n_edges = len(src)
        # both directions; edge k and k + n_edges carry the op of the forward edge's target
        self.edge_index = torch.tensor([src + dst, dst + src], dtype=torch.long).reshape(2, 2 * n_edges)
        self.edge_op = np.array(dst + dst, dtype=int)
        n = len(nodes)
        max_order = max(1, n - 1)
        n_stages = max(1, len(topo.stages))
        static = np.zeros((n, NODE_FEATURES), dtype=np.float32)
        self.op_group = np.full(n, -1)  # prunable-group position governing each op's output channels
        self.op_row = np.full(n, -1)  # cost-table row of each op's module (conv/linear/bn)
        self.op_out0 = np.ones(n)
        self.pred = [[index[p] for p in graph.predecessors(node)] for node in nodes]
        self.conv_ops: list[int] = []
        for i, node in enumerate(nodes):
            d = graph.nodes[node]
            op = d.get("op", "other")
            module = d.get("module")
            info = topo.layer_info.get(module) if module else None
            if op == "conv" and info and info.get("depthwise"):
                kind = "dwconv"
            else:
                kind = op if op in OP_TYPES else "other"  # identity, flatten, output, ...
            static[i, OP_TYPES.index(kind)] = 1.0
            out_shape = d.get("out_shape")
            out_c = d.get("out_channels") or (out_shape[1] if out_shape and len(out_shape) > 1 else 1)
            self.op_out0[i] = float(out_c or 1)
            spatial = float(np.prod(out_shape[2:])) if out_shape and len(out_shape) > 2 else 1.0
            static[i, 10] = math.log2(max(1.0, float(out_c or 1))) / 10.0
            static[i, 11] = math.log2(max(1.0, spatial)) / 12.0
            static[i, 12] = i / max_order
            static[i, 13] = float(d.get("stage") or 0) / max(1, n_stages - 1)
            static[i, 14] = 10.0 * float(d.get("macs") or 0) / self.base_macs
            static[i, 17] = _first(d.get("kernel"), 1.0) / _MAX_KERNEL
            static[i, 18] = _first(d.get("stride"), 1.0) / 2.0
            if module is not None and module in self.spec_row:
                self.op_row[i] = self.spec_row[module]
            group = topo.group_of(module) if module else None
            if group is not None and group.prunable:
                self.op_group[i] = self._pos[group.index]
                static[i, 21] = 1.0
            if kind in ("conv", "dwconv") and module in topo.layer_info:
                self.conv_ops.append(i)
        self.static = static
        self.node_index = index
        # stage-2 nodes that carry each prunable group's channels
        members, owners = [], []
        for i in range(n):
            if self.op_group[i] >= 0:
                members.append(i)
                owners.append(int(self.op_group[i]))
        for pos in range(len(self.groups)):  # a group with no traced producer still gets an embedding
            if pos not in owners:
                members.append(0)
                owners.append(pos)
        self.group_node = torch.tensor(members, dtype=torch.long)
        self.group_member = torch.tensor(owners, dtype=torch.long)
        # conv edges: every stage-2 edge whose op is a conv with a motif
        conv_set = {op: k for k, op in enumerate(self.conv_ops)}
        edges = [e for e, op in enumerate(self.edge_op) if op in conv_set]
        self.conv_edge = torch.tensor(edges, dtype=torch.long)
        self.conv_edge_motif = torch.tensor([conv_set[self.edge_op[e]] for e in edges], dtype=torch.long)

    def _init_importance(self, model: nn.Module | None) -> None:
        """Per-group cumulative importance mass (by the l1 criterion) and per-conv input-channel norms."""
        topo = self.topology
        self.mass = [np.linspace(1.0 / c, 1.0, int(c)) for c in self.channels]  # structure-only fallback
        rank: dict[int, np.ndarray] = {}
        if model is not None:
            from engine.pruning.select import channel_scores

            for pos, g in enumerate(self.groups):
                scores = channel_scores(model, topo, g.name, criterion="l1").numpy()
                order = np.argsort(-scores, kind="stable")
                s = np.clip(scores[order], 0, None)
                total = s.sum()
                if total > 0:
                    self.mass[pos] = np.cumsum(s) / total
                rank[pos] = order
        modules = dict(model.named_modules()) if model is not None else {}
        self.conv_in: list[dict] = []
        for i in self.conv_ops:
            module_name = topo.graph.nodes[self.nodes[i]]["module"]
            info = topo.layer_info[module_name]
            c_in = int(info["out_channels"] if info["depthwise"] else info["in_channels"])
            module = modules.get(module_name)
            if isinstance(module, nn.modules.conv._ConvNd):
                w = module.weight.detach().abs().float()
                norms = (w.sum(dim=(1, 2, 3)) if info["depthwise"] else w.sum(dim=(0, 2, 3))).numpy()
            else:
                norms = np.ones(c_in)
            norms = norms / (norms.max() or 1.0)
            # order the layer's input channels the way their group keeps them (most important first)
            order = np.argsort(-norms, kind="stable")
            in_group = None
            for g_pos, g in enumerate(self.groups):
                for m in g.maps:
                    if (
                        m.module == module_name
                        and m.dim == ("out" if info["depthwise"] else "in")
                        and m.mult == 1
                    ):
                        in_group = g_pos
                        if g_pos in rank:
                            order = np.array([m.channels[j] for j in rank[g_pos]])
                        break
                if in_group is not None:
                    break
            self.conv_in.append(
                {
                    "norms": norms.astype(np.float32),
                    "order": order,
                    "c_in": c_in,
                    "row": self.spec_row.get(module_name, -1),
                    "depthwise": bool(info["depthwise"]),
                    "kernel": _first(info["kernel"], 1.0),
                    "stride": _first(info["stride"], 1.0),
                }
            )

    def _template(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n not in self._templates:
            self._templates[n] = _motif_template(n)
        return self._templates[n]

    # -- per-state ------------------------------------------------------------------------------------
    def keep_counts(self, keep_ratios: np.ndarray) -> np.ndarray:
        """Channels kept per prunable group for continuous keep ratios (nearest, at least 1)."""
        return np.clip(np.floor(np.asarray(keep_ratios) * self.channels + 0.5), 1, self.channels)

    def build(self, keep_ratios: Sequence[float] | np.ndarray) -> MultiStageData:
        """The state at per-group keep ratios (prunable-group order)."""
        ratios = np.asarray(keep_ratios, dtype=np.float64)
        if ratios.shape != (len(self.groups),):
            raise ValueError(
                f"got {ratios.shape} keep ratios; this topology has {len(self.groups)} prunable groups"
            )
        counts = self.keep_counts(ratios)
        table = self.table
        vector = np.array([g.channels for g in self.topology.groups], dtype=np.float64)
        vector[self.prunable_index] = counts
        removed = table.channels - vector
        c_out = table.out0 - table.r_out @ removed
        c_in = table.in0 - table.r_in @ removed
        cost = table.evaluate(vector)
        x = self.static.copy()
        n = len(self.nodes)
        out_ratio = np.ones(n)
        in_ratio = np.ones(n)
        mass = np.ones(n)
        for i in range(n):
            row = self.op_row[i]
            if row >= 0:
                out_ratio[i] = c_out[row] / max(1.0, table.out0[row])
                in_ratio[i] = c_in[row] / max(1.0, table.in0[row])
                x[i, 15] = 10.0 * cost.layer_macs[row] / self.base_macs
                x[i, 16] = 10.0 * cost.layer_memory_bytes[row] / self.base_memory
            elif self.pred[i]:  # channel-wise ops pass their input's ratio on
                out_ratio[i] = in_ratio[i] = float(np.mean([out_ratio[p] for p in self.pred[i]]))
            g = self.op_group[i]
            if g >= 0:
                k = int(counts[g])
                mass[i] = float(self.mass[g][k - 1])
        x[:, 9] = out_ratio
        x[:, 19] = in_ratio
        x[:, 20] = mass
        x_t = torch.from_numpy(x)
        edge_attr = x_t[torch.from_numpy(self.edge_op)]
        motif_x, motif_e, motif_batch = [], [], []
        offset = 0
        for k, conv in enumerate(self.conv_in):
            row = conv["row"]
            kept = int(round(c_in[row])) if row >= 0 and not conv["depthwise"] else conv["c_in"]
            if conv["depthwise"] and row >= 0:
                kept = int(round(c_out[row]))
            kept = max(1, min(kept, conv["c_in"]))
            m = kept if self.max_motif_channels == 0 else min(kept, self.max_motif_channels)
            pick = conv["order"][:kept]
            if m < kept:
                pick = pick[np.linspace(0, kept - 1, m).round().astype(int)]
            e, role = self._template(m)
            f = torch.zeros(2 * m + 2, MOTIF_FEATURES)
            f[torch.arange(2 * m + 2), role] = 1.0
            norms = torch.from_numpy(conv["norms"][pick])
            f[1 : m + 1, 4] = norms
            f[m + 1 : 2 * m + 1, 4] = norms
            f[0, 4] = f[2 * m + 1, 4] = float(norms.mean())
            f[:, 5] = kept / conv["c_in"]
            f[:, 6] = float(out_ratio[self.conv_ops[k]])
            f[:, 7] = conv["kernel"] / _MAX_KERNEL
            f[:, 8] = conv["stride"] / 2.0
            f[:, 9] = float(conv["depthwise"])
            motif_x.append(f)
            motif_e.append(e + offset)
            motif_batch.append(torch.full((2 * m + 2,), k, dtype=torch.long))
            offset += 2 * m + 2
        n_motifs = len(self.conv_in)
        data = MultiStageData(
            x=x_t,
            edge_index=self.edge_index,
            edge_attr=edge_attr,
            conv_edge=self.conv_edge,
            conv_edge_motif=self.conv_edge_motif,
            motif_x=torch.cat(motif_x) if motif_x else torch.zeros(0, MOTIF_FEATURES),
            motif_edge_index=torch.cat(motif_e, dim=1) if motif_e else torch.zeros(2, 0, dtype=torch.long),
            motif_batch=torch.cat(motif_batch) if motif_batch else torch.zeros(0, dtype=torch.long),
            motif_graph=torch.zeros(n_motifs, dtype=torch.long),
            group_node=self.group_node,
            group_member=self.group_member,
            group_graph=torch.zeros(len(self.groups), dtype=torch.long),
            group_x=self.group_features(ratios),
        )
        return data

    def group_features(self, keep_ratios: np.ndarray) -> torch.Tensor:
        """The ablation's per-group state: AMC's 10 features (H3's AmcFeatures) + the group's own keep ratio.

        AMC's last column ("previous action") is the previous group's keep ratio in AMC's sequential episode;
        here all groups move at once, so the group's own current keep ratio is appended (the multiplicative
        action needs it). Zeros when the builder was made with group_features=False.
        """
        g = len(self.groups)
        out = torch.zeros(g, GROUP_FEATURES)
        if not self.want_group_features:
            return out
        if self._amc is None:
            from engine.methods.amc import AmcFeatures

            self._amc = AmcFeatures(self.topology, model=self._model)
        ratios = {grp.name: float(r) for grp, r in zip(self.groups, keep_ratios, strict=True)}
        rows = np.stack([self._amc.row(t, ratios) for t in range(g)]) if g else np.zeros((0, 10))
        out[:, :10] = torch.from_numpy(rows.astype(np.float32))
        out[:, 10] = torch.as_tensor(np.asarray(keep_ratios, dtype=np.float32))
        return out
