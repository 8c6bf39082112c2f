"""PruningPlan: how many channels (optionally which) each channel group keeps; JSON, versioned.

A plan is plain data made against one Topology (group names are the groups' first conv names). It says
nothing about how channels are chosen beyond the criterion's name (select.py) or how they are removed
(apply.py, mask.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.graph import Topology

PLAN_VERSION = 1
CRITERIA = ("l1", "l2", "bn_scale", "taylor", "fisher", "random")


@dataclass
class PruningPlan:
    """Per-group keep counts (channels kept), optional kept indices, and how the plan was made.

    Attributes:
        model: the model name the plan was made for (Topology.model_name).
        keep: group name -> channels kept (groups left out keep everything).
        indices: group name -> kept channel indices (group channel numbering); None = choose by `criterion`.
        criterion: how channels are chosen when indices are absent ("l1", "l2", "bn_scale", "taylor",
            "fisher", "random").
        round_to: channel rounding the plan was made with (1 = none; 8 suits CPU/GPU kernels).
        budget: fraction of baseline MACs the plan was made for (None if not budget-driven).
        method: the method that produced it ("uniform", "gnnrl", ...).
        meta: free-form JSON-serialisable extras (macs, seed, bit widths later ...).
    """

    model: str
    keep: dict[str, int]
    indices: dict[str, list[int]] | None = None
    criterion: str = "l1"
    round_to: int = 1
    budget: float | None = None
    method: str = "manual"
    meta: dict = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown channel criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to}")
        self.keep = {str(k): int(v) for k, v in self.keep.items()}
        if self.indices is not None:
            self.indices = {str(k): [int(i) for i in v] for k, v in self.indices.items()}

    def keep_ratios(self, topology: Topology) -> dict[str, float]:
        """Keep ratio (kept / channels) of every group of `topology`, 1.0 for groups the plan leaves alone."""
        return {g.name: self.keep.get(g.name, g.channels) / g.channels for g in topology.groups}

    def validate(self, topology: Topology) -> None:
        """Check the plan fits `topology`.

        Raises:
            ValueError: unknown group, a count outside [1, channels], a non-prunable group shrunk, or
                indices that do not match the counts.
        """
        topology.keep_vector(self.keep)
        for name, idx in (self.indices or {}).items():
            group = topology.group(name)
            count = self.keep.get(name, group.channels)
            if len(idx) != count or len(set(idx)) != count or not all(0 <= i < group.channels for i in idx):
                raise ValueError(f"plan indices for group {name!r} must be {count} distinct channels in "
                                 f"[0, {group.channels}), got {len(idx)} entries")

    def to_dict(self) -> dict:
        """JSON-ready dict (with a version field)."""
        return {"version": self.version, "model": self.model, "keep": dict(self.keep),
                "indices": None if self.indices is None else {k: list(v) for k, v in self.indices.items()},
                "criterion": self.criterion, "round_to": self.round_to, "budget": self.budget,
                "method": self.method, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
        """Rebuild a plan from to_dict() output.

        Raises:
            ValueError: missing fields or a plan version newer than this code understands.
        """
        if not isinstance(data, Mapping) or "keep" not in data or "model" not in data:
            raise ValueError("not a pruning plan: expected a JSON object with 'model' and 'keep' fields")
        version = int(data.get("version", 1))
        if version > PLAN_VERSION:
            raise ValueError(f"plan version {version} is newer than this TopoPrune understands ({PLAN_VERSION}); "
                             "upgrade TopoPrune")
        return cls(model=data["model"], keep=dict(data["keep"]), indices=data.get("indices"),
                   criterion=data.get("criterion", "l1"), round_to=int(data.get("round_to", 1)),
                   budget=data.get("budget"), method=data.get("method", "manual"), meta=dict(data.get("meta") or {}),
                   version=version)

    def to_json(self, *, indent: int | None = 1) -> str:
        """The plan as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Parse a plan from JSON text.

        Raises:
            ValueError: invalid JSON or not a plan.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data)


def round_keep(channels: int, ratio: float, *, round_to: int = 1, min_keep: int = 1) -> int:
    """Channels kept for a keep ratio: nearest multiple of `round_to`, at least max(min_keep, 1), at most all."""
    count = ratio * channels
    if round_to > 1:
        count = round(count / round_to) * round_to
        count = max(count, min(round_to, channels))
    count = int(math.floor(count + 0.5)) if round_to == 1 else int(count)
    return max(1, min(channels, max(count, min_keep)))


def plan_from_ratios(topology: Topology, keep_ratios: Mapping[str, float] | Sequence[float], *,
                     round_to: int = 1, min_keep: int = 1, criterion: str = "l1",
                     method: str = "manual") -> PruningPlan:
    """A plan from keep ratios: by group name, or a sequence aligned with `topology.prunable_groups`.

    Args:
        topology: the model's topology.
        keep_ratios: group name -> keep ratio in (0, 1] (groups left out keep everything), or one ratio per
            prunable group in topology order.
        round_to: keep counts are rounded to the nearest multiple of this (or the whole group).
        min_keep: fewest channels any listed group keeps.
        criterion: how channels will be chosen (recorded on the plan).
        method: recorded on the plan.

    Returns:
        The plan (no indices: channels are chosen when it is applied).

    Raises:
        ValueError: a ratio outside (0, 1], an unknown or non-prunable group, or a sequence of the wrong length.
    """
    prunable = topology.prunable_groups
    if isinstance(keep_ratios, Mapping):
        ratios = dict(keep_ratios)
    else:
        values = list(keep_ratios)
        if len(values) != len(prunable):
            raise ValueError(f"got {len(values)} keep ratios for {len(prunable)} prunable groups of "
                             f"{topology.model_name}; pass one per group (topology.prunable_groups order)")
        ratios = {g.name: float(v) for g, v in zip(prunable, values, strict=True)}
    keep = {}
    for name, ratio in ratios.items():
        group = topology.group(name)
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"keep ratio {ratio} for group {name!r} is outside (0, 1]")
        if not group.prunable:
            if float(ratio) < 1.0:
                raise ValueError(f"group {name!r} is not prunable ({group.reason}); use keep ratio 1.0")
            continue
        keep[name] = round_keep(group.channels, float(ratio), round_to=round_to, min_keep=min_keep)
    return PruningPlan(model=topology.model_name, keep=keep, criterion=criterion, round_to=round_to,
                       method=method)
