"""Per-group latency tables: measured once per architecture and machine, cached on disk, predicting a plan's latency.

A table times, for each prunable group alone, the model with that group cut to a few keep ratios against the
baseline (engine.latency_timer.measure_paired on engine.pruning.apply_plan copies). It never edits the caller's
model, never changes torch's thread count (it measures at the calling thread's setting and records it in the
key) and never decides a plan: engine.pruning.budget lands plans on a latency budget through `predict_vector`
and verifies the landing with `measure_ratio`.

Timing. Baseline and variant forwards are interleaved (A B, B A, ...) and each saving is 1 - the median of the
per-pair ratios, so the drift of a shared machine cancels and outliers are ignored. With one torch thread the
clock is the thread's CPU time: what a single-threaded deployment pays, and immune to being descheduled by
other processes (on a 2-core machine at load 7 wall time was off by 15% between two timings of one model);
with more threads, wall time (see engine.latency_timer).

The model. On a CPU a group's share of forward time follows the MACs it carries, at a rate of its own
(thin, high-resolution layers are memory- and overhead-bound and cost more per MAC than wide, low-resolution
ones). So the table stores, per group g and measured keep ratio r, the saving s_g(r) (a fraction of the
baseline), its standard error and the MACs m_g(r) it removed, fits one rate per group by least squares through
the origin, lambda_g = sum_r s_g(r) m_g(r) / sum_r m_g(r)^2, and predicts

    latency(plan) = baseline ms * (1 - sum_g lambda_g * M_g(plan)),

with M_g(plan) the MACs reduction attributed to g. A conv's MACs are bilinear in its in- and out-channels, so
when two groups shrink one layer its reduction is split symmetrically (the Shapley split of c_in x c_out:
k*dC_out*(C_in + c_in)/2 to the out-group, k*dC_in*(C_out + c_out)/2 to the in-group). The split sums exactly
to the plan's MACs reduction, and a plan that cuts one group alone reproduces that group's measurement.

Regularised rates (engine.latency_fit.fit_rates). A small group's saving is a few percent, the size of the
timing noise, so its raw rate can come out zero or negative; a landing then treats its channels as free and
prunes the others to nothing (it once landed 0.6 of the latency at 3% of the MACs). Removing work never makes
a model slower and never saves nothing, so each raw rate is shrunk towards the pooled rate (fitted over the
single-group cuts and over cuts of every group together at each keep ratio, whose large savings pin it) with
the empirical-Bayes weight tau^2 / (tau^2 + var_g) (var_g: the raw rate's variance from its savings' standard
errors; tau^2: the spread of the true rates between groups beyond that noise), then clipped to
[RATE_FLOOR, RATE_CEILING] x the pooled rate: a group's MACs save at least a quarter, at most four times, of
what the same share of the whole model's MACs saves. `raw_rate_per_mac` keeps the unregularised fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import BudgetError
from engine.graph import Topology
from engine.latency_fit import RATE_CEILING, RATE_FLOOR, FittedRates, fit_rates  # noqa: F401 (re-exported)
from engine.latency_timer import PairedTiming, clock_for, measure_paired
from engine.paths import cache_dir
from engine.pruning import PruningPlan, apply_plan
from engine.pruning.budget import LATENCY_ATTR

KEEP_RATIOS = (0.25, 0.5, 0.75)
VERSION = 2  # v2: paired CPU-time timing, regularised rates; v1 caches are measured again
LANDING_RUN_TIME_S = 1.0  # least timing budget of one measured check of a landed plan


def architecture_hash(topology: Topology) -> str:
    """A hash of the layers, shapes and channel groups (weights-independent): same hash, same latencies."""
    table = topology.table
    layers = [
        (s.name, s.kind, s.in_channels, s.out_channels, s.groups, s.kernel_numel, s.bias, s.coef, s.spatial)
        for s in table.specs
    ]
    groups = [(g.name, g.channels, g.prunable) for g in topology.groups]
    text = json.dumps([list(topology.input_shape), layers, groups], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    """Measured per-group latency rates of one model on one machine, and the predictor built on them.

    Attributes:
        model_name: the topology's model name.
        arch_hash: `architecture_hash(topology)`.
        input_shape: per-sample input shape (C, H, W).
        batch: batch size timed.
        device: "cpu" or "cuda".
        threads: torch.get_num_threads() of the measuring thread (part of the key).
        min_run_time_s: timing budget per measurement (on the clock).
        baseline_ms: median forward time of the unpruned model (ms, on the clock).
        keep_ratios: the measured keep ratios (ascending).
        groups: prunable group names, in topology order.
        measured_ms: (groups, keep_ratios) baseline_ms x the measured ratio with that group alone at that ratio.
        rate_per_mac: (groups, keep_ratios) fraction of the baseline latency saved per MAC removed (raw, for
            inspection; may be <= 0 from timing noise).
        fitted_rate_per_mac: (groups,) the regularised rates (`fit_rates`; all > 0) the predictor uses.
        clock: "thread_cpu" (one thread) or "wall" (engine.latency_timer).
        saving_se: (groups, keep_ratios) standard error of each measured saving.
        raw_rate_per_mac: (groups,) the least-squares rates before regularisation.
        pooled_rate_per_mac: the one rate fitted over every group and the uniform cuts (what the rates shrink
            towards).
        uniform_saving: (keep_ratios,) measured saving with every group cut to that keep ratio together.
        measure_s: wall time the measurement took.
        from_cache: True when read from the disk cache.

    Raises:
        ValueError: a fitted rate that is not a positive finite number.
    """

    model_name: str
    arch_hash: str
    input_shape: tuple[int, ...]
    batch: int
    device: str
    threads: int
    min_run_time_s: float
    baseline_ms: float
    keep_ratios: list[float]
    groups: list[str]
    measured_ms: list[list[float]]
    rate_per_mac: list[list[float]]
    fitted_rate_per_mac: list[float]
    clock: str = "thread_cpu"
    saving_se: list[list[float]] = field(default_factory=list)
    raw_rate_per_mac: list[float] = field(default_factory=list)
    pooled_rate_per_mac: float = 0.0
    uniform_saving: list[float] = field(default_factory=list)
    measure_s: float = 0.0
    from_cache: bool = False
    _topology: Topology | None = field(default=None, repr=False, compare=False)
    _model: nn.Module | None = field(default=None, repr=False, compare=False)
    _rows: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        rates = np.asarray(self.fitted_rate_per_mac, dtype=np.float64)
        if not np.all(np.isfinite(rates)) or np.any(rates <= 0):
            raise ValueError(
                "a latency table's fitted rates must be positive finite numbers (a removed channel "
                f"never saves nothing), got min {rates.min() if rates.size else None}; fit them "
                "with engine.latency_table.fit_rates"
            )

    @property
    def key(self) -> str:
        """Cache key: model, architecture, input, batch, device and threads."""
        return cache_key(
            self.model_name, self.arch_hash, self.input_shape, self.batch, self.device, self.threads
        )

    @property
    def can_measure(self) -> bool:
        """True when bound with its model, so `measure_ratio` (and a measured landing) can time plans."""
        return self._model is not None and self._topology is not None

    def bind(self, topology: Topology, model: nn.Module | None = None) -> LatencyTable:
        """Attach to `topology` (so Budget("latency", f) can use it) and return self.

        Args:
            topology: the architecture the table was measured on.
            model: the baseline, kept (never modified) so plans landed on a latency budget can be verified
                by measurement (`measure_ratio`); None keeps the one bound before, if any.

        Raises:
            BudgetError: the table was measured for another architecture.
        """
        if architecture_hash(topology) != self.arch_hash:
            raise BudgetError(
                f"this latency table was measured for another architecture than "
                f"{topology.model_name}; measure one for it with ensure_latency_table"
            )
        self._topology = topology
        if model is not None:
            self._model = model
        index = {g.name: g.index for g in topology.groups}
        self._rows = [index[name] for name in self.groups]
        setattr(topology, LATENCY_ATTR, self)
        return self

    def predict_vector(self, vector: np.ndarray) -> float:
        """Predicted latency (ms) for per-group keep counts in topology order (Topology.keep_vector)."""
        topology = self._topology
        if topology is None:
            raise BudgetError(
                "this latency table is not bound to a topology; call table.bind(topology) first"
            )
        savings = attributed_macs(topology, vector)  # (groups,) MACs removed per group
        saved = float(
            np.dot(np.asarray(self.fitted_rate_per_mac), savings[self._rows])
        )  # fraction of baseline
        return self.baseline_ms * (1.0 - saved)

    def predict_ms(self, plan_or_keep: PruningPlan | dict[str, int]) -> float:
        """Predicted latency (ms) of the bound model pruned to a plan or a {group: channels kept} map."""
        if self._topology is None:
            raise BudgetError(
                "this latency table is not bound to a topology; call table.bind(topology) first"
            )
        return self.predict_vector(self._topology.keep_vector(plan_or_keep))

    def measure_ratio(self, plan: PruningPlan, *, min_run_time_s: float | None = None) -> PairedTiming:
        """Measure the bound model pruned to `plan` (apply_plan) against the baseline with the paired timer.

        Args:
            plan: a plan for the bound topology.
            min_run_time_s: timing budget (default: the larger of LANDING_RUN_TIME_S and 4 x the table's).

        Raises:
            BudgetError: the table is not bound with its model (ensure_latency_table binds it).
        """
        if not self.can_measure:
            raise BudgetError(
                "this latency table has no model to time plans on; bind it with "
                "table.bind(topology, model) or get it from ensure_latency_table"
            )
        budget_s = (
            min_run_time_s if min_run_time_s is not None else max(LANDING_RUN_TIME_S, 4 * self.min_run_time_s)
        )
        pruned = apply_plan(self._model, self._topology, plan)
        return measure_paired(
            self._model,
            pruned,
            self.input_shape,
            batch=self.batch,
            device=self.device,
            min_run_time_s=budget_s,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the bound topology and model are not stored)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out.pop("from_cache")
        out["input_shape"] = list(self.input_shape)
        out["version"] = VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Inverse of to_dict.

        Raises:
            ValueError: another table version (the cache then measures again).
        """
        if data.get("version") != VERSION:
            raise ValueError(f"latency table version {data.get('version')!r} is not {VERSION}")
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["input_shape"] = tuple(fields["input_shape"])
        return cls(**fields)


def cache_key(
    model_name: str, arch_hash: str, input_shape: Sequence[int], batch: int, device: str, threads: int
) -> str:
    """File-name-safe key of one table."""
    shape = "x".join(str(int(s)) for s in input_shape)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return f"{safe}-{arch_hash}-{shape}-b{batch}-{device}-t{threads}"


def attributed_macs(topology: Topology, vector: np.ndarray) -> np.ndarray:
    """Per group, the MACs reduction of `vector` (keep counts, topology order) attributed to it.

    The symmetric split of each layer's bilinear MACs (see the module docstring); sums exactly to
    table.full.macs - table.macs(vector).
    """
    t = topology.table
    removed = t.channels - np.asarray(vector, dtype=np.float64)
    c_out, c_in = t.out0 - t.r_out @ removed, t.in0 - t.r_in @ removed
    k = t.coef / t.groups
    a_out = (
        np.where(t.depthwise, t.coef, k * (t.in0 + c_in) / 2.0) * t.weighted
    )  # MACs per out-channel removed
    a_in = np.where(t.depthwise, 0.0, k * (t.out0 + c_out) / 2.0) * t.weighted  # MACs per in-channel removed
    return removed * (t.r_out.T @ a_out + t.r_in.T @ a_in)


def _cache_path(key: str):
    folder = cache_dir() / "latency"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.json"


def load_latency_table(
    topology: Topology, *, batch: int = 1, device: str = "cpu", threads: int | None = None
) -> LatencyTable | None:
    """The cached table for this architecture and machine settings, bound to `topology`, or None."""
    threads = threads or torch.get_num_threads()
    key = cache_key(
        topology.model_name, architecture_hash(topology), topology.input_shape[1:], batch, device, threads
    )
    path = _cache_path(key)
    if not path.exists():
        return None
    try:
        table = LatencyTable.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None  # a corrupt or older cache file is measured again
    table.from_cache = True
    return table.bind(topology)


def _check_threads(threads: int | None) -> int:
    current = torch.get_num_threads()
    if threads is not None and threads != current:
        raise ValueError(
            f"a latency table is timed at the calling thread's torch setting ({current} threads), "
            f"not threads={threads}; call torch.set_num_threads({threads}) in your program first "
            "or leave threads unset"
        )
    return current


def measure_latency_table(
    model: nn.Module,
    topology: Topology,
    *,
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time_s: float = 0.2,
    keep_ratios: Sequence[float] = KEEP_RATIOS,
    repeats: int = 1,
    callback: Callable[[int, int, str], None] | None = None,
) -> LatencyTable:
    """Time every prunable group alone at `keep_ratios` against the baseline; the table is bound, not cached.

    Args:
        model: the baseline (not modified; pruned copies are timed; bound for measured landings).
        topology: its topology.
        batch: batch size timed.
        device: "cpu" or "cuda".
        threads: the torch threads expected (default and only accepted value: the calling thread's
            torch.get_num_threads(); this function never changes it).
        min_run_time_s: timing budget per measurement (baseline and variant interleaved, on the clock).
        keep_ratios: keep ratios measured per group, in (0, 1).
        repeats: each measurement's budget is multiplied by this (kept for callers of the older API).
        callback: called as callback(done, total, message) after every measurement.

    Raises:
        ValueError: a keep ratio outside (0, 1), repeats < 1, or `threads` other than the current setting.
    """
    grid = sorted(float(r) for r in keep_ratios)
    if not grid or grid[0] <= 0.0 or grid[-1] >= 1.0:
        raise ValueError(f"keep_ratios must lie in (0, 1), got {list(keep_ratios)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    threads = _check_threads(threads)
    size = tuple(topology.input_shape[1:])
    start = time.perf_counter()
    groups = topology.prunable_groups
    total = (len(groups) + 1) * len(grid)
    full = topology.keep_vector({})
    saved = np.zeros((len(groups), len(grid)))
    se = np.zeros_like(saved)
    removed = np.zeros_like(saved)
    base_ms: list[float] = []
    done = 0
    for i, group in enumerate(groups):
        for j, r in enumerate(grid):
            keep = max(1, int(round(r * group.channels)))
            plan = PruningPlan(
                model=topology.model_name, keep={group.name: keep} if keep < group.channels else {}
            )
            timing = measure_paired(
                model,
                apply_plan(model, topology, plan),
                size,
                batch=batch,
                device=device,
                min_run_time_s=min_run_time_s * repeats,
            )
            saved[i, j], se[i, j] = 1.0 - timing.ratio, timing.ratio_se
            base_ms.append(timing.a_ms)
            vector = full.copy()
            vector[group.index] = keep
            removed[i, j] = float(topology.table.full.macs - topology.table.macs(vector))
            done += 1
            if callback is not None:
                callback(done, total, f"{group.name} at {r:.2f}")
    uniform_saved, uniform_macs = [], []
    for r in grid:  # every group cut together: a large saving that pins the pooled rate
        keep = {g.name: max(1, int(round(r * g.channels))) for g in groups}
        plan = PruningPlan(
            model=topology.model_name, keep={k: v for k, v in keep.items() if v < topology.group(k).channels}
        )
        timing = measure_paired(
            model,
            apply_plan(model, topology, plan),
            size,
            batch=batch,
            device=device,
            min_run_time_s=min_run_time_s * repeats,
        )
        uniform_saved.append(1.0 - timing.ratio)
        uniform_macs.append(float(topology.table.full.macs - topology.table.macs(topology.keep_vector(plan))))
        base_ms.append(timing.a_ms)
        done += 1
        if callback is not None:
            callback(done, total, f"every group at {r:.2f}")
    fit = fit_rates(
        saved,
        removed,
        se,
        total_macs=float(topology.table.full.macs),
        uniform_saved=np.asarray(uniform_saved),
        uniform_macs=np.asarray(uniform_macs),
    )
    baseline_ms = float(np.median(base_ms)) if base_ms else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_rates = np.where(removed > 0, saved / np.where(removed > 0, removed, 1.0), 0.0)
    table = LatencyTable(
        model_name=topology.model_name,
        arch_hash=architecture_hash(topology),
        input_shape=size,
        batch=batch,
        device=device,
        threads=threads,
        min_run_time_s=float(min_run_time_s * repeats),
        baseline_ms=baseline_ms,
        keep_ratios=grid,
        groups=[g.name for g in groups],
        measured_ms=(baseline_ms * (1.0 - saved)).tolist(),
        rate_per_mac=raw_rates.tolist(),
        fitted_rate_per_mac=fit.rates.tolist(),
        clock=clock_for(threads),
        saving_se=se.tolist(),
        raw_rate_per_mac=fit.raw.tolist(),
        pooled_rate_per_mac=fit.pooled,
        uniform_saving=uniform_saved,
        measure_s=time.perf_counter() - start,
    )
    return table.bind(topology, model)


def save_latency_table(table: LatencyTable) -> None:
    """Write the table to the disk cache (atomically: a reader never sees half a file)."""
    path = _cache_path(table.key)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table.to_dict()))
    os.replace(tmp, path)


def ensure_latency_table(
    model: nn.Module,
    topology: Topology,
    *,
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time_s: float = 0.2,
    keep_ratios: Sequence[float] = KEEP_RATIOS,
    repeats: int = 1,
    use_cache: bool = True,
    callback: Callable[[int, int, str], None] | None = None,
) -> LatencyTable:
    """The latency table of `topology` on this machine: already bound, cached on disk, or measured now.

    A cached table counts only when it was timed at least `min_run_time_s` per measurement on the same
    keep ratios at the calling thread's torch thread count; the result is bound to `topology` and `model`
    (Budget("latency", f) then predicts with it and plan_for_budget verifies its landing by measurement) and
    cached. Arguments as for `measure_latency_table`; `use_cache=False` always measures (and refreshes the
    cache).

    Raises:
        ValueError: as for `measure_latency_table`, when a table has to be measured.
    """
    threads = threads or torch.get_num_threads()
    grid = sorted(float(r) for r in keep_ratios)

    def good(table: LatencyTable | None) -> bool:
        return (
            table is not None
            and table.batch == batch
            and table.device == device
            and table.threads == threads
            and table.min_run_time_s >= min_run_time_s
            and table.keep_ratios == grid
            and table.arch_hash == architecture_hash(topology)
        )

    bound = getattr(topology, LATENCY_ATTR, None)
    if use_cache and good(bound):
        return bound.bind(topology, model)
    if use_cache:
        cached = load_latency_table(topology, batch=batch, device=device, threads=threads)
        if good(cached):
            return cached.bind(topology, model)
    table = measure_latency_table(
        model,
        topology,
        batch=batch,
        device=device,
        threads=threads,
        min_run_time_s=min_run_time_s,
        keep_ratios=grid,
        repeats=repeats,
        callback=callback,
    )
    save_latency_table(table)
    return table
