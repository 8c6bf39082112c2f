"""`magnitude`: global L1/L2 ranking of channels across groups, each group's scores normalised by its mean.

The lowest-ranked channels are removed one at a time (never below a group's minimum keep) until the plan
meets the budget (any metric); the kept channel indices are recorded in the plan. No data is used except to score.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from engine.methods.candidates import (
    check_on_budget,
    fit_ratios_to_budget,
    full_keep,
    keep_value,
    prunable_groups,
    refill_to_budget,
    score_candidate,
)
from engine.methods.plans import plan_with_indices
from engine.methods.registry import MethodContext, MethodResult, MethodSpec, OptionSpec
from engine.pruning.budget import METRICS, Budget

NAME = "magnitude"


def group_channel_norms(
    model: nn.Module, topology: Any, group_name: str, *, norm: str = "l1"
) -> torch.Tensor:
    """Importance of each channel of a group: weight norm of its producing convs/linears (H1's channel_scores).

    Returns:
        Tensor of shape (channels,); each member's norms are mean-normalised before they are summed.
    """
    from engine.pruning import channel_scores

    return channel_scores(model, topology, group_name, criterion=norm).float()


def normalise_scores(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Scale a group's channel scores so groups are comparable: by their mean, max, L2 norm, or not at all."""
    if how == "none":
        return scores
    denom = {"mean": scores.mean(), "max": scores.max(), "l2": scores.norm()}[how]
    return scores / denom if float(denom) > 0 else torch.ones_like(scores)


def remove_lowest(
    topology: Any,
    scores: dict[str, torch.Tensor],
    budget: Budget | float,
    *,
    min_keep_ratio: float,
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Remove globally lowest-scored channels one by one until the budget's metric (a float: MACs) is met.

    Returns:
        (keep, indices): channels kept per group and the kept channel indices (sorted) per group.
    """
    budget = Budget.coerce(budget)
    target = budget.fraction * budget.baseline(topology)
    keep = full_keep(topology)
    removed: list[tuple[str, int]] = []
    min_keep = {
        g.name: max(1, math.ceil(min_keep_ratio * g.channels)) for g in topology.groups if g.name in scores
    }
    order = sorted(
        ((float(s), name, c) for name, vec in scores.items() for c, s in enumerate(vec.tolist())),
        key=lambda t: (t[0], t[1], t[2]),
    )
    macs = keep_value(topology, keep, budget)
    for _, name, channel in order:
        if macs <= target:
            break
        if keep[name] <= min_keep[name]:
            continue
        keep[name] -= 1
        removed.append((name, channel))
        macs = keep_value(topology, keep, budget)
    keep, removed = refill_to_budget(topology, keep, removed, budget)
    gone: dict[str, set[int]] = {name: set() for name in scores}
    for name, channel in removed:
        gone[name].add(channel)
    indices = {name: [c for c in range(len(vec)) if c not in gone[name]] for name, vec in scores.items()}
    return keep, indices


def run_magnitude(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Global channel ranking by normalised weight norm, pruned to the budget."""
    groups = prunable_groups(ctx.topology)
    scores = {
        g.name: normalise_scores(
            group_channel_norms(ctx.model, ctx.topology, g.name, norm=options["norm"]), options["normalize"]
        )
        for g in groups
    }
    keep, indices = remove_lowest(
        ctx.topology, scores, ctx.budget_spec, min_keep_ratio=options["min_keep_ratio"]
    )
    if ctx.round_to > 1:  # re-land on budget with rounded counts, keeping the top channels by score
        ratios = {g.name: keep[g.name] / g.channels for g in groups}
        rounded = fit_ratios_to_budget(ctx, ratios, method=NAME, min_keep_ratio=options["min_keep_ratio"])
        keep = {g.name: int(rounded.keep.get(g.name, g.channels)) for g in groups}
        indices = {
            n: sorted(torch.argsort(s, descending=True)[: keep[n]].tolist()) for n, s in scores.items()
        }
    plan = plan_with_indices(ctx, keep, indices, method=NAME, criterion=options["norm"])
    ratio = check_on_budget(ctx, plan, NAME)
    history: list = []
    cand = score_candidate(ctx, NAME, plan, history, step=1, total=1)
    return MethodResult(method=NAME, plan=plan, val_acc=cand.val_acc, macs_ratio=ratio, candidates=history)


SPEC = MethodSpec(
    name=NAME,
    description="Global L1/L2 ranking of channels across groups (normalised per group); "
    "the lowest are removed until the budget is met.",
    kind="oneshot",
    options={
        "norm": OptionSpec("norm", str, "l1", "weight norm of a channel", choices=("l1", "l2")),
        "normalize": OptionSpec(
            "normalize", str, "mean", "per-group score normalisation", choices=("mean", "max", "l2", "none")
        ),
        "min_keep_ratio": OptionSpec(
            "min_keep_ratio", float, 0.1, "smallest fraction of a group's channels kept", min=0.01, max=1.0
        ),
    },
    fn=run_magnitude,
    budget_metrics=METRICS,
)
