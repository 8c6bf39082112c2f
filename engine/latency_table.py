"""Per-group latency tables: measured once per architecture and machine, cached on disk, predicting a plan's latency.

A table times the baseline and, for each prunable group alone, the model with that group cut to a few keep
ratios (engine.cost.measure_latency on engine.pruning.apply_plan copies). It never edits the caller's model
and never decides a plan: engine.pruning.budget lands plans on a latency budget through `predict_vector`.

The model. On a CPU a group's share of forward time follows the MACs it carries, at a rate of its own
(thin, high-resolution layers are memory- and overhead-bound and cost more per MAC than wide, low-resolution
ones) that also changes as the group thins (kernels lose vector efficiency). So the table stores, per group
g and measured keep ratio r, the saving s_g(r) = 1 - (ms with g alone at r) / (baseline ms) (each group
against the baselines timed just before and after it, so drift of a shared machine cancels) and the MACs
m_g(r) it removed, fits one rate per group by least squares through the origin,
lambda_g = sum_r s_g(r) m_g(r) / sum_r m_g(r)^2, and predicts

    latency(plan) = baseline ms * (1 - sum_g lambda_g * M_g(plan)),

with M_g(plan) the MACs reduction attributed to g. One fitted rate instead of a rate interpolated per ratio:
a rate read off one small removal divides timing noise by few MACs (the table keeps those raw rates,
`rate_per_mac`, for inspection), and the fit weights each ratio by the MACs it moved. A conv's MACs are bilinear in its in- and out-channels, so when
two groups shrink one layer its reduction is split symmetrically (the Shapley split of c_in x c_out:
k*dC_out*(C_in + c_in)/2 to the out-group, k*dC_in*(C_out + c_out)/2 to the in-group). The split sums
exactly to the plan's MACs reduction, and a plan that cuts one group alone reproduces that group's
measurement at the measured ratios. An additive model of per-group savings would count a layer whose in-
and out-channels are both halved as fully removed; the split counts the 3/4 that really goes.
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

from engine.cost import measure_latency
from engine.errors import BudgetError
from engine.graph import Topology
from engine.paths import cache_dir
from engine.pruning import PruningPlan, apply_plan
from engine.pruning.budget import LATENCY_ATTR

KEEP_RATIOS = (0.25, 0.5, 0.75)
VERSION = 1


def architecture_hash(topology: Topology) -> str:
    """A hash of the layers, shapes and channel groups (weights-independent): same hash, same latencies."""
    table = topology.table
    layers = [(s.name, s.kind, s.in_channels, s.out_channels, s.groups, s.kernel_numel, s.bias, s.coef, s.spatial)
              for s in table.specs]
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
        threads: torch threads during timing.
        min_run_time_s: timing budget per measurement (blocked_autorange).
        baseline_ms: median latency of the unpruned model.
        keep_ratios: the measured keep ratios (ascending).
        groups: prunable group names, in topology order.
        measured_ms: (groups, keep_ratios) latency with that group alone at that ratio.
        rate_per_mac: (groups, keep_ratios) fraction of the baseline latency saved per MAC removed (clamped
            at 0 against timing noise).
        fitted_rate_per_mac: (groups,) the least-squares rate through the origin over the measured ratios,
            which the predictor uses.
        measure_s: wall time the measurement took.
        from_cache: True when read from the disk cache.
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
    measure_s: float = 0.0
    from_cache: bool = False
    _topology: Topology | None = field(default=None, repr=False, compare=False)
    _rows: list[int] = field(default_factory=list, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Cache key: model, architecture, input, batch, device and threads."""
        return cache_key(self.model_name, self.arch_hash, self.input_shape, self.batch, self.device, self.threads)

    def bind(self, topology: Topology) -> LatencyTable:
        """Attach to `topology` (so Budget("latency", f) can use it) and return self.

        Raises:
            BudgetError: the table was measured for another architecture.
        """
        if architecture_hash(topology) != self.arch_hash:
            raise BudgetError(f"this latency table was measured for another architecture than "
                              f"{topology.model_name}; measure one for it with ensure_latency_table")
        self._topology = topology
        index = {g.name: g.index for g in topology.groups}
        self._rows = [index[name] for name in self.groups]
        setattr(topology, LATENCY_ATTR, self)
        return self

    def predict_vector(self, vector: np.ndarray) -> float:
        """Predicted latency (ms) for per-group keep counts in topology order (Topology.keep_vector)."""
        topology = self._topology
        if topology is None:
            raise BudgetError("this latency table is not bound to a topology; call table.bind(topology) first")
        savings = attributed_macs(topology, vector)  # (groups,) MACs removed per group
        saved = float(np.dot(np.asarray(self.fitted_rate_per_mac), savings[self._rows]))  # fraction of baseline
        return self.baseline_ms * (1.0 - saved)

    def predict_ms(self, plan_or_keep: PruningPlan | dict[str, int]) -> float:
        """Predicted latency (ms) of the bound model pruned to a plan or a {group: channels kept} map."""
        if self._topology is None:
            raise BudgetError("this latency table is not bound to a topology; call table.bind(topology) first")
        return self.predict_vector(self._topology.keep_vector(plan_or_keep))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the bound topology is not stored)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out.pop("from_cache")
        out["input_shape"] = list(self.input_shape)
        out["version"] = VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Inverse of to_dict."""
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["input_shape"] = tuple(fields["input_shape"])
        return cls(**fields)


def cache_key(model_name: str, arch_hash: str, input_shape: Sequence[int], batch: int, device: str,
              threads: int) -> str:
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
    a_out = np.where(t.depthwise, t.coef, k * (t.in0 + c_in) / 2.0) * t.weighted  # MACs per out-channel removed
    a_in = np.where(t.depthwise, 0.0, k * (t.out0 + c_out) / 2.0) * t.weighted  # MACs per in-channel removed
    return removed * (t.r_out.T @ a_out + t.r_in.T @ a_in)


def _cache_path(key: str):
    folder = cache_dir() / "latency"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.json"


def load_latency_table(topology: Topology, *, batch: int = 1, device: str = "cpu",
                       threads: int | None = None) -> LatencyTable | None:
    """The cached table for this architecture and machine settings, bound to `topology`, or None."""
    threads = threads or torch.get_num_threads()
    key = cache_key(topology.model_name, architecture_hash(topology), topology.input_shape[1:], batch, device,
                    threads)
    path = _cache_path(key)
    if not path.exists():
        return None
    try:
        table = LatencyTable.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None  # a corrupt or older cache file is measured again
    table.from_cache = True
    return table.bind(topology)


def measure_latency_table(model: nn.Module, topology: Topology, *, batch: int = 1, device: str = "cpu",
                          threads: int | None = None, min_run_time_s: float = 0.2,
                          keep_ratios: Sequence[float] = KEEP_RATIOS, repeats: int = 3,
                          callback: Callable[[int, int, str], None] | None = None) -> LatencyTable:
    """Time the baseline and every prunable group alone at `keep_ratios`; the table is bound, not cached.

    Args:
        model: the baseline (not modified; pruned copies are timed).
        topology: its topology.
        batch: batch size timed.
        device: "cpu" or "cuda".
        threads: torch threads (default: torch.get_num_threads()).
        min_run_time_s: timing budget per measurement; the baseline is timed before every group and at the
            end, and each group's savings are taken against the baselines around it.
        keep_ratios: keep ratios measured per group, in (0, 1).
        repeats: each latency is the least of this many medians (each over min_run_time_s / repeats).
        callback: called as callback(done, total, message) after every measurement.

    Raises:
        ValueError: a keep ratio outside (0, 1).
    """
    grid = sorted(float(r) for r in keep_ratios)
    if not grid or grid[0] <= 0.0 or grid[-1] >= 1.0:
        raise ValueError(f"keep_ratios must lie in (0, 1), got {list(keep_ratios)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    threads = threads or torch.get_num_threads()
    size = tuple(topology.input_shape[1:])
    start = time.perf_counter()
    groups = topology.prunable_groups
    total = len(groups) * (len(grid) + 1) + 1
    done = 0

    def timed(m: nn.Module, what: str) -> float:
        nonlocal done
        # the least of several medians: contention on a shared machine only ever adds time
        ms = min(measure_latency(m, size, batch=batch, threads=threads, min_run_time_s=min_run_time_s / repeats,
                                 device=device).median_ms for _ in range(repeats))
        done += 1
        if callback is not None:
            callback(done, total, what)
        return ms

    base = [timed(model, "baseline")]  # one before every group and one at the end
    measured: list[list[float]] = []  # (groups, keep_ratios) ms
    removed_macs: list[list[float]] = []  # (groups, keep_ratios) MACs removed by that group alone
    full = topology.keep_vector({})
    for i, group in enumerate(groups):
        if i:
            base.append(timed(model, "baseline"))
        row_ms, row_macs = [], []
        for r in grid:
            keep = max(1, int(round(r * group.channels)))
            plan = PruningPlan(model=topology.model_name, keep={group.name: keep} if keep < group.channels else {})
            row_ms.append(timed(apply_plan(model, topology, plan), f"{group.name} at {r:.2f}"))
            vector = full.copy()
            vector[group.index] = keep
            row_macs.append(float(topology.table.full.macs - topology.table.macs(vector)))
        measured.append(row_ms)
        removed_macs.append(row_macs)
    base.append(timed(model, "baseline"))
    baseline_ms = float(np.median(base))
    rates, fitted = [], []
    for row, (row_ms, row_macs) in enumerate(zip(measured, removed_macs, strict=True)):
        # each group against the baselines timed just before and after it: slow drift of a shared machine
        # cancels out; the saving is a fraction of the baseline, so the table scales with baseline_ms
        local = 0.5 * (base[row] + base[row + 1])
        saved = np.array([1.0 - ms / local for ms in row_ms])
        rates.append([max(1.0 - ms / local, 0.0) / macs if macs > 0 else 0.0
                      for ms, macs in zip(row_ms, row_macs, strict=True)])
        macs = np.asarray(row_macs)
        fitted.append(max(float(saved @ macs / (macs @ macs)), 0.0) if macs.any() else 0.0)
    table = LatencyTable(
        model_name=topology.model_name, arch_hash=architecture_hash(topology), input_shape=size, batch=batch,
        device=device, threads=threads, min_run_time_s=float(min_run_time_s), baseline_ms=baseline_ms,
        keep_ratios=grid, groups=[g.name for g in groups], measured_ms=measured, rate_per_mac=rates,
        fitted_rate_per_mac=fitted,
        measure_s=time.perf_counter() - start)
    return table.bind(topology)


def save_latency_table(table: LatencyTable) -> None:
    """Write the table to the disk cache (atomically: a reader never sees half a file)."""
    path = _cache_path(table.key)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table.to_dict()))
    os.replace(tmp, path)


def ensure_latency_table(model: nn.Module, topology: Topology, *, batch: int = 1, device: str = "cpu",
                         threads: int | None = None, min_run_time_s: float = 0.2,
                         keep_ratios: Sequence[float] = KEEP_RATIOS, repeats: int = 3, use_cache: bool = True,
                         callback: Callable[[int, int, str], None] | None = None) -> LatencyTable:
    """The latency table of `topology` on this machine: already bound, cached on disk, or measured now.

    A cached table counts only when it was timed at least `min_run_time_s` per measurement on the same
    keep ratios; the result is bound to `topology` (Budget("latency", f) then works on it) and cached.
    Arguments as for `measure_latency_table`; `use_cache=False` always measures (and refreshes the cache).
    """
    threads = threads or torch.get_num_threads()
    grid = sorted(float(r) for r in keep_ratios)

    def good(table: LatencyTable | None) -> bool:
        return (table is not None and table.batch == batch and table.device == device
                and table.threads == threads and table.min_run_time_s >= min_run_time_s
                and table.keep_ratios == grid and table.arch_hash == architecture_hash(topology))

    bound = getattr(topology, LATENCY_ATTR, None)
    if use_cache and good(bound):
        return bound
    if use_cache:
        cached = load_latency_table(topology, batch=batch, device=device, threads=threads)
        if good(cached):
            return cached
    table = measure_latency_table(model, topology, batch=batch, device=device, threads=threads,
                                  min_run_time_s=min_run_time_s, keep_ratios=grid, repeats=repeats,
                                  callback=callback)
    save_latency_table(table)
    return table
