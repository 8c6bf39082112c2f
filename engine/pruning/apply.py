"""Physically remove channels: apply a PruningPlan to a copy of a model (the input model is never touched).

Edits nn.Conv1d/2d (incl. depthwise and grouped: the same in-group channels go from every conv group, so
`groups` stays valid; subclasses too), nn.Linear and BatchNorm weights with index_select along each member's
channel map. Choosing channels is select.py's job; masking instead of removing is mask.py's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.errors import ModelError
from engine.graph import Topology
from engine.pruning.plan import PruningPlan
from engine.pruning.select import select_channels
from engine.pruning.sparse import apply_sparse, plan_sparse


def resolve_plan(model: nn.Module, topology: Topology, plan: PruningPlan) -> PruningPlan:
    """The plan with kept indices filled in for every shrunk group (chosen on `model` by plan.criterion).

    Raises:
        ValueError: the plan does not fit the topology.
    """
    plan.validate(topology)
    indices = dict(plan.indices or {})
    for name, count in plan.keep.items():
        group = topology.group(name)
        if count < group.channels and name not in indices:
            indices[name] = select_channels(model, topology, name, count, criterion=plan.criterion)
    return plan.with_indices(indices)


def removed_channels(topology: Topology, plan: PruningPlan) -> dict[tuple[str, str], list[int]]:
    """(module name, "out"|"in") -> sorted member channels to remove, for a resolved plan."""
    removed: dict[tuple[str, str], set[int]] = {}
    for name, kept in (plan.indices or {}).items():
        group = topology.group(name)
        if len(kept) == group.channels:
            continue
        dropped = sorted(set(range(group.channels)) - set(kept))
        for m in group.maps:
            target = removed.setdefault((m.module, m.dim), set())
            for j in dropped:
                target.update(m.channels[j * m.mult : (j + 1) * m.mult])
    return {key: sorted(value) for key, value in removed.items() if value}


def _keep_index(size: int, removed: list[int] | None, device) -> torch.Tensor | None:
    if not removed:
        return None
    drop = set(removed)
    return torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long, device=device)


def _grouped_index(
    size: int, groups: int, removed: list[int] | None, name: str, device
) -> torch.Tensor | None:
    """Kept channels of a grouped conv side, which must drop the same in-group positions in every group."""
    if not removed:
        return None
    per_group = size // groups
    positions = [
        sorted(c - g * per_group for c in removed if g * per_group <= c < (g + 1) * per_group)
        for g in range(groups)
    ]
    if any(p != positions[0] for p in positions):
        raise ModelError(
            f"cannot prune grouped conv {name} (groups={groups}): the plan removes different "
            "channels in different conv groups; rebuild the topology and make the plan from it"
        )
    return _keep_index(size, removed, device)


def _select(tensor: torch.Tensor | None, dim: int, index: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None or index is None:
        return tensor
    return tensor.detach().index_select(dim, index).clone()


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if value is None or old is None:
        return
    setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))


def shrink_module(
    module: nn.Module, name: str, out_removed: list[int] | None, in_removed: list[int] | None
) -> None:
    """Remove output / input channels of one module in place (conv, linear or batchnorm)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if depthwise:
            index = _keep_index(
                module.out_channels,
                sorted(set(out_removed or []) | set(in_removed or [])),
                module.weight.device,
            )
            _set_param(module, "weight", _select(module.weight, 0, index))
            _set_param(module, "bias", _select(module.bias, 0, index))
            module.out_channels = module.in_channels = module.groups = module.weight.shape[0]
            return
        out_index = _keep_index(module.out_channels, out_removed, module.weight.device)
        in_index = _keep_index(module.in_channels, in_removed, module.weight.device)
        if module.groups != 1:
            out_index = _grouped_index(
                module.out_channels, module.groups, out_removed, name, module.weight.device
            )
            in_index = _grouped_index(
                module.in_channels, module.groups, in_removed, name, module.weight.device
            )
            if in_index is not None:  # weight is (out, in / groups, ...): keep the same in-group positions
                in_index = in_index[: in_index.numel() // module.groups]
        _set_param(module, "weight", _select(_select(module.weight, 0, out_index), 1, in_index))
        _set_param(module, "bias", _select(module.bias, 0, out_index))
        module.out_channels, module.in_channels = (
            module.weight.shape[0],
            module.weight.shape[1] * module.groups,
        )
    elif isinstance(module, nn.Linear):
        out_index = _keep_index(module.out_features, out_removed, module.weight.device)
        in_index = _keep_index(module.in_features, in_removed, module.weight.device)
        _set_param(module, "weight", _select(_select(module.weight, 0, out_index), 1, in_index))
        _set_param(module, "bias", _select(module.bias, 0, out_index))
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        index = _keep_index(
            module.num_features,
            sorted(set(out_removed or []) | set(in_removed or [])),
            module.running_mean.device if module.running_mean is not None else "cpu",
        )
        _set_param(module, "weight", _select(module.weight, 0, index))
        _set_param(module, "bias", _select(module.bias, 0, index))
        if module.running_mean is not None:
            module.running_mean = _select(module.running_mean, 0, index)
            module.running_var = _select(module.running_var, 0, index)
        module.num_features = int(index.numel()) if index is not None else module.num_features
    else:
        raise ModelError(
            f"cannot prune {name}: {type(module).__name__} is not a conv, linear or batchnorm layer"
        )


def apply_plan(model: nn.Module, topology: Topology, plan: PruningPlan) -> nn.Module:
    """A new, physically smaller copy of `model` with the plan's channels removed.

    Channels are the plan's `indices` where given, otherwise chosen on `model` by `plan.criterion`
    (resolve_plan). The input model is not modified.

    Raises:
        ValueError: the plan does not fit the topology.
    """
    resolved = resolve_plan(model, topology, plan)
    pruned = copy.deepcopy(model)
    sparse = plan_sparse(plan)
    if sparse:  # unstructured masks (sparse.py) apply before any channel is removed
        apply_sparse(pruned, sparse)
    modules = dict(pruned.named_modules())
    removed = removed_channels(topology, resolved)
    with torch.no_grad():
        for name in dict.fromkeys(module for module, _ in removed):
            shrink_module(modules[name], name, removed.get((name, "out")), removed.get((name, "in")))
    pruned.topoprune_plan = resolved.to_dict()  # kept indices, for export and reloading
    return pruned
