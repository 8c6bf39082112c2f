"""Which channels of a group to keep: rank by a registered criterion (criteria.py) or by given scores.

Scores are summed over the group's members after normalising each member by its mean, so a group spanning
several convs (a residual stage) weighs them alike. This module only ranks; apply.py and mask.py remove.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.graph import Topology
from engine.pruning.criteria import get_criterion


def channel_scores(
    model: nn.Module, topology: Topology, group_name: str, *, criterion: str = "l1"
) -> torch.Tensor:
    """Importance of each channel of a group (higher = keep), shape (channels,), by a registered criterion.

    Raises:
        PlanError: unknown criterion, "fisher" (needs given scores), or "taylor" without gradients.
        ValueError: unknown group, or a registered criterion returning the wrong number of scores.
    """
    entry = get_criterion(criterion)
    group = topology.group(group_name)
    scores = torch.as_tensor(entry.fn(model, topology, group_name)).flatten()
    if scores.numel() != group.channels:
        raise ValueError(
            f"criterion {criterion!r} gave {scores.numel()} scores for group {group_name!r}, "
            f"expected {group.channels}"
        )
    return scores


def select_channels(
    model: nn.Module,
    topology: Topology,
    group_name: str,
    n_keep: int,
    *,
    criterion: str = "l1",
    importance: Sequence[float] | torch.Tensor | None = None,
) -> list[int]:
    """The `n_keep` most important channels of a group, as sorted group-channel indices.

    Args:
        model: the model whose weights are scored (not modified).
        topology: its topology.
        group_name: the group.
        n_keep: channels to keep, in [1, channels].
        criterion: a registered criterion (engine.pruning.list_criteria()); "taylor" needs .grad and
            "fisher" needs importance.
        importance: per-channel scores that override the criterion (Group Fisher or any custom score).

    Raises:
        ValueError: bad n_keep, bad importance length, an unknown criterion or one that cannot be computed.
    """
    group = topology.group(group_name)
    if not 1 <= n_keep <= group.channels:
        raise ValueError(f"n_keep {n_keep} for group {group_name!r} is outside [1, {group.channels}]")
    if importance is not None:
        get_criterion(criterion)
        scores = torch.as_tensor(importance, dtype=torch.float64).flatten()
        if scores.numel() != group.channels:
            raise ValueError(
                f"importance for group {group_name!r} has {scores.numel()} scores, expected {group.channels}"
            )
    else:
        scores = channel_scores(model, topology, group_name, criterion=criterion)
    order = sorted(range(group.channels), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n_keep])
