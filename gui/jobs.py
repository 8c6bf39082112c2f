"""Background jobs for the GUI: a worker thread per long engine call (search, training, sensitivity, fine-tune).

A Job is a plain Python object the worker writes into under a lock and the page reads with ``snapshot()``
(from an st.fragment that polls while the job runs). Workers never call st.*; they receive the engine
objects (model, topology, data) from the page, which got them from gui.cache. Pause/Resume/Step work at
the engine's callback boundaries (one episode, one scored plan, one training step).
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import TopoPruneError


class JobStopped(Exception):
    """Raised inside the worker's callback when the user pressed Stop."""


@dataclass
class JobSnapshot:
    """A consistent copy of a job's state for drawing."""

    kind: str
    label: str
    status: str  # "running" | "paused" | "done" | "stopped" | "error"
    done: int
    total: int
    message: str
    events: list[dict[str, Any]]
    result: Any
    error: str | None
    user_error: bool
    elapsed_s: float
    info: dict[str, Any]

    @property
    def active(self) -> bool:
        """True while the worker thread is alive (running or paused)."""
        return self.status in ("running", "paused")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass
class Job:
    """One background engine call: progress, events, result or error, and pause/resume/step/stop controls."""

    kind: str
    label: str = ""
    total: int = 0
    done: int = 0
    status: str = "running"
    message: str = "starting..."
    events: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    user_error: bool = False
    exception: BaseException | None = None
    info: dict[str, Any] = field(default_factory=dict)  # ids the page needs (run id, ...)
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _run: threading.Event = field(default_factory=threading.Event, repr=False)  # set = may run
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _steps_left: int | None = field(default=None, repr=False)  # None = run freely; n = pause after n units
    _thread: threading.Thread | None = field(default=None, repr=False)

    # -- script-thread side -----------------------------------------------------------------------------------
    def start(self, fn: Callable[[Job], Any], *, steps: int | None = None) -> Job:
        """Run `fn(self)` on a daemon thread; with `steps`, pause after that many units (Step mode)."""
        self._steps_left = steps
        self._run.set()
        self._thread = threading.Thread(target=self._main, args=(fn,), daemon=True, name=f"topoprune-{self.kind}")
        self._thread.start()
        return self

    def pause(self) -> None:
        """Pause at the next unit boundary."""
        with self._lock:
            if self.status == "running":
                self._run.clear()
                self.status = "paused"
                self.message = "paused"

    def resume(self) -> None:
        """Run freely again."""
        with self._lock:
            self._steps_left = None
            if self.status == "paused":
                self.status = "running"
                self.message = "resumed"
            self._run.set()

    def step(self, units: int = 1) -> None:
        """Run `units` more units (episodes, ...) and pause again."""
        with self._lock:
            self._steps_left = units
            if self.status == "paused":
                self.status = "running"
                self.message = f"stepping {units}"
            self._run.set()

    def stop(self) -> None:
        """Stop at the next unit boundary (the engine returns its best so far where it can)."""
        self._stop.set()
        self._run.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the worker ends (tests); True when it did."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.finished_at is not None

    def snapshot(self) -> JobSnapshot:
        """A copy of the state, safe to read while the worker runs."""
        with self._lock:
            end = self.finished_at or time.monotonic()
            return JobSnapshot(
                kind=self.kind, label=self.label, status=self.status, done=self.done, total=self.total,
                message=self.message, events=list(self.events), result=self.result, error=self.error,
                user_error=self.user_error, elapsed_s=end - self.started_at, info=dict(self.info),
            )

    @property
    def active(self) -> bool:
        """True while the worker runs or waits paused."""
        return self.finished_at is None

    # -- worker side ------------------------------------------------------------------------------------------
    def report(self, *, done: int | None = None, total: int | None = None, message: str | None = None,
               event: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> None:
        """Record progress (called by the worker)."""
        with self._lock:
            if info:
                self.info.update(info)
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total
            if message is not None:
                self.message = message
            if event is not None:
                self.events.append(event)

    def checkpoint(self, *, unit_done: bool = True) -> None:
        """Called by the worker at each unit boundary: honour Step, block while paused, raise on Stop."""
        with self._lock:
            if unit_done and self._steps_left is not None:
                self._steps_left -= 1
                if self._steps_left <= 0:
                    self._steps_left = None
                    self._run.clear()
                    self.status = "paused"
                    self.message = "paused after step"
        while not self._run.wait(0.1):
            if self._stop.is_set():
                break
        if self._stop.is_set():
            raise JobStopped()

    def should_stop(self) -> bool:
        """True when the user pressed Stop (for engine APIs that poll)."""
        return self._stop.is_set()

    def _main(self, fn: Callable[[Job], Any]) -> None:
        # status and finished_at change together, so a reader never sees "done" on a still-active job
        result, status, message, error, user_error, exception = None, "done", "finished", None, False, None
        try:
            result = fn(self)
            if self._stop.is_set():
                status, message = "stopped", "stopped"
        except JobStopped:
            status, message = "stopped", "stopped"
        except TopoPruneError as exc:  # the user's to fix: shown with st.error
            status, message, error, user_error, exception = "error", "failed", str(exc), True, exc
        except Exception as exc:  # a bug: the page re-raises it so it surfaces
            status, message, exception = "error", "failed", exc
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with self._lock:
            self.result, self.status, self.error, self.user_error, self.exception = (
                result, status, error, user_error, exception)
            if status != "done" or self.message in ("", "starting..."):
                self.message = message
            self.finished_at = time.monotonic()


# --- concrete jobs ------------------------------------------------------------------------------------------


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
            _safe(lambda: store.update_run(run_id, status="stopped" if job.should_stop() else "completed",
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


def start_training(*, model_factory: Callable[[], Any], data: Any, epochs: int, save: Callable[[Any, Any], Any],
                   train_model: Callable[..., Any], train_config: Callable[..., Any]) -> Job:
    """Train a fresh baseline in the background; `save(model, result)` stores it and returns its path."""
    job = Job(kind="train", label=f"training for {epochs} epoch(s)", total=epochs)

    def work(job: Job) -> Any:
        model = model_factory()

        def callback(progress: Any) -> None:
            steps = max(1, int(getattr(progress, "steps_per_epoch", 1)))
            epoch = int(getattr(progress, "epoch", 0))
            step = int(getattr(progress, "step", 0))
            job.report(done=epoch, total=epochs,
                       message=f"epoch {epoch + 1}/{epochs}, step {step}/{steps}, loss {progress.loss:.3f}")
            job.info["fraction"] = min(1.0, (epoch + step / steps) / max(1, epochs))
            job.checkpoint(unit_done=False)

        result = train_model(model, data, train_config(epochs=epochs), callback=callback)
        path = save(model, result)
        job.report(done=epochs, message="trained")
        return {"path": str(path), "result": result}

    return job.start(work)


def start_sensitivity(*, model: Any, topology: Any, data: Any, keep_ratios: list[float],
                      analyze: Callable[..., Any]) -> Job:
    """Run the sensitivity analysis in the background (one unit = one scored plan)."""
    job = Job(kind="sensitivity", label="sensitivity analysis")

    def work(job: Job) -> Any:
        def callback(done: int, total: int, message: str) -> None:
            job.report(done=done, total=total, message=message)
            job.checkpoint(unit_done=False)

        table = analyze(model, topology, data, keep_ratios=keep_ratios, callback=callback)
        return table.to_dict() if hasattr(table, "to_dict") else table

    return job.start(work)


def start_finetune(*, model: Any, topology: Any, plan: Any, data: Any, epochs: int, distill: bool,
                   report: Callable[..., Any], on_done: Callable[[Any], Any] | None = None) -> Job:
    """Physically prune, fine-tune and measure a candidate in the background (engine.evaluate.report_candidate)."""
    job = Job(kind="finetune", label=f"fine-tune {epochs} epoch(s)", total=max(1, epochs))

    def work(job: Job) -> Any:
        def callback(progress: Any) -> None:
            epoch = int(getattr(progress, "epoch", 0))
            job.report(done=epoch, message=f"epoch {epoch + 1}/{epochs}, loss {getattr(progress, 'loss', 0.0):.3f}")
            job.checkpoint(unit_done=False)

        rep = report(model, topology, plan, data, finetune_epochs=epochs, distill=distill, callback=callback)
        out = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
        if on_done is not None:
            on_done(out)
        job.report(done=max(1, epochs), message="done")
        return out

    return job.start(work)


def copy_model(model: Any) -> Any:
    """A deep copy of a (cached, shared) model, for code that must modify one."""
    return copy.deepcopy(model)
