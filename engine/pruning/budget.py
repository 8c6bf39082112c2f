"""Budgets: a metric and a fraction (`Budget`), their analytic value for a plan, and `plan_for_budget`.

A budget says which fraction of the baseline's MACs, params, activation memory, latency or weight size a
pruned model may keep. `plan_for_budget` bisects one scale factor on the per-group keep ratios against that
metric, then fills the rounding slack greedily. It decides counts only: which channels go is select.py's
job. Latency is predicted by engine.latency_table (attached to the topology); a latency landing is then
verified by timing the landed plan (through the table) and corrected by secant steps, so it lands on the budget
as measured. The analytic metrics are never measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import BudgetError
from engine.graph import Topology
from engine.pruning.plan import PruningPlan

TOLERANCE = 0.01  # relative: the plan's value lands in [fraction * (1 - TOLERANCE), fraction] x baseline
LATENCY_TOLERANCE = 0.05  # relative: a measured latency landing is on budget within this
LATENCY_SECANT_STEPS = 2  # measured corrections of the fraction given to the latency predictor
METRICS = ("macs", "params", "memory", "latency", "size")
UNITS = {
    "macs": "MACs",
    "params": "parameters",
    "memory": "activation bytes",
    "latency": "ms",
    "size": "weight bytes",
}
WEIGHT_BITS = 32  # float32 weights: size = params x 4 bytes unless bit-widths say otherwise
LATENCY_ATTR = "_latency_table"  # where engine.latency_table attaches its predictor to a Topology

Bits = Mapping[str, "int | Sequence[int]"]


@dataclass(frozen=True)
class Budget:
    """What a pruned model may keep: `fraction` of the baseline's value of `metric`.

    Metrics (all per sample, batch 1, at the topology's input size):
        macs: multiply-accumulates of conv and linear layers.
        params: every parameter (weights, biases, BN affine, fixed params).
        memory: activation bytes of one forward, counted as the sum of every conv/linear output tensor
            (float32), exactly what engine.cost.count_costs counts. It is not the allocator's peak: the
            peak depends on tensor lifetimes and the allocator, which no cost table can reproduce exactly.
        latency: forward time in ms on this machine, predicted by the topology's attached latency table
            (engine.latency_table.ensure_latency_table measures and attaches one).
        size: weight bytes = params x 4 (float32); with `bits` (or a plan's own bits), kernels at their
            widths, biases and BN at 32 bits, 0-bit channels removed (engine.quant_cost), / 8.

    Attributes:
        metric: one of METRICS.
        fraction: fraction of the baseline value to keep, in (0, 1] (0.5 = half remains).

    Raises:
        BudgetError: unknown metric, or a fraction outside (0, 1].
    """

    metric: str = "macs"
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise BudgetError(f"unknown budget metric {self.metric!r}; use one of {', '.join(METRICS)}")
        try:
            fraction = float(self.fraction)
        except (TypeError, ValueError):
            raise BudgetError(f"budget fraction must be a number in (0, 1], got {self.fraction!r}") from None
        if not 0.0 < fraction <= 1.0:
            raise BudgetError(
                f"budget {fraction} is outside (0, 1]: it is the fraction of the baseline's "
                f"{self.metric} to keep (0.5 = half)"
            )
        object.__setattr__(self, "fraction", fraction)

    @classmethod
    def coerce(cls, budget: Budget | float) -> Budget:
        """A Budget as is, or a bare number as a MACs budget (the pre-Budget convention)."""
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, bool) or not isinstance(budget, int | float | np.floating):
            raise BudgetError(f"a budget is a Budget or a MACs fraction in (0, 1], got {budget!r}")
        return cls("macs", float(budget))

    def to_dict(self) -> dict[str, Any]:
        """`{"metric": ..., "fraction": ...}`."""
        return {"metric": self.metric, "fraction": self.fraction}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        """Inverse of to_dict (a missing metric means MACs).

        Raises:
            BudgetError: not a mapping, no fraction, or an invalid metric/fraction.
        """
        if not isinstance(data, Mapping) or "fraction" not in data:
            raise BudgetError(f"a budget is written as {{'metric': ..., 'fraction': ...}}, got {data!r}")
        return cls(str(data.get("metric", "macs")), data["fraction"])

    def evaluator(self, topology: Topology, *, bits: Bits | None = None) -> Callable[[np.ndarray], float]:
        """A function: per-group keep counts (topology order, `Topology.keep_vector`) -> this metric's value.

        Raises:
            BudgetError: a latency budget on a topology without an attached latency table.
            ValueError: `bits` names an unknown group or holds a non-positive bit-width.
        """
        table = topology.table
        if self.metric == "macs":
            return lambda vector: float(table.macs(vector))
        if self.metric == "params":
            return lambda vector: float(table.evaluate(vector).params)
        if self.metric == "memory":
            return lambda vector: float(table.evaluate(vector).memory_bytes)
        if self.metric == "size":
            if bits:  # exact: kernels at their widths, biases/BN at 32 bits, 0-bit channels removed
                from engine.quant_cost import size_bytes_evaluator

                return size_bytes_evaluator(topology, bits)
            layer_bits = _layer_bits(topology, bits)
            return lambda vector: _size_bytes(table, vector, layer_bits)
        predictor = getattr(topology, LATENCY_ATTR, None)
        if predictor is None:
            raise BudgetError(
                f"a latency budget needs a latency table for {topology.model_name}; measure one with "
                "engine.latency_table.ensure_latency_table(model, topology) (the CLI and run_method do this)"
            )
        return predictor.predict_vector

    def value(self, topology: Topology, plan_or_keep: Any = None, *, bits: Bits | None = None) -> float:
        """Analytic value of the metric for a plan, a {group: channels kept} map, or None (the baseline).

        Raises:
            ValueError: the plan does not fit the topology.
            BudgetError: see `evaluator`.
        """
        if plan_or_keep is None:
            plan_or_keep = {}
        if bits is None and self.metric == "size":  # a quantized plan is sized at its own bit-widths
            bits = getattr(plan_or_keep, "bits", None)
        vector = plan_or_keep if isinstance(plan_or_keep, np.ndarray) else topology.keep_vector(plan_or_keep)
        return self.evaluator(topology, bits=bits)(vector)

    def baseline(self, topology: Topology) -> float:
        """The unpruned model's value of the metric (float32 weights for size)."""
        return self.value(topology, None)

    def ratio(self, topology: Topology, plan_or_keep: Any, *, bits: Bits | None = None) -> float:
        """Value of the plan / value of the baseline (what `fraction` bounds)."""
        return self.value(topology, plan_or_keep, bits=bits) / self.baseline(topology)

    def on_budget(self, topology: Topology, plan_or_keep: Any, *, tolerance: float = TOLERANCE) -> bool:
        """True when the plan's ratio is within `tolerance` (relative) of `fraction`.

        A latency plan that plan_for_budget verified by measurement is judged on its measured ratio
        (`meta["latency_measured_ratio"]`), within at least LATENCY_TOLERANCE.
        """
        measured = (getattr(plan_or_keep, "meta", None) or {}).get("latency_measured_ratio")
        if self.metric == "latency" and measured is not None:
            return abs(float(measured) / self.fraction - 1.0) <= max(tolerance, LATENCY_TOLERANCE)
        return abs(self.ratio(topology, plan_or_keep) / self.fraction - 1.0) <= tolerance

    def describe(self) -> str:
        """`50% of the baseline's MACs` and the like, for messages."""
        return f"{self.fraction:.0%} of the baseline's {UNITS[self.metric]}"


def _layer_bits(topology: Topology, bits: Bits | None) -> np.ndarray:
    """Per cost-table layer: the mean bit-width of its weights (each layer's params follow its out channels)."""
    table = topology.table
    out = np.full(len(table.specs), float(WEIGHT_BITS))
    if not bits:
        return out
    index = {g.name: g.index for g in topology.groups}
    for name, width in bits.items():
        if name not in index:
            raise ValueError(f"bits name group {name!r}, which {topology.model_name} does not have")
        widths = np.atleast_1d(np.asarray(width, dtype=np.float64))
        if widths.size == 0 or np.any(widths <= 0):
            raise ValueError(f"bit-widths of group {name!r} must be positive, got {width!r}")
        rows = table.r_out[:, index[name]] > 0
        out[rows] = widths.mean()  # per-channel widths: each kept channel's filter at its own width
    return out


def _size_bytes(table, vector: np.ndarray, layer_bits: np.ndarray) -> float:
    result = table.evaluate(vector)
    return float(np.dot(result.layer_params, layer_bits) + table.extra_params * WEIGHT_BITS) / 8.0


def record_budget(plan: PruningPlan, budget: Budget) -> PruningPlan:
    """Write `budget` on the plan (in place): `plan.budget` = fraction, the metric in meta and, on plan v2,
    its `budget_metric` attribute."""
    plan.budget = budget.fraction
    plan.meta = {**(plan.meta or {}), "budget_metric": budget.metric}
    if hasattr(plan, "budget_metric"):
        plan.budget_metric = budget.metric
    return plan


def _shape(topology: Topology, values, what: str) -> np.ndarray:
    prunable = topology.prunable_groups
    if values is None:
        return np.ones(len(prunable))
    if isinstance(values, Mapping):
        unknown = [k for k in values if k not in {g.name for g in topology.groups}]
        if unknown:  # names of non-prunable groups are accepted and ignored
            raise ValueError(
                f"{what} name groups that {topology.model_name} does not have: "
                f"{', '.join(map(repr, unknown[:5]))}"
            )
        out = np.array([float(values.get(g.name, np.nan)) for g in prunable])
        fill = np.nanmean(out) if np.isfinite(out).any() else 1.0
        out = np.where(np.isfinite(out), out, fill)
    else:
        out = np.asarray(list(values), dtype=np.float64)
        if out.shape != (len(prunable),):
            raise ValueError(
                f"{what} has {out.size} entries for {len(prunable)} prunable groups of "
                f"{topology.model_name}; pass one per group (topology.prunable_groups order)"
            )
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(f"{what} must be positive finite numbers, got min {np.min(out)}")
    return out / out.mean()


def plan_for_budget(
    topology: Topology,
    budget: Budget | float,
    *,
    scores: Mapping[str, float] | Sequence[float] | None = None,
    keep_ratios: Mapping[str, float] | Sequence[float] | None = None,
    min_keep_ratio: float = 0.05,
    max_keep_ratio: float = 1.0,
    round_to: int = 1,
    criterion: str = "l1",
    method: str = "budget",
    measure: bool = True,
) -> PruningPlan:
    """Keep counts for every prunable group so the pruned model keeps `budget` of the baseline (within 1%).

    A latency budget lands on the attached table's prediction; when the table is bound with its model
    (ensure_latency_table does that) and `measure` is True, the landed plan's physical model is then timed
    against the baseline (LatencyTable.measure_ratio) and the fraction given to the predictor is corrected by
    up to LATENCY_SECANT_STEPS secant steps, so the plan lands within LATENCY_TOLERANCE of the budget as
    measured (the closest of the plans tried is returned). `plan.meta` then also carries
    `latency_measured_ratio` (and `budget_ratio` is that measured ratio), `latency_predicted_ratio`,
    `latency_predictor_fraction`, `latency_clock` and `latency_landing` (every try).

    Args:
        topology: the model's topology (with an attached latency table for a latency budget).
        budget: a Budget, or a bare fraction of baseline MACs to keep in (0, 1] (0.5 = half the MACs remain).
        scores: per-group importance (higher keeps more channels); by name or in prunable-group order.
        keep_ratios: per-group keep ratios whose *shape* is kept while they are scaled onto the budget.
        min_keep_ratio: lowest keep ratio of any group.
        max_keep_ratio: highest keep ratio of any group.
        round_to: keep counts are multiples of this (or the whole group).
        criterion: recorded on the plan (how channels will be chosen).
        method: recorded on the plan.
        measure: verify and correct a latency landing by measurement (see above); False trusts the predictor.

    Returns:
        A plan whose value of the budget's metric is <= fraction x baseline and within 1% of it (a measured
        latency landing: within 5% of it, measured, when the machine allows); `plan.budget`
        is the fraction and `plan.meta` carries `budget_metric`, `budget_ratio`, `macs` and `macs_ratio`.

    Raises:
        BudgetError: budget outside (0, 1], unknown metric, no latency table for a latency budget, or
            unreachable under the keep bounds (the message says which bound).
        ValueError: both scores and keep_ratios given, or malformed ones.
    """
    spec = Budget.coerce(budget)
    options = dict(
        scores=scores,
        keep_ratios=keep_ratios,
        min_keep_ratio=min_keep_ratio,
        max_keep_ratio=max_keep_ratio,
        round_to=round_to,
        criterion=criterion,
        method=method,
    )
    plan = _land_on_evaluator(topology, spec, **options)
    table = getattr(topology, LATENCY_ATTR, None) if spec.metric == "latency" else None
    if measure and table is not None and getattr(table, "can_measure", False) and topology.prunable_groups:
        plan = _land_measured(topology, spec, table, plan, **options)
    return plan


def _land_measured(
    topology: Topology, spec: Budget, table: Any, first: PruningPlan, **options: Any
) -> PruningPlan:
    """Correct a predicted latency landing by measurement: secant steps on the fraction given to the predictor."""
    target = spec.fraction
    tried: list[tuple[float, PruningPlan, Any]] = []
    fraction, plan = target, first
    for step in range(LATENCY_SECANT_STEPS + 1):
        timing = table.measure_ratio(plan)
        tried.append((fraction, plan, timing))
        if abs(timing.ratio / target - 1.0) <= LATENCY_TOLERANCE / 2 or step == LATENCY_SECANT_STEPS:
            break  # half the tolerance: room for the noise of the measurement itself
        if len(tried) == 1 or abs(tried[-1][0] - tried[-2][0]) < 1e-9:
            proposal = fraction * target / max(timing.ratio, 1e-6)  # the secant through the origin
        else:
            (f0, _, t0), (f1, _, t1) = tried[-2], tried[-1]
            slope = (t1.ratio - t0.ratio) / (f1 - f0)
            proposal = (
                f1 + (target - t1.ratio) / slope
                if np.isfinite(slope) and slope > 1e-3
                else f1 * target / max(t1.ratio, 1e-6)
            )  # a flat or inverted secant: rescale instead
        proposal = float(np.clip(proposal, 0.02, 1.0))
        if abs(proposal - fraction) < 1e-4:
            break
        try:
            plan = _land_on_evaluator(topology, Budget("latency", proposal), **options)
        except BudgetError:
            break  # the keep bounds cannot reach the corrected fraction: keep the closest plan so far
        fraction = proposal
    fraction, plan, timing = min(tried, key=lambda t: abs(t[2].ratio / target - 1.0))
    predicted = spec.ratio(topology, plan)
    record_budget(plan, spec)
    plan.meta.update(
        {
            "budget_ratio": timing.ratio,
            "latency_measured_ratio": timing.ratio,
            "latency_predicted_ratio": predicted,
            "latency_predictor_fraction": fraction,
            "latency_clock": timing.clock,
            "on_budget": bool(abs(timing.ratio / target - 1.0) <= LATENCY_TOLERANCE),
            "latency_landing": [
                {"predictor_fraction": f, "measured_ratio": t.ratio, "ratio_se": t.ratio_se, "pairs": t.pairs}
                for f, _, t in tried
            ],
        }
    )
    return plan


def _land_on_evaluator(
    topology: Topology,
    spec: Budget,
    *,
    scores: Any,
    keep_ratios: Any,
    min_keep_ratio: float,
    max_keep_ratio: float,
    round_to: int,
    criterion: str,
    method: str,
) -> PruningPlan:
    """plan_for_budget on the metric's analytic or predicted value (no measurement)."""
    budget = spec.fraction
    if not 0.0 < min_keep_ratio <= max_keep_ratio <= 1.0:
        raise BudgetError(
            f"keep bounds must satisfy 0 < min_keep_ratio <= max_keep_ratio <= 1, "
            f"got {min_keep_ratio} and {max_keep_ratio}"
        )
    if scores is not None and keep_ratios is not None:
        raise ValueError("pass scores or keep_ratios to plan_for_budget, not both")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    if not topology.prunable_groups:
        if budget >= 1.0:
            plan = PruningPlan(
                model=topology.model_name,
                keep={},
                criterion=criterion,
                round_to=round_to,
                budget=budget,
                method=method,
                meta={"macs": topology.macs, "macs_ratio": 1.0, "budget_ratio": 1.0},
            )
            return record_budget(plan, spec)
        raise BudgetError(
            f"budget {budget:.3f} is unreachable for {topology.model_name}: it has no prunable "
            "channel groups (see Topology.groups[i].reason)"
        )
    shape = _shape(
        topology,
        scores if scores is not None else keep_ratios,
        "scores" if scores is not None else "keep_ratios",
    )
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
    evaluate = spec.evaluator(topology)
    full = evaluate(base)
    target = budget * full
    what = UNITS[spec.metric]

    def macs_of(counts: np.ndarray) -> float:  # the budget's metric, whichever it is
        vector = base.copy()
        vector[index] = counts
        return evaluate(vector)

    def counts_at(alpha: float) -> np.ndarray:
        return np.clip(snap(alpha * shape * channels), low, high)

    low_macs, high_macs = macs_of(low), macs_of(high)
    if low_macs > target * (1 + 1e-9):
        raise BudgetError(
            f"budget {budget:.3f} is unreachable for {topology.model_name}: with every prunable group at "
            f"min_keep_ratio={min_keep_ratio} (round_to={round_to}) the model still keeps {low_macs / full:.3f} "
            f"of its {what}; raise the budget or lower min_keep_ratio"
        )
    if high_macs < target * (1 - TOLERANCE):
        raise BudgetError(
            f"budget {budget:.3f} is unreachable for {topology.model_name}: with every prunable group at "
            f"max_keep_ratio={max_keep_ratio} the model keeps only {high_macs / full:.3f} of its {what}; "
            "lower the budget or raise max_keep_ratio"
        )
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
    vector = base.copy()
    vector[index] = counts
    plan_macs = int(topology.table.macs(vector))
    plan = PruningPlan(
        model=topology.model_name,
        keep=keep,
        criterion=criterion,
        round_to=round_to,
        budget=budget,
        method=method,
        meta={
            "macs": plan_macs,
            "macs_ratio": plan_macs / topology.table.full.macs,
            "budget_ratio": macs / full,
            "on_budget": bool(macs >= target * (1 - TOLERANCE)),
        },
    )
    return record_budget(plan, spec)


def memory_aware_scores(topology: Topology) -> dict[str, float]:
    """Per-group scores for plan_for_budget that keep compute-dense groups and prune memory-heavy ones.

    Score = MACs per channel / activation bytes per channel. On CPUs thin, high-resolution layers are
    memory- and overhead-bound, so cutting their channels buys more latency per MAC removed
    (bench/bench_latency.py: CIFAR ResNet-56 at a 50% MACs budget runs at ~0.45x instead of ~0.6x latency).
    """
    return {
        g.name: max(1.0, g.macs_per_channel) / max(1.0, g.memory_bytes_per_channel)
        for g in topology.prunable_groups
    }
