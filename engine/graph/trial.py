"""Trial pruning on a weightless copy: shrink every prunable group by a few channels and run forward, so a group
whose pruning would break forward() (split sizes or slice bounds fixed in Python) is refused at build time.

Only shapes are checked (weights live on the meta device); which channels go does not change shapes. It does not
choose channels nor edit real weights (engine.pruning does).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.graph.groups import RawGroup


def _shrink(module: nn.Module, out_drop: int, in_drop: int) -> None:
    """Make a meta module `out_drop` outputs / `in_drop` inputs narrower (shapes only)."""
    device = "meta"

    def param(shape, old):
        if old is None:
            return None
        return nn.Parameter(torch.empty(shape, device=device, dtype=old.dtype), requires_grad=False)

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        n = module.num_features - max(out_drop, in_drop)
        module.num_features = n
        module.weight, module.bias = param((n,), module.weight), param((n,), module.bias)
        if module.running_mean is not None:
            module.running_mean = torch.empty(n, device=device, dtype=module.running_mean.dtype)
            module.running_var = torch.empty(n, device=device, dtype=module.running_var.dtype)
    elif isinstance(module, nn.modules.conv._ConvNd):
        groups = module.groups
        depthwise = groups > 1 and groups == module.in_channels == module.out_channels
        if depthwise:
            n = module.out_channels - max(out_drop, in_drop)
            module.in_channels = module.out_channels = module.groups = n
            module.weight = param((n, 1, *module.kernel_size), module.weight)
            module.bias = param((n,), module.bias)
            return
        module.out_channels -= out_drop
        module.in_channels -= in_drop
        module.weight = param(
            (module.out_channels, module.in_channels // groups, *module.kernel_size), module.weight
        )
        module.bias = param((module.out_channels,), module.bias)
    elif isinstance(module, nn.Linear):
        module.out_features -= out_drop
        module.in_features -= in_drop
        module.weight = param((module.out_features, module.in_features), module.weight)
        module.bias = param((module.out_features,), module.bias)


def _run(
    meta_model: nn.Module, inputs, groups: list[RawGroup], drops: dict[int, int], reference
) -> str | None:
    model = copy.deepcopy(meta_model)
    modules = dict(model.named_modules())
    removed: dict[tuple[str, str], int] = {}
    for index, count in drops.items():
        for m in groups[index].maps:
            removed[(m.module, m.dim)] = removed.get((m.module, m.dim), 0) + count * m.mult
    for name in dict.fromkeys(name for name, _ in removed):
        _shrink(modules[name], removed.get((name, "out"), 0), removed.get((name, "in"), 0))
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception as exc:  # noqa: BLE001 - the message is the point
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    shapes = [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if shapes != reference:
        return f"the output shape changes to {shapes}"
    return None


def refuse_breaking_groups(
    meta_model: nn.Module, inputs: tuple[torch.Tensor, ...], groups: list[RawGroup]
) -> int:
    """Set `reason` on every prunable group whose trial pruning breaks forward(); returns how many."""
    candidates = [i for i, g in enumerate(groups) if g.reason is None and g.channels > 2]
    if not candidates:
        return 0
    with torch.no_grad():
        reference = [
            tuple(t.shape)
            for t in torch.utils._pytree.tree_leaves(meta_model(*inputs))
            if isinstance(t, torch.Tensor)
        ]
    drops = {
        i: 1 + (k % 2) for k, i in enumerate(candidates)
    }  # neighbours differ: chunk halves cannot cancel
    if _run(meta_model, inputs, groups, drops, reference) is None:
        return 0
    refused = 0
    for i in candidates:
        problem = _run(meta_model, inputs, groups, {i: 1}, reference)
        if problem is not None:
            groups[i].reason = (
                f"pruning it breaks forward() ({problem}); forward() probably splits or slices "
                "these channels at sizes fixed in Python"
            )
            refused += 1
    return refused
