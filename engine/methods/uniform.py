"""`uniform`: the same keep ratio for every prunable group, chosen so the plan lands on the budget (any metric).

Channels inside each group are picked by the plan's criterion (L1 by default) when the plan is applied.
"""

from __future__ import annotations

from typing import Any

from engine.methods.candidates import check_on_budget, fit_ratios_to_budget, prunable_groups, score_candidate
from engine.methods.registry import MethodContext, MethodResult, MethodSpec, OptionSpec
from engine.pruning.budget import METRICS

NAME = "uniform"


def run_uniform(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """One shared keep ratio for every prunable group, scaled onto the budget."""
    ratios = {g.name: 1.0 for g in prunable_groups(ctx.topology)}
    plan = fit_ratios_to_budget(ctx, ratios, method=NAME, min_keep_ratio=options["min_keep_ratio"])
    plan.criterion = options["criterion"]
    ratio = check_on_budget(ctx, plan, NAME)
    history: list = []
    cand = score_candidate(ctx, NAME, plan, history, step=1, total=1)
    return MethodResult(method=NAME, plan=plan, val_acc=cand.val_acc, macs_ratio=ratio, candidates=history)


SPEC = MethodSpec(
    name=NAME,
    description="Same keep ratio for every prunable group, scaled to meet the budget.",
    kind="oneshot",
    options={
        "criterion": OptionSpec(
            "criterion", str, "l1", "channel criterion inside each group", choices=("l1", "l2", "bn_scale")
        ),
        "min_keep_ratio": OptionSpec(
            "min_keep_ratio", float, 0.05, "smallest fraction of a group's channels kept", min=0.01, max=1.0
        ),
    },
    fn=run_uniform,
    budget_metrics=METRICS,
)
