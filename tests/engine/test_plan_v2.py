"""Tests for PruningPlan v2 (GroupPlan entries, budget object, v1 migration) and the channel-criteria registry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import engine.pruning as pruning
from engine.errors import PlanError, TopoPruneError
from engine.graph import build_topology
from engine.pruning import (
    PLAN_VERSION,
    GroupPlan,
    PruningPlan,
    apply_plan,
    channel_scores,
    get_criterion,
    list_criteria,
    plan_from_ratios,
    register_criterion,
    resolve_plan,
    select_channels,
    unregister_criterion,
)
from engine.zoo import build_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    """A quarter-width cifar_resnet20 traced under its zoo name (groups of 4, 8 and 16 channels)."""
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", width=0.25).eval()
    return model, build_topology(model, torch.zeros(1, 3, 32, 32), model_name="cifar_resnet20")


def _v1_text(**changes) -> str:
    """A plan file exactly as the v1 code wrote it (PruningPlan.to_json: this key order, indent=1)."""
    data = {
        "version": 1,
        "model": "cifar_resnet20",
        "keep": {"conv1": 2, "layer2.0.conv1": 5},
        "indices": {"conv1": [1, 3], "layer2.0.conv1": [0, 2, 4, 6, 7]},
        "criterion": "l2",
        "round_to": 1,
        "budget": 0.5,
        "method": "uniform",
        "meta": {"macs": 123, "seed": 0},
    }
    data.update(changes)
    return json.dumps(data, indent=1)


# ----------------------------------------------------------------------------------------------- v1 migration
def test_v1_file_loads_and_migrates(tiny, tmp_path):
    model, topology = tiny
    path = tmp_path / "plan.json"
    path.write_text(_v1_text())
    plan = PruningPlan.from_json(path.read_text())
    assert plan.version == PLAN_VERSION == 2
    assert plan.keep == {"conv1": 2, "layer2.0.conv1": 5}
    assert plan.indices == {"conv1": [1, 3], "layer2.0.conv1": [0, 2, 4, 6, 7]}
    assert plan.groups["conv1"] == GroupPlan(keep=2, channels=None, indices=(1, 3), bits=None)
    assert (plan.budget, plan.budget_metric, plan.criterion, plan.method) == (0.5, "macs", "l2", "uniform")
    assert plan.meta == {"macs": 123, "seed": 0}
    written = plan.to_dict()
    assert written["version"] == 2 and written["budget"] == {"metric": "macs", "fraction": 0.5}
    assert written["groups"]["layer2.0.conv1"] == {
        "keep": 5,
        "keep_ratio": None,
        "channels": None,
        "indices": [0, 2, 4, 6, 7],
        "bits": None,
    }
    assert PruningPlan.from_dict(written) == plan
    # the migrated plan prunes exactly the channels the v1 file named
    pruned = apply_plan(model, topology, plan)
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[[1, 3]])
    assert pruned.layer2[0].conv1.out_channels == 5


def test_v1_without_version_budget_or_indices_and_a_metric_in_meta():
    plan = PruningPlan.from_dict({"model": "m", "keep": {"a": 3.0}})
    assert plan.keep == {"a": 3} and plan.indices is None and plan.budget is None
    plan = PruningPlan.from_dict(json.loads(_v1_text(meta={"budget_metric": "params"}, indices=None)))
    assert (plan.budget, plan.budget_metric) == (0.5, "params")


def test_every_stored_bench_plan_still_loads():
    plans = []

    def walk(node):
        if isinstance(node, dict):
            if "keep" in node and "model" in node:
                plans.append(node)
            else:
                for value in node.values():
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in ("methods.json", "gnnrl.json"):
        walk(json.loads((ROOT / "bench" / "results" / name).read_text()))
    assert len(plans) >= 10
    for data in plans:
        plan = PruningPlan.from_dict(data)
        assert dict(plan.keep) == {k: int(v) for k, v in data["keep"].items()}
        assert plan.to_dict()["budget"] == (
            None if data["budget"] is None else {"metric": "macs", "fraction": data["budget"]}
        )


def test_plans_from_the_run_store_load(tmp_path):
    from engine.store import RunStore

    v1 = json.loads(_v1_text())
    v2 = PruningPlan(
        model="m", keep={"a": 2}, channels={"a": 4}, bits={"a": [8, 0]}, budget=0.25, budget_metric="size"
    )
    with RunStore(tmp_path / "runs.sqlite") as store:
        run_id = store.create_run(method="uniform", model="m", dataset="d")
        store.update_run(run_id, best_plan=v1)
        c1 = store.add_candidate(method="uniform", model="m", dataset="d", plan=v1)
        c2 = store.add_candidate(method="uniform", model="m", dataset="d", plan=v2)
        store.add_episode(run_id, reward=1.0, plan=v2)
        assert PruningPlan.from_dict(store.get_run(run_id).best_plan).indices == v1["indices"]
        assert PruningPlan.from_dict(store.get_candidate(c1).plan).keep == v1["keep"]
        assert PruningPlan.from_dict(store.get_candidate(c2).plan) == v2
        assert PruningPlan.from_dict(store.episodes(run_id)[0].plan) == v2
        assert store.get_candidate(c2).plan["keep"] == {"a": 2}  # the derived map dict readers use


# ----------------------------------------------------------------------------------------------- v2
def test_v2_round_trip_with_sizes_indices_bits_and_budget(tiny):
    _, topology = tiny
    plan = PruningPlan(
        model="cifar_resnet20",
        groups={
            "conv1": GroupPlan(keep=2, channels=4, indices=[0, 3], bits=[8, 4]),
            "layer3.0.conv1": {"keep": 8, "channels": 16},
        },
        criterion="l1",
        round_to=2,
        budget=0.5,
        budget_metric="params",
        method="manual",
        meta={"seed": 3},
    )
    data = json.loads(plan.to_json())
    assert data["groups"]["conv1"] == {
        "keep": 2,
        "keep_ratio": 0.5,
        "channels": 4,
        "indices": [0, 3],
        "bits": [8, 4],
    }
    assert data["keep"] == {"conv1": 2, "layer3.0.conv1": 8}
    assert data["budget"] == {"metric": "params", "fraction": 0.5}
    again = PruningPlan.from_dict(data)
    assert again == plan and again.bits == {"conv1": [8, 4]} and again.groups["conv1"].keep_ratio == 0.5
    again.validate(topology)
    resolved = resolve_plan(build_model("cifar_resnet20", width=0.25), topology, again)
    assert (
        resolved.bits == {"conv1": [8, 4]} and resolved.budget_metric == "params" and resolved.round_to == 2
    )
    assert len(resolved.indices["layer3.0.conv1"]) == 8 and resolved.indices["conv1"] == [0, 3]


def test_v2_keep_ratio_entries_and_the_derived_keep_map():
    base = {"version": 2, "model": "m", "budget": None}
    plan = PruningPlan.from_dict({**base, "groups": {"a": {"keep_ratio": 0.5, "channels": 16}}})
    assert plan.keep == {"a": 8} and plan.groups["a"].keep_ratio == 0.5
    with pytest.raises(PlanError, match="group 'a': keep_ratio 0.5 needs the group's 'channels'"):
        PruningPlan.from_dict({**base, "groups": {"a": {"keep_ratio": 0.5}}})
    with pytest.raises(PlanError, match="keep 3 and keep_ratio 0.5 of 16 channels disagree"):
        PruningPlan.from_dict({**base, "groups": {"a": {"keep": 3, "keep_ratio": 0.5, "channels": 16}}})
    for ratio in (0, 1.5, -0.5, "half", True):
        with pytest.raises(PlanError, match="is not a ratio in \\(0, 1\\]"):
            PruningPlan.from_dict({**base, "groups": {"a": {"keep_ratio": ratio, "channels": 16}}})
    with pytest.raises(PlanError, match="top-level 'keep' map disagrees with its 'groups'"):
        PruningPlan.from_dict({**base, "groups": {"a": {"keep": 3}}, "keep": {"a": 4}})
    with pytest.raises(PlanError, match="needs a 'groups' object"):
        PruningPlan.from_dict({**base, "keep": {"a": 4}})
    with pytest.raises(PlanError, match="'budget' must be null or"):
        PruningPlan.from_dict({**base, "groups": {}, "budget": {"metric": "macs"}})
    with pytest.raises(PlanError, match="budget 1.5 is not a fraction in \\(0, 1\\]"):
        PruningPlan.from_dict({**base, "groups": {}, "budget": {"metric": "macs", "fraction": 1.5}})


def test_bits_validation():
    assert GroupPlan(keep=3, bits=[0, 8, 32]).bits == (0, 8, 32)
    with pytest.raises(PlanError, match="one bit-width per kept channel \\(3\\), got 2"):
        GroupPlan(keep=3, bits=[8, 8])
    for bad in (33, -1):
        with pytest.raises(PlanError, match=f"bit-width {bad} is outside 0..32"):
            GroupPlan(keep=2, bits=[8, bad])
    for bad in (4.5, "8", True):
        with pytest.raises(PlanError, match="bits must be whole numbers"):
            GroupPlan(keep=2, bits=[8, bad])
    with pytest.raises(PlanError, match="group 'a': bits must give one bit-width per kept channel"):
        PruningPlan(model="m", keep={"a": 2}, bits={"a": [8]})
    with pytest.raises(PlanError, match="group 'a': bit-width 40"):
        PruningPlan.from_dict({"version": 2, "model": "m", "groups": {"a": {"keep": 1, "bits": [40]}}})
    with pytest.raises(PlanError, match="indices must be 2 distinct channels in \\[0, 4\\)"):
        GroupPlan(keep=2, channels=4, indices=[1, 4])


@pytest.mark.parametrize("version", [0, -1, 3, "x", 1.5, None])
def test_unknown_versions_are_refused_naming_the_understood_ones(version):
    data = {**json.loads(_v1_text()), "version": version}
    with pytest.raises(PlanError, match="versions 1, 2") as info:
        PruningPlan.from_dict(data)
    assert repr(version) in str(info.value) or str(version) in str(info.value)
    if version == 3:
        assert "newer than" in str(info.value)


@pytest.mark.parametrize("value", [1.5, 0, -2, "a", None, True])
def test_bad_keep_values_are_refused_not_truncated(value):
    with pytest.raises(PlanError, match="group 'a': keep count"):
        PruningPlan(model="m", keep={"a": value})
    with pytest.raises(PlanError, match="group 'a': keep count"):
        PruningPlan.from_dict(json.loads(_v1_text(keep={"a": value}, indices=None)))
    with pytest.raises(PlanError, match="group 'a': (keep count|entry has neither 'keep')"):
        PruningPlan.from_dict({"version": 2, "model": "m", "groups": {"a": {"keep": value}}})
    plan = PruningPlan(model="m", keep={"a": 2})
    with pytest.raises(PlanError, match="group 'a': keep count"):
        plan.keep = {"a": value}
    assert plan.keep == {"a": 2}


def test_whole_counts_and_numpy_scalars_are_accepted():
    import numpy as np

    plan = PruningPlan(model="m", keep={"a": 3.0, "b": np.int64(2), "c": torch.tensor(4)})
    assert plan.keep == {"a": 3, "b": 2, "c": 4} and all(type(v) is int for v in plan.keep.values())


def test_plan_for_another_model_is_refused_with_both_names(tiny):
    model, topology = tiny
    plan = PruningPlan(model="cifar_resnet56", keep={"conv1": 2})
    with pytest.raises(PlanError, match="made for model 'cifar_resnet56', not 'cifar_resnet20'"):
        plan.check_model(topology)
    with pytest.raises(PlanError, match="'cifar_resnet56', not 'cifar_resnet20'"):
        apply_plan(model, topology, plan)  # validate() calls check_model
    # a topology traced without a zoo name (class name) is checked by its groups only
    traced = build_topology(model, torch.zeros(1, 3, 32, 32))
    assert traced.model_name == "CifarResNet"
    plan.validate(traced)
    # a recorded group size that is not the model's is refused too
    wrong = PruningPlan(model="cifar_resnet20", keep={"conv1": 2}, channels={"conv1": 16})
    with pytest.raises(PlanError, match="group 'conv1' has 16 channels but cifar_resnet20 has 4"):
        wrong.validate(topology)


# ----------------------------------------------------------------------------------------------- v1 API kept
def test_v1_python_api_and_mutations_keep_working(tiny):
    _, topology = tiny
    plan = PruningPlan(
        model="cifar_resnet20",
        keep={"conv1": 2, "layer1.0.conv1": 3},
        indices={"conv1": [0, 1]},
        criterion="l2",
        round_to=1,
        budget=0.5,
        method="x",
    )
    assert plan.indices == {"conv1": [0, 1]} and plan.keep_ratios(topology)["conv1"] == 0.5
    with pytest.raises(TypeError, match="derived from plan.groups"):
        plan.keep["conv1"] = 3
    with pytest.raises(TypeError, match="derived from plan.groups"):
        plan.indices.update({"conv1": [2, 3]})
    plan.keep = {"conv1": 2, "layer1.0.conv1": 1}  # unchanged count keeps its indices
    assert plan.indices == {"conv1": [0, 1]} and plan.keep["layer1.0.conv1"] == 1
    plan.keep = {"conv1": 3}  # a changed count drops indices that no longer fit
    assert plan.indices is None and plan.keep == {"conv1": 3}
    plan.indices = {"conv1": [0, 1, 3]}
    assert plan.groups["conv1"].indices == (0, 1, 3)
    plan.method, plan.meta, plan.criterion = "uniform", {"a": 1}, "bn_scale"
    plan.budget = SimpleNamespace(metric="latency", fraction=0.4)  # a Budget(metric, fraction)
    assert (plan.budget, plan.budget_metric) == (0.4, "latency")
    plan.budget = 0.3
    assert plan.to_dict()["budget"] == {"metric": "latency", "fraction": 0.3}
    with pytest.raises(PlanError, match="round_to must be a whole number >= 1"):
        plan.round_to = 0
    assert json.loads(json.dumps(plan.keep)) == {"conv1": 3}
    ratios = plan_from_ratios(topology, {"conv1": 0.5})
    assert ratios.groups["conv1"] == GroupPlan(keep=2, channels=4)


# ----------------------------------------------------------------------------------------------- criteria
def test_unknown_criterion_is_refused_everywhere_it_can_enter(tiny):
    model, topology = tiny
    pattern = "unknown channel criterion 'magic'; choose one of l1, l2, bn_scale, taylor, fisher, random"
    with pytest.raises(PlanError, match=pattern):
        PruningPlan(model="m", keep={}, criterion="magic")
    plan = PruningPlan(model="m", keep={})
    with pytest.raises(PlanError, match=pattern):
        plan.criterion = "magic"
    assert plan.criterion == "l1"
    with pytest.raises(PlanError, match=pattern):
        PruningPlan.from_dict(json.loads(_v1_text(criterion="magic")))
    with pytest.raises(PlanError, match=pattern):
        PruningPlan.from_dict({"version": 2, "model": "m", "groups": {}, "criterion": "magic"})
    with pytest.raises(PlanError, match=pattern):
        channel_scores(model, topology, "conv1", criterion="magic")
    with pytest.raises(PlanError, match=pattern):
        select_channels(model, topology, "conv1", 2, criterion="magic")
    with pytest.raises(PlanError, match=pattern):
        select_channels(model, topology, "conv1", 2, criterion="magic", importance=[1, 2, 3, 4])
    with pytest.raises(PlanError, match=pattern):
        get_criterion("magic")

    from engine.methods import MethodContext
    from engine.methods.plans import plan_with_indices

    ctx = MethodContext(model=model, topology=topology, data=None, budget=0.5)
    with pytest.raises(PlanError, match=pattern):  # methods used to fall back to "l1" here
        plan_with_indices(ctx, {"conv1": 2}, None, method="x", criterion="magic")
    assert plan_with_indices(ctx, {"conv1": 2}, None, method="x", criterion="random").criterion == "random"


def test_cli_prune_with_a_bad_plan_file_prints_one_line(tmp_path, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    cases = {
        "magic.json": (_v1_text(criterion="magic"), "unknown channel criterion 'magic'"),
        "v3.json": (_v1_text(version=3), "plan version 3 is newer"),
        "half.json": (_v1_text(keep={"conv1": 1.5}, indices=None), "keep count 1.5 is not a whole number"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        code = main(["prune", "cifar_resnet20", "--plan", name, "--val-size", "8", "--json"])
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and out == "" and len(lines) == 1, err
        assert (
            lines[0].startswith("topoprune: error: plan file ") and name in lines[0] and message in lines[0]
        )


def test_registry_round_trip(tiny):
    model, topology = tiny
    assert list_criteria()[:6] == ("l1", "l2", "bn_scale", "taylor", "fisher", "random")
    assert "Taylor" in get_criterion("taylor").description

    def smallest_l1(m, topo, group):  # keep the weakest filters: the opposite of "l1"
        return -channel_scores(m, topo, group, criterion="l1")

    entry = register_criterion("smallest_l1", smallest_l1, "negated L1 norm (for tests)")
    try:
        assert get_criterion("smallest_l1") is entry and "smallest_l1" in list_criteria()
        assert "smallest_l1" in pruning.CRITERIA
        with pytest.raises(PlanError, match="already registered"):
            register_criterion("smallest_l1", smallest_l1, "again")
        strong = select_channels(model, topology, "layer3.0.conv1", 4, criterion="l1")
        weak = select_channels(model, topology, "layer3.0.conv1", 12, criterion="smallest_l1")
        assert set(strong).isdisjoint(weak) and len(set(strong) | set(weak)) == 16
        plan = PruningPlan.from_json(
            PruningPlan(
                model="cifar_resnet20", keep={"layer3.0.conv1": 12}, criterion="smallest_l1"
            ).to_json()
        )
        assert resolve_plan(model, topology, plan).indices["layer3.0.conv1"] == weak
    finally:
        unregister_criterion("smallest_l1")
    with pytest.raises(PlanError, match="unknown channel criterion 'smallest_l1'"):
        PruningPlan(model="m", keep={}, criterion="smallest_l1")
    with pytest.raises(PlanError, match="must be a non-empty string without spaces"):
        register_criterion("two words", smallest_l1, "x")
    with pytest.raises(PlanError, match="needs a callable"):
        register_criterion("nope", None, "x")  # type: ignore[arg-type]


def test_criteria_that_cannot_be_computed_say_why(tiny):
    model, topology = tiny
    with pytest.raises(PlanError, match="criterion 'fisher' needs per-channel scores"):
        channel_scores(model, topology, "conv1", criterion="fisher")
    with pytest.raises(PlanError, match="criterion 'taylor' needs gradients"):
        channel_scores(model, topology, "conv1", criterion="taylor")
    assert isinstance(PlanError("x"), TopoPruneError) and isinstance(PlanError("x"), ValueError)
    assert torch.equal(
        channel_scores(model, topology, "conv1", criterion="random"),
        channel_scores(model, topology, "conv1", criterion="random"),
    )
