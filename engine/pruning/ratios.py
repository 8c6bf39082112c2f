"""Plans from keep ratios: rounding a ratio to a channel count, and a PruningPlan from per-group ratios.

Budget-driven planning (choosing the ratios) is budget.py's job; this module only turns ratios into counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from engine.graph import Topology
from engine.pruning.plan import PruningPlan


def round_keep(channels: int, ratio: float, *, round_to: int = 1, min_keep: int = 1) -> int:
    """Channels kept for a keep ratio: nearest multiple of `round_to`, at least max(min_keep, 1), at most all."""
    count = ratio * channels
    if round_to > 1:
        count = round(count / round_to) * round_to
        count = max(count, min(round_to, channels))
    count = int(math.floor(count + 0.5)) if round_to == 1 else int(count)
    return max(1, min(channels, max(count, min_keep)))


def plan_from_ratios(
    topology: Topology,
    keep_ratios: Mapping[str, float] | Sequence[float],
    *,
    round_to: int = 1,
    min_keep: int = 1,
    criterion: str = "l1",
    method: str = "manual",
) -> PruningPlan:
    """A plan from keep ratios: by group name, or a sequence aligned with `topology.prunable_groups`.

    Args:
        topology: the model's topology.
        keep_ratios: group name -> keep ratio in (0, 1] (groups left out keep everything), or one ratio per
            prunable group in topology order.
        round_to: keep counts are rounded to the nearest multiple of this (or the whole group).
        min_keep: fewest channels any listed group keeps.
        criterion: how channels will be chosen (recorded on the plan).
        method: recorded on the plan.

    Returns:
        The plan (no indices: channels are chosen when it is applied; group sizes recorded).

    Raises:
        ValueError: a ratio outside (0, 1], an unknown or non-prunable group, or a sequence of the wrong length.
    """
    prunable = topology.prunable_groups
    if isinstance(keep_ratios, Mapping):
        ratios = dict(keep_ratios)
    else:
        values = list(keep_ratios)
        if len(values) != len(prunable):
            raise ValueError(
                f"got {len(values)} keep ratios for {len(prunable)} prunable groups of "
                f"{topology.model_name}; pass one per group (topology.prunable_groups order)"
            )
        ratios = {g.name: float(v) for g, v in zip(prunable, values, strict=True)}
    keep, channels = {}, {}
    for name, ratio in ratios.items():
        group = topology.group(name)
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"keep ratio {ratio} for group {name!r} is outside (0, 1]")
        if not group.prunable:
            if float(ratio) < 1.0:
                raise ValueError(f"group {name!r} is not prunable ({group.reason}); use keep ratio 1.0")
            continue
        keep[name] = round_keep(group.channels, float(ratio), round_to=round_to, min_keep=min_keep)
        channels[name] = group.channels
    return PruningPlan(
        model=topology.model_name,
        keep=keep,
        channels=channels,
        criterion=criterion,
        round_to=round_to,
        method=method,
    )
