"""plan_for_budget: per-group scores or ratios -> exact keep counts that land on a MACs budget.

A single scale factor on the per-group keep ratios is bisected against the analytic cost table, then
rounding slack is filled greedily one channel step at a time. It decides counts only; which channels go is
select.py's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engine.errors import BudgetError
from engine.graph import Topology
from engine.pruning.plan import PruningPlan

TOLERANCE = 0.01  # relative: the plan's MACs land in [budget * (1 - TOLERANCE), budget] x baseline


def _shape(topology: Topology, values, what: str) -> np.ndarray:
    prunable = topology.prunable_groups
    if values is None:
        return np.ones(len(prunable))
    if isinstance(values, Mapping):
        unknown = [k for k in values if k not in {g.name for g in topology.groups}]
        if unknown:  # names of non-prunable groups are accepted and ignored
            raise ValueError(f"{what} name groups that {topology.model_name} does not have: "
                             f"{', '.join(map(repr, unknown[:5]))}")
        out = np.array([float(values.get(g.name, np.nan)) for g in prunable])
        fill = np.nanmean(out) if np.isfinite(out).any() else 1.0
        out = np.where(np.isfinite(out), out, fill)
    else:
        out = np.asarray(list(values), dtype=np.float64)
        if out.shape != (len(prunable),):
            raise ValueError(f"{what} has {out.size} entries for {len(prunable)} prunable groups of "
                             f"{topology.model_name}; pass one per group (topology.prunable_groups order)")
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(f"{what} must be positive finite numbers, got min {np.min(out)}")
    return out / out.mean()


def plan_for_budget(topology: Topology, budget: float, *, scores: Mapping[str, float] | Sequence[float] | None = None,
                    keep_ratios: Mapping[str, float] | Sequence[float] | None = None, min_keep_ratio: float = 0.05,
                    max_keep_ratio: float = 1.0, round_to: int = 1, criterion: str = "l1",
                    method: str = "budget") -> PruningPlan:
    """Keep counts for every prunable group so the pruned model keeps `budget` x baseline MACs (within 1%).

    Args:
        topology: the model's topology.
        budget: fraction of baseline MACs to keep, in (0, 1] (0.5 = half the MACs remain).
        scores: per-group importance (higher keeps more channels); by name or in prunable-group order.
        keep_ratios: per-group keep ratios whose *shape* is kept while they are scaled onto the budget.
        min_keep_ratio: lowest keep ratio of any group.
        max_keep_ratio: highest keep ratio of any group.
        round_to: keep counts are multiples of this (or the whole group).
        criterion: recorded on the plan (how channels will be chosen).
        method: recorded on the plan.

    Returns:
        A plan whose analytic MACs are <= budget x baseline and within 1% of it.

    Raises:
        BudgetError: budget outside (0, 1], or unreachable under the keep bounds (the message says which bound).
        ValueError: both scores and keep_ratios given, or malformed ones.
    """
    if not 0.0 < budget <= 1.0:
        raise BudgetError(f"budget {budget} is outside (0, 1]: it is the fraction of MACs to keep (0.5 = half)")
    if not 0.0 < min_keep_ratio <= max_keep_ratio <= 1.0:
        raise BudgetError(f"keep bounds must satisfy 0 < min_keep_ratio <= max_keep_ratio <= 1, "
                          f"got {min_keep_ratio} and {max_keep_ratio}")
    if scores is not None and keep_ratios is not None:
        raise ValueError("pass scores or keep_ratios to plan_for_budget, not both")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    if not topology.prunable_groups:
        if budget >= 1.0:
            return PruningPlan(model=topology.model_name, keep={}, criterion=criterion, round_to=round_to,
                               budget=budget, method=method, meta={"macs": topology.macs, "macs_ratio": 1.0})
        raise BudgetError(f"budget {budget:.3f} is unreachable for {topology.model_name}: it has no prunable "
                          "channel groups (see Topology.groups[i].reason)")
    shape = _shape(topology, scores if scores is not None else keep_ratios,
                   "scores" if scores is not None else "keep_ratios")
    prunable = topology.prunable_groups
    index = np.array([g.index for g in prunable], dtype=int)
    channels = np.array([g.channels for g in prunable], dtype=np.float64)
    step = np.minimum(float(round_to), channels)

    def snap(counts: np.ndarray) -> np.ndarray:
        snapped = np.where(step > 1, np.floor(counts / step + 0.5) * step, np.floor(counts + 0.5))
        return np.minimum(channels, np.maximum(snapped, 1.0))

    low = np.minimum(channels, np.maximum(np.ceil(min_keep_ratio * channels / step) * step, 1.0))
    high = np.maximum(low, np.minimum(channels, np.floor(max_keep_ratio * channels / step) * step))
    high = np.where(max_keep_ratio >= 1.0, channels, high)
    base = topology.keep_vector({})
    full = topology.table.full.macs
    target = budget * full

    def macs_of(counts: np.ndarray) -> float:
        vector = base.copy()
        vector[index] = counts
        return float(topology.table.macs(vector))

    def counts_at(alpha: float) -> np.ndarray:
        return np.clip(snap(alpha * shape * channels), low, high)

    low_macs, high_macs = macs_of(low), macs_of(high)
    if low_macs > target * (1 + 1e-9):
        raise BudgetError(
            f"budget {budget:.3f} is unreachable for {topology.model_name}: with every prunable group at "
            f"min_keep_ratio={min_keep_ratio} (round_to={round_to}) the model still keeps {low_macs / full:.3f} "
            "of its MACs; raise the budget or lower min_keep_ratio")
    if high_macs < target * (1 - TOLERANCE):
        raise BudgetError(
            f"budget {budget:.3f} is unreachable for {topology.model_name}: with every prunable group at "
            f"max_keep_ratio={max_keep_ratio} the model keeps only {high_macs / full:.3f} of its MACs; "
            "lower the budget or raise max_keep_ratio")
    lo, hi = 0.0, float(np.max(1.0 / shape)) * 1.01 + 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if macs_of(counts_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    counts = counts_at(lo)
    macs = macs_of(counts)
    # fill the rounding slack: grow the groups furthest below their ideal share, one step at a time
    ideal = np.clip(hi * shape * channels, low, high)
    for _ in range(4 * len(counts) + 8):
        order = np.argsort(-(ideal - counts) / channels)
        grown = False
        for g in order:
            if counts[g] + step[g] > high[g]:
                continue
            trial = counts.copy()
            trial[g] += step[g]
            trial_macs = macs_of(trial)
            if trial_macs <= target:
                counts, macs, grown = trial, trial_macs, True
                break
        if not grown or macs >= target * (1 - TOLERANCE / 10):
            break
    keep = {g.name: int(c) for g, c in zip(prunable, counts, strict=True) if int(c) < g.channels}
    return PruningPlan(model=topology.model_name, keep=keep, criterion=criterion, round_to=round_to, budget=budget,
                       method=method, meta={"macs": int(macs), "macs_ratio": macs / full,
                                            "on_budget": bool(macs >= target * (1 - TOLERANCE))})


def memory_aware_scores(topology: Topology) -> dict[str, float]:
    """Per-group scores for plan_for_budget that keep compute-dense groups and prune memory-heavy ones.

    Score = MACs per channel / activation bytes per channel. On CPUs thin, high-resolution layers are
    memory- and overhead-bound, so cutting their channels buys more latency per MAC removed
    (bench/bench_latency.py: CIFAR ResNet-56 at a 50% MACs budget runs at ~0.45x instead of ~0.6x latency).
    """
    return {g.name: max(1.0, g.macs_per_channel) / max(1.0, g.memory_bytes_per_channel)
            for g in topology.prunable_groups}
