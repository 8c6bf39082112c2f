"""The GNN-RL stepper: runs an agent in the pruning environment one env step, one episode or a whole search at a
time, in memory. It records nothing: recorded, resumable runs go through the one search driver (engine.search)
via engine.rl.method.GnnRlSearch, which drives this stepper with deferred scoring (the env returns the plan;
the driver scores it; `complete_episode(val_acc)` hands the reward to the agent).

`state_dict()` / `load_state_dict()` hold everything needed to continue after the last finished episode
(agent weights, optimiser, sampling generator, episode count, best plan); an episode in flight is replayed
identically after a load. It neither defines the agent (ppo.py, ddpg.py) nor the environment (env.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.rl.ddpg import DDPGAgent
from engine.rl.env import PruningEnv
from engine.rl.ppo import PPOAgent
from engine.rl.records import (
    ENCODER_FILE,
    STATE_FILE,
    EpisodeReport,
    SearchConfig,
    SearchResult,
    StepReport,
    state_dir_for,
)

__all__ = [
    "ENCODER_FILE",
    "STATE_FILE",
    "SearchConfig",
    "StepReport",
    "EpisodeReport",
    "SearchResult",
    "SearchRun",
    "run_search",
    "state_dir_for",
]


class SearchRun:
    """A steppable GNN-RL search in memory, with state_dict()/load_state_dict() to continue it.

    Args:
        model: the baseline (never modified). topology: its Topology.
        config: search settings.
        scorer: H3's Scorer, or score_fn: plan -> val top-1 %; with neither, scoring is deferred: an episode
            ends with StepReport.pending_plan set, and complete_episode(val_acc) finishes it.
        callback: called with every EpisodeReport.
    """

    def __init__(
        self,
        model: nn.Module,
        topology: Any,
        *,
        config: SearchConfig | None = None,
        scorer: Any | None = None,
        score_fn: Callable[[Any], float] | None = None,
        callback: Callable[[EpisodeReport], None] | None = None,
    ) -> None:
        self.config = c = config or SearchConfig()
        self.model, self.topology = model, topology
        self.callback = callback
        self.env = PruningEnv(topology, model, config=c.env, scorer=scorer, score_fn=score_fn)
        seed = arm_seed(c)
        self.agent: PPOAgent | DDPGAgent = (
            PPOAgent(c.ppo, seed=seed) if c.agent == "ppo" else DDPGAgent(c.ddpg, seed=seed)
        )
        if c.transfer_from:
            self.agent.load_frozen_encoder(torch.load(c.transfer_from, weights_only=True))
        self.episode = 0
        self.n_scored = 0
        self.best_val_acc: float | None = None
        self.best_plan: dict[str, Any] | None = None
        self.best_episode: int | None = None
        self.history: list[EpisodeReport] = []
        self.policy_plan: Any = None
        self.policy_val_acc: float | None = None
        self._obs = None
        self._ep: dict[str, Any] = {}
        self._pending: Any = None
        self._start = time.perf_counter()

    @property
    def method_name(self) -> str:
        return "gnnrl" if self.config.encoder == "gnn" else "gnnrl-nognn"

    @property
    def finished(self) -> bool:
        """All episodes (or the scored-plan cap) are done."""
        c = self.config
        return self.episode >= c.episodes or (c.max_scored is not None and self.n_scored >= c.max_scored)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.env.groups]

    # -- stepping ------------------------------------------------------------------------------------
    def step(self) -> StepReport:
        """Take one environment step (starting an episode if none is in flight).

        Raises:
            RuntimeError: the search is finished.
        """
        if self.finished:
            raise RuntimeError(f"the search finished after {self.episode} episodes; nothing left to step")
        if self._pending is not None:
            raise RuntimeError("the episode's plan awaits its score; call complete_episode(val_acc) first")
        if self._obs is None:
            if hasattr(self.agent, "set_progress"):
                self.agent.set_progress(self.episode / max(1, self.config.episodes - 1))
            self._obs = self.env.reset().state
            self._ep = {
                "actions": [],
                "timings": dict.fromkeys(("graph", "gnn", "land", "mask", "eval", "update"), 0.0),
                "start": time.perf_counter(),
                "embeddings": None,
            }
        ep = self._ep
        start = time.perf_counter()
        act = self.agent.act(self._obs)
        ep["timings"]["gnn"] += time.perf_counter() - start
        ep["embeddings"] = act.group_embeddings  # the last decision's state is the most pruned one seen
        result = self.env.step(act.action)
        for k, v in result.timings_s.items():
            ep["timings"][k] += v
        ep["actions"].append([round(float(a), 5) for a in act.action])
        self._obs = result.state
        report = None
        if result.pending:
            self._pending = result  # the agent observes the reward in complete_episode()
        else:
            self._observe(result)
            if result.done:
                report = self._finish_episode(result)
        return StepReport(
            self.episode - (1 if result.done and not result.pending else 0),
            result.step,
            [float(a) for a in act.action],
            dict(zip(self.group_names, result.keep_ratios.tolist(), strict=True)),
            float(result.macs_ratio),
            float(result.reward),
            bool(result.done),
            report,
            result.plan if result.pending else None,
        )

    def _observe(self, result: Any) -> None:
        if isinstance(self.agent, DDPGAgent):
            self.agent.observe(result.reward, result.done, result.state)
        else:
            self.agent.observe(result.reward, result.done)

    def complete_episode(self, val_acc: float) -> EpisodeReport:
        """Finish the episode whose plan awaited its score (deferred scoring): reward the agent, report it.

        Raises:
            RuntimeError: no episode awaits a score.
        """
        result = self._pending
        if result is None:
            raise RuntimeError("no episode awaits a score; step() until an episode ends first")
        self._pending = None
        result.val_acc = float(val_acc)
        result.reward = self.env.reward_for(val_acc)
        self._observe(result)
        return self._finish_episode(result)

    def run_episode(self) -> EpisodeReport:
        """Step until the current episode ends; returns its report."""
        while True:
            rep = self.step()
            if rep.done:
                if rep.episode_report is None:
                    raise RuntimeError(
                        "the episode's plan awaits its score (deferred scoring); score it and "
                        "call complete_episode(val_acc)"
                    )
                return rep.episode_report

    def run(self, *, should_stop: Callable[[], bool] | None = None) -> SearchResult:
        """Run episodes until finished or `should_stop()` says so (checked between episodes); then save."""
        while not self.finished:
            if should_stop is not None and should_stop():
                self._obs = None  # an episode in flight is dropped; it replays identically after a load
                return self.result()
            self.run_episode()
        if self.config.score_policy_plan and self.policy_plan is None:
            self.evaluate_policy()
        return self.result()

    def _finish_episode(self, result: Any) -> EpisodeReport:
        ep = self._ep
        start = time.perf_counter()
        update = self.agent.end_episode()
        ep["timings"]["update"] = time.perf_counter() - start
        plan_dict = result.plan.to_dict() if result.plan is not None else None
        macs = int(round(result.macs_ratio * self.env.base_macs))
        if result.val_acc is not None:
            self.n_scored += 1
            if self.best_val_acc is None or result.val_acc > self.best_val_acc:
                self.best_val_acc, self.best_plan, self.best_episode = (
                    float(result.val_acc),
                    plan_dict,
                    self.episode,
                )
        ep["timings"]["total"] = time.perf_counter() - ep["start"]
        report = EpisodeReport(
            episode=self.episode,
            reward=float(result.reward),
            val_acc=result.val_acc,
            macs=macs,
            macs_ratio=float(result.macs_ratio),
            feasible=bool(result.feasible),
            steps=int(result.step),
            plan=plan_dict,
            keep_ratios=dict(
                zip(self.group_names, [round(float(r), 5) for r in result.keep_ratios], strict=True)
            ),
            actions=ep["actions"],
            embeddings=ep["embeddings"].numpy().round(5).tolist(),
            embedding_groups=self.group_names,
            best_val_acc=self.best_val_acc,
            best_episode=self.best_episode,
            timings_s={k: round(v, 5) for k, v in ep["timings"].items()},
            update=update,
        )
        self.episode += 1
        self.history.append(report)
        self._obs = None
        if self.callback is not None:
            self.callback(report)
        return report

    # -- outputs -------------------------------------------------------------------------------------
    def evaluate_policy(self, *, score: bool = True) -> Any:
        """Roll out the policy mean from the unpruned network; land it on the budget; optionally score it.

        Does not touch the agent's buffer or generator. Returns the plan (None if it cannot meet the budget).
        """
        env = PruningEnv(
            self.topology,
            self.model,
            config=self.env.config,
            scorer=self.env.scorer,
            score_fn=self.env.score_fn if score else (lambda plan: float("nan")),
        )
        env.builder = self.env.builder
        obs = env.reset().state
        for _ in range(env.config.max_steps):
            act = self.agent.act(obs, deterministic=True, record=False)
            ratios = env.apply_action(act.action)
            env.keep_ratios = ratios
            obs = env.builder.build(ratios)
            if env._macs_ratio(ratios) <= env.config.budget:
                break
        plan = env._land(env.keep_ratios)
        if plan is None:
            return None
        plan.meta = {**(plan.meta or {}), "policy_mean": True}
        self.policy_plan = plan
        if score:
            timings: dict[str, float] = {}
            self.policy_val_acc = env._score(plan, timings)
            self.n_scored += 1
            if self.best_val_acc is None or self.policy_val_acc > self.best_val_acc:
                self.best_val_acc, self.best_plan, self.best_episode = (
                    self.policy_val_acc,
                    plan.to_dict(),
                    None,
                )
        return plan

    def result(self) -> SearchResult:
        """The search's outcome so far."""
        from engine.pruning import PruningPlan

        best = PruningPlan.from_dict(self.best_plan) if self.best_plan is not None else None
        ratio = None
        if best is not None:
            ratio = float(self.env._plan_macs(self.topology, best) / self.env.base_macs)
        return SearchResult(
            None,
            self.episode,
            self.n_scored,
            best,
            self.best_val_acc,
            self.best_episode,
            self.policy_plan,
            self.policy_val_acc,
            ratio,
            time.perf_counter() - self._start,
            list(self.history),
            None,
            self.finished,
        )

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state after the last finished episode (plain data and tensors: loads with weights_only=True)."""
        if self._pending is not None:
            raise RuntimeError("an episode awaits its score; save after complete_episode()")
        return {
            "config": self.config.to_dict(),
            "agent": self.agent.state_dict(),
            "episode": self.episode,
            "n_scored": self.n_scored,
            "best_val_acc": self.best_val_acc,
            "best_plan_json": None if self.best_plan is None else _json(self.best_plan),
            "best_episode": self.best_episode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state_dict() output (the run must have been built with the same config)."""
        import json

        self.agent.load_state_dict(state["agent"])
        self.episode = int(state["episode"])
        self.n_scored = int(state["n_scored"])
        self.best_val_acc = state["best_val_acc"]
        self.best_plan = json.loads(state["best_plan_json"]) if state["best_plan_json"] else None
        self.best_episode = state["best_episode"]
        self._obs = None
        self._pending = None


def arm_seed(config: SearchConfig) -> int:
    """The agent's seed: `config.seed` for GNN-RL itself; a derived one for the ablation arms (no-GNN, no
    learning), so arms compared with each other draw independent exploration noise (with one shared stream,
    gnnrl and gnnrl-nognn episode rewards correlated at r = 0.935 and found the same best plan)."""
    import zlib

    arm = ("gnn" if config.encoder == "gnn" else "features") + ("" if config.ppo.learn else "-nolearn")
    if arm == "gnn":
        return int(config.seed)
    return int(config.seed) + zlib.crc32(arm.encode()) % 1_000_003


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))


def run_search(
    model: nn.Module,
    topology: Any,
    *,
    config: SearchConfig | None = None,
    scorer: Any | None = None,
    score_fn: Callable[[Any], float] | None = None,
    callback: Callable[[EpisodeReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchResult:
    """Run a GNN-RL search in memory to completion (or until `should_stop()`); nothing is recorded.

    For a recorded, resumable run use the methods `gnnrl` / `gnnrl-nognn` through engine.methods.run_method
    (or `topoprune search`), which go through the search driver.
    """
    run = SearchRun(model, topology, config=config, scorer=scorer, score_fn=score_fn, callback=callback)
    return run.run(should_stop=should_stop)
