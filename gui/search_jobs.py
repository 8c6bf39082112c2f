"""Search jobs for the Agent page: every search method through engine.search's driver (recording, stepping,
resume are the driver's), one-shot methods as one engine call.

Built on gui.jobs.Job (worker thread, pause/resume/step/stop). No Streamlit here.
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


STEPPABLE_METHODS = ("gnnrl", "gnnrl-nognn")  # search methods with inner steps (Step can mean one env step)


def provenance_of(ref: Any) -> dict[str, Any]:
    """What a GUI run records about its weights and data (a gui.cache.ModelRef), so `topoprune resume ID` can
    rebuild the run without --checkpoint. Untrained random weights record no checkpoint."""
    out = {
        "dataset": ref.dataset,
        "data_dir": ref.data_dir,
        "input_size": ref.input_size,
        "num_classes": ref.num_classes,
    }
    if ref.weights and ref.weights != "random":
        out["checkpoint"] = ref.weights
    return out


def is_search(method: str) -> bool:
    """True for a registered search method (those record, step and resume through the driver)."""
    from engine.methods import MethodError, get_method

    try:
        return get_method(method).kind == "search"
    except MethodError:
        return False


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
    budget_metric: str = "macs",
    **search_kwargs: Any,
) -> Job:
    """Run a registered method in the background: search methods go through the search driver (start_search);
    one-shot methods are one engine call whose plan becomes a candidate in the store."""
    from engine.methods import MethodContext, get_method
    from engine.methods import run_method as engine_run_method

    if get_method(method).kind == "search" and run_method is None:
        return start_search(
            method=method,
            model=model,
            topology=topology,
            data=data,
            budget=budget,
            options=options,
            model_name=model_name,
            dataset=dataset,
            seed=seed,
            scoring=scoring,
            steps=steps,
            store_factory=store_factory if record else None,
            budget_metric=budget_metric,
            **search_kwargs,
        )
    run = run_method or engine_run_method
    job = Job(
        kind="search",
        label=f"{method} on {model_name}, budget {budget:.0%}",
        total=int(options.get("episodes", 0) or 0),
    )

    def work(job: Job) -> Any:
        count = 0

        def callback(event: Any) -> None:
            nonlocal count
            candidate = getattr(event, "candidate", None)
            ev = None
            if candidate is not None:
                ev = episode_event(candidate, topology, index=count)
                count += 1
            job.report(
                total=int(event.total) if event.total else None,
                done=int(event.step) if event.step else None,
                message=event.message,
                event=ev,
            )
            job.checkpoint(unit_done=candidate is not None)

        ctx = MethodContext(
            model=model,
            topology=topology,
            data=data,
            budget=budget,
            seed=seed,
            scoring=scoring,
            callback=callback,
            should_stop=job.should_stop,
            budget_metric=budget_metric,
        )
        result = run(method, ctx, **options)
        plan = _plan_dict(result.plan)
        if record and store_factory is not None:
            store = store_factory()
            metrics = {
                "val_acc": float(result.val_acc),
                "macs_ratio": float(result.macs_ratio),
                "weights_sha256": _digest(model),
            }
            cid = store.add_candidate(
                method=method, model=model_name, dataset=dataset, plan=plan, metrics=metrics
            )
            job.report(info={"candidate_id": cid})
        job.report(message=f"best val top-1 {result.val_acc:.2f}% at {result.macs_ratio:.1%} of the MACs")
        return {
            "plan": plan,
            "val_acc": float(result.val_acc),
            "macs_ratio": float(result.macs_ratio),
            "seconds": float(getattr(result, "seconds", 0.0)),
        }

    return job.start(work, steps=steps)


def start_search(
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
    budget_metric: str = "macs",
    provenance: dict[str, Any] | None = None,
) -> Job:
    """Run any search method through engine.search's driver in the background, one unit per Step.

    A unit is one batch of scored candidates (an episode), or with `step_unit="step"` one inner step of a
    method that has them (GNN-RL's env steps, shown in ``info["last_step"]``). The driver records the run, its
    episodes and its resumable state; a pause is "paused" in the store, a Stop "interrupted" (both resume, also
    with `topoprune resume`); the best plan becomes a candidate when the search completes or stops.
    `provenance` (checkpoint, data_dir, input_size, num_classes) is recorded so the CLI can resume the run.
    """
    from engine.methods import MethodContext, get_method
    from engine.search import SearchDriver

    if step_unit not in ("step", "episode"):
        raise ValueError(f"step_unit must be 'step' or 'episode', got {step_unit!r}")
    spec = get_method(method)
    opts = spec.validate(options)
    verb = f"resuming run {resume_run_id}: " if resume_run_id is not None else ""
    job = Job(
        kind="search",
        label=f"{verb}{method} on {model_name}, budget {budget:.0%} of the {budget_metric}",
        total=int(opts.get("episodes", 0) or 0),
        events=list(past_events or []),
        done=len(past_events or []),
    )

    def work(job: Job) -> Any:
        store = store_factory() if store_factory is not None else None
        run_id, run_opts, run_seed = None, opts, seed
        if resume_run_id is not None:
            if store is None:
                raise ValueError("resuming a run needs the run store")
            run = store.claim_run(resume_run_id)
            run_id = run.id
            run_opts = spec.validate(run.config.get("options") or opts)
            run_seed = int(run.config.get("seed", seed))
        elif store is not None:
            scoring_dict = scoring.to_dict() if hasattr(scoring, "to_dict") else None
            config = {
                "model": model_name,
                "method": method,
                "budget": budget,
                "budget_metric": budget_metric,
                "options": opts,
                "seed": seed,
                "scoring": scoring_dict,
                "dataset": dataset,
                "val_size": (scoring_dict or {}).get("val_size", 512),
                "started_by": "gui",
                "weights_sha256": _digest(model),
                **(provenance or {}),
            }
            run_id = store.create_run(
                method=method, model=model_name, dataset=dataset, budget=budget, config=config
            )
        job.report(info={"run_id": run_id} if run_id is not None else None)

        def callback(event: Any) -> None:
            if event.candidate is not None:
                job.report(
                    done=int(event.step),
                    message=event.message,
                    event=episode_event(event.candidate, topology, index=int(event.step) - 1),
                )
            else:
                job.report(done=int(event.step), message=event.message)

        ctx = MethodContext(
            model=model,
            topology=topology,
            data=data,
            budget=budget,
            seed=run_seed,
            scoring=scoring,
            callback=callback,
            store=store,
            run_id=run_id,
            budget_metric=budget_metric,
            resume=resume_run_id is not None,
        )
        driver = SearchDriver(spec, ctx, run_opts)
        job.report(total=driver.total)
        substeps = step_unit == "step" and driver.method.has_substeps

        def on_pause() -> None:
            _safe(lambda: driver.pause("paused"))

        def on_resume() -> None:
            if store is not None and run_id is not None:
                _safe(lambda: store.claim_run(run_id))

        try:
            while not driver.finished:
                if job.should_stop():
                    raise JobStopped()
                if substeps:
                    sub = driver.substep()
                    info = {k: v for k, v in sub.info.items() if k != "candidate"}
                    job.report(
                        message=f"episode {sub.episode + 1}, step {sub.step}: MACs "
                        f"{info.get('macs_ratio', float('nan')):.1%}",
                        info={"last_step": info},
                    )
                else:
                    driver.step()
                job.checkpoint(unit_done=True, on_pause=on_pause, on_resume=on_resume)
            job.report(message="scoring the method's final plans")
            result = driver.complete()
        except JobStopped:
            driver.pause("interrupted")
            _record_best(store, driver, method, model_name, dataset, run_id, job)
            raise
        except BaseException:
            if store is not None and run_id is not None:
                _safe(lambda: store.update_run(run_id, status="interrupted"))
            raise
        _record_best(store, driver, method, model_name, dataset, run_id, job)
        job.report(message=f"best val top-1 {result.val_acc:.2f}% at {result.macs_ratio:.1%} of the MACs")
        return {
            "plan": result.plan.to_dict(),
            "val_acc": float(result.val_acc),
            "macs_ratio": float(result.macs_ratio),
            "seconds": float(result.seconds),
            "source": _source(driver.best),
        }

    return job.start(work, steps=steps)


def _record_best(
    store: Any, driver: Any, method: str, model_name: str, dataset: str, run_id: int | None, job: Job
) -> None:
    """Add the search's best plan so far as a candidate in the store."""
    best = driver.best
    if store is None or best is None:
        return
    metrics = {
        "val_acc": float(best.val_acc),
        "macs_ratio": float(best.macs_ratio),
        "weights_sha256": _digest(driver.ctx.model),
    }
    cid = store.add_candidate(
        method=method,
        model=model_name,
        dataset=dataset,
        plan=best.plan.to_dict(),
        metrics=metrics,
        run_id=run_id,
    )
    job.report(info={"candidate_id": cid})


def _source(best: Any) -> str | None:
    """Where the winning plan came from when it is not an episode (the Agent page says so beside the figure)."""
    meta = getattr(best, "meta", {}) or {}
    if meta.get("rescored"):
        return f"the re-score of the top plans (search val {meta.get('search_val_acc', float('nan')):.2f}%)"
    if meta.get("policy_mean"):
        return "the policy-mean plan scored after the last episode (not one of the episodes below)"
    if meta.get("final"):
        return "the method's final plan (not one of the episodes below)"
    return None


def _digest(model: Any) -> str | None:
    """sha256 of the baseline's weights: Compare shows only candidates found on the weights in use."""
    if model is None:
        return None
    from engine.sensitivity import weights_sha256

    return str(weights_sha256(model))


def _safe(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except TopoPruneError:
        pass
