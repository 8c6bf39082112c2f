"""`ajpq`: joint pruning + mixed precision on a size budget (landing, monotone bits, modes), bad budgets, the
two-step baseline, and crash-then-resume equality on the one search driver."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import BudgetError
from engine.methods import MethodContext, run_method
from engine.pruning.budget import Budget
from engine.search import STATE_FILE, state_dir_for
from engine.store import RunStore

FAST = {"episodes": 4, "warmup": 2, "hidden": 16, "batch_size": 4}


class Crash(Exception):
    """Stands in for SIGKILL: raised from inside scoring."""


def _score_fn(topology, crash_at=None, calls=None):
    calls = calls if calls is not None else []

    def score(plan):
        calls.append(plan)
        if crash_at is not None and len(calls) > crash_at:
            raise Crash()
        bits = [np.mean(b) for b in (plan.bits or {}).values()]
        ratios = np.array(list(plan.keep_ratios(topology).values()))
        return float(50.0 + 3.0 * np.mean(bits) + 20.0 * ratios.mean() - 30.0 * np.std(ratios))

    return score


def _ctx(resnet20, *, budget=0.2, store=None, run_id=None, score_fn=None, resume=False, metric="size"):
    model, topo = resnet20
    return MethodContext(
        model=model,
        topology=topo,
        data=None,
        budget=budget,
        seed=1,
        store=store,
        run_id=run_id,
        score_fn=score_fn or _score_fn(topo),
        resume=resume,
        budget_metric=metric,
    )


@pytest.mark.parametrize("mode", ["joint", "fixed", "quant"])
def test_ajpq_lands_under_the_size_budget_with_bits_monotone_in_importance(resnet20, mode):
    from engine.methods.ajpq import group_importance
    from engine.quant_cost import plan_quant_cost

    model, topo = resnet20
    ctx = _ctx(resnet20)
    result = run_method("ajpq", ctx, mode=mode, **FAST)
    plan = result.plan
    ratio = Budget("size").ratio(topo, plan)
    assert 0.2 * 0.99 <= ratio <= 0.2
    assert plan_quant_cost(topo, plan).size_bits / 8 == pytest.approx(ratio * Budget("size").baseline(topo))
    importance = group_importance(ctx, topo.prunable_groups)
    for name, widths in plan.bits.items():
        assert all(2 <= b <= 8 for b in widths)
        if mode == "fixed":
            assert set(widths) == {8}
        if mode == "quant":
            assert plan.keep[name] == topo.group(name).channels
        if name in importance:
            imp = importance[name][list(plan.groups[name].indices)]
            order = np.argsort(imp, kind="stable")
            assert all(np.diff(np.asarray(widths)[order]) >= 0), (
                f"{name}: fewer bits for more important kernels"
            )
            dropped = set(range(topo.group(name).channels)) - set(plan.groups[name].indices)
            if dropped:  # 0 bits go to the least important channels
                assert max(importance[name][list(dropped)]) <= min(imp) + 1e-12
    if mode != "quant":
        assert result.macs_ratio < 1.0


def test_a_size_budget_below_what_2_bit_everything_reaches_is_a_clear_error(resnet20):
    with pytest.raises(
        BudgetError, match="below what 'quant' AJPQ can reach: every group unpruned at 2 bits"
    ):
        run_method("ajpq", _ctx(resnet20, budget=0.05), mode="quant", **FAST)
    with pytest.raises(BudgetError, match="below what 'joint' AJPQ can reach"):
        run_method("ajpq", _ctx(resnet20, budget=0.003), **FAST)
    with pytest.raises(Exception, match="cannot land on a 'macs' budget"):
        run_method("ajpq", _ctx(resnet20, budget=0.5, metric="macs"), **FAST)


def test_prune_then_quantize_meets_the_same_size_budget(resnet20, small_shapes10):
    from engine.evaluate import ScoringConfig

    model, topo = resnet20
    ctx = MethodContext(
        model=model,
        topology=topo,
        data=small_shapes10,
        budget=0.1,
        budget_metric="size",
        scoring=ScoringConfig(val_size=32, bn_batches=1, bn_batch_size=32),
    )
    result = run_method("prune-quantize", ctx, bits=8)
    assert 0.099 <= Budget("size").ratio(topo, result.plan) <= 0.1
    assert {b for w in result.plan.bits.values() for b in w} == {8}
    four = run_method("prune-quantize", _ctx(resnet20, budget=0.2), bits=4)  # no pruning step: only score_fn
    assert Budget("size").ratio(topo, four.plan) <= 0.2 and four.macs_ratio == 1.0  # 4-bit fits unpruned


def test_ajpq_crash_then_resume_equals_an_uninterrupted_run(resnet20):
    topo = resnet20[1]
    store = RunStore()
    full_id = store.create_run(method="ajpq", model="cifar_resnet20", dataset="shapes10", budget=0.2)
    full = run_method("ajpq", _ctx(resnet20, store=store, run_id=full_id, score_fn=_score_fn(topo)), **FAST)
    crash_id = store.create_run(method="ajpq", model="cifar_resnet20", dataset="shapes10", budget=0.2)
    with pytest.raises(Crash):
        run_method(
            "ajpq", _ctx(resnet20, store=store, run_id=crash_id, score_fn=_score_fn(topo, crash_at=3)), **FAST
        )
    assert len(store.episodes(crash_id)) == 3
    assert (state_dir_for(crash_id) / STATE_FILE).exists()
    calls: list = []
    resumed = run_method(
        "ajpq",
        _ctx(resnet20, store=store, run_id=crash_id, resume=True, score_fn=_score_fn(topo, calls=calls)),
        **FAST,
    )
    assert len(calls) == FAST["episodes"] - 3
    plans = lambda run: [(e.index, e.val_acc, e.plan["groups"]) for e in store.episodes(run)]  # noqa: E731
    assert plans(crash_id) == plans(full_id)
    assert resumed.plan.bits == full.plan.bits and resumed.val_acc == full.val_acc
    assert store.get_run(crash_id).status == "completed"
