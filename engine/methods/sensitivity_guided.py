"""`sensitivity`: prune the least sensitive groups most, from per-group sensitivity curves.

Greedy (lower, one grid step at a time, the group with the smallest accuracy drop per unit of the budget's
metric saved) or a multiple-choice knapsack over the curves (savings taken as additive); the resulting
keep-ratio profile is then landed exactly on the budget by plan_for_budget. The curves come from engine.sensitivity (cached).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.methods.candidates import (
    check_on_budget,
    fit_ratios_to_budget,
    full_keep,
    keep_value,
    prunable_groups,
    score_candidate,
)
from engine.methods.registry import MethodContext, MethodResult, MethodSpec, OptionSpec
from engine.pruning.budget import METRICS, Budget

NAME = "sensitivity"


def _counts(topology: Any, ratios: dict[str, float]) -> dict[str, int]:
    keep = full_keep(topology)
    for g in prunable_groups(topology):
        keep[g.name] = max(1, int(round(ratios.get(g.name, 1.0) * g.channels)))
    return keep


def allocate_greedy(topology: Any, table: Any, budget: Budget | float) -> dict[str, float]:
    """Lower groups step by step along the grid, cheapest accuracy per unit of the budget's metric saved first
    (a bare float budget: MACs), until on budget."""
    grid = sorted(table.keep_ratios, reverse=True)  # 0.9, 0.8, ...
    level = {g.name: -1 for g in table.groups}  # -1 = keep ratio 1.0
    drops = {g.name: dict(zip(table.keep_ratios, g.drop, strict=True)) for g in table.groups}
    budget = Budget.coerce(budget)
    target = budget.fraction * budget.baseline(topology)

    def ratios() -> dict[str, float]:
        return {n: (1.0 if lv < 0 else grid[lv]) for n, lv in level.items()}

    current = ratios()
    macs = keep_value(topology, _counts(topology, current), budget)
    while macs > target:
        best: tuple[float, str, int] | None = None
        for name, lv in level.items():
            if lv + 1 >= len(grid):
                continue
            before = 0.0 if lv < 0 else drops[name][grid[lv]]
            after = drops[name][grid[lv + 1]]
            trial = {**current, name: grid[lv + 1]}
            trial_macs = keep_value(topology, _counts(topology, trial), budget)
            saved = macs - trial_macs
            if saved <= 0:
                continue
            cost = (max(after - before, 0.0) + 1e-3) / saved
            if best is None or cost < best[0]:
                best = (cost, name, trial_macs)
        if best is None:
            break  # every group at the bottom of the grid; plan_for_budget does the rest
        level[best[1]] += 1
        current = ratios()
        macs = best[2]
    return current


def allocate_knapsack(
    topology: Any, table: Any, budget: Budget | float, *, bins: int = 1000
) -> dict[str, float]:
    """Multiple-choice knapsack: one grid ratio per group minimising the summed drop, savings (in the budget's
    metric; a bare float budget: MACs) taken as additive."""
    budget = Budget.coerce(budget)
    base = budget.baseline(topology)
    need = (1.0 - budget.fraction) * base
    full = full_keep(topology)
    choices: list[tuple[str, list[tuple[float, float, float]]]] = []  # group -> [(ratio, saved, drop)]
    for g in table.groups:
        opts = [(1.0, 0.0, 0.0)]
        for r, d in zip(table.keep_ratios, g.drop, strict=True):
            trial = {**full, g.name: max(1, int(round(r * g.channels)))}
            opts.append((r, float(base - keep_value(topology, trial, budget)), float(d)))
        choices.append((g.name, opts))
    scale = bins / max(need, 1.0)
    states = np.arange(bins + 1)
    dp = np.full(bins + 1, np.inf)  # dp[s] = least summed drop reaching discretised saving s (capped at bins)
    dp[0] = 0.0
    back: list[tuple[np.ndarray, np.ndarray]] = []  # per group: (option picked, previous state) per state
    for _, opts in choices:
        new = np.full(bins + 1, np.inf)
        pick = np.zeros(bins + 1, dtype=np.int64)
        prev = np.zeros(bins + 1, dtype=np.int64)
        for j, (_, saved, drop) in enumerate(opts):
            dest = np.minimum(states + int(saved * scale), bins)  # (bins + 1,)
            value = dp + drop
            best_v = np.full(bins + 1, np.inf)
            np.minimum.at(best_v, dest, value)  # several sources can land on one capped state
            best_src = np.zeros(bins + 1, dtype=np.int64)
            winners = np.isfinite(value) & (value == best_v[dest])
            best_src[dest[winners]] = states[winners]
            better = best_v < new
            new[better] = best_v[better]
            pick[better] = j
            prev[better] = best_src[better]
        back.append((pick, prev))
        dp = new
    finite = np.flatnonzero(np.isfinite(dp))
    state = bins if np.isfinite(dp[bins]) else int(finite.max())
    ratios: dict[str, float] = {}
    for (name, opts), (pick, prev) in zip(reversed(choices), reversed(back), strict=True):
        ratios[name] = opts[int(pick[state])][0]
        state = int(prev[state])
    return ratios


def run_sensitivity(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Allocate pruning from sensitivity curves, then land the profile on the budget."""
    from engine.sensitivity import analyze_sensitivity

    step = options["grid_step"]
    grid = [round(1.0 - step * k, 6) for k in range(1, int(round(1.0 / step)))]
    grid = [r for r in grid if r >= options["min_keep_ratio"] - 1e-9] or [options["min_keep_ratio"]]
    scorer = ctx.get_scorer()
    table = analyze_sensitivity(
        ctx.model,
        ctx.topology,
        ctx.data,
        keep_ratios=grid,
        scorer=scorer,
        round_to=ctx.round_to,
        use_cache=options["use_cache"],
        callback=lambda done, total, msg: ctx.emit(NAME, done, total, f"sensitivity: {msg}"),
    )
    allocate = allocate_greedy if options["allocation"] == "greedy" else allocate_knapsack
    ratios = allocate(ctx.topology, table, ctx.budget_spec)
    plan = fit_ratios_to_budget(
        ctx,
        ratios,
        method=NAME,
        min_keep_ratio=options["min_keep_ratio"],
        meta={"allocation": options["allocation"]},
    )
    ratio = check_on_budget(ctx, plan, NAME)
    history: list = []
    cand = score_candidate(ctx, NAME, plan, history, step=1, total=1)
    return MethodResult(
        method=NAME,
        plan=plan,
        val_acc=cand.val_acc,
        macs_ratio=ratio,
        candidates=history,
        meta={"sensitivity_from_cache": table.from_cache, "sensitivity_n_scored": table.n_scored},
    )


SPEC = MethodSpec(
    name=NAME,
    description="Prune the least sensitive groups most: greedy or knapsack allocation over per-group "
    "val-accuracy-drop curves, landed on the MACs budget.",
    kind="oneshot",
    options={
        "allocation": OptionSpec(
            "allocation",
            str,
            "greedy",
            "how pruning is allocated over the curves",
            choices=("greedy", "knapsack"),
        ),
        "grid_step": OptionSpec(
            "grid_step", float, 0.1, "spacing of the keep-ratio grid of the curves", min=0.02, max=0.5
        ),
        "min_keep_ratio": OptionSpec(
            "min_keep_ratio", float, 0.1, "smallest keep ratio of a group", min=0.01, max=1.0
        ),
        "use_cache": OptionSpec("use_cache", bool, True, "reuse cached sensitivity tables"),
    },
    fn=run_sensitivity,
    budget_metrics=METRICS,
)
