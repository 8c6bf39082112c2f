"""AppTest for every page on the built-in default (cifar_resnet20 on shapes10).

Slow engine calls (accuracy, latency, sensitivity, methods, fine-tuning) are faked at the gui/engine
boundary; model building, tracing, layout and the run store are real. AppTest cannot fire run_every timers
nor plotly clicks: jobs are awaited by hand and the selected node is seeded in its session key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from gui import cache
from gui.state import REOPEN_RUN, SEARCH_JOB, SELECTED_NODE, SELECTED_PLAN, SENS_JOB, SENS_RESULT, ModelRef

APP = str(Path(__file__).resolve().parents[2] / "app.py")

TIMEOUT_S = 180


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"gui/pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.success]
    parts += [i.value for i in at.info] + [w.value for w in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def wait_job(at: AppTest, key: str, *, status: tuple[str, ...] = ("done",), timeout_s: float = 60) -> None:
    job = at.session_state[key]
    end = time.monotonic() + timeout_s
    while job.snapshot().status not in status:
        assert time.monotonic() < end, job.snapshot()
        time.sleep(0.05)
    at.run()  # run_every timers do not fire under AppTest
    assert not at.exception, [e.value for e in at.exception]


# --- Model & data ------------------------------------------------------------------------------------------


def test_model_page_default_summary_and_measure(monkeypatch):
    monkeypatch.setattr(cache, "test_accuracy", lambda ref: 87.5)
    monkeypatch.setattr(
        cache,
        "latency_stats",
        lambda ref, measurement=0: {
            "median_ms": 1.25,
            "p25_ms": 1.2,
            "p75_ms": 1.3,
            "min_ms": 1.1,
            "max_ms": 1.4,
            "repeats": 5,
            "noisy": False,
        },
    )
    at = app()
    assert at.selectbox(key="arch").value == "cifar_resnet20"
    assert at.selectbox(key="dataset").value == "shapes10"
    cards = {m.label: m.value for m in at.metric}
    assert cards["Params"].endswith("k") or cards["Params"].endswith("M")
    assert "M" in cards["MACs"]  # ~40.8 M MACs for resnet20 at 32x32
    loaded = cache.load_model(at.session_state["model_ref"])
    assert ("untrained" in texts(at)) != loaded.trained  # the page says when the baseline is untrained
    at.button(key="measure").click().run()
    cards = {m.label: m.value for m in at.metric}
    assert cards["Test top-1"] == "87.50 %" and cards["CPU latency"] == "1.25 ms"


def test_model_page_switches_model_for_every_page():
    at = app()
    at.selectbox(key="arch").set_value("cifar_resnet32").run()
    assert not at.exception
    assert at.session_state["model_ref"].arch == "cifar_resnet32"
    goto(at, "topology")
    assert "cifar_resnet32" in texts(at)


def test_model_page_trains_a_baseline_in_background(monkeypatch):
    import engine.train

    def fake_train(model, data, config, *, callback=None, **_):
        for epoch in range(config.epochs):
            callback(
                engine.train.TrainProgress(
                    epoch=epoch, epochs=config.epochs, step=1, steps_per_epoch=1, loss=1.0, lr=0.1
                )
            )
        return engine.train.TrainResult(config=config)

    monkeypatch.setattr(engine.train, "train_model", fake_train)
    monkeypatch.setattr(
        engine.train, "evaluate", lambda model, data, split="test", **_: SimpleNamespace(top1=12.5, top5=50.0)
    )
    at = app()
    at.radio(key="weights_source").set_value("train").run()
    at.number_input(key="train_epochs").set_value(2).run()
    at.button(key="train_start").click().run()
    wait_job(at, "train_job")
    assert any("Trained and saved" in s.value for s in at.success)
    at.button(key="use_trained").click().run()
    ref = at.session_state["model_ref"]
    assert ref.weights.endswith(".pt") and ref.arch == "cifar_resnet20"
    assert not at.exception
    assert any("weights from" in c.value for c in at.caption)  # the trained checkpoint is loaded
    assert {m.label: m.value for m in at.metric}["Test top-1"] == "12.50 %"  # recorded with the checkpoint


@pytest.mark.parametrize(
    "content, expected", [("garbage", "not a readable PyTorch checkpoint"), ("wrong_shapes", "conv1.weight")]
)
def test_bad_checkpoint_shows_error_not_traceback(tmp_path, content, expected):
    import torch

    bad = tmp_path / "broken.pt"
    if content == "garbage":
        bad.write_bytes(b"this is not a checkpoint")
    else:
        torch.save({"conv1.weight": torch.zeros(3, 3)}, bad)  # a state_dict that does not fit cifar_resnet20
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.session_state["model_ref"] = ModelRef(weights=str(bad))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error, "expected an st.error"
    assert "loading the model" in at.error[0].value and expected in at.error[0].value


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    at = app()
    at.selectbox(key="dataset").set_value("cifar10").run()
    at.text_input(key="data_dir").input(str(tmp_path / "nowhere")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("nowhere" in e.value for e in at.error), [e.value for e in at.error]


# --- Topology ------------------------------------------------------------------------------------------------


def test_topology_page_graph_levels_colour_and_details():
    at = goto(app(), "topology")
    spec = charts(at)[0]
    assert [t["name"] for t in spec["data"]] == [
        "edges",
        "nodes",
        "no value",
        "coupled group",
        "search",
        "selected",
    ]
    blocks = len(spec["data"][1]["x"])
    at.radio(key="topo_level").set_value("layers").run()
    layers = len(charts(at)[0]["data"][1]["x"])
    assert layers > blocks > 0
    at.selectbox(key="topo_metric").set_value("MACs").run()
    assert charts(at)[0]["data"][1]["marker"]["showscale"] is True
    # a click stores the node in our own key; AppTest cannot click, so seed it
    at.session_state[SELECTED_NODE] = "layer2_0_conv1"
    at.run()
    assert not at.exception
    assert "layer2.0.conv1" in texts(at)
    assert len(at.dataframe) == 1
    spec = charts(at)[0]
    assert len(spec["data"][5]["x"]) == 1  # the selected star
    assert len(spec["data"][3]["x"]) >= 2  # its coupled group highlighted


def test_topology_search_selects_unique_match():
    at = goto(app(), "topology")
    at.radio(key="topo_level").set_value("layers").run()
    at.text_input(key="topo_search").input("layer3.1.conv2").run()
    assert at.session_state[SELECTED_NODE] == "layer3_1_conv2"
    assert "1 node(s) match" in texts(at)


def test_topology_colours_by_selected_plan():
    at = app()
    at.session_state[SELECTED_PLAN] = {"keep": {"conv1": 8}, "method": "uniform"}
    goto(at, "topology")
    at.radio(key="topo_level").set_value("layers").run()
    at.selectbox(key="topo_metric").set_value("keep ratio").run()
    colours = [c for c in charts(at)[0]["data"][1]["marker"]["color"] if c is not None]
    assert 0.5 in colours and 1.0 in colours


# --- Sensitivity -----------------------------------------------------------------------------------------------


def fake_analyze(model, topology, data, *, keep_ratios, callback=None, **_):
    groups = [g for g in topology.groups if g.prunable]
    for i, _g in enumerate(groups):
        if callback:
            callback(i + 1, len(groups), f"group {i + 1}")
    return {
        "model_name": "m",
        "dataset": "shapes10",
        "keep_ratios": list(keep_ratios),
        "base_acc": 90.0,
        "seconds": 0.1,
        "n_scored": len(groups) * len(keep_ratios),
        "groups": [
            {
                "name": g.name,
                "index": g.index,
                "channels": g.channels,
                "stage": g.stage,
                "macs_share": 0.1,
                "params_share": 0.1,
                "memory_share": 0.1,
                "val_acc": [90.0 - k * i for k in range(len(keep_ratios))],
                "drop": [float(k * i) for k in range(len(keep_ratios))],
            }
            for i, g in enumerate(groups)
        ],
    }


def test_sensitivity_page_runs_in_background(monkeypatch):
    import engine.sensitivity

    monkeypatch.setattr(engine.sensitivity, "analyze_sensitivity", fake_analyze)
    at = goto(app(), "sensitivity")
    assert not charts(at)
    at.button(key="sens_run").click().run()
    wait_job(at, SENS_JOB)
    assert at.session_state[SENS_RESULT]["base_acc"] == 90.0
    names = [c["data"][0]["type"] for c in charts(at)]
    assert names[0] == "heatmap" and len(names) == 3
    goto(at, "topology")  # the table colours the graph
    at.selectbox(key="topo_metric").set_value("sensitivity").run()
    assert not at.info or all("No sensitivity" not in i.value for i in at.info)
    # a new session (or a restarted app) finds the table in the run store
    fresh = goto(app(), "sensitivity")
    assert fresh.session_state[SENS_RESULT]["base_acc"] == 90.0
    assert any("loaded from the run store" in c.value for c in fresh.caption)


# --- Agent -----------------------------------------------------------------------------------------------------


class FakePlan:
    def __init__(self, keep):
        self.keep = keep

    def keep_ratios(self, topology):
        return {g.name: self.keep.get(g.name, g.channels) / g.channels for g in topology.groups}

    def to_dict(self):
        return {"keep": dict(self.keep), "method": "fake", "model": "cifar_resnet20"}


def fake_run_method(name, ctx, **options):
    from engine.methods import Candidate, MethodEvent

    episodes = int(options.get("episodes", 1))
    best = None
    for i in range(episodes):
        plan = FakePlan({"conv1": 16 - i, "layer1.0.conv1": 8})
        cand = Candidate(
            index=i,
            plan=plan,
            val_acc=40.0 + i,
            macs_ratio=0.5,
            meta={
                "episode": i,
                "reward": 0.1 * i,
                "embeddings": [[i, 1.0], [0.0, i], [1.0, 1.0]],
                "embedding_groups": ["conv1", "layer1.0.conv1", "layer2.0.conv1"],
            },
        )
        best = cand
        ctx.callback(MethodEvent(name, i + 1, episodes, f"episode {i + 1}", cand))
        if ctx.stopped():
            break
    return SimpleNamespace(plan=best.plan, val_acc=best.val_acc, macs_ratio=0.5, seconds=0.01)


@pytest.fixture
def fake_methods(monkeypatch):
    import engine.methods

    monkeypatch.setattr(engine.methods, "run_method", fake_run_method)


def test_agent_launch_runs_and_records():
    """A real random search through the search driver (search methods are not faked)."""
    at = goto(app(), "agent")
    methods = at.selectbox(key="agent_method").options
    assert "uniform (oneshot)" in methods and "random (search)" in methods
    at.selectbox(key="agent_method").set_value("random").run()
    at.number_input(key="agent_episodes").set_value(3).run()
    at.button(key="agent_launch").click().run()
    wait_job(at, SEARCH_JOB)
    snap = at.session_state[SEARCH_JOB].snapshot()
    assert len(snap.events) == 3 and "run_id" in snap.info
    assert any("Search finished" in s.value for s in at.success)
    kinds = [c["data"][0].get("name") or c["data"][0]["type"] for c in charts(at)]
    assert kinds[0] == "val top-1 %" and "heatmap" in [c["data"][0]["type"] for c in charts(at)]
    runs = cache.run_store().list_runs()
    assert runs[0].method == "random" and runs[0].status == "completed" and runs[0].n_episodes == 3
    assert cache.run_store().candidates()[0].run_id == runs[0].id


def test_agent_step_pause_resume(fake_methods):
    at = goto(app(), "agent")
    at.selectbox(key="agent_method").set_value("random").run()
    at.number_input(key="agent_episodes").set_value(3).run()
    at.button(key="agent_step").click().run()
    wait_job(at, SEARCH_JOB, status=("paused",))
    assert len(at.session_state[SEARCH_JOB].snapshot().events) == 1
    assert at.button(key="agent_pause").label == "Resume"
    assert any("Action of episode 1" in json.dumps(c) for c in charts(at))
    at.button(key="agent_step").click().run()
    wait_job(at, SEARCH_JOB, status=("paused",))
    assert len(at.session_state[SEARCH_JOB].snapshot().events) == 2
    at.button(key="agent_pause").click().run()  # Resume
    wait_job(at, SEARCH_JOB)
    assert len(at.session_state[SEARCH_JOB].snapshot().events) == 3


def test_agent_budget_error_shown(monkeypatch):
    import engine.methods
    from engine.errors import BudgetError

    def unreachable(name, ctx, **options):
        raise BudgetError("budget 0.1 is unreachable: the min keep ratios already use 0.2 of the MACs")

    monkeypatch.setattr(engine.methods, "run_method", unreachable)
    at = goto(app(), "agent")
    at.selectbox(key="agent_method").set_value("uniform").run()
    at.button(key="agent_launch").click().run()
    wait_job(at, SEARCH_JOB, status=("error",))
    assert any("unreachable" in e.value for e in at.error)


class FakeSteppable:
    """A search method with 2 inner steps per episode (GNN-RL's stepping surface) on the real search driver."""

    name = "gnnrl"

    def __new__(cls, ctx, options):
        from engine.methods.candidates import fit_ratios_to_budget
        from engine.search import Proposal, SearchMethod, SubStep

        class Method(SearchMethod):
            name = "gnnrl"

            def __init__(self, ctx, options):
                super().__init__(ctx, options)
                self.episode, self.t = 0, 0
                self.groups = [g.name for g in ctx.topology.groups if g.prunable]

            @property
            def finished(self):
                return self.episode >= self.options["episodes"]

            def substep(self):
                self.t += 1
                ratio = 1.0 - 0.2 * self.t
                keep = dict.fromkeys(self.groups, ratio)
                info = {
                    "episode": self.episode,
                    "step": self.t,
                    "action": [0.1] * len(self.groups),
                    "keep_ratios": keep,
                    "macs_ratio": 0.6,
                    "reward": 0.0,
                    "done": self.t == 2,
                }
                proposal = None
                if self.t == 2:
                    plan = fit_ratios_to_budget(self.ctx, keep, method="gnnrl")
                    proposal = Proposal(
                        plan,
                        {
                            "embeddings": [[float(i), float(i % 3)] for i in range(len(self.groups))],
                            "embedding_groups": self.groups,
                            "actions": [[0.1] * len(self.groups)] * 2,
                        },
                    )
                return SubStep(self.episode, self.t, info, proposal)

            def propose(self, n=1):
                while True:
                    sub = self.substep()
                    if sub.proposal is not None:
                        return [sub.proposal]

            def observe(self, scored):
                self.episode, self.t = self.episode + 1, 0
                return [s.val_acc - 100.0 for s in scored]

            def state_dict(self):
                return {"episode": self.episode}

            def load_state_dict(self, state):
                self.episode = int(state["episode"])

        return Method(ctx, options)


def fake_gnnrl(monkeypatch):
    import dataclasses

    from engine.methods import get_method, registry

    monkeypatch.setitem(
        registry._REGISTRY, "gnnrl", dataclasses.replace(get_method("gnnrl"), searcher=FakeSteppable)
    )


def test_agent_gnnrl_steps_one_env_step_at_a_time(monkeypatch):
    fake_gnnrl(monkeypatch)
    at = goto(app(), "agent")
    assert at.selectbox(key="agent_method").value == "gnnrl"  # the default when registered
    at.number_input(key="agent_episodes").set_value(2).run()
    at.radio(key="agent_step_unit").set_value("step").run()
    at.button(key="agent_step").click().run()
    wait_job(at, SEARCH_JOB, status=("paused",))
    snap = at.session_state[SEARCH_JOB].snapshot()
    assert snap.info["last_step"]["step"] == 1 and not snap.events
    assert cache.run_store().get_run(snap.info["run_id"]).status == "paused"  # the store says so too
    assert "episode 1, step 1" in texts(at)
    assert any("Action at episode 1, step 1" in json.dumps(c) for c in charts(at))
    at.button(key="agent_step").click().run()  # the second step ends episode 1
    wait_job(at, SEARCH_JOB, status=("paused",))
    assert len(at.session_state[SEARCH_JOB].snapshot().events) == 1
    at.button(key="agent_pause").click().run()  # Resume to the end
    wait_job(at, SEARCH_JOB)
    snap = at.session_state[SEARCH_JOB].snapshot()
    assert len(snap.events) == 2 and snap.info["candidate_id"] >= 1
    assert any(t.get("name") == "stage 0" for c in charts(at) for t in c["data"])  # embeddings PCA by stage
    assert cache.run_store().candidates()[-1].method == "gnnrl"
    run = cache.run_store().get_run(snap.info["run_id"])
    assert (
        run.status == "completed" and run.config["checkpoint"] == "shipped"
    )  # `topoprune resume` needs no flag


def test_agent_resumes_a_paused_gnnrl_run(monkeypatch):
    from engine.methods import MethodContext, get_method
    from engine.search import SearchDriver

    fake_gnnrl(monkeypatch)
    store = cache.run_store()
    run_id = store.create_run(
        method="gnnrl",
        model="cifar_resnet20",
        dataset="shapes10",
        budget=0.5,
        status="paused",
        config={"scoring": {"val_size": 32}, "options": {"episodes": 3}},
    )
    from gui.state import ModelRef

    ref = ModelRef()
    loaded = cache.load_model(ref)
    topology = cache.get_topology(ref)
    ctx = MethodContext(
        model=loaded.model,
        topology=topology,
        data=cache.dataset_for(ref),
        budget=0.5,
        store=store,
        run_id=run_id,
        score_fn=lambda plan: 30.0,
    )
    spec = get_method("gnnrl")
    driver = SearchDriver(spec, ctx, spec.validate({"episodes": 3}))
    driver.step()  # one episode recorded, with its saved state
    driver.pause()
    at = app()
    at.session_state[REOPEN_RUN] = run_id
    goto(at, "agent")
    assert any(f"Run {run_id}: gnnrl" in s.value for s in at.subheader)
    at.button(key="agent_resume_run").click().run()
    wait_job(at, SEARCH_JOB)
    snap = at.session_state[SEARCH_JOB].snapshot()
    assert snap.status == "done" and snap.info["run_id"] == run_id
    assert [e["episode"] for e in snap.events] == [0, 1, 2]  # the stored episode, then two new ones
    assert cache.run_store().get_run(run_id).n_episodes == 3


# --- Compare and Runs --------------------------------------------------------------------------------------------


def seed_store() -> tuple[int, int]:
    store = cache.run_store()
    run_id = store.create_run(
        method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5, status="completed"
    )
    store.add_episode(
        run_id,
        reward=0.2,
        macs_ratio=0.5,
        val_acc=41.0,
        plan={"keep": {"conv1": 8}, "model": "cifar_resnet20", "method": "random"},
    )
    cid = store.add_candidate(
        method="random",
        model="cifar_resnet20",
        dataset="shapes10",
        run_id=run_id,
        plan={"keep": {"conv1": 8, "layer1.0.conv1": 8}, "model": "cifar_resnet20", "method": "random"},
        metrics={"val_acc": 41.0, "macs_ratio": 0.5},
    )
    store.update_run(run_id, best_score=41.0)
    return run_id, cid


def test_compare_page_lists_candidates_and_downloads_plan(monkeypatch):
    monkeypatch.setattr(cache, "baseline_val_acc", lambda ref: 45.0)
    seed_store()
    at = goto(app(), "compare")
    assert len(at.dataframe) == 1
    titles = [c["layout"]["title"]["text"] for c in charts(at)]
    assert titles[0] == "Accuracy vs MACs"
    assert "Kept channels per group" in titles
    pareto = charts(at)[0]
    assert [t["name"] for t in pareto["data"]][0] == "random"
    base_macs_m = cache.model_summary(at.session_state["model_ref"])["macs"] / 1e6
    assert 0 < pareto["data"][0]["x"][0] < base_macs_m  # analytic MACs of the plan
    assert pareto["data"][-1]["name"] == "baseline" and pareto["data"][-1]["x"][0] == pytest.approx(
        base_macs_m
    )
    assert len(at.get("download_button")) >= 1
    at.button(key="cmp_use_plan").click().run()
    assert at.session_state[SELECTED_PLAN]["keep"]["conv1"] == 8
    at.button(key="cmp_export").click().run()  # real apply_plan + export_pruned (state_dict)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(
        b.proto.label.startswith("Download cifar_resnet20-candidate") for b in at.get("download_button")
    )


def test_compare_measure_updates_candidate(monkeypatch):
    import engine.evaluate

    monkeypatch.setattr(cache, "baseline_val_acc", lambda ref: 45.0)
    _, cid = seed_store()

    def fake_report(model, topology, plan, data, *, finetune_epochs=0, distill=False, callback=None, **_):
        return {
            "val_acc": 41.0,
            "test_acc": 40.0,
            "latency_ms_after": 0.5,
            "latency_ms_before": 1.0,
            "macs_after": 20_000_000,
            "params_after": 100_000,
            "finetune_epochs": finetune_epochs,
        }

    monkeypatch.setattr(engine.evaluate, "report_candidate", fake_report)
    at = goto(app(), "compare")
    at.button(key="cmp_ft_run").click().run()
    wait_job(at, "finetune_job")
    metrics = cache.run_store().get_candidate(cid).metrics
    assert metrics["test_acc"] == 40.0 and metrics["latency_ms_after"] == 0.5
    at.run()
    lat = next(c for c in charts(at) if c["layout"]["title"]["text"].startswith("CPU latency"))
    assert lat["data"][0]["y"] == [0.5]


def test_runs_page_reopens_run_on_agent_and_compare(monkeypatch):
    monkeypatch.setattr(cache, "baseline_val_acc", lambda ref: 45.0)
    run_id, _ = seed_store()
    at = goto(app(), "runs")
    assert len(at.dataframe) == 1
    at.button(key="runs_open_agent").click().run()
    assert at.session_state[REOPEN_RUN] == run_id
    assert not at.exception
    assert any(f"Run {run_id}" in s.value for s in at.subheader)
    goto(at, "compare")
    assert any(f"run {run_id}" in i.value for i in at.info)


def test_empty_store_pages_say_what_to_do():
    at = goto(app(), "runs")
    assert any("No runs yet" in i.value for i in at.info)
    goto(at, "compare")
    assert any("No candidates yet" in i.value for i in at.info)
