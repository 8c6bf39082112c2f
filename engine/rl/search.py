"""The GNN-RL search driver: runs an agent in the pruning environment, one env step, one episode or a whole
run at a time; saves its state after every episode so a run can be paused and resumed; reports each episode
through a callback and to the run store.

State lives in `<state_dir>/search_state.pt` (default `topoprune_home()/runs/<run_id>/`): agent weights,
optimiser, sampling generator, episode count and best plan, written atomically after each episode (after the
episode is committed to the store), so a SIGKILL loses at most the episode in flight, and a resumed run
replays exactly the trajectory an uninterrupted one would have taken. It neither defines the agent (ppo.py,
ddpg.py) nor the environment (env.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
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
    "resume_search",
    "state_dir_for",
]


class SearchRun:
    """A steppable, pausable, resumable GNN-RL search.

    Args:
        model: the baseline (never modified). topology: its Topology.
        config: search settings.
        scorer: H3's Scorer (or pass score_fn: plan -> val top-1 %).
        store: a RunStore to record the run's episodes (optional). run_id: an existing run in `store`
            (created by the CLI/GUI); None with a store creates one.
        dataset: dataset name recorded on a created run.
        callback: called with every EpisodeReport.
        state_dir: where to save state (default: `state_dir_for(run_id)` with a store, else nothing is saved).
    """

    def __init__(
        self,
        model: nn.Module,
        topology: Any,
        *,
        config: SearchConfig | None = None,
        scorer: Any | None = None,
        score_fn: Callable[[Any], float] | None = None,
        store: Any | None = None,
        run_id: int | None = None,
        dataset: str = "",
        callback: Callable[[EpisodeReport], None] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = c = config or SearchConfig()
        self.model, self.topology = model, topology
        self.store, self.callback = store, callback
        self.env = PruningEnv(topology, model, config=c.env, scorer=scorer, score_fn=score_fn)
        self.agent: PPOAgent | DDPGAgent = (
            PPOAgent(c.ppo, seed=c.seed) if c.agent == "ppo" else DDPGAgent(c.ddpg, seed=c.seed)
        )
        if c.transfer_from:
            self.agent.load_frozen_encoder(torch.load(c.transfer_from, weights_only=True))
        if store is not None and run_id is None:
            run_id = store.create_run(
                method=self.method_name,
                model=topology.model_name,
                dataset=dataset,
                budget=c.env.budget,
                config={"search": c.to_dict()},
            )
        self.run_id = run_id
        if state_dir is None and run_id is not None:
            state_dir = state_dir_for(run_id)
        self.state_dir = Path(state_dir) if state_dir is not None else None
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
        if self._obs is None:
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
        if isinstance(self.agent, DDPGAgent):
            self.agent.observe(result.reward, result.done, result.state)
        else:
            self.agent.observe(result.reward, result.done)
        self._obs = result.state
        report = None
        if result.done:
            report = self._finish_episode(result)
        return StepReport(
            self.episode - (1 if result.done else 0),
            result.step,
            [float(a) for a in act.action],
            dict(zip(self.group_names, result.keep_ratios.tolist(), strict=True)),
            float(result.macs_ratio),
            float(result.reward),
            bool(result.done),
            report,
        )

    def run_episode(self) -> EpisodeReport:
        """Step until the current episode ends; returns its report."""
        while True:
            rep = self.step()
            if rep.done:
                assert rep.episode_report is not None
                return rep.episode_report

    def run(self, *, should_stop: Callable[[], bool] | None = None) -> SearchResult:
        """Run episodes until finished or `should_stop()` says so (checked between episodes); then save."""
        while not self.finished:
            if should_stop is not None and should_stop():
                self.pause()
                return self.result()
            self.run_episode()
        if self.config.score_policy_plan and self.policy_plan is None:
            self.evaluate_policy()
        self._finalise()
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
        if self.store is not None and self.run_id is not None:
            extra = {
                k: v
                for k, v in report.to_dict().items()
                if k not in ("reward", "val_acc", "macs", "macs_ratio", "plan")
            }
            self.store.add_episode(
                self.run_id,
                index=report.episode,
                reward=report.reward,
                macs=macs,
                macs_ratio=report.macs_ratio,
                val_acc=report.val_acc,
                plan=plan_dict,
                extra=extra,
                replace=True,
            )
        self.save()
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
            self.run_id,
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
            str(self.state_dir) if self.state_dir else None,
            self.finished,
        )

    # -- persistence ---------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write the state after the last finished episode (atomic); None when the run has no state_dir."""
        if self.state_dir is None:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "version": 1,
            "config": self.config.to_dict(),
            "agent": self.agent.state_dict(),
            "episode": self.episode,
            "n_scored": self.n_scored,
            "best_val_acc": self.best_val_acc,
            "best_plan_json": None if self.best_plan is None else _json(self.best_plan),
            "best_episode": self.best_episode,
            "run_id": self.run_id,
        }
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        torch.save(self.agent.encoder_state_dict(), self.state_dir / ENCODER_FILE)
        if self.store is not None and self.run_id is not None and self.episode == 1:
            self.store.update_run(self.run_id, state_path=str(path))
        return path

    def pause(self) -> Path | None:
        """Stop here: the saved state is the one after the last finished episode (an episode in flight is
        replayed identically on resume); marks the stored run paused."""
        self._obs = None
        if self.store is not None and self.run_id is not None:
            self.store.update_run(self.run_id, status="paused", extra={"episodes_done": self.episode})
        return self.state_dir / STATE_FILE if self.state_dir else None

    def _finalise(self) -> None:
        if self.store is not None and self.run_id is not None:
            extra = {
                "episodes_done": self.episode,
                "n_scored": self.n_scored,
                "policy_plan": self.policy_plan.to_dict() if self.policy_plan is not None else None,
                "policy_val_acc": self.policy_val_acc,
                "best_episode": self.best_episode,
            }
            self.store.update_run(
                self.run_id,
                status="completed",
                extra=extra,
                best_score=self.best_val_acc,
                best_plan=self.best_plan,
            )

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore the state saved by save() (the run must have been built with the same config)."""
        import json

        state = torch.load(path, weights_only=True)
        self.agent.load_state_dict(state["agent"])
        self.episode = int(state["episode"])
        self.n_scored = int(state["n_scored"])
        self.best_val_acc = state["best_val_acc"]
        self.best_plan = json.loads(state["best_plan_json"]) if state["best_plan_json"] else None
        self.best_episode = state["best_episode"]
        self._obs = None

    @classmethod
    def resume(
        cls,
        model: nn.Module,
        topology: Any,
        *,
        run_id: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        scorer: Any | None = None,
        score_fn: Callable[[Any], float] | None = None,
        store: Any | None = None,
        callback: Callable[[EpisodeReport], None] | None = None,
    ) -> SearchRun:
        """Rebuild a run from its saved state (by run id in `store`, or from `state_dir`).

        Raises:
            ValueError: neither run_id nor state_dir given, or no saved state there.
        """
        if state_dir is None:
            if run_id is None:
                raise ValueError("resume needs run_id=... (with its store) or state_dir=...")
            state_dir = state_dir_for(run_id)
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            raise ValueError(
                f"no saved search state at {path}; the run finished no episode yet, start it again"
            )
        saved = torch.load(path, weights_only=True)
        run = cls(
            model,
            topology,
            config=SearchConfig.from_dict(saved["config"]),
            scorer=scorer,
            score_fn=score_fn,
            store=store,
            run_id=run_id if run_id is not None else saved.get("run_id"),
            callback=callback,
            state_dir=state_dir,
        )
        run.load(path)
        return run


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
    store: Any | None = None,
    run_id: int | None = None,
    dataset: str = "",
    callback: Callable[[EpisodeReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> SearchResult:
    """Run a GNN-RL search to completion (or until `should_stop()`); see SearchRun for the arguments.

    Returns:
        The best plan seen, the policy-mean plan, and the episode history.
    """
    run = SearchRun(
        model,
        topology,
        config=config,
        scorer=scorer,
        score_fn=score_fn,
        store=store,
        run_id=run_id,
        dataset=dataset,
        callback=callback,
        state_dir=state_dir,
    )
    return run.run(should_stop=should_stop)


def resume_search(
    model: nn.Module,
    topology: Any,
    *,
    run_id: int | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    scorer: Any | None = None,
    score_fn: Callable[[Any], float] | None = None,
    store: Any | None = None,
    callback: Callable[[EpisodeReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchResult:
    """Continue a paused or interrupted search from its saved state and run it to completion."""
    run = SearchRun.resume(
        model,
        topology,
        run_id=run_id,
        state_dir=state_dir,
        scorer=scorer,
        score_fn=score_fn,
        store=store,
        callback=callback,
    )
    return run.run(should_stop=should_stop)
