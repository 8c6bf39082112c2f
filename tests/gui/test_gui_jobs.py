"""Background jobs: progress, pause/resume/step/stop, engine errors, and the search job's store records."""

from __future__ import annotations

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
    assert job.snapshot().status == "paused"
    time.sleep(0.1)
    done = job.snapshot().done
    time.sleep(0.1)
    assert job.snapshot().done <= done + 1  # at most the unit in flight finishes
    job.stop()
    assert job.wait(10) and job.snapshot().status == "stopped"


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
        cand = Candidate(index=i, plan=FakePlan(0.5 + 0.1 * i), val_acc=50.0 + i, macs_ratio=0.5,
                         meta={"episode": i, "reward": 0.1 * i})
        ctx.callback(MethodEvent(name, i + 1, options["episodes"], f"episode {i + 1}", cand))
        if ctx.stopped():
            break
    return SimpleNamespace(plan=FakePlan(0.7), val_acc=52.0, macs_ratio=0.5, seconds=0.1)


def test_start_method_records_events_run_and_candidate():
    store = FakeStore()
    job = search_jobs.start_method(method="uniform", model=None, topology=SimpleNamespace(groups=[]), data=None, budget=0.5,
                            options={"episodes": 3}, model_name="m", dataset="d", run_method=fake_run_method,
                            store_factory=lambda: store)
    assert job.wait(10)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert [e["episode"] for e in snap.events] == [0, 1, 2]
    assert snap.events[1]["keep_ratios"] == {"g1": pytest.approx(0.6), "g2": 1.0}
    assert snap.events[2]["reward"] == pytest.approx(0.2)
    assert snap.result["val_acc"] == 52.0 and snap.info == {"run_id": 1, "candidate_id": 1}
    assert store.runs[1]["status"] == "completed" and store.runs[1]["best_score"] == 52.0
    assert len(store.episodes) == 3  # non-RL methods are recorded by the GUI
    assert store.candidates[0]["plan"]["keep"] == {"g1": 11} and store.candidates[0]["run_id"] == 1


def test_start_method_step_mode():
    job = search_jobs.start_method(method="gnnrl", model=None, topology=SimpleNamespace(groups=[]), data=None, budget=0.5,
                            options={"episodes": 3}, model_name="m", dataset="d", run_method=fake_run_method,
                            steps=1, record=False)
    wait_for(lambda: job.snapshot().status == "paused")
    assert len(job.snapshot().events) == 1
    job.step(1)
    wait_for(lambda: len(job.snapshot().events) == 2 and job.snapshot().status == "paused")
    job.stop()
    assert job.wait(10) and job.snapshot().status == "stopped"
