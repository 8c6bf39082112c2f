"""Background jobs for the GUI: a worker thread per long engine call (search, training, sensitivity, fine-tune).

A Job is a plain Python object the worker writes into under a lock and the page reads with ``snapshot()``
(from an st.fragment that polls while the job runs). Search jobs (methods, GNN-RL) are in gui.search_jobs.
Workers never call st.*; they receive the engine objects (model, topology, data) from the page, which got
them from gui.cache. Pause/Resume/Step work at the engine's callback boundaries (one episode, one scored
plan, one training step); job_controls says which buttons a page offers in each state.
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
    status: str  # one of STATUSES
    done: int
    total: int
    message: str
    events: list[dict[str, Any]]
    result: Any
    error: str | None
    user_error: bool
    elapsed_s: float
    info: dict[str, Any]
    version: int = 0  # bumped on every status change: a page redraws its controls when it differs

    @property
    def active(self) -> bool:
        """True while the worker thread is alive (running, pausing or paused)."""
        return self.status in ("running", "pausing", "paused")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def controls(self) -> JobControls:
        """Which controls a page offers in this state (see JobControls)."""
        return job_controls(self.status)


# running: the worker works | pausing: Pause pressed, the worker finishes its unit | paused: the worker waits at a
# unit boundary | done / stopped / error: the worker has ended
STATUSES = ("running", "pausing", "paused", "done", "stopped", "error")


@dataclass(frozen=True)
class JobControls:
    """The state of a job's buttons: which may be pressed, and what the pause/resume button says and does."""

    can_launch: bool  # start a new job (none is active)
    toggle: str | None  # "pause" or "resume": what the pause/resume button does; None = disabled
    can_step: bool  # Step: run one more unit of a paused job, or start a new job in step mode
    can_stop: bool

    @property
    def toggle_label(self) -> str:
        """The pause/resume button's label, always naming what a click does."""
        return "Resume" if self.toggle == "resume" else "Pause"


def job_controls(status: str | None) -> JobControls:
    """The buttons' state for a job in `status` (None = no job yet).

    Raises:
        ValueError: `status` is not one of STATUSES.
    """
    if status is None or status in ("done", "stopped", "error"):
        return JobControls(can_launch=True, toggle=None, can_step=True, can_stop=False)
    if status == "running":
        return JobControls(can_launch=False, toggle="pause", can_step=False, can_stop=True)
    if status == "pausing":  # not yet at a boundary: Step would count the unit in flight, so it waits
        return JobControls(can_launch=False, toggle="resume", can_step=False, can_stop=True)
    if status == "paused":
        return JobControls(can_launch=False, toggle="resume", can_step=True, can_stop=True)
    raise ValueError(f"unknown job status {status!r}; expected one of {', '.join(STATUSES)}")


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
    version: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _run: threading.Event = field(default_factory=threading.Event, repr=False)  # set = may run
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _steps_left: int | None = field(default=None, repr=False)  # None = run freely; n = pause after n units
    _thread: threading.Thread | None = field(default=None, repr=False)
    _exception_tb: Any = field(default=None, repr=False)

    # -- script-thread side -----------------------------------------------------------------------------------
    def start(self, fn: Callable[[Job], Any], *, steps: int | None = None) -> Job:
        """Run `fn(self)` on a daemon thread; with `steps`, pause after that many units (Step mode)."""
        self._steps_left = steps
        self._run.set()
        self._thread = threading.Thread(
            target=self._main, args=(fn,), daemon=True, name=f"topoprune-{self.kind}"
        )
        self._thread.start()
        return self

    def pause(self) -> None:
        """Pause at the next unit boundary: "pausing" until the worker gets there, then "paused"."""
        with self._lock:
            if self.status == "running":
                self._run.clear()
                self._set_status("pausing", "pausing at the next step boundary...")

    def resume(self) -> None:
        """Run freely again (also cancels a pause that has not taken effect yet)."""
        with self._lock:
            self._steps_left = None
            if self.status in ("paused", "pausing"):
                self._set_status("running", "resumed")
            self._run.set()

    def step(self, units: int = 1) -> None:
        """Run `units` more units (episodes, ...) and pause again; on a running job, pause after `units` units."""
        with self._lock:
            if self.finished_at is not None:
                return
            self._steps_left = units
            if self.status in ("paused", "pausing"):
                self._set_status("running", f"stepping {units}")
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
                kind=self.kind,
                label=self.label,
                status=self.status,
                done=self.done,
                total=self.total,
                message=self.message,
                events=list(self.events),
                result=self.result,
                error=self.error,
                user_error=self.user_error,
                elapsed_s=end - self.started_at,
                info=dict(self.info),
                version=self.version,
            )

    def reraise(self) -> None:
        """Raise the worker's unexpected exception with its own traceback (which does not grow per poll)."""
        if self.exception is not None:
            raise self.exception.with_traceback(self._exception_tb)

    @property
    def active(self) -> bool:
        """True while the worker runs or waits paused."""
        return self.finished_at is None

    def _set_status(self, status: str, message: str) -> None:  # caller holds the lock
        self.status, self.message = status, message
        self.version += 1

    # -- worker side ------------------------------------------------------------------------------------------
    def report(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        event: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Record progress (called by the worker)."""
        with self._lock:
            if info:
                self.info.update(info)
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total
            if message is not None and self.status != "paused":  # "paused" stays on screen while it holds
                self.message = f"pausing after this unit: {message}" if self.status == "pausing" else message
            if event is not None:
                self.events.append(event)

    def checkpoint(
        self,
        *,
        unit_done: bool = True,
        on_pause: Callable[[], Any] | None = None,
        on_resume: Callable[[], Any] | None = None,
    ) -> None:
        """Called by the worker at each unit boundary: honour Step, block while paused, raise on Stop.

        `on_pause` runs (on the worker) when the job starts waiting paused, `on_resume` when it runs again
        (the search jobs mark the stored run paused / running with them).
        """
        with self._lock:
            if unit_done and self._steps_left is not None:
                self._steps_left -= 1
                if self._steps_left <= 0:
                    self._steps_left = None
                    self._run.clear()
                    self._set_status("paused", "paused after step")
            if not self._run.is_set() and not self._stop.is_set() and self.status in ("running", "pausing"):
                self._set_status("paused", "paused")
        paused = not self._run.is_set() and not self._stop.is_set()
        if paused and on_pause is not None:
            on_pause()
        while not self._run.wait(0.1):
            if self._stop.is_set():
                break
        if self._stop.is_set():
            raise JobStopped()
        if paused and on_resume is not None:
            on_resume()

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
            self.result, self.error, self.user_error, self.exception = result, error, user_error, exception
            self._exception_tb = exception.__traceback__ if exception is not None else None
            keep = status == "done" and self.message not in ("", "starting...")
            self._set_status(status, self.message if keep else message)
            self.finished_at = time.monotonic()


# --- simple jobs: one engine call each (searches live in gui.search_jobs) ------------------------------------


def start_training(
    *,
    model_factory: Callable[[], Any],
    data: Any,
    epochs: int,
    save: Callable[[Any, Any], Any],
    train_model: Callable[..., Any],
    train_config: Callable[..., Any],
) -> Job:
    """Train a fresh baseline in the background; `save(model, result)` stores it and returns its path."""
    job = Job(kind="train", label=f"training for {epochs} epoch(s)", total=epochs)

    def work(job: Job) -> Any:
        model = model_factory()

        def callback(progress: Any) -> None:
            steps = max(1, int(getattr(progress, "steps_per_epoch", 1)))
            epoch = int(getattr(progress, "epoch", 0))
            step = int(getattr(progress, "step", 0))
            job.report(
                done=epoch,
                total=epochs,
                message=f"epoch {epoch + 1}/{epochs}, step {step}/{steps}, loss {progress.loss:.3f}",
            )
            job.info["fraction"] = min(1.0, (epoch + step / steps) / max(1, epochs))
            job.checkpoint(unit_done=False)

        result = train_model(model, data, train_config(epochs=epochs), callback=callback)
        path = save(model, result)
        job.report(done=epochs, message="trained")
        return {"path": str(path), "result": result}

    return job.start(work)


def start_sensitivity(
    *,
    model: Any,
    topology: Any,
    data: Any,
    keep_ratios: list[float],
    analyze: Callable[..., Any],
    scoring: Any = None,
    groups: list[str] | None = None,
    resume: Any = None,
) -> Job:
    """Run the sensitivity analysis in the background (one unit = one scored plan).

    ``info`` carries ``eta_s`` (seconds left) and ``partial`` (the groups finished so far, as a table dict), so a
    page draws a partial heatmap while it runs, and a stopped or failed analysis keeps the groups it finished.
    """
    job = Job(kind="sensitivity", label="sensitivity analysis")

    def work(job: Job) -> Any:
        def progress(p: Any) -> None:
            info: dict[str, Any] = {"eta_s": p.eta_s}
            if p.group_done:
                info["partial"] = p.table.to_dict()
            job.report(
                done=p.done, total=p.total, message=f"{p.done}/{p.total} plans: {p.message}", info=info
            )
            job.checkpoint(unit_done=False)

        table = analyze(
            model,
            topology,
            data,
            keep_ratios=keep_ratios,
            scoring=scoring,
            groups=groups,
            resume=resume,
            progress=progress,
        )
        return table.to_dict() if hasattr(table, "to_dict") else table

    return job.start(work)


def start_finetune(
    *,
    model: Any,
    topology: Any,
    plan: Any,
    data: Any,
    epochs: int,
    distill: bool,
    report: Callable[..., Any],
    on_done: Callable[[Any], Any] | None = None,
    save_weights: Callable[[Any], Any] | None = None,
    measure_latency: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    candidate_id: int | None = None,
) -> Job:
    """Physically prune, fine-tune and measure a candidate in the background (engine.evaluate.report_candidate).

    Args:
        save_weights: stores the measured (fine-tuned when `epochs` > 0) pruned model and returns its path,
            recorded as the result's ``weights_path``: what a download of this candidate must contain.
        measure_latency: given {"baseline": model, "pruned": pruned}, returns name -> LatencyStats
            (engine.cost.measure_latency_stats); replaces the report's single-median latency with interleaved
            repeats, stored as ``latency_before`` / ``latency_after`` dicts beside the medians.
        candidate_id: recorded in the job's info, so a page shows the result under this candidate only.
    """
    verb = f"fine-tune {epochs} epoch(s)" if epochs else "measure"
    job = Job(
        kind="finetune",
        label=verb,
        total=max(1, epochs),
        info={} if candidate_id is None else {"candidate_id": candidate_id},
    )

    def work(job: Job) -> Any:
        def callback(progress: Any) -> None:
            epoch = int(getattr(progress, "epoch", 0))
            steps = max(1, int(getattr(progress, "steps_per_epoch", 1) or 1))
            step = int(getattr(progress, "step", 0))
            job.report(
                done=epoch,
                message=f"epoch {min(epoch + 1, epochs)}/{epochs}, step {step}/{steps}, "
                f"loss {getattr(progress, 'loss', 0.0):.3f}",
            )
            job.info["fraction"] = min(1.0, (epoch + step / steps) / max(1, epochs))
            job.checkpoint(unit_done=False)

        job.report(message="pruning and scoring" if not epochs else "pruning, then fine-tuning")
        extra = {"latency": False} if measure_latency is not None else {}
        rep = report(
            model, topology, plan, data, finetune_epochs=epochs, distill=distill, callback=callback, **extra
        )
        out = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
        pruned = getattr(rep, "pruned_model", None)
        if measure_latency is not None and pruned is not None:
            job.report(message="measuring latency (baseline and pruned, interleaved repeats)")
            stats = measure_latency({"baseline": model, "pruned": pruned})
            out["latency_ms_before"], out["latency_ms_after"] = (
                stats["baseline"].median_ms,
                stats["pruned"].median_ms,
            )
            out["latency_before"], out["latency_after"] = (
                stats["baseline"].to_dict(),
                stats["pruned"].to_dict(),
            )
        if save_weights is not None and pruned is not None:
            out["weights_path"] = str(save_weights(pruned))
        if on_done is not None:
            on_done(out)
        job.report(done=max(1, epochs), message="done")
        return out

    return job.start(work)


def copy_model(model: Any) -> Any:
    """A deep copy of a (cached, shared) model, for code that must modify one."""
    return copy.deepcopy(model)
