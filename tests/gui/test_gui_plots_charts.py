"""Pure figure builders of the Agent, Compare and Sensitivity pages."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from gui.plots import agent as ap
from gui.plots import compare as cp
from gui.plots import sensitivity as sp


def test_best_so_far_skips_none():
    assert ap.best_so_far([None, 1.0, 0.5, None, 2.0]) == [None, 1.0, 1.0, 1.0, 2.0]


def test_reward_curve_has_best_line_and_val_axis():
    fig = ap.reward_curve_figure([0.1, 0.3, 0.2], val_accs=[50.0, 60.0, 55.0])
    assert [t.name for t in fig.data] == ["reward", "best so far", "val top-1 %"]
    assert list(fig.data[1].y) == [0.1, 0.3, 0.3]
    assert list(fig.data[0].x) == [1, 2, 3]


def test_action_bars():
    fig = ap.action_bars_figure({"a": 0.5, "b": 1.0})
    assert list(fig.data[0].x) == ["a", "b"] and list(fig.data[0].y) == [0.5, 1.0]
    assert tuple(fig.layout.yaxis.range) == (0, 1)


def test_pca_projects_onto_main_axes():
    rng = np.random.default_rng(0)
    x = np.zeros((20, 5))
    x[:, 0] = rng.normal(size=20) * 10  # main direction
    x[:, 3] = rng.normal(size=20)
    xy = ap.pca_2d(x)
    assert xy.shape == (20, 2)
    assert np.allclose(np.abs(xy[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), atol=1e-2)
    assert ap.pca_2d([[1.0, 2.0]]).shape == (1, 2)
    assert ap.pca_2d(np.zeros((0, 3))).shape == (0, 2)
    assert ap.pca_2d([[1.0], [2.0], [4.0]]).shape == (3, 2)  # rank 1 pads a zero column


def test_embedding_pca_colours_by_stage():
    fig = ap.embedding_pca_figure(
        [[0, 1], [1, 0], [2, 2], [3, 1]], names=["a", "b", "c", "d"], stages=[0, 0, 1, 2]
    )
    assert [t.name for t in fig.data] == ["stage 0", "stage 1", "stage 2"]
    assert list(fig.data[0].text) == ["a", "b"]


def test_keep_ratio_heatmap_rows_are_groups():
    fig = ap.keep_ratio_heatmap_figure([{"a": 0.5, "b": 1.0}, {"a": 0.25}])
    hm = fig.data[0]
    assert list(hm.y) == ["a", "b"] and list(hm.x) == [1, 2]
    assert [list(r) for r in hm.z] == [[0.5, 0.25], [1.0, None]]


def test_pareto_front():
    pts = [(10, 50.0), (5, 40.0), (8, 60.0), (12, 55.0), (5, 45.0)]
    assert cp.pareto_front(pts) == [4, 2]


def test_pareto_figure_marks_baseline_and_methods():
    cands = [
        {"id": 1, "method": "uniform", "macs": 2e6, "acc": 80.0},
        {"id": 2, "method": "gnnrl", "macs": 1.5e6, "acc": 82.0},
        {"id": 3, "method": "gnnrl", "macs": None, "acc": 70.0},
    ]
    fig = cp.pareto_figure(cands, baseline={"macs": 4e6, "acc": 90.0})
    names = [t.name for t in fig.data]
    assert names == ["gnnrl", "uniform", "Pareto front", "baseline"]
    assert list(fig.data[0].x) == [1.5]  # the candidate without MACs is left out
    assert fig.data[-1].marker.symbol == "star"


def test_metric_and_kept_channel_bars():
    cands = [
        {"id": 1, "label": "#1", "latency_ms": 2.0, "keep": {"g1": 8}},
        {"id": 2, "label": "#2", "latency_ms": None},
    ]
    fig = cp.metric_bars_figure(cands, "latency_ms", title="lat", baseline=3.0)
    assert list(fig.data[0].x) == ["#1"]
    kept = cp.kept_channels_figure(cands, baseline_channels={"g1": 16, "g2": 32})
    assert [t.name for t in kept.data] == ["baseline", "#1", "#2"]
    assert list(kept.data[1].y) == [8, 32] and list(kept.data[2].y) == [16, 32]


TABLE = {
    "keep_ratios": [0.75, 0.5],
    "base_acc": 90.0,
    "groups": [
        {"name": "g1", "stage": 0, "macs_share": 0.25, "val_acc": [89.0, 80.0], "drop": [1.0, 10.0]},
        {"name": "g2", "stage": 1, "macs_share": 0.5, "val_acc": [90.0, 88.0], "drop": [0.0, 2.0]},
    ],
}


def test_sensitivity_figures():
    assert sp.mean_drop(TABLE["groups"][0]) == 5.5
    hm = sp.sensitivity_heatmap_figure(TABLE).data[0]
    assert list(hm.y) == ["g1", "g2"] and list(hm.x) == ["0.75", "0.50"]
    curves = sp.sensitivity_curves_figure(TABLE, groups=["g2"])
    assert len(curves.data) == 1 and list(curves.data[0].y) == [90.0, 90.0, 88.0]
    sc = sp.share_vs_sensitivity_figure(TABLE).data[0]
    assert list(sc.x) == [25.0, 50.0] and list(sc.y) == [5.5, 1.0]
    assert isinstance(sp.sensitivity_curves_figure(TABLE), go.Figure)
