"""The Agent page as a policy-inspection view: the reward's definition, one axis per quantity, the best episode
marked, smoothing, PCA points labelled with group names, untouched groups at 1.0 and the episodes as CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gui import cache
from gui.plots import agent as ap
from gui.state import REOPEN_RUN, ModelRef

APP = str(Path(__file__).resolve().parents[2] / "app.py")


# --- pure figure builders -------------------------------------------------------------------------------------


def test_smoothing_is_tensorboards_debiased_ema():
    assert ap.smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    out = ap.smooth([10.0, None, 20.0], 0.5)
    assert out[0] == pytest.approx(10.0) and out[1] is None  # debiased: the first point is itself
    assert out[2] == pytest.approx((0.5 * 5.0 + 0.5 * 20.0) / (1 - 0.25))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ap.smooth([1.0], 1.0)


def test_episode_curves_one_axis_per_quantity_and_best_starred():
    vals = [50.0, 70.0, 60.0]
    fig = ap.episode_curves_figure(
        vals, method_rewards=[-50.0, -30.0, -40.0], smoothing=0.6, reward_title="r"
    )
    axes = {t.yaxis for t in fig.data}
    assert axes == {"y", "y2"}  # val top-1 and the method's reward on separate axes, not twins
    assert fig.layout.yaxis.title.text == "val top-1 %" and fig.layout.yaxis2.title.text == "r"
    star = next(t for t in fig.data if t.name == "best episode")
    assert list(star.x) == [2] and list(star.y) == [70.0]
    assert any("smoothed" in t.name for t in fig.data if t.yaxis == "y")
    # the same numbers twice (a method whose reward is the score) get one axis
    same = ap.episode_curves_figure(vals, method_rewards=vals)
    assert {t.yaxis for t in same.data} == {"y"}


def test_pca_points_are_labelled_with_group_names():
    fig = ap.embedding_pca_figure([[0, 1], [1, 0], [2, 2]], names=["a", "b", "c"], stages=[0, 1, 1])
    assert all(t.mode == "markers+text" for t in fig.data)
    assert [list(t.text) for t in fig.data] == [["a"], ["b", "c"]]
    assert len({t.marker.color for t in fig.data}) == 2  # distinct colours per stage
    many = ap.embedding_pca_figure(
        [[i, i % 3] for i in range(50)], names=[str(i) for i in range(50)], stages=[0] * 50
    )
    assert many.data[0].mode == "markers"


def test_heatmap_outlines_the_best_episode_and_csv_has_every_episode():
    fig = ap.keep_ratio_heatmap_figure([{"a": 0.5}, {"a": 0.25}], groups=["a"], best_episode=2)
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.x1) == (1.5, 2.5)
    text = ap.episodes_csv(
        [
            {
                "episode": 0,
                "val_acc": 50.0,
                "method_reward": -50.0,
                "macs_ratio": 0.5,
                "keep_ratios": {"a": 0.5},
            }
        ],
        groups=["a", "b"],
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["episode", "val_acc", "method_reward", "macs_ratio", "keep:a", "keep:b"],
        ["1", "50.0", "-50.0", "0.5", "0.5", ""],
    ]


# --- the page, on a stored run -----------------------------------------------------------------------------------


def seed_run() -> tuple[int, list[str]]:
    from engine.pruning import plan_from_ratios

    topology = cache.get_topology(ModelRef())
    groups = [g.name for g in topology.groups if g.prunable]
    store = cache.run_store()
    run_id = store.create_run(method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    emb = [[float(i), float(i % 3), float(i * i % 5)] for i in range(len(groups))]
    for i, (val, ratio) in enumerate([(50.0, 0.75), (72.0, 0.5), (61.0, 0.25)]):
        plan = plan_from_ratios(topology, {groups[1]: ratio}).to_dict()  # the others stay at 1.0, omitted
        store.add_episode(
            run_id,
            index=i,
            reward=val,
            val_acc=val,
            macs_ratio=0.5,
            plan=plan,
            extra={"method_reward": val - 100.0, "embeddings": emb, "embedding_groups": groups},
        )
    store.update_run(run_id, status="completed")
    return run_id, groups


def test_reopened_run_defines_the_reward_and_marks_the_best():
    run_id, groups = seed_run()
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.session_state[REOPEN_RUN] = run_id
    at.switch_page("gui/pages/agent.py").run()
    assert not at.exception, [e.value for e in at.exception]
    md = "\n".join(m.value for m in at.markdown)
    assert "val top-1 % of the episode's plan" in md and "-(100 - val top-1 %)" in md
    figs = {
        json.loads(c.proto.spec)["layout"].get("title", {}).get("text", ""): json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
    }
    curves = figs["Episodes"]
    assert curves["layout"]["yaxis"]["title"]["text"] == "val top-1 %"
    assert curves["layout"]["yaxis2"]["title"]["text"] == "gnnrl reward"
    star = next(t for t in curves["data"] if t["name"] == "best episode")
    assert star["x"] == [2] and star["y"] == [72.0]
    assert {m.label: m.value for m in at.metric}["Best episode"] == "2"
    heat = figs["Keep ratio per group across episodes"]
    assert heat["layout"]["shapes"][0]["x0"] == 1.5
    z = heat["data"][0]["z"]
    assert z[0] == [1.0, 1.0, 1.0] and z[1] == [0.75, 0.5, 0.25]  # untouched groups are 1.0, not blank
    pca = figs["Group embeddings (PCA), episode 3"]
    assert sorted(n for t in pca["data"] for n in t["text"]) == sorted(groups)
    at.slider(key="reopened_smoothing").set_value(0.5).run()
    curves = next(
        json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
        if json.loads(c.proto.spec)["layout"].get("title", {}).get("text") == "Episodes"
    )
    assert any("smoothed" in t["name"] for t in curves["data"])
    (download,) = [d for d in at.get("download_button") if "episodes" in d.proto.label]
    assert download.proto.label == "Download the episodes (CSV)"
