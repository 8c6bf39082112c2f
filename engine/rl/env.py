"""GNN-RL's pruning environment: gymnasium-style reset() / step(action) over per-group keep ratios.

One action moves every prunable group's keep ratio at once, multiplicatively and bounded; an episode lasts
up to `max_steps` steps and ends as soon as the analytic MACs meet the budget (reward = -(val error %) of the
masked model under the shared scoring protocol), or at the last step with a penalty (default -100) unless
the action wall projects the plan onto the budget. It owns no agent and no search loop (search.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import BudgetError
from engine.rl.features import StateBuilder
from engine.rl.gnn import MultiStageData

__all__ = ["EnvConfig", "Observation", "StepResult", "PruningEnv"]


@dataclass
class EnvConfig:
    """Environment settings.

    Attributes:
        budget: fraction of the baseline MACs the plan may keep, in (0, 1].
        max_steps: T, the most steps per episode (the paper: 5).
        penalty: reward of an episode that misses the budget by step T (the paper: -100).
        max_change: an action a in [-1, 1] multiplies a group's keep ratio by (1 + max_change * a).
        min_keep_ratio: lowest keep ratio of any group.
        max_keep_ratio: highest keep ratio of any group.
        action_wall: at step T, scale every keep ratio down together onto the budget instead of failing
            (every episode then ends feasible, as AMC's wall guarantees for its sequential episodes).
        land_on_budget: when a step overshoots below the budget, scale the ratios back up onto it (within 1%),
            so the scored plan uses the whole budget; False scores the overshooting plan as it is (the paper).
        round_to: channel counts are rounded to multiples of this.
        max_motif_channels: cap on channel nodes per stage-1 motif (0 = the paper's full 2*c_in+2 nodes).
        criterion: how kept channels are chosen when masking ("l1" = the smallest-norm filters go).
        group_features: build the ablation's AMC-style per-group features (needed by the "features" encoder).
    """

    budget: float = 0.5
    max_steps: int = 5
    penalty: float = -100.0
    max_change: float = 0.5
    min_keep_ratio: float = 0.1
    max_keep_ratio: float = 1.0
    action_wall: bool = False
    land_on_budget: bool = True
    round_to: int = 1
    max_motif_channels: int = 16
    criterion: str = "l1"
    group_features: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise BudgetError(f"budget {self.budget} is outside (0, 1]: it is the fraction of MACs to keep")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if not 0.0 < self.max_change < 1.0:
            raise ValueError(f"max_change={self.max_change} must be in (0, 1) so a keep ratio stays positive")
        if not 0.0 < self.min_keep_ratio <= self.max_keep_ratio <= 1.0:
            raise ValueError(
                f"need 0 < min_keep_ratio ({self.min_keep_ratio}) <= max_keep_ratio "
                f"({self.max_keep_ratio}) <= 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Observation:
    """What reset() returns: the state graph and the numbers behind it."""

    state: MultiStageData
    keep_ratios: np.ndarray
    macs_ratio: float
    step: int


@dataclass
class StepResult:
    """What step() returns.

    Attributes:
        state: the state after the action.
        reward: 0 for intermediate steps; -(val error %) at a feasible end; `penalty` at an infeasible end.
        done: the episode is over.
        feasible: the final plan meets the budget (False until done).
        keep_ratios: per-group keep ratios after the action (and after landing/the wall when done).
        macs_ratio: analytic MACs of the current plan / baseline MACs.
        step: steps taken in this episode.
        plan: the scored plan (PruningPlan) when done and feasible, else None.
        val_acc: its val top-1 (%), else None.
        timings_s: seconds spent on "graph", "land", "mask" and "eval" in this step.
        pending: the episode ended feasible but the env has no scorer (deferred scoring): `plan` awaits its
            score, and the reward is `PruningEnv.reward_for(val_acc)`.
    """

    state: MultiStageData
    reward: float
    done: bool
    feasible: bool
    keep_ratios: np.ndarray
    macs_ratio: float
    step: int
    plan: Any = None
    val_acc: float | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    pending: bool = False


class PruningEnv:
    """Multiplicative keep-ratio moves for all prunable groups at once, under a MACs budget.

    Args:
        topology: the baseline's Topology.
        model: the baseline (weights give norm features and are masked for scoring); never modified.
        config: environment settings.
        scorer: H3's `Scorer` (val top-1 of a masked model after BN recalibration); its test split is never read.
        score_fn: alternative to `scorer`: plan -> val top-1 (%) (tests, synthetic runs). With neither, scoring is
            deferred to the caller (the search driver): see StepResult.pending.

    Raises:
        BudgetError: the budget cannot be met even with every group at min_keep_ratio.
    """

    def __init__(
        self,
        topology: Any,
        model: nn.Module | None = None,
        *,
        config: EnvConfig | None = None,
        scorer: Any | None = None,
        score_fn: Callable[[Any], float] | None = None,
    ) -> None:
        from engine.cost import plan_macs
        from engine.pruning import plan_from_ratios

        self.topology = topology
        self.model = model
        self.config = c = config or EnvConfig()
        self.scorer = scorer
        self.score_fn = score_fn
        self._plan_macs = plan_macs
        self._plan_from_ratios = plan_from_ratios
        self.builder = StateBuilder(
            topology, model, max_motif_channels=c.max_motif_channels, group_features=c.group_features
        )
        self.groups = self.builder.groups
        if not self.groups:
            raise BudgetError(f"{topology.model_name} has no prunable channel group; nothing to search over")
        self.base_macs = float(topology.table.full.macs)
        floor = self._macs_ratio(np.full(len(self.groups), c.min_keep_ratio))
        if floor > c.budget * (1 + 1e-9):
            raise BudgetError(
                f"budget {c.budget} is unreachable for {topology.model_name}: with every prunable group at "
                f"min_keep_ratio={c.min_keep_ratio} the model still keeps {floor:.3f} of its MACs; raise the "
                "budget or lower min_keep_ratio"
            )
        self.keep_ratios = np.ones(len(self.groups))
        self.t = 0
        self.done = True

    @property
    def num_groups(self) -> int:
        """Length of the action vector (one entry per prunable group)."""
        return len(self.groups)

    def _plan(self, ratios: np.ndarray, *, method: str = "gnnrl") -> Any:
        plan = self._plan_from_ratios(
            self.topology,
            [float(r) for r in ratios],
            round_to=self.config.round_to,
            criterion=self.config.criterion,
            method=method,
        )
        plan.budget = self.config.budget
        return plan

    def _macs_ratio(self, ratios: np.ndarray) -> float:
        return self._plan_macs(self.topology, self._plan(ratios)) / self.base_macs

    def reset(self) -> Observation:
        """Start an episode from the unpruned network."""
        self.keep_ratios = np.ones(len(self.groups))
        self.t = 0
        self.done = False
        return Observation(self.builder.build(self.keep_ratios), self.keep_ratios.copy(), 1.0, 0)

    def apply_action(self, action: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Keep ratios after `action` (clipped to [-1, 1]) from the current ones; does not change the env."""
        a = np.asarray(
            action.detach().cpu().numpy() if isinstance(action, torch.Tensor) else action, dtype=np.float64
        )
        if a.shape != (len(self.groups),):
            raise ValueError(
                f"action has shape {a.shape}; expected ({len(self.groups)},), one entry per prunable group"
            )
        c = self.config
        return np.clip(
            self.keep_ratios * (1.0 + c.max_change * np.clip(a, -1.0, 1.0)),
            c.min_keep_ratio,
            c.max_keep_ratio,
        )

    def step(self, action: Sequence[float] | np.ndarray | torch.Tensor) -> StepResult:
        """Apply one action; score the plan when the episode ends feasible.

        Raises:
            RuntimeError: the episode is over (call reset()).
            ValueError: the action does not have one entry per prunable group.
        """
        if self.done:
            raise RuntimeError("the episode is over; call reset() before step()")
        c = self.config
        timings = {"graph": 0.0, "land": 0.0, "mask": 0.0, "eval": 0.0}
        self.keep_ratios = self.apply_action(action)
        self.t += 1
        macs_ratio = self._macs_ratio(self.keep_ratios)
        met = macs_ratio <= c.budget
        last = self.t >= c.max_steps
        plan, val_acc, reward, feasible, pending = None, None, 0.0, False, False
        if met or last:
            self.done = True
            start = time.perf_counter()
            if met and not c.land_on_budget:
                plan = self._plan(self.keep_ratios)
            elif met or c.action_wall:
                plan = self._land(self.keep_ratios)
            timings["land"] = time.perf_counter() - start
            if plan is None:
                reward = float(c.penalty)
            else:
                feasible = True
                ratios = plan.keep_ratios(self.topology)
                self.keep_ratios = np.array([ratios[g.name] for g in self.groups])
                macs_ratio = self._plan_macs(self.topology, plan) / self.base_macs
                plan.meta = {**(plan.meta or {}), "macs_ratio": macs_ratio, "steps": self.t}
                if self.deferred:
                    pending = True  # the caller scores the plan and calls reward_for(val_acc)
                else:
                    val_acc = self._score(plan, timings)
                    reward = self.reward_for(val_acc)
        start = time.perf_counter()
        state = self.builder.build(self.keep_ratios)
        timings["graph"] = time.perf_counter() - start
        return StepResult(
            state,
            reward,
            self.done,
            feasible,
            self.keep_ratios.copy(),
            macs_ratio,
            self.t,
            plan,
            val_acc,
            timings,
            pending,
        )

    @staticmethod
    def reward_for(val_acc: float) -> float:
        """The reward of a feasible episode: -(val error %)."""
        return -(100.0 - float(val_acc))

    @property
    def deferred(self) -> bool:
        """No scorer was given: a feasible episode ends with `pending=True` and the caller scores its plan."""
        return self.scorer is None and self.score_fn is None

    def _land(self, ratios: np.ndarray) -> Any:
        """The plan shaped like `ratios`, scaled onto the budget (H1's plan_for_budget), or None if impossible."""
        from engine.pruning import plan_for_budget

        c = self.config
        try:
            plan = plan_for_budget(
                self.topology,
                c.budget,
                keep_ratios=[float(r) for r in ratios],
                min_keep_ratio=c.min_keep_ratio,
                max_keep_ratio=c.max_keep_ratio,
                round_to=c.round_to,
                criterion=c.criterion,
                method="gnnrl",
            )
        except BudgetError:
            return None
        return plan

    def _score(self, plan: Any, timings: dict[str, float]) -> float:
        if self.scorer is not None:
            from engine.pruning import mask_model

            if self.model is None:
                raise ValueError("scoring with a Scorer needs the model; pass model=... to PruningEnv")
            start = time.perf_counter()
            masked = mask_model(self.model, self.topology, plan)
            timings["mask"] = time.perf_counter() - start
            start = time.perf_counter()
            acc = float(self.scorer.score_model(masked, copy_model=False))
            timings["eval"] = time.perf_counter() - start
            return acc
        if self.score_fn is not None:
            start = time.perf_counter()
            acc = float(self.score_fn(plan))
            timings["eval"] = time.perf_counter() - start
            return acc
        raise ValueError("PruningEnv needs scorer=... or score_fn=... to score a finished episode")
