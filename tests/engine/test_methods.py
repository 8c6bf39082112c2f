"""Tests of the method registry and of every built-in method landing on budget (engine.methods)."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.evaluate import ScoringConfig
from engine.methods import (
    MethodContext,
    MethodError,
    MethodEvent,
    get_method,
    list_methods,
    run_method,
)
from engine.methods.registry import MethodSpec, OptionSpec, register_method

TINY = ScoringConfig(val_size=4, bn_batches=1, bn_batch_size=4, batch_size=4)
BUILTINS = ("uniform", "magnitude", "sensitivity", "fisher", "random", "amc")
FAST = {
    "uniform": {},
    "magnitude": {},
    "sensitivity": {"grid_step": 0.5, "use_cache": False},
    "fisher": {"train_size": 16, "batch_size": 8, "interval": 1, "steps": 3},
    "random": {"episodes": 2},
    "amc": {"episodes": 2, "warmup": 1, "hidden": 16, "batch_size": 4},
}
MODELS = ("cifar_resnet20", "cifar_resnet56", "cifar_mobilenet_v2")


@pytest.fixture(scope="module")
def data():
    from engine.data import load_data

    return load_data("shapes10", train_size=120, test_size=20)


_MODELS: dict[str, tuple] = {}


def _model(name: str):
    if name not in _MODELS:
        from engine.graph import build_topology
        from engine.zoo import build_model

        torch.manual_seed(0)
        model = build_model(name).eval()
        _MODELS[name] = (model, build_topology(model, torch.zeros(1, 3, 32, 32)))
    return _MODELS[name]


def _ctx(name: str, data, budget: float = 0.5, **kwargs) -> MethodContext:
    model, topology = _model(name)
    return MethodContext(model=model, topology=topology, data=data, budget=budget, scoring=TINY, **kwargs)


def test_registry_lists_every_builtin_with_typed_options():
    names = [m.name for m in list_methods()]
    for name in BUILTINS:
        assert name in names
        spec = get_method(name)
        assert spec.kind in ("oneshot", "search") and spec.description
        for key, opt in spec.options.items():
            assert key == opt.name and opt.help
            assert opt.coerce(opt.default) == opt.default
    assert get_method("amc").kind == "search" and get_method("random").kind == "search"
    assert get_method("uniform").kind == "oneshot"


def test_unknown_method_and_bad_options_name_the_accepted_ones(data):
    ctx = _ctx("cifar_resnet20", data)
    with pytest.raises(MethodError, match="available methods: .*uniform"):
        run_method("nope", ctx)
    with pytest.raises(MethodError, match="accepted options: .*episodes"):
        run_method("random", ctx, n_samples=3)
    with pytest.raises(MethodError, match="expects a int"):
        run_method("random", ctx, episodes="many")
    with pytest.raises(MethodError, match="must be >= 1"):
        run_method("random", ctx, episodes=0)
    with pytest.raises(MethodError, match="accepted values: greedy, knapsack"):
        run_method("sensitivity", ctx, allocation="dp")


def test_options_coerce_cli_strings():
    spec = get_method("amc")
    opts = spec.validate({"episodes": "3", "lbound": "0.3"})
    assert opts["episodes"] == 3 and opts["lbound"] == 0.3
    assert get_method("sensitivity").validate({"use_cache": "false"})["use_cache"] is False
    with pytest.raises(MethodError, match="expects a bool"):
        get_method("sensitivity").validate({"use_cache": "maybe"})


def test_register_method_refuses_duplicates_and_accepts_new_ones():
    spec = get_method("uniform")
    with pytest.raises(ValueError, match="already registered"):
        register_method(spec)
    extra = MethodSpec("test-extra", "d", "oneshot", {"k": OptionSpec("k", int, 1, "k")}, spec.fn)
    register_method(extra)
    assert get_method("test-extra") is extra
    register_method(extra, replace=True)


def test_bad_budget_is_a_budget_error(data):
    from engine.errors import BudgetError

    with pytest.raises(BudgetError, match=r"\(0, 1\]"):
        run_method("uniform", _ctx("cifar_resnet20", data, budget=1.5))


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", BUILTINS)
def test_every_method_lands_within_one_percent_of_the_budget(model_name, method, data):
    from engine.cost import plan_macs

    model, topology = _model(model_name)
    before = copy.deepcopy(model.state_dict())
    events: list[MethodEvent] = []
    seen: list[str] = []
    data.on_access = seen.append
    try:
        result = run_method(method, _ctx(model_name, data, callback=events.append), **FAST[method])
    finally:
        data.on_access = None
    full = {g.name: g.channels for g in topology.groups}
    ratio = plan_macs(topology, result.plan) / plan_macs(topology, full)
    assert abs(ratio / 0.5 - 1.0) <= 0.01, (method, model_name, ratio)
    assert result.macs_ratio == pytest.approx(ratio)
    assert result.plan.method == method
    assert 0.0 <= result.val_acc <= 100.0 and result.n_scored >= 1
    assert result.candidates and any(e.candidate is not None for e in events)
    assert "test" not in seen  # search reads train and val only
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{method} modified the baseline ({key})"


def test_random_search_returns_its_best_candidate(data):
    result = run_method("random", _ctx("cifar_resnet20", data), episodes=3)
    assert len(result.candidates) == 3
    assert result.val_acc == max(c.val_acc for c in result.candidates)
    assert result.to_dict()["candidates"][0]["index"] == 0


def test_sensitivity_knapsack_allocation_lands_on_budget(data):
    result = run_method(
        "sensitivity", _ctx("cifar_resnet20", data), grid_step=0.25, allocation="knapsack", use_cache=False
    )
    assert abs(result.macs_ratio / 0.5 - 1.0) <= 0.01


def test_magnitude_keeps_the_largest_norm_channels(data):
    from engine.methods.magnitude import group_channel_norms

    model, topology = _model("cifar_resnet20")
    result = run_method("magnitude", _ctx("cifar_resnet20", data, budget=0.6))
    plan = result.plan
    assert plan.indices, "magnitude records the kept channel indices"
    groups = {g.name: g for g in topology.groups}
    for name, kept in plan.indices.items():
        assert len(kept) == plan.keep[name]
        norms = group_channel_norms(model, topology, name)
        dropped = sorted(set(range(groups[name].channels)) - set(kept))
        if dropped:
            assert norms[dropped].max() <= norms[kept].min() + 1e-6


def test_should_stop_ends_a_search_early_with_its_best_so_far(data):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    result = run_method("random", _ctx("cifar_resnet20", data, should_stop=stop), episodes=10)
    assert len(result.candidates) == 1


@pytest.mark.parametrize("method", ("magnitude", "fisher", "uniform"))
def test_round_to_eight_gives_multiples_of_eight_on_budget(method, data):
    _, topology = _model("cifar_resnet20")
    result = run_method(method, _ctx("cifar_resnet20", data, round_to=8), **FAST[method])
    sizes = {g.name: g.channels for g in topology.groups}
    for name, kept in result.plan.keep.items():
        assert kept % 8 == 0 or kept == sizes[name], (name, kept)
    assert abs(result.macs_ratio / 0.5 - 1.0) <= 0.01


@pytest.mark.parametrize("allocation", ("greedy", "knapsack"))
def test_sensitivity_allocation_spares_the_sensitive_group(allocation):
    from engine.methods.sensitivity_guided import allocate_greedy, allocate_knapsack
    from engine.sensitivity import GroupSensitivity, SensitivityTable

    _, topology = _model("cifar_resnet20")
    grid = [0.75, 0.5, 0.25]
    groups = [g for g in topology.groups if g.prunable]
    sensitive = groups[0].name
    rows = [
        GroupSensitivity(
            name=g.name,
            index=g.index,
            channels=g.channels,
            stage=g.stage,
            macs_share=0.0,
            params_share=0.0,
            memory_share=0.0,
            val_acc=[0.0] * 3,
            drop=[50.0, 60.0, 70.0] if g.name == sensitive else [1.0, 2.0, 3.0],
        )
        for g in groups
    ]
    table = SensitivityTable(model_name="m", dataset="d", keep_ratios=grid, base_acc=90.0, groups=rows)
    allocate = allocate_greedy if allocation == "greedy" else allocate_knapsack
    ratios = allocate(topology, table, 0.5)
    assert ratios[sensitive] == 1.0
    assert min(ratios.values()) < 1.0


def test_registry_lists_the_rl_methods_when_engine_rl_is_installed():
    import importlib.util

    if importlib.util.find_spec("engine.rl.method") is None:
        pytest.skip("engine.rl.method is not there yet")
    names = [m.name for m in list_methods()]
    assert "gnnrl" in names and "gnnrl-nognn" in names


@pytest.mark.parametrize("budget", (0.3, 0.8))
@pytest.mark.parametrize("method", ("magnitude", "fisher", "amc"))
def test_removal_methods_land_on_other_budgets(method, budget, data):
    result = run_method(method, _ctx("cifar_resnet20", data, budget=budget), **FAST[method])
    assert abs(result.macs_ratio / budget - 1.0) <= 0.01
