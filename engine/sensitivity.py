"""Per-group sensitivity: val accuracy drop when only one group is pruned, for each keep ratio of a grid.

Scores follow the shared protocol (engine.evaluate); tables are cached as JSON under
cache_dir()/sensitivity/, keyed by the model weights' sha256, the dataset and the settings. Progress (with an
ETA and the groups finished so far) goes to a callback, and a partial table can be continued. No plotting here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from engine.data import DataSplits
from engine.evaluate import Scorer, ScoringConfig

DEFAULT_KEEP_RATIOS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
# The interactive default (GUI, bench/bench_sensitivity.py): 3 ratios on 256 val images and 128 BN images, scored
# physically pruned; cifar_resnet20 (12 groups, 37 plans) in about 2.5 min on one loaded CPU thread.
QUICK_KEEP_RATIOS: tuple[float, ...] = (0.75, 0.5, 0.25)
QUICK_SCORING = ScoringConfig(val_size=256, bn_batches=2, bn_batch_size=64, physical=True)
_CACHE_VERSION = 1


@dataclass
class GroupSensitivity:
    """Sensitivity curve of one channel group.

    Attributes:
        name: Group name (stable, from the topology).
        index: Group index in the topology.
        channels: Channels of the group in the baseline.
        stage: Stage the group belongs to.
        macs_share / params_share / memory_share: The group's share of the baseline's MACs, parameters and
            activation memory (per-channel cost x channels / baseline total).
        val_acc: Val top-1 (%) at each keep ratio of the table's grid.
        drop: base_acc - val_acc at each keep ratio (positive = worse).
    """

    name: str
    index: int
    channels: int
    stage: int
    macs_share: float
    params_share: float
    memory_share: float
    val_acc: list[float]
    drop: list[float]


@dataclass
class SensitivityTable:
    """Per-group sensitivity for one model, dataset and setting.

    Attributes:
        model_name: Model name from the topology.
        dataset: Dataset name.
        keep_ratios: The keep-ratio grid (fraction of channels kept).
        base_acc: Val top-1 (%) of the unpruned model under the same protocol.
        groups: One entry per prunable group, in topology order.
        scoring: Scoring settings used.
        seconds: Time it took to compute (not to load from cache).
        n_scored: Plans scored to compute it.
        cache_key: Key of the cache entry.
        from_cache: Whether this table was loaded from the cache.
        partial: The analysis stopped or failed before every requested group was scored; `groups` holds the
            finished ones (pass the table as `resume` to continue it).
    """

    model_name: str
    dataset: str
    keep_ratios: list[float]
    base_acc: float
    groups: list[GroupSensitivity]
    scoring: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    n_scored: int = 0
    cache_key: str = ""
    from_cache: bool = False
    partial: bool = False

    def group(self, name: str) -> GroupSensitivity:
        """The entry of group `name`.

        Raises:
            KeyError: No such group in the table.
        """
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(
            f"group {name!r} is not in the sensitivity table; groups: {[g.name for g in self.groups]}"
        )

    def drop_at(self, name: str, keep_ratio: float) -> float:
        """Accuracy drop of group `name` at `keep_ratio`, linearly interpolated on the grid (0 at 1.0)."""
        g = self.group(name)
        points = sorted(zip([1.0, *self.keep_ratios], [0.0, *g.drop], strict=True))
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        if keep_ratio <= xs[0]:
            return ys[0]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            if x0 <= keep_ratio <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (keep_ratio - x0) / (x1 - x0)
        return ys[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["groups"] = [GroupSensitivity(**g) for g in d["groups"]]
        return cls(**d)


@dataclass
class SensitivityProgress:
    """What `analyze_sensitivity` reports after each scored plan.

    Attributes:
        done / total: Plans finished / planned (the unpruned baseline counts as one).
        message: One line, e.g. "layer1.0.conv1 keep 0.50: 91.2%".
        elapsed_s: Seconds since the analysis started.
        eta_s: Estimated seconds left, from the mean time per plan so far (None before the first group plan).
        table: The groups finished so far (`partial` is True until the last one); rows are shared, do not mutate.
        group_done: This report finished a group (the table gained a row).
    """

    done: int
    total: int
    message: str
    elapsed_s: float
    eta_s: float | None
    table: SensitivityTable
    group_done: bool = False


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's state_dict (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _data_identity(data: DataSplits) -> dict[str, Any]:
    from engine.data import fingerprint

    return {
        "name": data.name,
        "num_classes": data.num_classes,
        "input_size": data.input_size,
        "fingerprint": fingerprint(data),
    }


def sensitivity_cache_key(
    model: nn.Module,
    data: DataSplits,
    keep_ratios: Sequence[float],
    scoring: ScoringConfig,
    round_to: int = 1,
) -> str:
    """Cache key: sha256 of (weights hash, dataset identity, grid, scoring settings, version)."""
    payload = {
        "version": _CACHE_VERSION,
        "weights": weights_sha256(model),
        "data": _data_identity(data),
        "keep_ratios": [round(float(r), 6) for r in keep_ratios],
        "scoring": {
            k: v for k, v in scoring.to_dict().items() if k not in ("device", "physical", "batch_size")
        },
        "round_to": round_to,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_path(key: str) -> Path:
    from engine.paths import cache_dir

    folder = cache_dir() / "sensitivity"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.json"


def _group_shares(topology: Any, group: Any, totals: dict[str, float]) -> tuple[float, float, float]:
    def share(per_channel: str, total: str) -> float:
        value = float(getattr(group, per_channel, 0) or 0) * group.channels
        return value / totals[total] if totals[total] else 0.0

    return (
        share("macs_per_channel", "macs"),
        share("params_per_channel", "params"),
        share("memory_bytes_per_channel", "memory_bytes"),
    )


def _totals(topology: Any, model: nn.Module, input_size: int) -> dict[str, float]:
    from engine.cost import count_costs

    report = count_costs(model, torch.zeros(1, 3, input_size, input_size))
    return {
        "macs": float(report.macs),
        "params": float(report.params),
        "memory_bytes": float(report.memory_bytes),
    }


def analyze_sensitivity(
    model: nn.Module,
    topology: Any,
    data: DataSplits,
    *,
    keep_ratios: Sequence[float] = DEFAULT_KEEP_RATIOS,
    scoring: ScoringConfig | None = None,
    scorer: Scorer | None = None,
    groups: Sequence[str] | None = None,
    round_to: int = 1,
    use_cache: bool = True,
    callback: Callable[[int, int, str], None] | None = None,
    progress: Callable[[SensitivityProgress], None] | None = None,
    resume: SensitivityTable | None = None,
) -> SensitivityTable:
    """Val accuracy drop per prunable group when only that group is pruned to each keep ratio.

    Args:
        model: The unpruned baseline (not modified).
        topology: Its topology.
        data: Dataset splits (train for BN statistics, val for accuracy; test is never read).
        keep_ratios: Keep-ratio grid, each in (0, 1].
        scoring: Scoring settings (ignored when `scorer` is given).
        scorer: A shared Scorer to use (its n_scored counter advances).
        groups: Restrict to these group names (default: every prunable group). Not cached when given.
        round_to: Channel rounding of each one-group plan.
        use_cache: Read and write the on-disk cache.
        callback: `callback(done, total, message)` after each scored plan.
        progress: `progress(SensitivityProgress)` after each scored plan, with an ETA and the finished groups;
            an exception it raises (a Stop) ends the analysis, and the last table it got holds the work done.
        resume: A partial table of the same weights, data, grid and scoring (same `cache_key`): its groups and
            baseline accuracy are reused, not scored again. A table with another key is ignored.

    Returns:
        The SensitivityTable.

    Raises:
        ValueError: A keep ratio is outside (0, 1] or a group name is unknown.
    """
    from engine.pruning import plan_from_ratios

    ratios = [float(r) for r in keep_ratios]
    bad = [r for r in ratios if not 0.0 < r <= 1.0]
    if bad or not ratios:
        raise ValueError(
            f"keep ratios must lie in (0, 1] (fraction of channels kept), got {list(keep_ratios)}"
        )
    scorer = scorer or Scorer(model, topology, data, scoring)
    cfg = scorer.config
    prunable = [g for g in topology.groups if g.prunable]
    if groups is not None:
        known = {g.name for g in prunable}
        unknown = [n for n in groups if n not in known]
        if unknown:
            raise ValueError(f"unknown or unprunable groups {unknown}; prunable groups: {sorted(known)}")
        prunable = [g for g in prunable if g.name in set(groups)]
        use_cache = False

    key = sensitivity_cache_key(model, data, ratios, cfg, round_to)
    path = _cache_path(key) if use_cache else None
    if path is not None and path.exists():
        try:
            table = SensitivityTable.from_dict(json.loads(path.read_text()))
            table.from_cache = True
            if callback is not None:
                callback(1, 1, "loaded from cache")
            if progress is not None:
                progress(SensitivityProgress(1, 1, "loaded from cache", 0.0, 0.0, table, group_done=True))
            return table
        except (ValueError, TypeError, KeyError):
            path.unlink(missing_ok=True)  # corrupt entry: recompute

    reused = {g.name: g for g in resume.groups} if resume is not None and resume.cache_key == key else {}
    start = time.perf_counter()
    n_before = scorer.n_scored
    todo = [g for g in prunable if g.name not in reused]
    total = 1 + len(todo) * len(ratios)
    full = {g.name: 1.0 for g in topology.groups if g.prunable}
    table = SensitivityTable(
        model_name=str(getattr(topology, "model_name", "")),
        dataset=data.name,
        keep_ratios=ratios,
        base_acc=0.0,
        groups=[],
        scoring=cfg.to_dict(),
        cache_key=key,
        partial=True,
    )
    kept_seconds, kept_scored = (
        (float(resume.seconds), int(resume.n_scored)) if reused and resume else (0.0, 0)
    )
    clock = {"first_plan": 0.0}

    def report(done: int, message: str, group_done: bool = False) -> None:
        now = time.perf_counter()
        table.seconds = kept_seconds + now - start
        table.n_scored = kept_scored + scorer.n_scored - n_before
        plans = done - 1  # group plans since the baseline (whose time includes loading the val/BN tensors)
        eta = (now - clock["first_plan"]) / plans * (total - done) if plans > 0 else None
        if callback is not None:
            callback(done, total, message)
        if progress is not None:
            progress(SensitivityProgress(done, total, message, now - start, eta, table, group_done))

    if reused and resume is not None:
        table.base_acc = float(resume.base_acc)
        done, base_message = (
            1,
            f"continuing: {len(reused)} group(s) kept, baseline val acc {resume.base_acc:.2f}%",
        )
    else:
        table.base_acc = scorer.score(plan_from_ratios(topology, full, round_to=round_to))
        done, base_message = 1, f"baseline val acc {table.base_acc:.2f}%"
    base_acc = table.base_acc
    totals = _totals(topology, model, data.input_size)
    table.groups = [reused[g.name] for g in prunable if g.name in reused]
    clock["first_plan"] = time.perf_counter()
    report(done, base_message, group_done=bool(reused))
    for g in todo:
        accs: list[float] = []
        for r in ratios:
            acc = (
                base_acc
                if r == 1.0
                else scorer.score(plan_from_ratios(topology, {**full, g.name: r}, round_to=round_to))
            )
            accs.append(acc)
            done += 1
            if len(accs) < len(ratios):
                report(done, f"{g.name} keep {r:.2f}: {acc:.2f}%")
        macs_s, params_s, mem_s = _group_shares(topology, g, totals)
        row = GroupSensitivity(
            name=g.name,
            index=int(g.index),
            channels=int(g.channels),
            stage=int(getattr(g, "stage", 0) or 0),
            macs_share=macs_s,
            params_share=params_s,
            memory_share=mem_s,
            val_acc=accs,
            drop=[base_acc - a for a in accs],
        )
        order = {p.name: i for i, p in enumerate(prunable)}
        table.groups = sorted([*table.groups, row], key=lambda x: order[x.name])
        table.partial = done < total
        report(done, f"{g.name} keep {ratios[-1]:.2f}: {accs[-1]:.2f}%", group_done=True)
    table.partial = False
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_dict()))
        tmp.replace(path)
    return table
