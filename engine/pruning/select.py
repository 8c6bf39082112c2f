"""Which channels of a group to keep: magnitude (L1/L2), BN scale, Taylor, Fisher (given scores), random.

Scores are summed over the group's members after normalising each member by its mean, so a group spanning
several convs (a residual stage) weighs them alike. This module only ranks; apply.py and mask.py remove.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import nn

from engine.graph import ChannelGroup, Topology
from engine.pruning.plan import CRITERIA


def _per_channel(values: torch.Tensor, group: ChannelGroup, channels: tuple[int, ...], mult: int) -> torch.Tensor:
    picked = values[list(channels)].reshape(group.channels, mult)  # (group channels, mult)
    return picked.sum(dim=1)


def channel_scores(model: nn.Module, topology: Topology, group_name: str, *, criterion: str = "l1") -> torch.Tensor:
    """Importance of each channel of a group (higher = keep), shape (channels,).

    Raises:
        ValueError: unknown criterion, "fisher" (needs given scores), or "taylor" without gradients.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    group = topology.group(group_name)
    if criterion == "fisher":
        raise ValueError("criterion 'fisher' needs per-channel scores: pass importance=... (Group Fisher hook)")
    if criterion == "random":
        generator = torch.Generator().manual_seed(zlib.crc32(group_name.encode()))
        return torch.rand(group.channels, generator=generator)
    modules = dict(model.named_modules())
    total = torch.zeros(group.channels, dtype=torch.float64)
    used = 0
    for m in group.maps:
        module = modules[m.module]
        values = None
        if criterion == "bn_scale":
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                values = module.weight.detach().abs()
        elif m.dim == "out" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            weight = module.weight
            if criterion == "taylor":
                if weight.grad is None:
                    raise ValueError(f"criterion 'taylor' needs gradients but {m.module}.weight.grad is None; "
                                     "run a backward pass on some batches first")
                values = (weight.detach() * weight.grad.detach()).abs().flatten(1).sum(1)
            else:
                flat = weight.detach().flatten(1)
                values = flat.abs().sum(1) if criterion == "l1" else flat.pow(2).sum(1).sqrt()
        if values is None:
            continue
        per = _per_channel(values.double().cpu(), group, m.channels, m.mult)
        total += per / (per.mean() + 1e-12)
        used += 1
    if used == 0 and criterion == "bn_scale":
        return channel_scores(model, topology, group_name, criterion="l1")
    return total


def select_channels(model: nn.Module, topology: Topology, group_name: str, n_keep: int, *,
                    criterion: str = "l1", importance: Sequence[float] | torch.Tensor | None = None) -> list[int]:
    """The `n_keep` most important channels of a group, as sorted group-channel indices.

    Args:
        model: the model whose weights are scored (not modified).
        topology: its topology.
        group_name: the group.
        n_keep: channels to keep, in [1, channels].
        criterion: "l1", "l2", "bn_scale", "taylor" (needs .grad), "random", or "fisher" (needs importance).
        importance: per-channel scores that override the criterion (Group Fisher or any custom score).

    Raises:
        ValueError: bad n_keep, bad importance length, or a criterion that cannot be computed.
    """
    group = topology.group(group_name)
    if not 1 <= n_keep <= group.channels:
        raise ValueError(f"n_keep {n_keep} for group {group_name!r} is outside [1, {group.channels}]")
    if importance is not None:
        scores = torch.as_tensor(importance, dtype=torch.float64).flatten()
        if scores.numel() != group.channels:
            raise ValueError(f"importance for group {group_name!r} has {scores.numel()} scores, "
                             f"expected {group.channels}")
    else:
        scores = channel_scores(model, topology, group_name, criterion=criterion)
    order = sorted(range(group.channels), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n_keep])
