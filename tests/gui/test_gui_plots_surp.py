"""Pure figure builders of SuRP's rate-distortion curves and the GA's fitness and channels."""

from __future__ import annotations

from gui.plots import surp as sp

POINTS = [
    {"method": m, "sparsity": s, "bits_per_weight": b, "val_acc": a, "logit_mse": d, "nnz_macs_ratio": 1 - s}
    for m, rows in {
        "surp": [(0.9, 0.8, 60.0, 0.5), (0.8, 1.5, 80.0, 0.1)],
        "magnitude": [(0.8, 7.1, 78.0, 0.2), (0.9, 3.7, 55.0, 0.9)],
    }.items()
    for s, b, a, d in rows
]
LOG = [
    {"group": "conv1", "k": 2, "chosen": [0, 2], "best": [-0.3, -0.2], "mean": [-0.5, -0.4]},
    {"group": "layer1.0.conv1", "k": 1, "chosen": [1], "best": [], "mean": []},
]


def test_rate_distortion_has_both_methods_in_both_panels_sorted_by_sparsity():
    fig = sp.rate_distortion_figure(POINTS)
    magnitude = "global magnitude (normalised)"
    assert [t.name for t in fig.data] == ["SuRP", "SuRP", magnitude, magnitude]
    assert list(fig.data[0].x) == [0.8, 0.9] and list(fig.data[0].y) == [80.0, 60.0]
    assert list(fig.data[3].x) == [7.1, 3.7]  # rate axis in sparsity order
    assert fig.layout.xaxis2.type == "log"


def test_ga_fitness_draws_best_and_mean_per_group_with_generations():
    fig = sp.ga_fitness_figure(LOG)
    assert len(fig.data) == 2  # the group without generations (no consumer to fit) draws nothing
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [-0.3, -0.2]


def test_ga_channels_marks_kept_channels_and_pads_narrow_groups():
    fig = sp.ga_channels_figure(LOG, channels={"conv1": 4, "layer1.0.conv1": 2})
    z = [list(r) for r in fig.data[0].z]
    assert z == [[1, 0, 1, 0], [0, 1, None, None]]
