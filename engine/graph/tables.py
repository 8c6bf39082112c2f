"""Analytic cost table: per-layer MACs, params and activation memory as functions of per-group keep counts.

Channel pruning never changes spatial sizes, so one traced forward fixes every conv's k_h*k_w*H_out*W_out;
after that MACs = sum_conv coef*(C_in/groups)*C_out + sum_linear rows*in*out, where each group's keep count
lowers C_out of its producers and C_in of its consumers. Evaluating a plan is a few numpy dot products.
This module only computes; engine.cost is the public face, engine.graph.groups finds the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.graph.groups import MemberMap
from engine.graph.trace import LayerCall

KINDS = ("conv", "linear", "bn", "other")


@dataclass
class LayerSpec:
    """One parameterised leaf module as the cost model sees it."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    groups: int = 1
    depthwise: bool = False
    kernel_numel: int = 1
    bias: bool = False
    affine: bool = False
    coef: int = 0
    spatial: int = 0
    fixed_params: int = 0


def unmodelled_macs(model: nn.Module, inputs: tuple[torch.Tensor, ...], specs: list[LayerSpec]) -> int:
    """MACs that FlopCounterMode counts outside the modelled conv/linear layers: ConvTranspose, attention
    projections and matmuls, LSTM/GRU, F.linear / F.conv on weights used directly. Their channels are never
    in a prunable group (channels.py freezes them), so these MACs are the same for every plan."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    modelled = sum(
        sum(counts.get(f"{root}.{s.name}", {}).values()) for s in specs if s.kind in ("conv", "linear")
    )
    return int((counter.get_total_flops() - modelled) // 2)


def layer_specs(modules: dict[str, nn.Module], calls: dict[str, LayerCall]) -> list[LayerSpec]:
    """Specs for every called leaf module that has parameters, plus conv/linear layers, in forward order."""
    specs = []
    for call in sorted(calls.values(), key=lambda c: c.order):
        module = modules[call.name]
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:  # subclasses too
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            specs.append(
                LayerSpec(
                    call.name,
                    "conv",
                    module.in_channels,
                    module.out_channels,
                    module.groups,
                    depthwise,
                    int(np.prod(module.kernel_size)),
                    module.bias is not None,
                    coef=call.coef,
                    spatial=call.spatial,
                )
            )
        elif isinstance(module, nn.Linear):
            specs.append(
                LayerSpec(
                    call.name,
                    "linear",
                    module.in_features,
                    module.out_features,
                    bias=module.bias is not None,
                    coef=call.coef,
                    spatial=call.spatial,
                )
            )
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            specs.append(
                LayerSpec(
                    call.name,
                    "bn",
                    module.num_features,
                    module.num_features,
                    affine=module.weight is not None,
                    spatial=call.spatial,
                )
            )
        else:
            params = sum(p.numel() for p in module.parameters(recurse=False))
            if params:
                specs.append(LayerSpec(call.name, "other", 0, 0, fixed_params=params))
    return specs


@dataclass
class CostEval:
    """Totals and per-layer arrays (aligned with CostTable.specs) for one keep vector."""

    macs: int
    params: int
    memory_bytes: int
    layer_macs: np.ndarray
    layer_params: np.ndarray
    layer_memory_bytes: np.ndarray


class CostTable:
    """Evaluates costs for a vector of per-group keep counts (groups in topology order)."""

    def __init__(
        self,
        specs: list[LayerSpec],
        group_maps: list[list[MemberMap]],
        group_channels: list[int],
        *,
        extra_params: int = 0,
        extra_macs: int = 0,
        element_bytes: int = 4,
    ) -> None:
        self.specs = specs
        self.extra_macs = int(
            extra_macs
        )  # counted MACs of ops no group can shrink (attention, ConvTranspose)
        self.channels = np.asarray(group_channels, dtype=np.float64)
        self.extra_params = int(extra_params)
        self.element_bytes = element_bytes
        index = {s.name: i for i, s in enumerate(specs)}
        n_layers, n_groups = len(specs), len(group_channels)
        self.r_out = np.zeros((n_layers, n_groups))
        self.r_in = np.zeros((n_layers, n_groups))
        for g, maps in enumerate(group_maps):
            for m in maps:
                row = index.get(m.module)
                if row is None:
                    continue
                target = self.r_out if m.dim == "out" else self.r_in
                target[row, g] += m.mult
        kind = np.array([s.kind for s in specs])
        self.is_conv, self.is_linear, self.is_bn = kind == "conv", kind == "linear", kind == "bn"
        self.out0 = np.array([s.out_channels for s in specs], dtype=np.float64)
        self.in0 = np.array([s.in_channels for s in specs], dtype=np.float64)
        self.groups = np.array([max(1, s.groups) for s in specs], dtype=np.float64)
        self.depthwise = np.array([s.depthwise for s in specs], dtype=bool)
        self.kernel = np.array([s.kernel_numel for s in specs], dtype=np.float64)
        self.bias = np.array([s.bias for s in specs], dtype=np.float64)
        self.affine = np.array([s.affine for s in specs], dtype=np.float64)
        self.coef = np.array([s.coef for s in specs], dtype=np.float64)
        self.spatial = np.array([s.spatial for s in specs], dtype=np.float64)
        self.fixed = np.array([s.fixed_params for s in specs], dtype=np.float64)
        self.weighted = self.is_conv | self.is_linear
        self.full = self.evaluate(self.channels)

    def _channels(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        removed = self.channels - keep
        return self.out0 - self.r_out @ removed, self.in0 - self.r_in @ removed

    def macs(self, keep: np.ndarray) -> int:
        """Analytic MACs (batch 1) for per-group keep counts."""
        c_out, c_in = self._channels(keep)
        per_group_in = np.where(self.depthwise, 1.0, c_in / self.groups)
        return int(round(float(np.dot(self.coef, per_group_in * c_out * self.weighted)))) + self.extra_macs

    def evaluate(self, keep: np.ndarray) -> CostEval:
        """MACs, params and conv/linear output memory (batch 1) for per-group keep counts."""
        c_out, c_in = self._channels(keep)
        per_group_in = np.where(self.depthwise, 1.0, c_in / self.groups)
        layer_macs = self.coef * per_group_in * c_out * self.weighted
        weight_params = np.where(
            self.is_conv, c_out * per_group_in * self.kernel, np.where(self.is_linear, c_in * c_out, 0.0)
        )
        layer_params = (
            weight_params + self.bias * c_out * self.weighted + self.affine * 2 * c_out * self.is_bn
        )
        layer_params = layer_params + self.fixed
        layer_memory = self.spatial * c_out * self.element_bytes * self.weighted
        return CostEval(
            int(round(layer_macs.sum())) + self.extra_macs,
            int(round(layer_params.sum())) + self.extra_params,
            int(round(layer_memory.sum())),
            layer_macs,
            layer_params,
            layer_memory,
        )

    def per_channel(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MACs, params and memory bytes that one channel of each group carries (full model minus one)."""
        n = len(self.channels)
        macs, params, memory = np.zeros(n), np.zeros(n), np.zeros(n)
        for g in range(n):
            keep = self.channels.copy()
            keep[g] -= 1
            result = self.evaluate(keep)
            macs[g] = self.full.macs - result.macs
            params[g] = self.full.params - result.params
            memory[g] = self.full.memory_bytes - result.memory_bytes
        return macs, params, memory
