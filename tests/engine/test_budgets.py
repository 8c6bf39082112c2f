"""Budgets as objects: analytic values equal counted costs, plans land on every metric, latency tables, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.errors import BudgetError
from engine.pruning.budget import METRICS, Budget, plan_for_budget

ANALYTIC = ("macs", "params", "memory", "size")


def _random_keep(topology, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    return {g.name: int(rng.integers(1, g.channels + 1)) for g in topology.prunable_groups}


@pytest.fixture(scope="module")
def mobilenet_v2():
    from engine.graph import build_topology
    from engine.zoo import build_model

    model = build_model("cifar_mobilenet_v2").eval()
    return model, build_topology(model, torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("which", ["resnet20", "mobilenet_v2"])
def test_analytic_metrics_equal_the_counted_pruned_model(which, request):
    from engine.cost import count_costs
    from engine.pruning import PruningPlan, apply_plan

    model, topology = request.getfixturevalue(which)
    plan = PruningPlan(model=topology.model_name, keep=_random_keep(topology, 3))
    counted = count_costs(apply_plan(model, topology, plan), torch.zeros(1, 3, 32, 32))
    assert counted.macs < topology.macs  # the random plan really prunes
    assert Budget("macs").value(topology, plan) == counted.macs
    assert Budget("params").value(topology, plan) == counted.params
    assert Budget("memory").value(topology, plan) == counted.memory_bytes
    assert Budget("size").value(topology, plan) == 4 * counted.params
    assert Budget("params").baseline(topology) == sum(p.numel() for p in model.parameters())
    assert Budget("params").ratio(topology, plan) == counted.params / topology.params


@pytest.mark.parametrize("metric", ANALYTIC)
def test_plan_for_budget_lands_on_each_metric_within_one_percent(resnet20, metric):
    _, topology = resnet20
    rng = np.random.default_rng(1)
    shape = {g.name: float(rng.uniform(0.3, 1.0)) for g in topology.prunable_groups}
    for fraction in (0.7, 0.4):
        budget = Budget(metric, fraction)
        plan = plan_for_budget(topology, budget, keep_ratios=shape)
        ratio = budget.ratio(topology, plan)
        assert fraction * 0.99 <= ratio <= fraction + 1e-12
        assert plan.budget == fraction and plan.meta["budget_metric"] == metric
        assert plan.meta["budget_ratio"] == pytest.approx(ratio)
        assert plan.meta["macs_ratio"] == pytest.approx(Budget("macs").ratio(topology, plan))
    # the metrics really differ: a params budget is not a MACs budget
    if metric == "params":
        assert abs(Budget("macs").ratio(topology, plan) - 0.4) > 0.02


def test_a_bare_float_is_still_a_macs_budget(resnet20):
    _, topology = resnet20
    old = plan_for_budget(topology, 0.5)
    new = plan_for_budget(topology, Budget("macs", 0.5))
    assert old.keep == new.keep and old.budget == 0.5 and old.meta["budget_metric"] == "macs"


def test_size_counts_weight_bits_per_group(resnet20):
    _, topology = resnet20
    size = Budget("size")
    group = topology.prunable_groups[2].name
    full = size.baseline(topology)
    assert size.value(topology, None, bits={group: 32}) == full
    half = size.value(topology, None, bits={group: 16})
    assert half < full
    # per-channel widths: each kept channel's filter at its own width (mean 16 = the same bytes)
    channels = topology.group(group).channels
    assert size.value(topology, None, bits={group: [8, 24] * (channels // 2)}) == half
    eight = size.value(topology, None, bits={group: 8})
    assert full - eight == pytest.approx(1.5 * (full - half))  # bytes saved are linear in the bits removed
    with pytest.raises(ValueError, match="must be positive"):
        size.value(topology, None, bits={group: 0})
    with pytest.raises(ValueError, match="does not have"):
        size.value(topology, None, bits={"nope": 8})


def test_budget_validation_and_round_trip():
    assert Budget().to_dict() == {"metric": "macs", "fraction": 0.5}
    for metric in METRICS:
        assert Budget.from_dict(Budget(metric, 0.3).to_dict()) == Budget(metric, 0.3)
    with pytest.raises(BudgetError, match="unknown budget metric 'flops'; use one of macs, params, memory"):
        Budget("flops", 0.5)
    for bad in (0.0, -0.2, 1.5):
        with pytest.raises(BudgetError, match=r"outside \(0, 1\]"):
            Budget("params", bad)
    with pytest.raises(BudgetError, match="'fraction'"):
        Budget.from_dict({"metric": "macs"})
    with pytest.raises(BudgetError, match="a Budget or a MACs fraction"):
        Budget.coerce("half")


# ----------------------------------------------------------------------------------------------- latency
def test_attributed_macs_sum_to_the_plans_reduction(mobilenet_v2):
    from engine.latency_table import attributed_macs

    _, topology = mobilenet_v2
    vector = topology.keep_vector(_random_keep(topology, 5))
    split = attributed_macs(topology, vector)
    assert np.all(split >= 0)
    assert split.sum() == pytest.approx(topology.table.full.macs - topology.table.macs(vector), rel=1e-12)


def test_latency_table_is_measured_once_then_read_from_the_cache():
    from engine.graph import build_topology
    from engine.latency_table import ensure_latency_table
    from engine.zoo import build_model

    model = build_model("cifar_resnet20", width=0.25).eval()  # a quarter of the width: fast to time
    fresh = build_topology(model, torch.zeros(1, 3, 32, 32))
    table = ensure_latency_table(model, fresh, threads=1, min_run_time_s=0.003, keep_ratios=(0.5,), repeats=1)
    assert not table.from_cache and table.baseline_ms > 0
    assert len(table.groups) == len(fresh.prunable_groups) and len(table.fitted_rate_per_mac) == len(
        table.groups
    )
    assert Budget("latency").baseline(fresh) == pytest.approx(table.baseline_ms)
    again = build_topology(model, torch.zeros(1, 3, 32, 32))
    cached = ensure_latency_table(model, again, threads=1, min_run_time_s=0.003, keep_ratios=(0.5,))
    assert cached.from_cache and cached.to_dict() == table.to_dict()
    # once bound, the same request is answered by the bound table itself
    assert ensure_latency_table(model, again, threads=1, min_run_time_s=0.003, keep_ratios=(0.5,)) is cached
    other = build_topology(model, torch.zeros(1, 3, 40, 40))
    with pytest.raises(BudgetError, match="another architecture"):
        table.bind(other)


def _synthetic_table(topology, rates):
    from engine.latency_table import LatencyTable, architecture_hash

    names = [g.name for g in topology.prunable_groups]
    return LatencyTable(
        model_name=topology.model_name,
        arch_hash=architecture_hash(topology),
        input_shape=(3, 32, 32),
        batch=1,
        device="cpu",
        threads=1,
        min_run_time_s=1.0,
        baseline_ms=10.0,
        keep_ratios=[0.5],
        groups=names,
        measured_ms=[[0.0]] * len(names),
        rate_per_mac=[[r] for r in rates],
        fitted_rate_per_mac=list(rates),
    )


def test_latency_budget_lands_on_the_predictor(resnet20):
    from engine.graph import build_topology

    model, _ = resnet20
    topology = build_topology(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(BudgetError, match="needs a latency table"):
        plan_for_budget(topology, Budget("latency", 0.6))
    n = len(topology.prunable_groups)
    # early (high-resolution) groups cost more per MAC, as on a CPU: the plan must prune them harder
    rates = np.linspace(3.0, 0.5, n) / topology.macs
    table = _synthetic_table(topology, rates).bind(topology)
    single = topology.prunable_groups[0]
    keep = {single.name: single.channels // 2}
    removed = topology.table.full.macs - topology.table.macs(topology.keep_vector(keep))
    assert table.predict_ms(keep) == pytest.approx(10.0 * (1 - rates[0] * removed))
    budget = Budget("latency", 0.6)
    plan = plan_for_budget(topology, budget)
    assert 0.6 * 0.99 <= budget.ratio(topology, plan) <= 0.6 + 1e-12
    assert plan.meta["budget_metric"] == "latency"
    assert Budget("macs").ratio(topology, plan) > 0.6  # latency falls faster than MACs under these rates


def test_paired_timer_uses_thread_cpu_time_at_one_thread_and_leaves_threads_alone(resnet20):
    from engine.latency_timer import clock_for, measure_paired

    model, _ = resnet20
    threads = torch.get_num_threads()
    timing = measure_paired(model, model, (3, 32, 32), min_run_time_s=0.0, min_pairs=4, max_pairs=4)
    assert timing.pairs == 4 and timing.threads == threads and timing.clock == clock_for(threads)
    assert clock_for(1) == "thread_cpu" and clock_for(2) == "wall"
    assert timing.a_ms > 0 and timing.b_ms > 0 and timing.ratio > 0 and timing.ratio_se >= 0
    assert torch.get_num_threads() == threads  # measured at the caller's setting, never changed


def test_a_table_is_timed_at_the_callers_thread_count(resnet20):
    from engine.latency_table import measure_latency_table

    model, topology = resnet20
    other = torch.get_num_threads() + 1
    with pytest.raises(ValueError, match=rf"not threads={other}; call torch.set_num_threads\({other}\)"):
        measure_latency_table(model, topology, threads=other)


def _proportional_savings(topology, grid=(0.25, 0.5, 0.75)):
    """Savings of each group alone when latency is exactly proportional to MACs, and the MACs removed."""
    full = topology.keep_vector({})
    removed = []
    for g in topology.prunable_groups:
        row = []
        for r in grid:
            vector = full.copy()
            vector[g.index] = max(1, int(round(r * g.channels)))
            row.append(float(topology.table.full.macs - topology.table.macs(vector)))
        removed.append(row)
    removed = np.array(removed)
    return removed / topology.table.full.macs, removed


def test_fitted_rates_are_regularised_so_a_noisy_zero_does_not_prune_everything(resnet20):
    from engine.latency_table import RATE_CEILING, RATE_FLOOR, fit_rates

    _, topology = resnet20
    saved, removed = _proportional_savings(topology)
    noisy = saved.copy()
    noisy[[1, 4, 7]] = 0.0  # three groups whose savings drowned in timing noise
    noisy[9] = -0.02  # and one that came out slower
    se = np.full_like(saved, 0.03)
    fit = fit_rates(noisy, removed, se, total_macs=topology.table.full.macs)
    assert fit.raw[1] == 0.0 and fit.raw[9] < 0  # the raw least squares would call these channels free
    assert np.all(fit.rates > 0)
    assert np.all(fit.rates >= RATE_FLOOR * fit.pooled * (1 - 1e-12))
    assert np.all(fit.rates <= RATE_CEILING * fit.pooled * (1 + 1e-12))
    table = _synthetic_table(topology, fit.rates).bind(topology)
    plan = plan_for_budget(topology, Budget("latency", 0.6))
    assert Budget("latency").ratio(topology, plan) == pytest.approx(0.6, rel=0.01)
    # latency is proportional to MACs here, so a sane landing keeps about 0.6 of the MACs, never almost none
    assert Budget("macs").ratio(topology, plan) > 0.45
    assert table.fitted_rate_per_mac == list(fit.rates)
    # clean measurements are barely moved: the fit returns the true (pooled) rate
    clean = fit_rates(saved, removed, se * 0.1, total_macs=topology.table.full.macs)
    assert clean.rates == pytest.approx(np.full(len(clean.rates), 1 / topology.table.full.macs), rel=1e-6)
    # no saving anywhere: latency proportional to MACs is the fallback
    none = fit_rates(np.zeros_like(saved), removed, se, total_macs=topology.table.full.macs)
    assert none.pooled == pytest.approx(1 / topology.table.full.macs)
    with pytest.raises(ValueError, match="fitted rates must be positive"):
        _synthetic_table(topology, [0.0] * len(fit.rates))


def test_a_latency_landing_is_corrected_by_measurement(resnet20, monkeypatch):
    from engine.graph import build_topology
    from engine.latency_timer import PairedTiming

    model, _ = resnet20
    topology = build_topology(model, torch.zeros(1, 3, 32, 32))
    n = len(topology.prunable_groups)
    table = _synthetic_table(topology, np.linspace(2.0, 0.5, n) / topology.macs).bind(topology)
    assert not table.can_measure  # bound without a model: the landing trusts the predictor
    assert "latency_measured_ratio" not in plan_for_budget(topology, Budget("latency", 0.6)).meta
    table.bind(topology, model)
    assert table.can_measure
    calls = []

    def measure_ratio(
        plan, **_
    ):  # a machine whose latency falls slower than predicted: 0.3 + 0.6 x predicted
        calls.append(plan)
        ratio = 0.3 + 0.6 * table.predict_ms(plan) / table.baseline_ms
        return PairedTiming(
            ratio=ratio, ratio_se=0.01, a_ms=10.0, b_ms=10.0 * ratio, pairs=9, threads=1, clock="thread_cpu"
        )

    monkeypatch.setattr(table, "measure_ratio", measure_ratio)
    budget = Budget("latency", 0.6)
    plan = plan_for_budget(topology, budget)
    measured = plan.meta["latency_measured_ratio"]
    assert abs(measured / 0.6 - 1) <= 0.05 and plan.meta["on_budget"]
    assert 2 <= len(calls) <= 3 and len(plan.meta["latency_landing"]) == len(calls)
    assert plan.meta["latency_landing"][0]["measured_ratio"] == pytest.approx(0.3 + 0.6 * 0.6, rel=0.02)
    assert (
        plan.meta["budget_ratio"] == measured
        and plan.budget == 0.6
        and plan.meta["budget_metric"] == "latency"
    )
    # the predictor was asked for less than the budget, and the analytic metrics are untouched
    assert plan.meta["latency_predictor_fraction"] < 0.6
    assert plan.meta["latency_predicted_ratio"] == pytest.approx(budget.ratio(topology, plan))
    assert plan.meta["macs_ratio"] == pytest.approx(Budget("macs").ratio(topology, plan))
    assert budget.on_budget(topology, plan)  # judged on the measured ratio, not the prediction
    assert not budget.on_budget(topology, plan.keep)  # a bare keep map has no measurement: the prediction
    assert "latency_measured_ratio" not in plan_for_budget(topology, budget, measure=False).meta


def test_a_measured_table_lands_a_real_plan(monkeypatch, tmp_path):
    from engine.graph import build_topology
    from engine.latency_table import ensure_latency_table
    from engine.zoo import build_model

    monkeypatch.setenv("TOPOPRUNE_HOME", str(tmp_path))
    model = build_model("cifar_resnet20", width=0.25).eval()
    topology = build_topology(model, torch.zeros(1, 3, 32, 32))
    table = ensure_latency_table(model, topology, min_run_time_s=0.003, keep_ratios=(0.5,))
    assert (
        table.can_measure
        and table.clock in ("thread_cpu", "wall")
        and table.threads == torch.get_num_threads()
    )
    assert all(r > 0 for r in table.fitted_rate_per_mac) and len(table.saving_se) == len(table.groups)
    # a quarter-width model is overhead-bound: its latency floor is measured (0.6-0.75 here), so aim between it
    # and 1 rather than at a fixed fraction that a noisy table may put below the floor
    from engine.pruning import plan_from_ratios

    smallest = plan_from_ratios(topology, {g.name: 0.05 for g in topology.prunable_groups})
    target = round((1 + Budget("latency", 1.0).ratio(topology, smallest)) / 2, 3)
    plan = plan_for_budget(topology, Budget("latency", target))
    tries = plan.meta["latency_landing"]
    assert 1 <= len(tries) <= 3 and plan.meta["latency_measured_ratio"] in [
        t["measured_ratio"] for t in tries
    ]
    assert plan.meta["latency_measured_ratio"] == min(
        (t["measured_ratio"] for t in tries), key=lambda r: abs(r / target - 1)
    )


# ----------------------------------------------------------------------------------------------- methods
def _ctx(resnet20, shapes10, metric):
    from engine.evaluate import ScoringConfig
    from engine.methods import MethodContext

    model, topology = resnet20
    return MethodContext(
        model=model,
        topology=topology,
        data=shapes10,
        budget=0.5,
        budget_metric=metric,
        scoring=ScoringConfig(val_size=8, recalibrate_bn=False),
    )


@pytest.mark.parametrize(
    ("method", "metric"), [("uniform", "params"), ("magnitude", "memory"), ("uniform", "size")]
)
def test_one_shot_methods_land_on_other_metrics(resnet20, shapes10, method, metric):
    from engine.methods import run_method

    ctx = _ctx(resnet20, shapes10, metric)
    result = run_method(method, ctx)
    assert ctx.budget_spec == Budget(metric, 0.5)
    assert abs(Budget(metric).ratio(ctx.topology, result.plan) / 0.5 - 1) <= 0.01
    assert result.plan.meta["budget_metric"] == metric
    assert result.macs_ratio == pytest.approx(Budget("macs").ratio(ctx.topology, result.plan))


def test_a_method_refuses_a_metric_it_cannot_honour(resnet20, shapes10):
    from engine.methods import MethodError, get_method, run_method

    assert get_method("uniform").budget_metrics == METRICS
    assert get_method("fisher").budget_metrics == ("macs",)
    with pytest.raises(
        MethodError, match="method 'fisher' cannot land on a 'params' budget; it supports macs"
    ):
        run_method("fisher", _ctx(resnet20, shapes10, "params"))
    with pytest.raises(BudgetError, match="unknown budget metric"):
        run_method("uniform", _ctx(resnet20, shapes10, "flops"))


# ----------------------------------------------------------------------------------------------- CLI
def _image_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB").save(
                    folder / f"{i}.png"
                )
    return root


def test_cli_prune_with_a_params_budget(tmp_path, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    data = ["--dataset", "imagefolder", "--data-dir", str(_image_folder(tmp_path / "images"))]
    args = [
        "prune",
        "cifar_resnet20",
        "--width",
        "0.5",
        *data,
        "--method",
        "uniform",
        "--budget",
        "0.5",
        "--val-size",
        "4",
        "--no-latency",
    ]
    assert main([*args, "--budget-metric", "params", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_metric"] == "params" and out["budget"] == 0.5
    assert abs(out["budget_ratio"] / 0.5 - 1) <= 0.01
    assert out["budget_ratio"] == pytest.approx(out["params_after"] / out["params_before"])
    assert out["macs_ratio"] == pytest.approx(out["macs_after"] / out["macs_before"])
    assert out["plan"]["meta"]["budget_metric"] == "params"

    assert main([*args, "--budget-metric", "flops"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "topoprune: error: unknown budget metric 'flops'; use one of macs, params, memory, latency, size"
    ]
    args[args.index("uniform")] = "fisher"
    assert main([*args, "--budget-metric", "size"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method 'fisher' cannot land on a 'size' budget; it supports macs" in err[0]
