"""Candidate bookkeeping shared by the methods: landing a profile on the budget, checking it, scoring it.

What a budget is and how a plan's value is computed live in engine.pruning.budget (`Budget`,
`plan_for_budget`); the helpers here apply `ctx.budget_spec`. Nothing here chooses channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import BudgetError
from engine.methods.registry import Candidate, MethodContext
from engine.pruning.budget import TOLERANCE, Budget, record_budget

BUDGET_TOLERANCE = TOLERANCE  # |ratio / fraction - 1|, the contract's "within 1% of the budget"


def prunable_groups(topology: Any) -> list[Any]:
    """The topology's prunable channel groups, in topology order."""
    return [g for g in topology.groups if g.prunable]


def full_keep(topology: Any) -> dict[str, int]:
    """Group name -> all channels kept (every group, prunable or not)."""
    return {g.name: int(g.channels) for g in topology.groups}


def baseline_macs(topology: Any) -> int:
    """Analytic MACs of the unpruned topology."""
    from engine.cost import plan_macs

    return int(plan_macs(topology, full_keep(topology)))


def keep_macs(topology: Any, keep: Mapping[str, int] | Any) -> int:
    """Analytic MACs of a keep map (group name -> channels kept) or a PruningPlan."""
    from engine.cost import plan_macs

    if isinstance(keep, Mapping):
        keep = {**full_keep(topology), **{k: int(v) for k, v in keep.items()}}
    return int(plan_macs(topology, keep))


def keep_value(topology: Any, keep: Mapping[str, int] | Any, budget: Budget | float) -> float:
    """The budget's metric (a bare float budget: MACs) for a keep map (group name -> channels kept) or a plan."""
    if isinstance(keep, Mapping):
        keep = {**full_keep(topology), **{k: int(v) for k, v in keep.items()}}
    return Budget.coerce(budget).value(topology, keep)


def macs_ratio(topology: Any, plan: Any, *, base: int | None = None) -> float:
    """MACs of `plan` / MACs of the baseline."""
    base = base or baseline_macs(topology)
    return keep_macs(topology, plan) / base


def budget_ratio(ctx: MethodContext, plan: Any) -> float:
    """The plan's value of the budget's metric / the baseline's (what `ctx.budget` bounds)."""
    return ctx.budget_spec.ratio(ctx.topology, plan)


def on_budget(
    topology: Any, plan: Any, budget: Budget | float, *, tolerance: float = BUDGET_TOLERANCE
) -> bool:
    """True when the plan's ratio in the budget's metric (a bare float: MACs) is within `tolerance` of it."""
    return Budget.coerce(budget).on_budget(topology, plan, tolerance=tolerance)


def fit_ratios_to_budget(
    ctx: MethodContext,
    keep_ratios: Mapping[str, float] | None,
    *,
    method: str,
    min_keep_ratio: float = 0.05,
    scores: Mapping[str, float] | None = None,
    meta: dict[str, Any] | None = None,
) -> Any:
    """A plan on `ctx.budget_spec` (any metric) shaped like `keep_ratios` (or `scores`), via plan_for_budget.

    Raises:
        BudgetError: The budget cannot be met under the keep bounds.
    """
    from engine.pruning import plan_for_budget

    kwargs: dict[str, Any] = {"min_keep_ratio": min_keep_ratio, "round_to": ctx.round_to}
    shape = dict(keep_ratios) if keep_ratios is not None else None
    if scores is not None:
        kwargs["scores"] = dict(scores)
    budget = ctx.budget_spec
    plan = plan_for_budget(ctx.topology, budget, keep_ratios=shape, **kwargs)
    # Coarse rounding (round_to=8 on 16-channel groups) can leave a lopsided profile off budget: flatten the
    # profile towards uniform until it lands (the first attempt is exact in the common case).
    for power in (0.5, 0.0):
        if on_budget(ctx.topology, plan, budget) or shape is None:
            break
        flat = {k: max(v, 1e-6) ** power for k, v in shape.items()}
        plan = plan_for_budget(ctx.topology, budget, keep_ratios=flat, **kwargs)
    return stamp(plan, method=method, budget=budget, meta=meta)


def stamp(plan: Any, *, method: str, budget: Budget | float, meta: dict[str, Any] | None = None) -> Any:
    """Record the method, the budget (fraction and metric; a bare float is MACs) and extra metadata on a plan
    (in place) and return it."""
    plan.method = method
    record_budget(plan, Budget.coerce(budget))
    if meta:
        plan.meta = {**(plan.meta or {}), **meta}
    return plan


def check_on_budget(ctx: MethodContext, plan: Any, method: str) -> float:
    """The plan's MACs ratio (for `MethodResult.macs_ratio`), after checking that its ratio in the budget's
    metric is within 1% of `ctx.budget`; that ratio is recorded as `plan.meta["budget_ratio"]`.

    Raises:
        BudgetError: The plan misses the budget by more than 1% (a method bug or an unreachable budget).
    """
    budget = ctx.budget_spec
    ratio = budget.ratio(ctx.topology, plan)
    if abs(ratio / budget.fraction - 1.0) > BUDGET_TOLERANCE:
        raise BudgetError(
            f"method '{method}' produced a plan keeping {ratio:.4f} of the {budget.metric} for a budget of "
            f"{budget.fraction}; the budget may be unreachable under the minimum keep ratio: raise the budget "
            "or lower min_keep_ratio"
        )
    plan.meta = {**(plan.meta or {}), "budget_ratio": ratio}
    return macs_ratio(ctx.topology, plan)


def score_candidate(
    ctx: MethodContext,
    method: str,
    plan: Any,
    history: list[Candidate],
    *,
    step: int,
    total: int,
    meta: dict[str, Any] | None = None,
    reward: Callable[[float], float] | None = None,
) -> Candidate:
    """Score `plan` with the shared scorer, append it to `history` and report it to the callback.

    `reward(val_acc)`, when given, is stored as meta["reward"] (the run store records it per episode).
    """
    acc = ctx.get_scorer().score(plan)
    extra = dict(meta or {})
    if reward is not None:
        extra["reward"] = reward(acc)
    cand = Candidate(
        index=len(history), plan=plan, val_acc=acc, macs_ratio=macs_ratio(ctx.topology, plan), meta=extra
    )
    history.append(cand)
    ctx.emit(
        method, step, total, f"candidate {cand.index}: val {acc:.2f}% at {cand.macs_ratio:.3f} MACs", cand
    )
    return cand


def best_candidate(history: list[Candidate]) -> Candidate:
    """The candidate with the highest val accuracy (earliest on ties)."""
    if not history:
        raise ValueError("no candidate was scored; give the search at least one step")
    return max(history, key=lambda c: (c.val_acc, -c.index))


def refill_to_budget(
    topology: Any,
    keep: dict[str, int],
    removed: list[tuple[str, int]],
    budget: Budget | float,
) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Give back removed channels, most recently removed first, while the budget's metric stays within it.

    Removing one channel of a large coupled group can overshoot the budget by more than 1%; this fills the slack.

    Args:
        topology: The topology.
        keep: Channels kept per group after the removals.
        removed: (group, channel) in removal order.
        budget: The budget (a bare float: fraction of baseline MACs allowed).

    Returns:
        (keep, removed) after the refill.
    """
    spec = Budget.coerce(budget)
    target = spec.fraction * spec.baseline(topology)
    keep = dict(keep)
    still: list[tuple[str, int]] = []
    macs = keep_value(topology, keep, spec)
    for name, channel in reversed(removed):
        trial = {**keep, name: keep[name] + 1}
        trial_macs = keep_value(topology, trial, spec) if macs < target * (1 - 1e-4) else target + 1
        if trial_macs <= target:
            keep, macs = trial, trial_macs
        else:
            still.append((name, channel))
    return keep, list(reversed(still))
