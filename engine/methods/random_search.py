"""`random`: sample N random keep-ratio profiles, land each on the MACs budget, keep the best on val.

A baseline for the search methods: same scorer, same number of scored candidates, no learning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import BudgetError
from engine.methods.budget import (
    best_candidate,
    check_on_budget,
    fit_ratios_to_budget,
    prunable_groups,
    score_candidate,
)
from engine.methods.registry import Candidate, MethodContext, MethodResult, MethodSpec, OptionSpec

NAME = "random"


def run_random(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Score `episodes` random feasible plans; return the best on val."""
    rng = np.random.default_rng(ctx.seed)
    groups = prunable_groups(ctx.topology)
    lo, hi = options["min_keep_ratio"], 1.0
    total = options["episodes"]
    history: list[Candidate] = []
    for step in range(total):
        if ctx.stopped() and history:
            break
        ratios = {g.name: float(rng.uniform(lo, hi)) for g in groups}
        try:
            plan = fit_ratios_to_budget(ctx, ratios, method=NAME, min_keep_ratio=lo, meta={"sample": step})
        except BudgetError:
            continue  # this profile cannot be scaled onto the budget under the bounds; draw another
        score_candidate(ctx, NAME, plan, history, step=step + 1, total=total, meta={"sample": step})
    if not history:
        raise BudgetError(f"no random plan reached the budget {ctx.budget}; lower min_keep_ratio or raise the budget")
    best = best_candidate(history)
    ratio = check_on_budget(ctx, best.plan, NAME)
    return MethodResult(method=NAME, plan=best.plan, val_acc=best.val_acc, macs_ratio=ratio, candidates=history,
                        meta={"best_index": best.index})


SPEC = MethodSpec(
    name=NAME,
    description="N random per-group keep-ratio profiles scaled onto the MACs budget; the best on val wins.",
    kind="search",
    options={
        "episodes": OptionSpec("episodes", int, 40, "number of random plans scored (one per episode)", min=1),
        "min_keep_ratio": OptionSpec("min_keep_ratio", float, 0.2, "smallest keep ratio sampled per group",
                                     min=0.01, max=1.0),
    },
    fn=run_random,
)
