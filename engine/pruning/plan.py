"""PruningPlan v2: per group, how many channels are kept (and optionally which, at which bit-widths); JSON.

A plan is plain data made against one Topology (group names are the groups' first conv names). It says
nothing about how channels are chosen beyond the criterion's name (criteria.py) or how they are removed
(apply.py, mask.py). One group's entry lives in group_plan.py, reading (and migrating v1) in plan_io.py,
plans from keep ratios in ratios.py.

JSON (version 2)::

    {"version": 2, "model": "cifar_resnet20",
     "groups": {"conv1": {"keep": 8, "keep_ratio": 0.5, "channels": 16, "indices": [...] | null,
                          "bits": [...] | null}},
     "keep": {"conv1": 8},                        # derived from "groups", for readers of plan dicts
     "budget": {"metric": "macs", "fraction": 0.5} | null,
     "criterion": "l1", "round_to": 1, "method": "uniform", "meta": {...}}

The top-level "keep" map is a derived convenience (the run store, the GUI and `prune --json` scripts read
`plan["keep"]`); "groups" is the truth and a "keep" map that disagrees with it is refused on reading.
"""

from __future__ import annotations

import copy
import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import PlanError
from engine.graph import Topology
from engine.pruning.criteria import get_criterion, list_criteria
from engine.pruning.group_plan import (
    MAX_BITS,
    GroupPlan,
    group_entry,
    groups_from_maps,
    keep_count,
    named_errors,
    read_only_map,
)

__all__ = [
    "MAX_BITS",
    "PLAN_VERSION",
    "GroupPlan",
    "PruningPlan",
    "check_plan_version",
    "keep_count",
]

PLAN_VERSION = 2


def __getattr__(name: str) -> Any:
    if name == "CRITERIA":  # compatibility: the registered criteria, as the closed tuple v1 exported
        return list_criteria()
    if name in ("plan_from_ratios", "round_keep"):  # compatibility: moved to ratios.py
        from engine.pruning import ratios

        return getattr(ratios, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_plan_version(version: Any) -> int:
    understood = ", ".join(str(v) for v in range(1, PLAN_VERSION + 1))
    if (
        isinstance(version, bool)
        or not isinstance(version, numbers.Real)
        or not float(version).is_integer()
        or version < 1
    ):
        raise PlanError(
            f"plan version {version!r} is not a version this TopoPrune reads; it understands "
            f"versions {understood}"
        )
    if version > PLAN_VERSION:
        raise PlanError(
            f"plan version {int(version)} is newer than this TopoPrune understands (versions "
            f"{understood}); upgrade TopoPrune"
        )
    return int(version)


class PruningPlan:
    """Per-group entries (GroupPlan) plus how the plan was made: criterion, rounding, budget, method.

    Built either from v1-style maps (`keep`, `indices`, `bits`) or from `groups`. `plan.keep`, `plan.indices`
    and `plan.bits` read as dicts derived from `groups` (read-only; assign a new dict to change them).

    Attributes:
        model: the model name the plan was made for (Topology.model_name).
        groups: group name -> GroupPlan (groups left out keep everything).
        criterion: registered channel criterion used where a group has no indices (criteria.py).
        round_to: channel rounding the plan was made with (1 = none; 8 suits CPU/GPU kernels).
        budget: fraction of the baseline's `budget_metric` the plan was made for, or None.
        budget_metric: what `budget` is a fraction of ("macs", "params", "memory", "latency", "size").
        method: the method that produced it ("uniform", "gnnrl", ...).
        meta: free-form JSON-serialisable extras.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(
        self,
        model: str,
        keep: Mapping[str, Any] | None = None,
        indices: Mapping[str, Sequence[int]] | None = None,
        criterion: str = "l1",
        round_to: int = 1,
        budget: Any = None,
        method: str = "manual",
        meta: Mapping | None = None,
        version: int = PLAN_VERSION,
        *,
        groups: Mapping[str, GroupPlan | Mapping] | None = None,
        bits: Mapping[str, Sequence[int]] | None = None,
        channels: Mapping[str, int] | None = None,
        budget_metric: str = "macs",
    ) -> None:
        check_plan_version(version)
        self.model = str(model)
        self.criterion = criterion
        self.round_to = round_to
        self.budget_metric = budget_metric
        self.budget = budget  # a Budget-like object (metric, fraction) also sets budget_metric
        self.method = str(method)
        self.meta = meta
        if groups is not None:
            if keep is not None or indices is not None or bits is not None:
                raise PlanError("give a plan either groups=... or keep/indices/bits maps, not both")
            self.groups = groups
        else:
            self.groups = groups_from_maps(keep or {}, indices, bits, channels)

    # -- fields with checks ---------------------------------------------------------------------------------
    @property
    def groups(self) -> dict[str, GroupPlan]:
        """Group name -> GroupPlan (a copy; assign plan.groups = {...} to change it)."""
        return dict(self._groups)

    @groups.setter
    def groups(self, value: Mapping[str, GroupPlan | Mapping]) -> None:
        if not isinstance(value, Mapping):
            raise PlanError(f"plan groups must map group names to entries, got {type(value).__name__}")
        self._groups = {str(k): group_entry(str(k), v) for k, v in value.items()}

    @property
    def criterion(self) -> str:
        return self._criterion

    @criterion.setter
    def criterion(self, value: str) -> None:
        self._criterion = get_criterion(value).name

    @property
    def round_to(self) -> int:
        return self._round_to

    @round_to.setter
    def round_to(self, value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not float(value).is_integer()
            or value < 1
        ):
            raise PlanError(f"round_to must be a whole number >= 1, got {value!r}")
        self._round_to = int(value)

    @property
    def budget(self) -> float | None:
        return self._budget

    @budget.setter
    def budget(self, value: Any) -> None:
        if value is not None and hasattr(value, "fraction") and hasattr(value, "metric"):
            self.budget_metric = value.metric
            value = value.fraction
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
                raise PlanError(
                    f"plan budget {value!r} is not a fraction in (0, 1] of the baseline's "
                    f"{self.budget_metric}"
                )
            value = float(value)
        self._budget = value

    @property
    def budget_metric(self) -> str:
        return self._budget_metric

    @budget_metric.setter
    def budget_metric(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise PlanError(f"plan budget metric must be a name such as 'macs', got {value!r}")
        self._budget_metric = value.strip()

    @property
    def meta(self) -> dict:
        return self._meta

    @meta.setter
    def meta(self, value: Mapping | None) -> None:
        self._meta = dict(value or {})

    @property
    def version(self) -> int:
        """The version this plan is written as (older files are migrated on reading)."""
        return PLAN_VERSION

    # -- v1-style views ---------------------------------------------------------------------------------------
    @property
    def keep(self) -> dict[str, int]:
        """Group name -> channels kept (read-only view; assigning a new map keeps the indices and bits of
        groups whose count is unchanged and drops them where it changed)."""
        return read_only_map({k: g.keep for k, g in self._groups.items()})

    @keep.setter
    def keep(self, value: Mapping[str, Any]) -> None:
        if not isinstance(value, Mapping):
            raise PlanError(f"plan keep must map group names to channel counts, got {type(value).__name__}")
        groups = {}
        for name, count in value.items():
            name = str(name)
            count = named_errors(name, keep_count, count)
            old = self._groups.get(name)
            if old is not None and old.keep == count:
                groups[name] = old
            else:
                groups[name] = named_errors(name, GroupPlan, count, None if old is None else old.channels)
        self._groups = groups

    @property
    def indices(self) -> dict[str, list[int]] | None:
        """Group name -> kept indices for the groups that have them, or None when none has (read-only)."""
        out = {k: list(g.indices) for k, g in self._groups.items() if g.indices is not None}
        return read_only_map(out) if out else None

    @indices.setter
    def indices(self, value: Mapping[str, Sequence[int]] | None) -> None:
        self._groups = groups_from_maps(self.keep, value, self.bits, self.channels)

    @property
    def bits(self) -> dict[str, list[int]] | None:
        """Group name -> per-kept-channel bit-widths for the groups that have them, or None (read-only)."""
        out = {k: list(g.bits) for k, g in self._groups.items() if g.bits is not None}
        return read_only_map(out) if out else None

    @bits.setter
    def bits(self, value: Mapping[str, Sequence[int]] | None) -> None:
        self._groups = groups_from_maps(self.keep, self.indices, value, self.channels)

    @property
    def channels(self) -> dict[str, int]:
        """Group name -> channel count, for the groups whose size the plan records."""
        return {k: g.channels for k, g in self._groups.items() if g.channels is not None}

    def with_indices(self, indices: Mapping[str, Sequence[int]]) -> PruningPlan:
        """A copy with kept indices set for the named groups (sizes, bits, budget and meta carried over).

        Raises:
            PlanError: indices that do not match a group's keep count.
        """
        plan = copy.copy(self)
        groups = dict(self._groups)
        for name, idx in indices.items():
            name = str(name)
            old = groups.get(name)
            count = old.keep if old is not None else len(idx)
            size = old.channels if old is not None else count
            groups[name] = named_errors(name, GroupPlan, count, size, idx, None if old is None else old.bits)
        plan._groups = groups
        plan._meta = copy.deepcopy(self._meta)
        return plan

    # -- checks ---------------------------------------------------------------------------------------------
    def keep_ratios(self, topology: Topology) -> dict[str, float]:
        """Keep ratio (kept / channels) of every group of `topology`, 1.0 for groups the plan leaves alone."""
        return {
            g.name: (self._groups[g.name].keep if g.name in self._groups else g.channels) / g.channels
            for g in topology.groups
        }

    def check_model(self, topology: Topology) -> None:
        """Refuse a plan made for another model than `topology`'s.

        Names are compared when both are zoo model names (a topology traced without one carries its class
        name, e.g. "CifarResNet", and then only the group checks of validate() apply).

        Raises:
            PlanError: the plan names another zoo model than the topology.
        """
        mine, theirs = self.model, topology.model_name
        if not mine or not theirs or mine == theirs:
            return
        from engine.zoo import list_models

        known = set(list_models())
        if mine in known and theirs in known:
            raise PlanError(
                f"this plan was made for model {mine!r}, not {theirs!r}; use a plan made for "
                f"{theirs!r} (or pass MODEL {mine!r})"
            )

    def validate(self, topology: Topology) -> None:
        """Check the plan fits `topology`.

        Raises:
            PlanError: a plan for another model, or a recorded group size that differs from the model's.
            ValueError: unknown group, a count outside [1, channels], a non-prunable group shrunk, or
                indices that do not match the counts.
        """
        self.check_model(topology)
        topology.keep_vector(self.keep)
        for name, entry in self._groups.items():
            group = topology.group(name)
            if entry.channels is not None and entry.channels != group.channels:
                raise PlanError(
                    f"plan says group {name!r} has {entry.channels} channels but "
                    f"{topology.model_name} has {group.channels}; make the plan from this model"
                )
            idx = entry.indices
            if idx is not None and not all(0 <= i < group.channels for i in idx):
                raise PlanError(
                    f"plan indices for group {name!r} must be {entry.keep} distinct channels in "
                    f"[0, {group.channels}), got {len(idx)} entries"
                )

    # -- JSON -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready v2 dict (see the module docstring)."""
        budget = None if self._budget is None else {"metric": self._budget_metric, "fraction": self._budget}
        return {
            "version": PLAN_VERSION,
            "model": self.model,
            "groups": {k: g.to_dict() for k, g in self._groups.items()},
            "keep": {k: g.keep for k, g in self._groups.items()},
            "budget": budget,
            "criterion": self._criterion,
            "round_to": self._round_to,
            "method": self.method,
            "meta": dict(self._meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
        """Rebuild a plan from to_dict() output of this or an older version (v1 is migrated).

        Raises:
            PlanError: not a plan, an unknown version, or a bad entry (the message names it).
        """
        from engine.pruning.plan_io import plan_from_dict

        return plan_from_dict(cls, data)

    def to_json(self, *, indent: int | None = 1) -> str:
        """The plan as JSON text (v2)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Parse a plan from JSON text (any version this code reads).

        Raises:
            PlanError: invalid JSON or not a plan.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)

    # -- value semantics ------------------------------------------------------------------------------------
    def _key(self) -> tuple:
        return (
            self.model,
            self._groups,
            self._criterion,
            self._round_to,
            self._budget,
            self._budget_metric,
            self.method,
            self._meta,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PruningPlan):
            return NotImplemented
        return self._key() == other._key()

    def __repr__(self) -> str:
        budget = "" if self._budget is None else f", budget={self._budget:g} {self._budget_metric}"
        return (
            f"PruningPlan(model={self.model!r}, groups={len(self._groups)}, criterion={self._criterion!r}, "
            f"method={self.method!r}{budget})"
        )
