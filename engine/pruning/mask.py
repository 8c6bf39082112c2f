"""Masked pruning: a copy of the model whose removed channels are zeroed, giving exactly the outputs of the
physically pruned model (apply.py) at full size, fast to make inside a search loop.

Removed channels are cut on both sides: producers' weights, biases and BN affine terms are zeroed (so the
channel is exactly 0 in eval and in train mode, and no BN bias leaks downstream) and consumers' input weights
for them are zeroed (so nothing else that flows in a removed channel reaches the next layer).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.graph import Topology
from engine.pruning.apply import removed_channels, resolve_plan
from engine.pruning.plan import PruningPlan
from engine.pruning.sparse import apply_sparse, plan_sparse


def _zero_module(module: nn.Module, out_removed: list[int] | None, in_removed: list[int] | None) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        index = sorted(set(out_removed or []) | set(in_removed or []))
        if module.weight is not None:
            module.weight[index] = 0.0
            module.bias[index] = 0.0
        if module.running_mean is not None:
            module.running_mean[index] = 0.0
            module.running_var[index] = 1.0
        return
    weight = module.weight
    depthwise = (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )
    if depthwise:
        out_removed = sorted(set(out_removed or []) | set(in_removed or []))
        in_removed = None
    if out_removed:
        weight[out_removed] = 0.0
        if module.bias is not None:
            module.bias[out_removed] = 0.0
    if in_removed and isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
        for c in in_removed:  # weight is (out, in / groups, ...): channel c feeds only its own conv group
            group = c // per_in
            weight[group * per_out : (group + 1) * per_out, c % per_in] = 0.0
    elif in_removed:
        weight[:, in_removed] = 0.0


def mask_model(
    model: nn.Module, topology: Topology, plan: PruningPlan, *, inplace: bool = False
) -> nn.Module:
    """A copy of `model` (or `model` itself with inplace=True) with the plan's removed channels zeroed.

    Its outputs equal apply_plan(model, topology, plan)'s (same channel choice), in eval and train mode.

    Raises:
        ValueError: the plan does not fit the topology.
    """
    resolved = resolve_plan(model, topology, plan)
    masked = model if inplace else copy.deepcopy(model)
    sparse = plan_sparse(plan)
    if sparse:  # unstructured masks (sparse.py)
        apply_sparse(masked, sparse)
    modules = dict(masked.named_modules())
    removed = removed_channels(topology, resolved)
    with torch.no_grad():
        for name in dict.fromkeys(module for module, _ in removed):
            _zero_module(modules[name], removed.get((name, "out")), removed.get((name, "in")))
    masked.topoprune_plan = resolved.to_dict()
    return masked
