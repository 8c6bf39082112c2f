"""Cost model: published figures, analytic == counted (FlopCounterMode) for models and random plans, latency."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cost import count_costs, measure_latency, plan_costs, plan_macs
from engine.graph import build_topology
from engine.pruning import apply_plan, plan_from_ratios
from tests.engine.test_graph_toy import Toy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared, oversubscribed 2-core machine two OpenMP threads run ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("name", "size", "macs", "params"),
    [
        ("resnet50", 224, 4.09e9, 25.56e6),
        ("mobilenet_v2", 224, 0.301e9, 3.50e6),
        ("cifar_resnet56", 32, 125e6, 0.85e6),
    ],
)
def test_published_figures_within_one_percent(name, size, macs, params):
    from engine.zoo import build_model

    model = build_model(name, num_classes=1000 if size == 224 else 10)
    x = torch.randn(1, 3, size, size)
    topology = build_topology(model, x)
    assert topology.macs == pytest.approx(macs, rel=0.01)
    assert topology.params == pytest.approx(params, rel=0.01)
    counted = count_costs(model, x)
    assert counted.macs == topology.macs and counted.params == topology.params
    assert counted.flops == 2 * counted.macs == topology.flops


def test_toy_costs_and_per_layer_rows():
    model, x = Toy(), torch.randn(1, 3, 8, 8)
    topology = build_topology(model, x)
    analytic, counted = plan_costs(topology, {}), count_costs(model, x)
    assert analytic.macs == counted.macs == 67664
    assert analytic.params == counted.params == 1213
    assert analytic.memory_bytes == counted.memory_bytes
    assert {k: vars(v) for k, v in analytic.per_layer.items()} == {
        k: vars(v) for k, v in counted.per_layer.items()
    }
    assert analytic.per_layer["dw"].macs == 9 * 64 * 8


def test_plan_macs_follows_keep_counts_exactly():
    model, x = Toy(), torch.randn(1, 3, 8, 8)
    topology = build_topology(model, x)
    keep = {"stem": 5, "b": 1, "c": 3, "head": 9}
    pruned = apply_plan(
        model, topology, plan_from_ratios(topology, {"stem": 5 / 8, "b": 0.25, "c": 0.75, "head": 9 / 16})
    )
    counted = count_costs(pruned, x)
    # stem 27*64*5, a 9*64*5*5, dw 9*64*5, b 9... : hand-computed
    expected = 27 * 64 * 5 + 9 * 64 * 25 + 9 * 64 * 5 + 64 * 5 * 1 + 64 * 5 * 3 + 64 * 4 * 9 + 9 * 5
    assert plan_macs(topology, keep) == counted.macs == expected
    assert plan_costs(topology, keep).params == counted.params


def test_keep_map_errors_name_the_problem():
    topology = build_topology(Toy(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="'nope'"):
        plan_macs(topology, {"nope": 1})
    with pytest.raises(ValueError, match=r"keep count 9 for group 'stem' is outside \[1, 8\]"):
        plan_macs(topology, {"stem": 9})


_TOY = {}


def _toy():
    if not _TOY:
        model, x = Toy(), torch.randn(1, 3, 8, 8)
        _TOY.update(model=model, x=x, topology=build_topology(model, x))
    return _TOY["model"], _TOY["x"], _TOY["topology"]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=4, max_size=4))
def test_analytic_equals_counted_for_random_plans(ratios):
    model, x, topology = _toy()
    plan = plan_from_ratios(topology, ratios)
    counted = count_costs(apply_plan(model, topology, plan), x)
    analytic = plan_costs(topology, plan)
    assert (analytic.macs, analytic.params, analytic.memory_bytes) == (
        counted.macs,
        counted.params,
        counted.memory_bytes,
    )


def test_measure_latency_reports_median_and_iqr():
    model = Toy()
    result = measure_latency(model, 8, batch=2, threads=1, min_run_time_s=0.05)
    assert result.median_ms > 0 and result.iqr_ms >= 0 and result.batch == 2 and result.threads == 1
    assert result.runs >= 1 and model.training  # the input model is not switched to eval
    with pytest.raises(ValueError, match="batch must be >= 1"):
        measure_latency(model, 8, batch=0)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_analytic_equals_counted_on_pruned_torchvision_models(name):
    from engine.zoo import build_model

    model, x = build_model(name, num_classes=1000), torch.randn(1, 3, 224, 224)
    topology = build_topology(model, x)
    generator = torch.Generator().manual_seed(1)
    ratios = (torch.rand(len(topology.prunable_groups), generator=generator) * 0.9 + 0.1).tolist()
    plan = plan_from_ratios(topology, ratios)
    counted, analytic = count_costs(apply_plan(model, topology, plan), x), plan_costs(topology, plan)
    assert (counted.macs, counted.params, counted.memory_bytes) == (
        analytic.macs,
        analytic.params,
        analytic.memory_bytes,
    )
