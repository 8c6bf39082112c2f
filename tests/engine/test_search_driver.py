"""The one search driver: every search method records on one reward scale, steps, pauses, and resumes after a
crash to exactly the candidates of an uninterrupted run with the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import TopoPruneError
from engine.methods import MethodContext, get_method, list_methods, run_method
from engine.search import STATE_FILE, SearchDriver, state_dir_for
from engine.store import RunStore

SEARCH_METHODS = ["random", "amc", "gnnrl", "gnnrl-nognn"]
FAST = {
    "random": {"episodes": 5},
    "amc": {"episodes": 5, "warmup": 2, "hidden": 16, "batch_size": 4},
    "gnnrl": {"episodes": 5, "update_every": 2},
    "gnnrl-nognn": {"episodes": 5, "update_every": 2},
}


class Crash(Exception):
    """Stands in for SIGKILL: raised from inside scoring, after some episodes were settled."""


def _score_fn(topology, crash_at=None, calls=None):
    calls = calls if calls is not None else []

    def score(plan):
        calls.append(plan)
        if crash_at is not None and len(calls) > crash_at:
            raise Crash()
        ratios = np.array(list(plan.keep_ratios(topology).values()))
        return float(90.0 - 40.0 * np.std(ratios) - 10.0 * abs(ratios[:3].mean() - 0.8))

    return score


def _ctx(resnet20, store, run_id, score_fn, *, resume=False, data=None):
    model, topo = resnet20
    return MethodContext(
        model=model,
        topology=topo,
        data=data,
        budget=0.5,
        seed=3,
        store=store,
        run_id=run_id,
        score_fn=score_fn,
        resume=resume,
    )


def _episodes(store, run_id):
    return [
        (e.index, e.val_acc, None if e.plan is None else e.plan.get("groups", e.plan.get("keep")))
        for e in store.episodes(run_id)
    ]


def test_every_search_method_runs_on_the_driver():
    names = {m.name for m in list_methods() if m.kind == "search"}
    assert set(SEARCH_METHODS) <= names
    for name in names:
        assert get_method(name).searcher is not None, f"{name} keeps its own run lifecycle"


@pytest.mark.parametrize("method", SEARCH_METHODS)
def test_crash_then_resume_equals_an_uninterrupted_run(resnet20, method):
    topo = resnet20[1]
    store = RunStore()
    full_id = store.create_run(method=method, model="cifar_resnet20", dataset="shapes10", budget=0.5)
    full = run_method(method, _ctx(resnet20, store, full_id, _score_fn(topo)), **FAST[method])

    crash_id = store.create_run(method=method, model="cifar_resnet20", dataset="shapes10", budget=0.5)
    with pytest.raises(Crash):
        run_method(method, _ctx(resnet20, store, crash_id, _score_fn(topo, crash_at=3)), **FAST[method])
    assert len(store.episodes(crash_id)) == 3  # nothing recorded is lost
    assert (state_dir_for(crash_id) / STATE_FILE).exists()
    before = [(e.index, e.created_at) for e in store.episodes(crash_id)]
    calls: list = []
    resumed = run_method(
        method, _ctx(resnet20, store, crash_id, _score_fn(topo, calls=calls), resume=True), **FAST[method]
    )
    # the saved state was used: only the episodes after the crash were scored, the recorded ones left alone
    final = 1 if method.startswith("gnnrl") else 0  # GNN-RL also scores its policy-mean plan at the end
    assert len(calls) == FAST[method]["episodes"] - 3 + final
    assert [(e.index, e.created_at) for e in store.episodes(crash_id)][:3] == before

    assert _episodes(store, crash_id) == _episodes(store, full_id)
    assert [c.val_acc for c in resumed.candidates] == [c.val_acc for c in full.candidates]
    assert resumed.plan.keep == full.plan.keep and resumed.val_acc == full.val_acc
    run = store.get_run(crash_id)
    assert run.status == "completed" and run.best_score == pytest.approx(full.val_acc)


@pytest.mark.parametrize("method", ["random", "amc"])
def test_one_reward_scale_val_top1_with_the_methods_reward_in_extra(resnet20, method):
    store = RunStore()
    run_id = store.create_run(method=method, model="cifar_resnet20", dataset="shapes10", budget=0.5)
    run_method(method, _ctx(resnet20, store, run_id, _score_fn(resnet20[1])), **FAST[method])
    for e in store.episodes(run_id):
        assert e.reward == e.val_acc  # episodes.reward is val top-1 % for every method
        assert "method_reward" in e.extra
    if method == "amc":
        assert all(-1.0 <= e.extra["method_reward"] <= 0 for e in store.episodes(run_id))


def test_pause_marks_the_run_paused_and_step_continues(resnet20):
    store = RunStore()
    run_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    ctx = _ctx(resnet20, store, run_id, _score_fn(resnet20[1]))
    driver = SearchDriver(get_method("random"), ctx, get_method("random").validate({"episodes": 4}))
    driver.step()
    driver.pause()
    assert store.get_run(run_id).status == "paused"
    assert len(store.episodes(run_id)) == 1
    store.claim_run(run_id)
    ctx.resume = True
    again = SearchDriver(get_method("random"), ctx, get_method("random").validate({"episodes": 4}))
    assert again.episode == 1 and len(again.history) == 1
    result = again.run()
    assert result.meta["episodes"] == 4 and store.get_run(run_id).status == "completed"


def test_gnnrl_substeps_settle_the_episode_through_the_driver(resnet20):
    store = RunStore()
    run_id = store.create_run(method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    ctx = _ctx(resnet20, store, run_id, _score_fn(resnet20[1]))
    spec = get_method("gnnrl")
    driver = SearchDriver(spec, ctx, spec.validate({"episodes": 2}))
    steps = []
    while driver.episode < 1:
        steps.append(driver.substep())
    assert steps[-1].proposal is not None and all(s.proposal is None for s in steps[:-1])
    assert steps[-1].info["candidate"].val_acc == store.episodes(run_id)[0].val_acc
    assert 1 <= len(steps) <= 5 and "action" in steps[0].info


def test_state_of_another_run_with_the_same_id_is_never_loaded(resnet20):
    """Ids restart at 1 in a new store: the old run's state file must not be resumed into the new run."""
    store = RunStore()
    old = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    run_method("random", _ctx(resnet20, store, old, _score_fn(resnet20[1])), episodes=3)
    store.delete_run(old)
    store.close() if hasattr(store, "close") else None
    # a fresh store file: ids start again
    store.path.unlink()
    fresh = RunStore()
    new = fresh.create_run(method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    assert new == old
    result = run_method("random", _ctx(resnet20, fresh, new, _score_fn(resnet20[1]), resume=True), episodes=3)
    assert [e.index for e in fresh.episodes(new)] == [
        0,
        1,
        2,
    ]  # started from episode 0, not from the foreign 3
    assert result.meta["episodes"] == 3


def test_stepping_a_finished_search_is_a_clear_error(resnet20):
    spec = get_method("random")
    driver = SearchDriver(
        spec, _ctx(resnet20, None, None, _score_fn(resnet20[1])), spec.validate({"episodes": 1})
    )
    driver.run()
    with pytest.raises(TopoPruneError, match="finished"):
        driver.step()


def test_real_scorer_never_reads_test(resnet20, small_shapes10):
    from engine.evaluate import ScoringConfig

    model, topo = resnet20
    accessed = []
    small_shapes10.on_access = accessed.append
    try:
        ctx = MethodContext(
            model=model,
            topology=topo,
            data=small_shapes10,
            budget=0.5,
            seed=0,
            scoring=ScoringConfig(val_size=32, bn_batches=1, bn_batch_size=32),
        )
        result = run_method("random", ctx, episodes=2)
    finally:
        small_shapes10.on_access = None
    assert "test" not in accessed and result.n_scored == 2
    assert abs(result.macs_ratio / 0.5 - 1) <= 0.01


def test_rescore_of_the_top_plans_picks_the_winner_on_a_larger_val_subset(resnet20, small_shapes10):
    from engine.evaluate import Scorer, ScoringConfig

    model, topo = resnet20
    scoring = ScoringConfig(val_size=8, bn_batches=1, bn_batch_size=16)
    store = RunStore()
    run_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    ctx = MethodContext(
        model=model,
        topology=topo,
        data=small_shapes10,
        budget=0.5,
        seed=1,
        scoring=scoring,
        store=store,
        run_id=run_id,
        rescore_top=3,
        rescore_val_size=32,
    )
    result = run_method("random", ctx, episodes=5)
    rows = result.meta["rescored"]
    assert (
        len(rows) == 3
        and [r["search_val_acc"] for r in rows]
        == sorted([c.val_acc for c in result.candidates], reverse=True)[:3]
    )
    big = Scorer(model, topo, small_shapes10, ScoringConfig(val_size=32, bn_batches=1, bn_batch_size=16))
    assert result.val_acc == max(r["rescore_val_acc"] for r in rows) == big.score(result.plan)
    assert store.get_run(run_id).best_score == result.val_acc
