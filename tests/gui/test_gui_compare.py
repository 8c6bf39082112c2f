"""Compare page: downloads hold the measured (fine-tuned) weights, candidates are filtered by the weights they
were found on, latency is shown with its spread (issue 16, M2-M4, M13)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from streamlit.testing.v1 import AppTest

from gui import cache
from gui.state import FINETUNE_JOB

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PLAN = {"keep": {"conv1": 8, "layer1.0.conv1": 8}, "model": "cifar_resnet20", "method": "random"}


def compare_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("gui/pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def current_digest() -> str:
    from engine.sensitivity import weights_sha256
    from gui.state import ModelRef

    return weights_sha256(cache.load_model(ModelRef()).model)


def add(store, *, sha: str | None, val: float) -> int:
    metrics = {"val_acc": val, "macs_ratio": 0.5}
    if sha is not None:
        metrics["weights_sha256"] = sha
    return store.add_candidate(
        method="random", model="cifar_resnet20", dataset="shapes10", plan=PLAN, metrics=metrics
    )


def wait_done(at: AppTest) -> None:
    job = at.session_state[FINETUNE_JOB]
    end = time.monotonic() + 60
    while job.active:
        assert time.monotonic() < end, job.snapshot()
        time.sleep(0.05)
    assert job.snapshot().status == "done", job.snapshot().error
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_candidates_on_other_weights_are_hidden_and_provenance_is_shown(monkeypatch):
    monkeypatch.setattr(cache, "baseline_val_acc", lambda ref: 45.0)
    store = cache.run_store()
    add(store, sha=current_digest(), val=41.0)
    add(store, sha="f" * 64, val=72.0)  # found on other weights
    add(store, sha=None, val=50.0)  # recorded before weights were tracked
    at = compare_page()
    table = at.dataframe[0].value
    assert list(table["weights"]) == ["these weights", "not recorded"]
    assert any(
        "1 candidate(s) of `cifar_resnet20` found on other weights are hidden" in c.value for c in at.caption
    )
    assert any("do not record which weights" in w.value for w in at.warning)
    pareto = next(
        json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Accuracy vs MACs" in c.proto.spec
    )
    plotted = [y for trace in pareto["data"] if trace.get("name") == "random" for y in trace["y"]]
    assert sorted(plotted) == [41.0, 50.0]  # not the 72 % found on other weights
    at.toggle(key="cmp_only").set_value(False).run()
    assert list(at.dataframe[0].value["weights"]) == ["these weights", "other (ffffffffff)", "not recorded"]


def test_download_after_fine_tune_is_the_fine_tuned_model_tensor_for_tensor(monkeypatch):
    import engine.cost
    import engine.evaluate
    from engine.paths import topoprune_home
    from engine.pruning import PruningPlan, apply_plan

    monkeypatch.setattr(cache, "baseline_val_acc", lambda ref: 45.0)
    store = cache.run_store()
    cid = add(store, sha=current_digest(), val=41.0)
    other = add(store, sha=current_digest(), val=40.0)
    tuned: dict = {}

    def fake_report(model, topology, plan, data, *, finetune_epochs=0, distill=False, callback=None, **kw):
        assert kw.get("latency") is False  # the job measures latency itself, with repeats
        pruned = apply_plan(model, topology, plan)
        with torch.no_grad():  # stands in for fine-tuning: every weight moves
            for p in pruned.parameters():
                p.add_(0.125)
        tuned["state"] = {k: v.clone() for k, v in pruned.state_dict().items()}
        report = {
            "val_acc": 41.0,
            "test_acc": 88.0,
            "finetune_epochs": finetune_epochs,
            "macs_after": 1,
            "params_after": 1,
        }
        return SimpleNamespace(to_dict=lambda: dict(report), pruned_model=pruned)

    real_stats = engine.cost.measure_latency_stats
    monkeypatch.setattr(engine.evaluate, "report_candidate", fake_report)
    monkeypatch.setattr(
        engine.cost,
        "measure_latency_stats",
        lambda models, size, **_: real_stats(models, size, repeats=3, threads=1, min_run_time_s=0.06),
    )
    at = compare_page()
    at.selectbox(key="cmp_one").set_value(cid).run()
    at.number_input(key="cmp_ft_epochs").set_value(1).run()
    at.button(key="cmp_ft_run").click().run()
    wait_done(at)
    metrics = cache.run_store().get_candidate(cid).metrics
    assert metrics["test_acc"] == 88.0 and Path(metrics["weights_path"]).exists()
    assert metrics["latency_after"]["repeats"] == 3 and metrics["latency_ms_after"] > 0
    row = at.dataframe[0].value.set_index("id").loc[cid]
    assert "IQR" in row["latency"] and "3 repeats" in row["latency"]
    assert any("test top-1 88.00%" in s.value and "3 repeats" in s.value for s in at.success)
    assert any("fine-tuned 1 epoch(s)" in c.value for c in at.caption)

    at.button(key="cmp_export").click().run()  # state_dict export of the measured weights
    assert not at.exception and not at.error, [e.value for e in at.error]
    button = next(b for b in at.get("download_button") if b.proto.label.startswith("Download"))
    assert "finetuned" in button.proto.label
    exported = topoprune_home() / "exports" / f"cifar_resnet20-candidate{cid}-finetuned.pt"
    assert button.proto.label == f"Download {exported.name}"
    state = torch.load(exported, weights_only=True)
    assert state.keys() == tuned["state"].keys()
    for key, tensor in tuned["state"].items():
        assert torch.equal(state[key], tensor), key
    untuned = apply_plan(
        cache.load_model(at.session_state["model_ref"]).model,
        cache.get_topology(at.session_state["model_ref"]),
        PruningPlan.from_dict(PLAN),
    ).state_dict()
    assert not all(torch.equal(state[k], untuned[k]) for k in state)

    at.selectbox(key="cmp_one").set_value(other).run()  # the result box belongs to candidate `cid` only
    assert not any("test top-1 88.00%" in s.value for s in at.success)
    assert any(f"for candidate #{cid}" in c.value for c in at.caption)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
