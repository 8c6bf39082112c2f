"""The steppable-search protocol every search method implements, and the records it exchanges with the driver.

A search method proposes candidate plans, is told their scores, and can save and restore everything it needs
to continue (RNG states, agent weights, replay buffers, populations). It never scores a plan and never touches
the run store: engine.search.driver does both, the same way for every method.

    propose(n)  -> up to n Proposals (a batch; n = 1 by default)
    observe(scored) -> the method's own reward for each, after learning from them
    finished    -> no more proposals
    state_dict() / load_state_dict(state) -> resumable state (tensors, numbers, strings, lists, dicts only,
                   so it loads with torch.load(weights_only=True))

Methods with inner steps (GNN-RL's T actions per episode) may also implement `substep()`, so the GUI's Step can
mean one environment step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Proposal:
    """A plan a method wants scored.

    Attributes:
        plan: The PruningPlan on budget, or None for an episode that ended without one (it is recorded, not
            scored; the method still gets `observe`d with score None).
        meta: JSON-serialisable extras recorded with the episode (actions, noise, embeddings ...).
    """

    plan: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """A proposal with its val top-1 (%) under the shared scorer (None when the proposal had no plan)."""

    proposal: Proposal
    val_acc: float | None


@dataclass
class SubStep:
    """One inner step of a method with multi-step episodes (shown by the GUI's Step).

    Attributes:
        episode: 0-based episode the step belongs to.
        step: 1-based step within the episode.
        info: What the step did (action, keep ratios, MACs ratio ...), JSON-serialisable.
        proposal: Set when this step ended the episode: the driver scores it and calls `observe`.
    """

    episode: int
    step: int
    info: dict[str, Any]
    proposal: Proposal | None = None


class SearchMethod:
    """Base class of a steppable, resumable search (see the module docstring).

    Subclasses set `name` and implement `propose`, `observe`, `finished`, `state_dict` and `load_state_dict`;
    `substep` and `final_proposals` are optional.

    Args:
        ctx: The MethodContext (model, topology, budget, seed); the method must not use ctx.store or score.
        options: Validated options of the method.
    """

    name = "search"

    def __init__(self, ctx: Any, options: dict[str, Any]) -> None:
        self.ctx = ctx
        self.options = dict(options)

    @property
    def total(self) -> int:
        """Proposals planned in all (episodes), for progress bars; 0 when unknown."""
        return int(self.options.get("episodes", 0) or 0)

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    def propose(self, n: int = 1) -> list[Proposal]:
        raise NotImplementedError

    def observe(self, scored: Sequence[Scored]) -> list[float | None]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def substep(self) -> SubStep:
        """One inner step (methods with multi-step episodes only)."""
        raise NotImplementedError(f"method '{self.name}' has no inner steps; step it one episode at a time")

    @property
    def has_substeps(self) -> bool:
        return type(self).substep is not SearchMethod.substep

    def final_proposals(self) -> list[Proposal]:
        """Plans to score once after the last episode (e.g. GNN-RL's policy-mean plan); none by default."""
        return []

    def summary(self) -> dict[str, Any]:
        """Method-specific extras for the result (JSON-serialisable)."""
        return {}


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state as plain data (loads with weights_only=True)."""
    return dict(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a state saved by rng_state."""
    rng.bit_generator.state = state
