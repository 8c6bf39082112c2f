"""Plain, immutable records the run store hands out: one dataclass per table row.

JSON columns come back decoded (dicts/lists); nothing here touches SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """One search run (a row of ``runs``).

    ``best_score`` is the best episode's val top-1 accuracy in % (``None`` until an episode reports one);
    ``n_episodes`` counts the episodes recorded so far.
    """

    id: int
    method: str
    model: str
    dataset: str
    budget: float | None
    config: dict[str, Any]
    status: str
    best_score: float | None
    best_plan: dict[str, Any] | None
    state_path: str | None
    extra: dict[str, Any]
    pid: int | None
    host: str | None
    created_at: str
    updated_at: str
    n_episodes: int = 0

    @property
    def resumable(self) -> bool:
        """True when the run stopped before completing (paused or interrupted)."""
        return self.status in ("paused", "interrupted")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode of a run (a row of ``episodes``); ``index`` counts from 0 within the run."""

    run_id: int
    index: int
    reward: float | None
    macs: int | None
    macs_ratio: float | None
    val_acc: float | None
    plan: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class CandidateRecord:
    """A pruned model a method produced: its plan, measured metrics and artifact paths."""

    id: int
    run_id: int | None
    method: str
    model: str
    dataset: str
    plan: dict[str, Any] | None
    metrics: dict[str, Any]
    artifacts: dict[str, Any]
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class SensitivityRecord:
    """A cached sensitivity table, addressed by ``key`` (weights hash + dataset + settings)."""

    key: str
    model: str
    dataset: str
    settings: dict[str, Any]
    table: Any
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
