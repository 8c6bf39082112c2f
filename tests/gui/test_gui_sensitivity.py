"""AppTest of the Sensitivity page on the real engine: cost controls reach the analysis, the ETA and a partial
heatmap show while it runs, a stopped analysis keeps its finished groups (also in the run store) and Continue
scores only the rest."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

import engine.sensitivity
from gui.state import SENS_JOB, SENS_RESULT

APP = str(Path(__file__).resolve().parents[2] / "app.py")
REAL = engine.sensitivity.analyze_sensitivity


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("gui/pages/sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_keys(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def wait_for(predicate, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end
        time.sleep(0.05)


def small_settings(at: AppTest, groups: list[str]) -> None:
    at.multiselect(key="sens_ratios").set_value([0.5])
    at.selectbox(key="sens_val").set_value(128)
    at.number_input(key="sens_bn").set_value(1)
    at.multiselect(key="sens_groups").set_value(groups).run()


def prunable(at: AppTest) -> list[str]:
    return list(at.multiselect(key="sens_groups").options)


def test_cost_controls_reach_the_engine_and_the_table_is_shown(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return REAL(*args, **kwargs)

    monkeypatch.setattr(engine.sensitivity, "analyze_sensitivity", spy)
    at = open_page()
    assert at.multiselect(key="sens_ratios").value == [0.75, 0.5, 0.25]  # the quick default
    names = prunable(at)[:2]
    small_settings(at, names)
    assert "3 plans to score" in "\n".join(c.value for c in at.caption)
    at.button(key="sens_run").click().run()
    job = at.session_state[SENS_JOB]
    assert job.wait(120) and job.snapshot().status == "done", job.snapshot()
    at.run()
    kwargs = calls[-1]
    assert kwargs["keep_ratios"] == [0.5] and kwargs["groups"] == names
    assert kwargs["scoring"].val_size == 128 and kwargs["scoring"].bn_batches == 1
    table = at.session_state[SENS_RESULT]
    assert [g["name"] for g in table["groups"]] == names and not table["partial"]
    assert "Accuracy drop when only this group is pruned" in chart_keys(at)


def test_stop_keeps_finished_groups_and_continue_scores_the_rest(monkeypatch):
    gate = threading.Event()

    def held(*args, progress=None, **kwargs):
        def wrapped(p):
            progress(p)
            if p.group_done and len(p.table.groups) == 1 and kwargs.get("resume") is None:
                gate.wait(60)  # hold after the first group so the test can look and press Stop

        return REAL(*args, progress=wrapped, **kwargs)

    monkeypatch.setattr(engine.sensitivity, "analyze_sensitivity", held)
    at = open_page()
    names = prunable(at)[:3]
    small_settings(at, names)
    at.button(key="sens_run").click().run()
    job = at.session_state[SENS_JOB]
    wait_for(lambda: job.snapshot().info.get("partial") is not None)
    at.run()
    assert "Accuracy drop when only this group is pruned" in chart_keys(at)  # the partial heatmap
    captions = "\n".join(c.value for c in at.caption)
    assert "left (2/4 plans" in captions
    at.button(key="sens_stop").click().run()
    gate.set()  # the plan in flight (the second group) finishes, then the analysis stops
    assert job.wait(60) and job.snapshot().status == "stopped"
    at.run()
    table = at.session_state[SENS_RESULT]
    assert table["partial"] and [g["name"] for g in table["groups"]] == names[:2]
    assert any("Partial table: 2 group(s)" in w.value for w in at.warning)

    fresh = open_page()  # another session finds the partial table in the run store
    assert fresh.session_state[SENS_RESULT]["partial"]
    fresh.button(key="sens_continue").click().run()
    job2 = fresh.session_state[SENS_JOB]
    assert job2.wait(120) and job2.snapshot().status == "done", job2.snapshot()
    assert job2.snapshot().total == 2  # the baseline + the one missing plan
    fresh.run()
    done = fresh.session_state[SENS_RESULT]
    assert not done["partial"] and [g["name"] for g in done["groups"]] == names
    assert done["groups"][:2] == table["groups"]
    assert not any("Partial table" in w.value for w in fresh.warning)


def test_cost_controls_survive_a_visit_to_another_page():
    at = open_page()
    names = prunable(at)[:2]
    small_settings(at, names)
    at.switch_page("gui/pages/topology.py").run()
    at.switch_page("gui/pages/sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="sens_ratios").value == [0.5]
    assert at.selectbox(key="sens_val").value == 128 and at.number_input(key="sens_bn").value == 1
    assert at.multiselect(key="sens_groups").value == names
    assert not at.warning  # no "default value also set via Session State" warning
