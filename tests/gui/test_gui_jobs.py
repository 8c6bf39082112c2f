"""Background jobs: progress, pause/resume/step/stop, engine errors, and the search job's store records."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from engine.errors import BudgetError
from gui import jobs, search_jobs


def counting(n: int, delay_s: float = 0.0):
    def work(job: jobs.Job):
        for i in range(n):
            time.sleep(delay_s)
            job.report(done=i + 1, total=n, event={"i": i})
            job.checkpoint()
        return "ok"

    return work


def wait_for(cond, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_job_runs_to_done():
    job = jobs.Job(kind="t").start(counting(5))
    assert job.wait(10)
    snap = job.snapshot()
    assert snap.status == "done" and snap.result == "ok" and snap.done == 5 and snap.fraction == 1.0
    assert [e["i"] for e in snap.events] == [0, 1, 2, 3, 4] and not snap.active


def test_step_mode_pauses_after_each_unit_and_resume_finishes():
    job = jobs.Job(kind="t").start(counting(4), steps=1)
    wait_for(lambda: job.snapshot().status == "paused")
    assert job.snapshot().done == 1
    job.step(2)
    wait_for(lambda: job.snapshot().status == "paused" and job.snapshot().done == 3)
    job.resume()
    assert job.wait(10) and job.snapshot().status == "done" and job.snapshot().done == 4


def test_pause_and_stop():
    job = jobs.Job(kind="t").start(counting(1000, 0.005))
    wait_for(lambda: job.snapshot().done >= 2)
    job.pause()
    assert job.snapshot().status in ("pausing", "paused")  # "pausing" until the worker reaches a boundary
    wait_for(lambda: job.snapshot().status == "paused")
    time.sleep(0.1)
    done = job.snapshot().done
    time.sleep(0.1)
    assert job.snapshot().done <= done + 1  # at most the unit in flight finishes
    job.stop()
    assert job.wait(10) and job.snapshot().status == "stopped"


def gated(n: int):
    """A worker that runs one unit each time the test sets the returned event."""
    gate = threading.Event()

    def work(job: jobs.Job):
        for i in range(n):
            assert gate.wait(10), "the test never opened the gate"
            gate.clear()
            job.report(done=i + 1, total=n, message=f"unit {i + 1}")
            job.checkpoint()
        return "ok"

    return work, gate


def test_every_status_change_bumps_the_version_even_back_to_the_same_status():
    work, gate = gated(3)
    job = jobs.Job(kind="t").start(work, steps=1)
    gate.set()
    wait_for(lambda: job.snapshot().status == "paused")
    first = job.snapshot().version
    job.step(1)
    assert job.snapshot().status == "running" and job.snapshot().version > first
    gate.set()
    wait_for(lambda: job.snapshot().status == "paused")
    second = job.snapshot()
    assert second.done == 2 and second.version > first + 1  # a page keyed on status alone saw no change here
    job.resume()
    gate.set()
    assert job.wait(10) and job.snapshot().status == "done" and job.snapshot().version > second.version


def test_pause_is_pausing_until_the_worker_reaches_a_boundary_then_step_runs_one_unit():
    work, gate = gated(3)
    job = jobs.Job(kind="t").start(work)
    job.pause()
    assert job.snapshot().status == "pausing" and job.snapshot().done == 0
    assert job.snapshot().controls == jobs.JobControls(
        can_launch=False, toggle="resume", can_step=False, can_stop=True
    )
    gate.set()  # the unit in flight finishes, then the worker parks
    wait_for(lambda: job.snapshot().status == "paused")
    assert job.snapshot().done == 1 and job.snapshot().controls.can_step
    job.step(1)
    gate.set()
    wait_for(lambda: job.snapshot().status == "paused" and job.snapshot().done == 2)
    time.sleep(0.05)
    assert job.snapshot().done == 2  # one Step = one unit, not two
    job.stop()
    assert job.wait(10) and job.snapshot().status == "stopped"


def test_job_controls_match_every_state():
    table = {status: jobs.job_controls(status) for status in (None, *jobs.STATUSES)}
    assert table["running"].toggle == "pause" and table["running"].toggle_label == "Pause"
    assert not table["running"].can_step and not table["running"].can_launch and table["running"].can_stop
    assert table["paused"].toggle == "resume" and table["paused"].toggle_label == "Resume"
    assert table["paused"].can_step and table["paused"].can_stop
    for ended in (None, "done", "stopped", "error"):
        assert table[ended] == jobs.JobControls(can_launch=True, toggle=None, can_step=True, can_stop=False)
    with pytest.raises(ValueError, match="unknown job status 'lost'"):
        jobs.job_controls("lost")


def test_reraise_keeps_the_workers_traceback_without_growing():
    def bug(job):
        raise KeyError("oops")

    job = jobs.Job(kind="t").start(bug)
    job.wait(10)
    depths = []
    for _ in range(3):
        try:
            job.reraise()
        except KeyError as exc:
            depth, tb = 0, exc.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    assert depths[0] == depths[1] == depths[2]


def test_user_error_is_kept_as_message_and_bug_as_exception():
    def bad_budget(job):
        raise BudgetError("budget must be in (0, 1], got 2")

    job = jobs.Job(kind="t").start(bad_budget)
    job.wait(10)
    snap = job.snapshot()
    assert snap.status == "error" and snap.user_error and "got 2" in snap.error

    def bug(job):
        raise KeyError("oops")

    job = jobs.Job(kind="t").start(bug)
    job.wait(10)
    assert not job.snapshot().user_error and isinstance(job.exception, KeyError)


class FakeStore:
    def __init__(self):
        self.runs, self.episodes, self.candidates = {}, [], []

    def create_run(self, **kw):
        self.runs[1] = dict(kw)
        return 1

    def add_episode(self, run_id, **kw):
        self.episodes.append(kw)

    def update_run(self, run_id, **kw):
        self.runs[run_id].update(kw)

    def add_candidate(self, **kw):
        self.candidates.append(kw)
        return len(self.candidates)


class FakePlan:
    def __init__(self, ratio):
        self.ratio = ratio

    def keep_ratios(self, topology):
        return {"g1": self.ratio, "g2": 1.0}

    def to_dict(self):
        return {"keep": {"g1": int(16 * self.ratio)}, "method": "uniform"}


def fake_run_method(name, ctx, **options):
    from engine.methods import Candidate, MethodEvent

    for i in range(options["episodes"]):
        cand = Candidate(
            index=i,
            plan=FakePlan(0.5 + 0.1 * i),
            val_acc=50.0 + i,
            macs_ratio=0.5,
            meta={"episode": i, "reward": 0.1 * i},
        )
        ctx.callback(MethodEvent(name, i + 1, options["episodes"], f"episode {i + 1}", cand))
        if ctx.stopped():
            break
    return SimpleNamespace(plan=FakePlan(0.7), val_acc=52.0, macs_ratio=0.5, seconds=0.1)


def test_start_method_records_events_and_candidate():
    store = FakeStore()
    job = search_jobs.start_method(
        method="uniform",
        model=None,
        topology=SimpleNamespace(groups=[]),
        data=None,
        budget=0.5,
        options={"episodes": 3},
        model_name="m",
        dataset="d",
        run_method=fake_run_method,
        store_factory=lambda: store,
    )
    assert job.wait(10)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert [e["episode"] for e in snap.events] == [0, 1, 2]
    assert snap.events[1]["keep_ratios"] == {"g1": pytest.approx(0.6), "g2": 1.0}
    assert snap.events[2]["reward"] == pytest.approx(0.2)
    assert snap.result["val_acc"] == 52.0 and snap.info == {"candidate_id": 1}
    assert store.candidates[0]["plan"]["keep"] == {"g1": 11}


@pytest.fixture(scope="module")
def resnet20():
    import torch

    from engine.graph import build_topology
    from engine.zoo import build_model

    model = build_model("cifar_resnet20").eval()
    return model, build_topology(model, torch.zeros(1, 3, 32, 32))


def _search_job(resnet20, small_shapes10, **kwargs):
    from engine.evaluate import ScoringConfig
    from engine.store import RunStore

    model, topo = resnet20
    store = RunStore()
    job = search_jobs.start_search(
        method="random",
        model=model,
        topology=topo,
        data=small_shapes10,
        budget=0.5,
        options={"episodes": 3},
        model_name="cifar_resnet20",
        dataset="shapes10",
        scoring=ScoringConfig(val_size=16, bn_batches=1, bn_batch_size=16),
        store_factory=lambda: store,
        **kwargs,
    )
    return job, store


def test_search_job_steps_pauses_in_the_store_and_resumes(resnet20, small_shapes10):
    job, store = _search_job(resnet20, small_shapes10, steps=1, provenance={"checkpoint": "shipped"})
    wait_for(lambda: job.snapshot().status == "paused", 60)
    run_id = job.snapshot().info["run_id"]
    assert len(job.snapshot().events) == 1
    wait_for(lambda: store.get_run(run_id).status == "paused")  # the run store says paused too
    job.step(1)
    wait_for(lambda: len(job.snapshot().events) == 2 and job.snapshot().status == "paused", 60)
    job.resume()
    assert job.wait(60) and job.snapshot().status == "done", job.snapshot().error
    run = store.get_run(run_id)
    assert run.status == "completed" and run.n_episodes == 3 and run.config["checkpoint"] == "shipped"
    assert [e.reward for e in store.episodes(run_id)] == [e.val_acc for e in store.episodes(run_id)]


def test_search_job_stop_leaves_a_resumable_run_and_its_best_candidate(resnet20, small_shapes10):
    job, store = _search_job(resnet20, small_shapes10, steps=1)
    wait_for(lambda: job.snapshot().status == "paused", 60)
    job.stop()
    assert job.wait(30) and job.snapshot().status == "stopped"
    run_id = job.snapshot().info["run_id"]
    assert store.get_run(run_id).status == "interrupted" and job.snapshot().info["candidate_id"] >= 1
    resumed = search_jobs.start_search(
        method="random",
        model=resnet20[0],
        topology=resnet20[1],
        data=small_shapes10,
        budget=0.5,
        options={},
        model_name="cifar_resnet20",
        dataset="shapes10",
        store_factory=lambda: store,
        resume_run_id=run_id,
    )
    assert resumed.wait(60) and resumed.snapshot().status == "done", resumed.snapshot().error
    assert store.get_run(run_id).n_episodes == 3  # the recorded options (3 episodes), not the defaults
