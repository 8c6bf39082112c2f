"""The Agent page's Launch / Pause-Resume / Step / Stop buttons follow the job's state (issue 16, M1).

A job that pauses by itself (the end of a Step) must not leave a button labelled Pause that resumes it.
AppTest cannot fire the page's polling timer, so a job changes state between two script runs here, exactly
as it does between two polls in the browser.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from gui import jobs
from gui.state import SEARCH_JOB

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def gated_job(n: int, *, steps: int | None) -> tuple[jobs.Job, threading.Event]:
    gate = threading.Event()

    def work(job: jobs.Job):
        for i in range(n):
            assert gate.wait(20), "the test never opened the gate"
            gate.clear()
            job.report(done=i + 1, total=n, message=f"episode {i + 1}")
            job.checkpoint()
        return None

    return jobs.Job(kind="search", label="fake search").start(work, steps=steps), gate


def wait_status(job: jobs.Job, status: str) -> None:
    end = time.monotonic() + 10
    while job.snapshot().status != status:
        assert time.monotonic() < end, job.snapshot()
        time.sleep(0.01)


def agent_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("gui/pages/agent.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def buttons(at: AppTest) -> dict[str, tuple[str, bool]]:
    return {
        key: (at.button(key=key).label, at.button(key=key).disabled)
        for key in ("agent_launch", "agent_pause", "agent_step", "agent_stop")
    }


def test_a_pause_after_step_leaves_resume_and_step_enabled_and_a_stale_pause_click_pauses():
    at = agent_page()
    job, gate = gated_job(4, steps=1)
    at.session_state[SEARCH_JOB] = job
    at.run()
    assert buttons(at) == {
        "agent_launch": ("Launch", True),
        "agent_pause": ("Pause", False),
        "agent_step": ("Step", True),
        "agent_stop": ("Stop", False),
    }
    gate.set()
    wait_status(job, "paused")  # the Step ended while the page showed "Pause"
    at.button(key="agent_pause").click().run()  # the user clicks the (stale) Pause
    time.sleep(0.1)
    assert job.snapshot().status == "paused" and job.snapshot().done == 1, (
        "a click on Pause must never resume"
    )
    assert buttons(at)["agent_pause"] == ("Resume", False) and buttons(at)["agent_step"] == ("Step", False)
    assert at.session_state["_agent_seen"] == (id(job), job.snapshot().version)

    at.button(key="agent_step").click().run()  # one more episode, then paused again
    gate.set()
    wait_status(job, "paused")
    assert job.snapshot().done == 2
    seen_before = at.session_state["_agent_seen"]
    at.run()
    assert at.session_state["_agent_seen"] != seen_before  # the second pause is a new state for the page
    assert buttons(at)["agent_pause"] == ("Resume", False) and buttons(at)["agent_step"] == ("Step", False)

    at.button(key="agent_pause").click().run()  # Resume runs freely to the end
    for _ in range(2):
        gate.set()
        time.sleep(0.05)
    assert job.wait(10) and job.snapshot().status == "done" and job.snapshot().done == 4
    at.run()
    assert buttons(at) == {
        "agent_launch": ("Launch", False),
        "agent_pause": ("Pause", True),
        "agent_step": ("Step", False),
        "agent_stop": ("Stop", True),
    }


def test_pause_shows_resume_at_once_and_stop_ends_a_paused_job():
    at = agent_page()
    job, gate = gated_job(3, steps=None)
    at.session_state[SEARCH_JOB] = job
    at.run()
    at.button(key="agent_pause").click().run()
    assert job.snapshot().status == "pausing"
    assert buttons(at)["agent_pause"] == ("Resume", False) and buttons(at)["agent_step"][1] is True
    gate.set()
    wait_status(job, "paused")
    at.run()
    assert buttons(at)["agent_step"] == ("Step", False)
    at.button(key="agent_stop").click().run()
    assert job.wait(10) and job.snapshot().status == "stopped"
    at.run()
    assert buttons(at)["agent_launch"] == ("Launch", False) and buttons(at)["agent_stop"][1] is True
