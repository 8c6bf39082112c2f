"""`ga`: the fixed-k repair, the least-squares fitness, equal amounts on budget for every candidate, bad options,
and crash-then-resume through the search driver equal to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.methods import MethodContext, MethodError, run_method
from engine.methods.ga import repair
from engine.search import STATE_FILE, state_dir_for
from engine.store import RunStore

FAST = {
    "allocation": "uniform",
    "population": 4,
    "generations": 2,
    "patience": 2,
    "elite": 2,
    "calib_images": 8,
    "positions": 2,
}


class Crash(Exception):
    """Stands in for SIGKILL, raised from inside scoring."""


def _score_fn(crash_at=None):
    calls = []

    def score(plan):
        calls.append(plan)
        if crash_at is not None and len(calls) > crash_at:
            raise Crash()
        return float(sum(sum(v) % 97 for v in plan.indices.values()) % 50)  # depends on which channels

    return score


def _ctx(resnet20, data, store=None, run_id=None, score_fn=None, resume=False):
    model, topo = resnet20
    return MethodContext(
        model=model,
        topology=topo,
        data=data,
        budget=0.5,
        seed=2,
        store=store,
        run_id=run_id,
        score_fn=score_fn,
        resume=resume,
    )


def test_repair_keeps_exactly_k():
    rng = np.random.RandomState(0)
    for _ in range(50):
        mask = rng.randint(0, 2, size=12)
        k = int(rng.randint(1, 13))
        fixed = repair(mask, k, rng)
        assert int(fixed.sum()) == k and set(np.unique(fixed)) <= {0, 1}
        if mask.sum() >= k:
            assert np.all(fixed <= mask)  # only switched off
        else:
            assert np.all(fixed >= mask)  # only switched on


def test_fitness_is_zero_with_every_channel_and_worse_with_fewer(resnet20, small_shapes10):
    from engine.ga_fitness import consumer_stats, reconstruction_fitness

    model, topo = resnet20
    x, _ = small_shapes10.tensors(
        "train", limit=16
    )  # 320 samples for 16 * 9 columns: an overdetermined refit
    stats = consumer_stats(model, model, topo, "layer1.0.conv1", x, positions_per_image=20)
    channels = topo.group("layer1.0.conv1").channels
    full = reconstruction_fitness(stats, np.ones(channels))
    half = np.zeros(channels)
    half[: channels // 2] = 1
    assert full == pytest.approx(0.0, abs=1e-3)
    assert reconstruction_fitness(stats, half) < full - 1e-3


def test_every_candidate_has_the_same_amounts_on_budget_and_the_ga_never_loses_fitness(
    resnet20, small_shapes10
):
    result = run_method("ga", _ctx(resnet20, small_shapes10, score_fn=_score_fn()), **FAST)
    keeps = {tuple(sorted(c.plan.keep.items())) for c in result.candidates}
    assert len(keeps) == 1  # the GA changes which channels, never how many
    assert result.plan.meta["budget_ratio"] == pytest.approx(0.5, rel=0.01)
    log = result.meta["ga_groups"]
    assert log and all(g["chosen"] is not None and len(g["chosen"]) == g["k"] for g in log)
    for g in log:
        assert all(b2 >= b1 - 1e-9 for b1, b2 in zip(g["best"], g["best"][1:], strict=False))  # elitism
    chosen = {g["group"]: g["chosen"] for g in log}
    final = result.candidates[-1].plan
    assert all(final.indices[name] == chosen[name] for name in chosen)


@pytest.mark.parametrize("option", ["population", "generations"])
def test_zero_population_or_generations_is_one_clear_error(resnet20, small_shapes10, option):
    with pytest.raises(MethodError, match=rf"option '{option}' of method 'ga' got 0; it must be >="):
        run_method("ga", _ctx(resnet20, small_shapes10, score_fn=_score_fn()), **{**FAST, option: 0})


def test_crash_then_resume_equals_an_uninterrupted_run(resnet20, small_shapes10):
    store = RunStore()
    full_id = store.create_run(method="ga", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    full = run_method("ga", _ctx(resnet20, small_shapes10, store, full_id, _score_fn()), **FAST)
    crash_id = store.create_run(method="ga", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    with pytest.raises(Crash):
        run_method("ga", _ctx(resnet20, small_shapes10, store, crash_id, _score_fn(crash_at=3)), **FAST)
    assert len(store.episodes(crash_id)) == 3
    state = torch.load(state_dir_for(crash_id) / STATE_FILE, weights_only=True)
    assert state["method_state"]["population"]  # the population is part of the saved state
    resumed = run_method(
        "ga", _ctx(resnet20, small_shapes10, store, crash_id, _score_fn(), resume=True), **FAST
    )
    assert [c.val_acc for c in resumed.candidates] == [c.val_acc for c in full.candidates]
    assert [c.plan.indices for c in resumed.candidates] == [c.plan.indices for c in full.candidates]
    assert resumed.plan.indices == full.plan.indices
    assert store.get_run(crash_id).status == "completed"
