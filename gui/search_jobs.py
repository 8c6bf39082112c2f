"""Search jobs for the Agent page: any registered method through the registry, and GNN-RL step by step.

Built on gui.jobs.Job (worker thread, pause/resume/step/stop); records runs, episodes and the best plan as a
candidate in the run store. No Streamlit here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import TopoPruneError
from gui.jobs import Job, JobStopped


def plan_keep_ratios(plan: Any, topology: Any) -> dict[str, float]:
    """Group name -> keep ratio of a PruningPlan (or its dict) on `topology`."""
    if hasattr(plan, "keep_ratios"):
        return {str(k): float(v) for k, v in plan.keep_ratios(topology).items()}
    keep = (plan or {}).get("keep", {}) if isinstance(plan, dict) else {}
    channels = {g.name: g.channels for g in getattr(topology, "groups", [])}
    return {str(k): float(v) / channels[k] for k, v in keep.items() if channels.get(k)}


def _plan_dict(plan: Any) -> dict[str, Any] | None:
    if plan is None:
        return None
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    return dict(plan)


def episode_event(candidate: Any, topology: Any, *, index: int) -> dict[str, Any]:
    """A plain dict the Agent page draws from, built from an engine Candidate of one episode."""
    meta = dict(getattr(candidate, "meta", {}) or {})
    plan = getattr(candidate, "plan", None)
    reward = meta.get("reward")
    event = {
        "episode": int(meta.get("episode", index)),
        "reward": float(reward) if reward is not None else None,
        "val_acc": float(getattr(candidate, "val_acc", float("nan"))),
        "macs_ratio": float(getattr(candidate, "macs_ratio", float("nan"))),
        "keep_ratios": plan_keep_ratios(plan, topology) if plan is not None else {},
        "plan": _plan_dict(plan),
    }
    for key in ("embeddings", "embedding_groups", "actions", "step"):
        if key in meta:
            event[key] = meta[key]
    return event


def start_method(
    *,
    method: str,
    model: Any,
    topology: Any,
    data: Any,
    budget: float,
    options: dict[str, Any],
    model_name: str,
    dataset: str,
    seed: int = 0,
    scoring: Any = None,
    steps: int | None = None,
    record: bool = True,
    run_method: Callable[..., Any] | None = None,
    store_factory: Callable[[], Any] | None = None,
) -> Job:
    """Run a registered pruning method in the background; each scored candidate becomes an event.

    The run is recorded in the store (a run row, its episodes, and the final plan as a candidate) when
    `record` and a store is available. With `steps`, the job pauses after that many candidates (Step).
    """
    from engine.methods import MethodContext
    from engine.methods import run_method as engine_run_method

    run = run_method or engine_run_method
    job = Job(kind="search", label=f"{method} on {model_name}, budget {budget:.0%}",
              total=int(options.get("episodes", options.get("samples", 0)) or 0))

    def work(job: Job) -> Any:
        store = None
        run_id = None
        if record and store_factory is not None:
            store = store_factory()
            scoring_dict = scoring.to_dict() if hasattr(scoring, "to_dict") else None
            run_id = store.create_run(method=method, model=model_name, dataset=dataset, budget=budget,
                                      config={"options": options, "seed": seed, "scoring": scoring_dict})
            job.info["run_id"] = run_id
        count = 0

        def callback(event: Any) -> None:
            nonlocal count
            if event.total:
                job.report(total=int(event.total))
            if getattr(event, "candidate", None) is not None:
                count += 1
                ev = episode_event(event.candidate, topology, index=count - 1)
                job.report(done=count, message=event.message or f"candidate {count}", event=ev)
                if store is not None and run_id is not None and not _engine_records_episodes(method):
                    store.add_episode(run_id, reward=ev["reward"] if ev["reward"] is not None else ev["val_acc"],
                                      macs_ratio=ev["macs_ratio"], val_acc=ev["val_acc"], plan=ev["plan"])
                job.checkpoint()
            else:
                job.report(done=int(event.step) if event.step else None, message=event.message)
                job.checkpoint(unit_done=False)

        ctx = MethodContext(model=model, topology=topology, data=data, budget=budget, seed=seed, scoring=scoring,
                            callback=callback, should_stop=job.should_stop, store=store, run_id=run_id)
        try:
            result = run(method, ctx, **options)
        except BaseException:
            if store is not None and run_id is not None:
                status = "interrupted" if job.should_stop() else "failed"
                _safe(lambda: store.update_run(run_id, status=status))
            raise
        plan = _plan_dict(result.plan)
        if store is not None and run_id is not None:
            metrics = {"val_acc": float(result.val_acc), "macs_ratio": float(result.macs_ratio)}
            _safe(lambda: store.update_run(run_id, status="interrupted" if job.should_stop() else "completed",
                                           best_score=float(result.val_acc), best_plan=plan))
            cid = store.add_candidate(method=method, model=model_name, dataset=dataset, plan=plan, metrics=metrics,
                                      run_id=run_id)
            job.info["candidate_id"] = cid
        job.report(message=f"best val top-1 {result.val_acc:.2f}% at {result.macs_ratio:.1%} of the MACs")
        return {"plan": plan, "val_acc": float(result.val_acc), "macs_ratio": float(result.macs_ratio),
                "seconds": float(getattr(result, "seconds", 0.0))}

    return job.start(work, steps=steps)


RL_METHODS = {"gnnrl": "gnn", "gnnrl-nognn": "features"}


def rl_episode_event(report: Any) -> dict[str, Any]:
    """A plain dict the Agent page draws from, built from engine.rl's EpisodeReport."""
    return {
        "episode": int(report.episode), "reward": float(report.reward),
        "val_acc": None if report.val_acc is None else float(report.val_acc),
        "macs_ratio": float(report.macs_ratio), "keep_ratios": dict(report.keep_ratios), "plan": report.plan,
        "embeddings": report.embeddings, "embedding_groups": report.embedding_groups,
        "actions": report.actions, "steps": int(report.steps), "feasible": bool(report.feasible),
    }


def start_rl_search(
    *,
    method: str,
    model: Any,
    topology: Any,
    data: Any,
    budget: float,
    options: dict[str, Any],
    model_name: str,
    dataset: str,
    seed: int = 0,
    scoring: Any = None,
    steps: int | None = None,
    step_unit: str = "episode",
    store_factory: Callable[[], Any] | None = None,
    resume_run_id: int | None = None,
    past_events: list[dict[str, Any]] | None = None,
) -> Job:
    """Drive engine.rl's SearchRun one environment step at a time, so Step can mean one step or one episode.

    Every step lands in ``info["last_step"]`` (episode, step, raw action, keep ratios after it, MACs ratio,
    reward); every finished episode is an event. SearchRun records its own episodes in the store; the best
    plan becomes a candidate when the search ends (or is stopped after at least one scored episode). With
    `resume_run_id`, a paused/interrupted stored run continues from its saved state (`past_events` are its
    recorded episodes, shown before the new ones).
    """
    from engine.methods import MethodContext, get_method
    from engine.rl.method import search_config_from_options
    from engine.rl.search import SearchRun

    if method not in RL_METHODS:
        raise ValueError(f"start_rl_search runs {sorted(RL_METHODS)}, got {method!r}")
    if step_unit not in ("step", "episode"):
        raise ValueError(f"step_unit must be 'step' or 'episode', got {step_unit!r}")
    opts = get_method(method).validate({k: v for k, v in options.items() if k != "resume"})
    verb = f"resuming run {resume_run_id}: " if resume_run_id is not None else ""
    job = Job(kind="search", label=f"{verb}{method} on {model_name}, budget {budget:.0%}",
              total=int(opts["episodes"]), events=list(past_events or []), done=len(past_events or []))

    def work(job: Job) -> Any:
        ctx = MethodContext(model=model, topology=topology, data=data, budget=budget, seed=seed, scoring=scoring)
        store = store_factory() if store_factory is not None else None

        def on_episode(report: Any) -> None:
            val = "budget missed" if report.val_acc is None else f"val {report.val_acc:.2f}%"
            job.report(done=report.episode + 1, message=f"episode {report.episode + 1}: {val}, reward "
                                                        f"{report.reward:.3f}", event=rl_episode_event(report))

        if resume_run_id is not None:
            if store is None:
                raise ValueError("resuming a run needs the run store")
            store.claim_run(resume_run_id)
            run_id = resume_run_id
            run = SearchRun.resume(model, topology, run_id=run_id, scorer=ctx.get_scorer(), store=store,
                                   callback=on_episode)
            job.report(total=int(run.config.episodes), info={"run_id": run_id})
        else:
            config = search_config_from_options(ctx, opts, encoder=RL_METHODS[method])
            run_id = None
            if store is not None:
                scoring_dict = scoring.to_dict() if hasattr(scoring, "to_dict") else None
                run_id = store.create_run(method=method, model=model_name, dataset=dataset, budget=budget,
                                          config={"search": config.to_dict(), "options": opts,
                                                  "scoring": scoring_dict})
                job.report(info={"run_id": run_id})
            run = SearchRun(model, topology, config=config, scorer=ctx.get_scorer(), store=store, run_id=run_id,
                            callback=on_episode, dataset=dataset)
        try:
            while not run.finished:
                if job.should_stop():
                    raise JobStopped()
                rep = run.step()
                job.report(message=f"episode {rep.episode + 1}, step {rep.step}: MACs {rep.macs_ratio:.1%}",
                           info={"last_step": {"episode": rep.episode, "step": rep.step, "action": rep.action,
                                               "keep_ratios": rep.keep_ratios, "macs_ratio": rep.macs_ratio,
                                               "reward": rep.reward, "done": rep.done}})
                job.checkpoint(unit_done=step_unit == "step" or rep.done)
            job.report(message="scoring the policy's mean plan")
            result = run.run()
        except JobStopped:
            run.pause()
            _record_best(store, run.result(), method, model_name, dataset, run_id, job)
            raise
        except BaseException:
            if store is not None and run_id is not None:
                _safe(lambda: store.update_run(run_id, status="failed"))
            raise
        _record_best(store, result, method, model_name, dataset, run_id, job)
        if result.best_plan is None:
            raise _budget_error(method, budget)
        job.report(message=f"best val top-1 {result.best_val_acc:.2f}% at {result.macs_ratio:.1%} of the MACs")
        return {"plan": result.best_plan.to_dict(), "val_acc": float(result.best_val_acc),
                "macs_ratio": float(result.macs_ratio), "seconds": float(result.seconds)}

    return job.start(work, steps=steps)


def _budget_error(method: str, budget: float) -> Exception:
    from engine.errors import BudgetError

    return BudgetError(f"no episode of '{method}' met the budget {budget}; turn action_wall on, raise max_steps "
                       "or max_change, or lower min_keep_ratio")


def _record_best(store: Any, result: Any, method: str, model_name: str, dataset: str, run_id: int | None,
                 job: Job) -> None:
    """Add the search's best plan as a candidate in the store."""
    if store is None or result.best_plan is None:
        return
    metrics = {"val_acc": float(result.best_val_acc), "macs_ratio": float(result.macs_ratio)}
    cid = store.add_candidate(method=method, model=model_name, dataset=dataset, plan=result.best_plan.to_dict(),
                              metrics=metrics, run_id=run_id)
    job.report(info={"candidate_id": cid})


def _engine_records_episodes(method: str) -> bool:
    """The RL methods write their own episodes into the store (engine.rl); the GUI records the others."""
    return method.startswith("gnnrl")


def _safe(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except TopoPruneError:
        pass
