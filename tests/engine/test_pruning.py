"""Plans and pruning: masked == physical, analytic == counted, budgets, rounding, criteria, JSON round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from engine.cost import count_costs, plan_macs
from engine.errors import BudgetError
from engine.graph import build_topology
from engine.pruning import (
    PruningPlan,
    apply_plan,
    mask_model,
    plan_for_budget,
    plan_from_ratios,
    resolve_plan,
    select_channels,
)
from engine.zoo import CIFAR_MODELS
from tests.engine.test_graph_toy import Toy, randomize_bn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared, oversubscribed 2-core machine two OpenMP threads run ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ZOO = list(CIFAR_MODELS)
_CACHE: dict = {}


def _zoo(name):
    if name not in _CACHE:
        from engine.zoo import build_model

        torch.manual_seed(0)
        model = randomize_bn(
            build_model(name)
        ).eval()  # float32: float64 depthwise convs are very slow on CPU
        x = torch.randn(2, 3, 32, 32)
        _CACHE[name] = (model, x, build_topology(model, x, model_name=name))
    return _CACHE[name]


def _check_plan(model, x, topology, plan):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, masked = apply_plan(model, topology, plan).eval(), mask_model(model, topology, plan).eval()
    with torch.no_grad():
        reference, out_pruned, out_masked = model(x), pruned(x), masked(x)
    assert out_pruned.shape == reference.shape
    torch.testing.assert_close(out_masked, out_pruned, atol=1e-5, rtol=1e-4)
    assert count_costs(pruned, x).macs == plan_macs(topology, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return pruned, masked


@pytest.mark.parametrize("name", ZOO)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_plans_on_zoo_models(name, data):
    model, x, topology = _zoo(name)
    ratios = data.draw(
        st.lists(
            st.floats(0.05, 1.0),
            min_size=len(topology.prunable_groups),
            max_size=len(topology.prunable_groups),
        )
    )
    _check_plan(model, x, topology, plan_from_ratios(topology, ratios))


@pytest.mark.parametrize("name", ZOO)
def test_every_single_group_prunes_cleanly(name):
    model, x, topology = _zoo(name)
    for group in topology.prunable_groups[:: max(1, len(topology.prunable_groups) // 3)]:
        plan = plan_from_ratios(topology, {group.name: 0.5})
        pruned = apply_plan(model, topology, plan)
        with torch.no_grad():
            assert pruned(x).shape == (2, 10)
        assert count_costs(pruned, x).macs == plan_macs(topology, plan)


def test_masked_equals_physical_in_train_mode_and_no_bn_leak():
    model = randomize_bn(Toy()).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    topology = build_topology(model, x)
    plan = plan_from_ratios(topology, [0.5, 0.5, 0.75, 0.25])
    pruned, masked = apply_plan(model, topology, plan).train(), mask_model(model, topology, plan).train()
    torch.testing.assert_close(masked(x), pruned(x), atol=1e-10, rtol=0)
    # removed channels are exactly zero after their BN, in train mode (no bias leak)
    dropped = sorted(set(range(8)) - set(PruningPlan.from_dict(masked.topoprune_plan).indices["stem"]))
    features = masked.bn(masked.stem(x))
    assert torch.count_nonzero(features[:, dropped]) == 0


def test_plan_for_budget_lands_on_budget():
    model, x, topology = _zoo("cifar_resnet56")
    for budget in (0.25, 0.5, 0.75):
        plan = plan_for_budget(topology, budget)
        ratio = plan_macs(topology, plan) / topology.macs
        assert budget * 0.99 <= ratio <= budget and plan.budget == budget
    scores = {g.name: float(i + 1) for i, g in enumerate(topology.prunable_groups)}
    plan = plan_for_budget(topology, 0.5, scores=scores, min_keep_ratio=0.1)
    assert 0.495 <= plan_macs(topology, plan) / topology.macs <= 0.5
    ratios = plan.keep_ratios(topology)
    first, last = topology.prunable_groups[0].name, topology.prunable_groups[-1].name
    assert ratios[first] <= ratios[last] and min(ratios.values()) >= 0.1


def test_plan_for_budget_round_to_8():
    _, _, topology = _zoo("cifar_mobilenet_v2")
    plan = plan_for_budget(topology, 0.5, round_to=8)
    for group in topology.prunable_groups:
        count = plan.keep.get(group.name, group.channels)
        assert count % 8 == 0 or count == group.channels
    assert 0.49 <= plan_macs(topology, plan) / topology.macs <= 0.5


def test_plan_for_budget_errors():
    _, _, topology = _zoo("cifar_resnet20")
    with pytest.raises(BudgetError, match="outside \\(0, 1\\]"):
        plan_for_budget(topology, 1.5)
    with pytest.raises(BudgetError, match="unreachable.*min_keep_ratio=0.5"):
        plan_for_budget(topology, 0.1, min_keep_ratio=0.5)
    with pytest.raises(BudgetError, match="unreachable.*max_keep_ratio=0.3"):
        plan_for_budget(topology, 0.9, max_keep_ratio=0.3)


def test_plan_from_ratios_rounding_and_errors():
    _, _, topology = _zoo("cifar_resnet20")
    plan = plan_from_ratios(topology, {"conv1": 0.5, "layer2.0.conv1": 0.3}, round_to=8)
    assert plan.keep == {"conv1": 8, "layer2.0.conv1": 8}
    assert plan_from_ratios(topology, {"conv1": 0.01}).keep == {"conv1": 1}
    with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
        plan_from_ratios(topology, {"conv1": 0.0})
    with pytest.raises(ValueError, match="got 2 keep ratios"):
        plan_from_ratios(topology, [0.5, 0.5])


def test_plan_json_round_trip_rebuilds_identical_model():
    model, x, topology = _zoo("cifar_resnet20")
    plan = resolve_plan(model, topology, plan_for_budget(topology, 0.5, method="uniform"))
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan and again.keep_ratios(topology) == plan.keep_ratios(topology)
    a, b = apply_plan(model, topology, plan), apply_plan(model, topology, again)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match="not valid JSON"):
        PruningPlan.from_json("{")
    with pytest.raises(ValueError, match="newer than"):
        PruningPlan.from_dict({**plan.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="unknown channel criterion"):
        PruningPlan(model="m", keep={}, criterion="magic")


def test_select_channels_criteria():
    model = Toy()
    topology = build_topology(model, torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        model.head.weight.copy_(torch.arange(16, dtype=torch.float32).view(16, 1, 1, 1).expand(16, 8, 1, 1))
    assert select_channels(model, topology, "head", 3, criterion="l1") == [13, 14, 15]
    assert select_channels(model, topology, "head", 2, criterion="l2") == [14, 15]
    assert select_channels(model, topology, "head", 2, importance=list(range(16, 0, -1))) == [0, 1]
    with pytest.raises(ValueError, match="needs gradients"):
        select_channels(model, topology, "head", 2, criterion="taylor")
    with pytest.raises(ValueError, match="pass importance"):
        select_channels(model, topology, "head", 2, criterion="fisher")
    model.bn.weight.data = torch.tensor([0.1, 5, 0.2, 4, 0.3, 3, 0.4, 2])
    assert select_channels(model, topology, "stem", 4, criterion="bn_scale") == [1, 3, 5, 7]
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert len(select_channels(model, topology, "stem", 4, criterion="taylor")) == 4


def test_apply_plan_with_explicit_indices_keeps_those_weights():
    model = Toy()
    topology = build_topology(model, torch.randn(1, 3, 8, 8))
    plan = PruningPlan(model="toy", keep={"head": 2, "c": 2}, indices={"head": [3, 9], "c": [0, 2]})
    pruned = apply_plan(model, topology, plan)
    assert torch.equal(pruned.head.weight, model.head.weight[[3, 9]][:, [0, 1, 2, 3, 4, 6]])
    assert torch.equal(pruned.fc.weight, model.fc.weight[:, [3, 9]])
    assert pruned.c.out_channels == 2 and pruned.head.in_channels == 6
    with pytest.raises(ValueError, match="must be 2 distinct channels"):
        apply_plan(model, topology, PruningPlan(model="toy", keep={"head": 2}, indices={"head": [1, 1]}))


def test_input_model_mode_and_hooks_untouched():
    model = Toy().train()
    topology = build_topology(model, torch.randn(1, 3, 8, 8))
    state = copy.deepcopy(model.state_dict())
    plan = plan_for_budget(topology, 0.6)
    apply_plan(model, topology, plan)
    mask_model(model, topology, plan)
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.head, nn.Conv2d) and model.head.out_channels == 16


def test_memory_aware_scores_shape_a_budget_plan():
    from engine.pruning import memory_aware_scores

    _, _, topology = _zoo("cifar_resnet20")
    scores = memory_aware_scores(topology)
    assert set(scores) == {g.name for g in topology.prunable_groups} and min(scores.values()) > 0
    plan = plan_for_budget(topology, 0.5, scores=scores, round_to=8)
    assert 0.49 <= plan_macs(topology, plan) / topology.macs <= 0.5


@settings(max_examples=8, deadline=None)
@given(
    budget=st.floats(0.2, 1.0),
    scores=st.lists(st.floats(0.1, 10.0), min_size=10, max_size=10),
    round_to=st.sampled_from([1, 4, 8]),
)
def test_plan_for_budget_random_scores_stay_on_budget(budget, scores, round_to):
    _, _, topology = _zoo("cifar_resnet20")
    per_group = [scores[i % len(scores)] for i in range(len(topology.prunable_groups))]
    plan = plan_for_budget(topology, budget, scores=per_group, min_keep_ratio=0.1, round_to=round_to)
    ratio = plan_macs(topology, plan) / topology.macs
    assert ratio <= budget + 1e-9
    if round_to == 1:
        assert ratio >= budget * 0.99
    for group in topology.prunable_groups:
        count = plan.keep.get(group.name, group.channels)
        assert count >= min(group.channels, 0.1 * group.channels) and (
            count % round_to == 0 or count == group.channels
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_group_of_every_zoo_model_prunes_alone(name):
    model, x, topology = _zoo(name)
    for group in topology.prunable_groups:
        plan = plan_from_ratios(topology, {group.name: 0.5})
        pruned = apply_plan(model, topology, plan)
        with torch.no_grad():
            assert pruned(x).shape == (2, 10)
        assert count_costs(pruned, x).macs == plan_macs(topology, plan)
