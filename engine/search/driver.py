"""The one recorded-run driver: every search method (engine.search.protocol) runs, steps, pauses and resumes
through it.

The driver scores each proposed plan with the shared scorer, records runs and episodes in the run store on one
reward scale (episodes.reward = val top-1 %, the method's own reward in the episode's extra as
`method_reward`), and writes the method's resumable state atomically after every batch (after the batch is
committed to the store), so a SIGKILL loses at most the batch in flight and `resume` replays exactly the
proposals an uninterrupted run would have made. The CLI and the GUI keep no run-lifecycle logic of their own.

State lives in `state_dir_for(run_id) / search_state.pt`, stamped with the run's id *and* creation time, so a
state file left by another run that had the same id (ids restart in a new store) is never loaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.errors import BudgetError, TopoPruneError
from engine.paths import topoprune_home
from engine.search.protocol import Proposal, Scored, SearchMethod, SubStep

STATE_FILE = "search_state.pt"
STATE_VERSION = 2


class SearchStateError(TopoPruneError):
    """Saved search state that cannot be used (another run's, another method's, or unreadable)."""


def state_dir_for(run_id: int) -> Path:
    """Where run `run_id` keeps its resumable state: `$TOPOPRUNE_HOME/runs/<run_id>/`."""
    return topoprune_home() / "runs" / str(int(run_id))


class SearchDriver:
    """Runs one search method as a recorded, steppable, resumable run.

    Args:
        spec: The method's MethodSpec (its `searcher` class builds the method).
        ctx: The MethodContext; `ctx.store` / `ctx.run_id` (optional) receive the run's episodes; with
            `ctx.resume` the run continues from its saved state.
        options: Validated options of the method.
        batch_size: Proposals scored per batch (state is saved after each batch); default ctx.batch_size.

    `ctx.executor` (engine.search.executors) scores each batch: in this process by default, or spread over
    worker processes / Ray actors; only the driver writes the store.
    """

    def __init__(
        self, spec: Any, ctx: Any, options: dict[str, Any], *, batch_size: int | None = None
    ) -> None:
        self.spec, self.ctx, self.options = spec, ctx, dict(options)
        self.name = spec.name
        self.batch_size = max(1, int(batch_size or getattr(ctx, "batch_size", 1) or 1))
        self.store, self.run_id = ctx.store, ctx.run_id
        self.state_path: Path | None = None
        if self.store is not None and self.run_id is not None:
            self.state_path = state_dir_for(self.run_id) / STATE_FILE
        self.method: SearchMethod = spec.searcher(ctx, self.options)
        self.executor = getattr(ctx, "executor", None)
        if self.executor is None:
            from engine.search.executors import InlineExecutor

            self.executor = InlineExecutor(ctx)
        self.episode = 0  # proposals recorded so far (the next episode's index)
        self.n_scored = 0
        self.history: list[Any] = []  # scored Candidates, in episode order
        self.final: list[Any] = []  # candidates from final_proposals()
        self.winner: Any | None = None  # the re-scored winner (ctx.rescore_top > 0)
        self.seconds_before = 0.0
        self._start = time.perf_counter()
        self._base_macs = float(ctx.topology.table.full.macs)
        if getattr(ctx, "resume", False):
            self._restore()

    # -- properties ----------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return bool(self.method.finished)

    @property
    def total(self) -> int:
        return self.method.total

    @property
    def best(self) -> Any | None:
        """The best scored candidate so far (highest val, earliest on ties), final proposals included; after a
        re-score (`ctx.rescore_top`), the re-scored winner."""
        if self.winner is not None:
            return self.winner
        pool = self.history + self.final
        return max(pool, key=lambda c: (c.val_acc, -c.index)) if pool else None

    def _rescore(self) -> list[dict[str, Any]]:
        """Re-score the top `ctx.rescore_top` plans on `ctx.rescore_val_size` val images (val carved out of train;
        test untouched) and let that score pick the winner: the best of many noisy scores is biased upwards
        (winner's curse), a larger val subset on a few plans removes most of that bias cheaply."""
        k = int(getattr(self.ctx, "rescore_top", 0) or 0)
        if k <= 0 or not (self.history or self.final):
            return []
        from dataclasses import replace

        from engine.evaluate import Scorer, ScoringConfig

        if self.ctx.data is None:
            raise SearchStateError("re-scoring the top plans needs the dataset (ctx.data); set rescore_top=0")

        scorer = self.ctx.get_scorer()
        config = replace(
            scorer.config if scorer is not None else ScoringConfig(),
            val_size=getattr(self.ctx, "rescore_val_size", None),
        )
        big = Scorer(self.ctx.model, self.ctx.topology, self.ctx.data, config)
        pool = sorted(self.history + self.final, key=lambda c: (-c.val_acc, c.index))[:k]
        rows, best = [], None
        for cand in pool:
            acc = float(big.score(cand.plan))
            self.n_scored += 1
            rows.append(
                {
                    "index": cand.index,
                    "episode": cand.meta.get("episode"),
                    "search_val_acc": cand.val_acc,
                    "rescore_val_acc": acc,
                }
            )
            if best is None or acc > best[0]:
                best = (acc, cand)
        assert best is not None
        acc, cand = best
        from engine.methods.registry import Candidate

        self.winner = Candidate(
            index=cand.index,
            plan=cand.plan,
            val_acc=acc,
            macs_ratio=cand.macs_ratio,
            meta={**cand.meta, "search_val_acc": cand.val_acc, "rescored": True},
        )
        return rows

    # -- stepping ------------------------------------------------------------------------------------
    def step(self) -> list[Any]:
        """Propose, score, observe and record one batch; returns its Candidates (None for planless episodes).

        Raises:
            TopoPruneError: the search is finished.
        """
        if self.finished:
            raise TopoPruneError(
                f"the {self.name} search finished after {self.episode} episodes; nothing to step"
            )
        proposals = self.method.propose(self.batch_size)
        return self._settle(proposals)

    def substep(self) -> SubStep:
        """One inner step of a method with multi-step episodes; settles the episode when the step ends it."""
        if self.finished:
            raise TopoPruneError(
                f"the {self.name} search finished after {self.episode} episodes; nothing to step"
            )
        sub = self.method.substep()
        if sub.proposal is not None:
            sub.info["candidate"] = self._settle([sub.proposal])[0]
        return sub

    def _settle(self, proposals: list[Proposal]) -> list[Any]:
        plans = [p.plan for p in proposals if p.plan is not None]
        scores = iter(self.executor.score(plans) if plans else [])
        self.n_scored += len(plans)
        scored = [Scored(p, None if p.plan is None else next(scores)) for p in proposals]
        rewards = self.method.observe(scored)
        out = [self._record(s, r) for s, r in zip(scored, rewards, strict=True)]
        self.save()
        return out

    def _score(self, plan: Any) -> float | None:
        if plan is None:
            return None
        self.n_scored += 1
        return float(self.executor.score([plan])[0])

    def _record(self, scored: Scored, method_reward: float | None) -> Any:
        from engine.methods.registry import Candidate

        index = self.episode
        self.episode += 1
        plan = scored.proposal.plan
        meta = {**scored.proposal.meta, "episode": index, "method_reward": method_reward}
        meta.setdefault("reward", method_reward)
        total = self.total
        if plan is None:
            self._add_episode(index, None, None, meta)
            self.ctx.emit(self.name, index + 1, total, f"episode {index}: no plan on budget")
            return None
        plan.method = self.name
        macs_ratio = self._macs(plan) / self._base_macs
        cand = Candidate(
            index=len(self.history),
            plan=plan,
            val_acc=float(scored.val_acc),
            macs_ratio=macs_ratio,
            meta=meta,
        )
        self.history.append(cand)
        self._add_episode(index, plan, cand.val_acc, meta)
        best = self.best
        self.ctx.emit(
            self.name,
            index + 1,
            total,
            f"episode {index}: val {cand.val_acc:.2f}% at {macs_ratio:.3f} MACs (best {best.val_acc:.2f}%)",
            cand,
        )
        return cand

    def _macs(self, plan: Any) -> int:
        from engine.cost import plan_macs

        return int(plan_macs(self.ctx.topology, plan))

    def _add_episode(self, index: int, plan: Any, val_acc: float | None, meta: dict[str, Any]) -> None:
        if self.store is None or self.run_id is None:
            return
        macs = self._macs(plan) if plan is not None else None
        self.store.add_episode(
            self.run_id,
            index=index,
            reward=val_acc,
            macs=macs,
            macs_ratio=None if macs is None else macs / self._base_macs,
            val_acc=val_acc,
            plan=None if plan is None else plan.to_dict(),
            extra=meta,
            replace=True,
        )

    # -- the run -------------------------------------------------------------------------------------
    def run(self, *, should_stop: Callable[[], bool] | None = None) -> Any:
        """Step until finished (then complete) or until `should_stop()` (checked between batches: pause)."""
        stop = should_stop or self.ctx.stopped
        while not self.finished:
            if stop():
                self.pause()
                return self.result(finished=False)
            self.step()
        return self.complete()

    def pause(self, status: str = "paused") -> None:
        """Stop here; the saved state is the one after the last settled batch (an episode in flight replays
        identically on resume). Marks the stored run `status`."""
        self._update_run(status=status, extra={"episodes_done": self.episode})

    def complete(self) -> Any:
        """Score the method's final proposals, check the best plan, and mark the run completed."""
        from engine.methods.registry import Candidate

        self.final = []
        scored = []
        for proposal in self.method.final_proposals():
            acc = self._score(proposal.plan)
            scored.append(Scored(proposal, acc))
            if acc is None:
                continue
            proposal.plan.method = self.name
            self.final.append(
                Candidate(
                    index=len(self.history) + len(self.final),
                    plan=proposal.plan,
                    val_acc=acc,
                    macs_ratio=self._macs(proposal.plan) / self._base_macs,
                    meta={**proposal.meta, "final": True},
                )
            )
        if hasattr(self.method, "observe_final"):
            self.method.observe_final(scored)
        rescored = self._rescore()
        result = self.result(finished=True)
        result.meta["rescored"] = rescored
        self._check_budget(result.plan)
        self._update_run(
            status="completed",
            best_score=result.val_acc,
            best_plan=result.plan,
            extra={
                "episodes_done": self.episode,
                "n_scored": self.n_scored,
                "seconds": result.seconds,
                "macs_ratio": result.macs_ratio,
                "final": [c.to_dict() for c in self.final],
                "rescored": rescored,
                **result.meta.get("summary", {}),
            },
        )
        return result

    def result(self, *, finished: bool) -> Any:
        """The MethodResult so far.

        Raises:
            BudgetError: no proposal was scored (every episode missed the budget, or none ran).
        """
        from engine.methods.registry import MethodResult

        best = self.best
        if best is None:
            raise BudgetError(
                f"no episode of '{self.name}' produced a plan on the budget {self.ctx.budget} "
                f"after {self.episode} episodes; run more episodes, raise the budget or lower the keep bounds"
            )
        best_episode = best.meta.get("episode") if not best.meta.get("final") else None
        summary = self.method.summary()
        meta = {
            "run_id": self.run_id,
            "best_index": best.index,
            "best_episode": best_episode,
            "episodes": self.episode,
            "finished": finished,
            "summary": summary,
            "final": [c.to_dict() for c in self.final],
            **summary,
        }
        return MethodResult(
            method=self.name,
            plan=best.plan,
            val_acc=best.val_acc,
            macs_ratio=best.macs_ratio,
            candidates=list(self.history),
            seconds=self.seconds,
            n_scored=self.n_scored,
            options=dict(self.options),
            meta=meta,
        )

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self._start

    def _check_budget(self, plan: Any) -> None:
        from engine.methods import candidates

        candidates.check_on_budget(self.ctx, plan, self.name)

    def _update_run(self, **fields: Any) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.update_run(self.run_id, **fields)

    # -- persistence ---------------------------------------------------------------------------------
    def _run_created_at(self) -> str | None:
        if self.store is None or self.run_id is None:
            return None
        return self.store.get_run(self.run_id).created_at

    def save(self) -> Path | None:
        """Write the resumable state (atomic: a temporary file renamed over the old one)."""
        if self.state_path is None:
            return None
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "version": STATE_VERSION,
            "method": self.name,
            "run_id": int(self.run_id),
            "run_created_at": self._run_created_at(),
            "episode": self.episode,
            "n_scored": self.n_scored,
            "seconds": self.seconds,
            "method_state": self.method.state_dict(),
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        if hasattr(self.method, "save_artifacts"):
            self.method.save_artifacts(self.state_path.parent)
        if self.episode <= self.batch_size:
            self._update_run(state_path=str(self.state_path))
        return self.state_path

    def _restore(self) -> None:
        """Continue from the saved state; a run with no state of its own starts from episode 0."""
        if self.state_path is None:
            raise SearchStateError(
                f"method '{self.name}' got resume without a stored run (ctx.store and ctx.run_id)"
            )
        state = self._read_state()
        if state is None:
            return  # killed before its first batch was settled: start again from the same seed
        self.method.load_state_dict(state["method_state"])
        self.episode = int(state["episode"])
        self.n_scored = int(state["n_scored"])
        self.seconds_before = float(state.get("seconds", 0.0))
        from engine.methods.registry import Candidate
        from engine.pruning import PruningPlan

        for e in self.store.episodes(self.run_id):
            if e.index >= self.episode or e.plan is None or e.val_acc is None:
                continue
            self.history.append(
                Candidate(
                    index=len(self.history),
                    plan=PruningPlan.from_dict(e.plan),
                    val_acc=float(e.val_acc),
                    macs_ratio=float(e.macs_ratio),
                    meta=dict(e.extra),
                )
            )

    def _read_state(self) -> dict[str, Any] | None:
        path = self.state_path
        assert path is not None
        if not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say so, never half-load it
            raise SearchStateError(
                f"the saved state of run {self.run_id} at {path} cannot be read ({type(exc).__name__}); "
                "move it aside to restart the run from episode 0"
            ) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise SearchStateError(
                f"the saved state at {path} was written by another TopoPrune version; move it aside to restart "
                f"run {self.run_id} from episode 0"
            )
        created = self._run_created_at()
        if state.get("run_id") != self.run_id or state.get("run_created_at") != created:
            # another run with the same id (a new store restarts ids at 1): not ours; set it aside
            path.rename(path.with_name(f"{path.name}.foreign-{int(time.time())}"))
            return None
        if state.get("method") != self.name:
            raise SearchStateError(
                f"the saved state of run {self.run_id} belongs to method '{state.get('method')}', "
                f"not '{self.name}'; resume it with that method"
            )
        return state


def drive(spec: Any, ctx: Any, options: dict[str, Any]) -> Any:
    """Run a search method to completion (or until ctx.should_stop) through the driver; the registry's entry."""
    return SearchDriver(spec, ctx, options).run()
