"""Reading plan dicts of every version TopoPrune has written: v2 as is, v1 migrated.

v1 (``{"version": 1, "keep": {...}, "indices": {...}|null, "budget": 0.5|null, ...}``) becomes v2 with the
same counts and indices, no group sizes or bit-widths, and budget {"metric": meta's "budget_metric" or
"macs", "fraction": b}. Writing is PruningPlan.to_dict's job.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from engine.errors import PlanError
from engine.pruning.group_plan import GroupPlan, keep_count, named_errors
from engine.pruning.plan import PruningPlan, check_plan_version
from engine.pruning.ratios import round_keep


def plan_from_dict(cls: type[PruningPlan], data: Any) -> PruningPlan:
    """A plan from a v1 or v2 dict.

    Raises:
        PlanError: not a plan, an unknown version, or a malformed entry (the message names it).
    """
    if not isinstance(data, Mapping) or "model" not in data or not ("keep" in data or "groups" in data):
        raise PlanError(
            "not a pruning plan: expected a JSON object with 'model' and 'groups' (version 2) or "
            "'keep' (version 1) fields"
        )
    version = check_plan_version(data.get("version", 1))
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise PlanError(f"plan 'meta' must be a JSON object, got {type(meta).__name__}")
    meta = dict(meta or {})
    common = {
        "model": data["model"],
        "criterion": data.get("criterion", "l1"),
        "round_to": data.get("round_to", 1),
        "method": data.get("method", "manual"),
        "meta": meta,
    }
    if version == 1:
        return _read_v1(cls, data, common)
    return _read_v2(cls, data, common)


def _read_v1(cls: type[PruningPlan], data: Mapping, common: dict) -> PruningPlan:
    keep, indices = data["keep"], data.get("indices")
    if not isinstance(keep, Mapping):
        raise PlanError(f"plan 'keep' must map group names to channel counts, got {type(keep).__name__}")
    metric = common["meta"].get("budget_metric", "macs")
    return cls(
        keep=dict(keep), indices=indices, budget=data.get("budget"), budget_metric=str(metric), **common
    )


def _read_v2(cls: type[PruningPlan], data: Mapping, common: dict) -> PruningPlan:
    if "groups" not in data:
        raise PlanError("a version 2 plan needs a 'groups' object (group name -> {\"keep\": count, ...})")
    groups = data["groups"]
    if not isinstance(groups, Mapping):
        raise PlanError(f"plan 'groups' must map group names to entries, got {type(groups).__name__}")
    round_to = common["round_to"]
    entries = {
        str(name): named_errors(str(name), _read_group, entry, round_to) for name, entry in groups.items()
    }
    derived = data.get("keep")
    if derived is not None:
        counts = {name: g.keep for name, g in entries.items()}
        if not isinstance(derived, Mapping) or {str(k): v for k, v in derived.items()} != counts:
            raise PlanError(
                "the plan's top-level 'keep' map disagrees with its 'groups'; 'keep' is derived from "
                "'groups', so delete it or make it match"
            )
    budget, metric = _read_budget(data.get("budget"))
    return cls(groups=entries, budget=budget, budget_metric=metric, **common)


def _read_group(entry: Any, round_to: Any) -> GroupPlan:
    if not isinstance(entry, Mapping):
        raise PlanError(f"expected an object with 'keep' (or 'keep_ratio' and 'channels'), got {entry!r}")
    count, ratio, channels = entry.get("keep"), entry.get("keep_ratio"), entry.get("channels")
    if ratio is not None:
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, numbers.Real)
            or not 0 < float(ratio) <= 1
            or not math.isfinite(float(ratio))
        ):
            raise PlanError(f"keep_ratio {ratio!r} is not a ratio in (0, 1]")
        ratio = float(ratio)
    if channels is not None:
        channels = keep_count(channels, what="channel count")
    if count is None:
        if ratio is None:
            raise PlanError("entry has neither 'keep' (a channel count) nor 'keep_ratio'; give one of them")
        if channels is None:
            raise PlanError(
                f"keep_ratio {ratio:g} needs the group's 'channels' to give a count; add "
                '"channels": the group\'s size, or give "keep": a channel count'
            )
        step = round_to if isinstance(round_to, int) and round_to >= 1 else 1
        count = round_keep(channels, ratio, round_to=step)
    else:
        count = keep_count(count)
        if ratio is not None and channels is not None and abs(ratio * channels - count) > 0.5 + 1e-9:
            raise PlanError(
                f"keep {count} and keep_ratio {ratio:g} of {channels} channels disagree; give one of them"
            )
    return GroupPlan(count, channels, entry.get("indices"), entry.get("bits"))


def _read_budget(budget: Any) -> tuple[float | None, str]:
    if budget is None:
        return None, "macs"
    if isinstance(budget, numbers.Real) and not isinstance(budget, bool):
        return float(budget), "macs"
    if not isinstance(budget, Mapping) or "fraction" not in budget:
        raise PlanError(
            f'plan \'budget\' must be null or {{"metric": "macs", "fraction": 0.5}}, got {budget!r}'
        )
    return budget["fraction"], str(budget.get("metric", "macs"))
