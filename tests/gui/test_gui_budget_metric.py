"""AppTest: the budget-metric selector beside the budget slider reaches the job; a latency budget builds its table.

The method run and the latency measurement are faked at the engine boundary (a real table takes minutes here);
the page, its widgets, the job thread and the MethodContext are real.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from engine.pruning.budget import METRICS
from gui.state import SEARCH_JOB

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def agent_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("gui/pages/agent.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_done(at: AppTest, timeout_s: float = 60) -> None:
    job = at.session_state[SEARCH_JOB]
    end = time.monotonic() + timeout_s
    while job.snapshot().status not in ("done", "error"):
        assert time.monotonic() < end, job.snapshot()
        time.sleep(0.05)
    at.run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture
def seen(monkeypatch):
    """Fake run_method and ensure_latency_table; record the budgets the job got and the tables built."""
    import engine.latency_table
    import engine.methods

    record = {"budgets": [], "tables": []}

    def fake_run_method(name, ctx, **options):
        from engine.pruning import PruningPlan

        record["budgets"].append((name, ctx.budget_spec.metric, ctx.budget_spec.fraction))
        plan = PruningPlan(model=ctx.topology.model_name, keep={})
        return SimpleNamespace(plan=plan, val_acc=40.0, macs_ratio=1.0, seconds=0.0)

    def fake_ensure(model, topology, **kwargs):
        record["tables"].append(topology.model_name)

    monkeypatch.setattr(engine.methods, "run_method", fake_run_method)
    monkeypatch.setattr(engine.latency_table, "ensure_latency_table", fake_ensure)
    return record


def test_the_selector_offers_the_metrics_the_method_supports():
    at = agent_page()
    at.selectbox(key="agent_method").set_value("uniform").run()
    picker = at.selectbox(key="agent_budget_metric")
    assert picker.value == "macs" and picker.options == [
        "MACs (multiply-accumulates)",
        "parameters",
        "activation memory",
        "latency (measured here)",
        "weight size",
    ]
    assert len(picker.options) == len(METRICS)
    assert "MACs" in at.slider(key="agent_budget").label
    picker.set_value("params").run()
    assert "parameters" in at.slider(key="agent_budget").label
    at.selectbox(key="agent_method").set_value("fisher").run()  # Group Fisher lands on MACs only
    assert at.selectbox(key="agent_budget_metric").options == ["MACs (multiply-accumulates)"]
    assert at.selectbox(key="agent_budget_metric").value == "macs"


def test_a_params_budget_reaches_the_job(seen):
    at = agent_page()
    at.selectbox(key="agent_method").set_value("uniform").run()
    at.selectbox(key="agent_budget_metric").set_value("params").run()
    at.slider(key="agent_budget").set_value(40).run()
    at.button(key="agent_launch").click().run()
    wait_done(at)
    assert seen["budgets"] == [("uniform", "params", 0.4)]
    assert seen["tables"] == []  # only a latency budget measures a table


def test_a_latency_budget_builds_the_table_before_the_job(seen):
    at = agent_page()
    at.selectbox(key="agent_method").set_value("uniform").run()
    at.selectbox(key="agent_budget_metric").set_value("latency").run()
    at.button(key="agent_launch").click().run()
    wait_done(at)
    assert len(seen["tables"]) == 1  # once, on the page's topology, before the job starts
    assert seen["budgets"] == [("uniform", "latency", 0.5)]
