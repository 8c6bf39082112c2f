"""Scoring backends behind the driver's executor seam: a process pool scores exactly as this process does, a
worker that dies loses only its plan in flight (rescored), bad settings are one clear line."""

from __future__ import annotations

import importlib.util

import pytest

from engine.evaluate import ScoringConfig
from engine.methods import MethodContext, run_method
from engine.search.executors import (
    FAULT_FILE_ENV,
    ExecutorError,
    InlineExecutor,
    ProcessExecutor,
    make_executor,
)
from engine.store import RunStore

SCORING = ScoringConfig(val_size=16, bn_batches=1, bn_batch_size=16)


def _ctx(resnet20, data, **kw):
    model, topo = resnet20
    return MethodContext(model=model, topology=topo, data=data, budget=0.5, seed=2, scoring=SCORING, **kw)


def _plans(ctx, n):
    return [c.plan for c in run_method("random", ctx, episodes=n).candidates]


def test_a_search_over_two_workers_one_of_which_dies_records_the_serial_runs_episodes(
    resnet20, small_shapes10, tmp_path, monkeypatch
):
    """One pool (worker start-up is the slow part): scores equal the in-process ones bit for bit, and the worker
    killed mid-run loses only its plan in flight, which is rescored."""
    store = RunStore()
    serial_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    run_method(
        "random", _ctx(resnet20, small_shapes10, store=store, run_id=serial_id, batch_size=2), episodes=4
    )
    fault = tmp_path / "kill-one-worker"
    fault.touch()
    monkeypatch.setenv(FAULT_FILE_ENV, str(fault))  # inherited by the workers: the first to score dies
    pooled_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    ctx = _ctx(resnet20, small_shapes10, store=store, run_id=pooled_id, batch_size=2)
    ctx.executor = ProcessExecutor(ctx, 2)
    try:
        run_method("random", ctx, episodes=4)
        assert not fault.exists() and ctx.executor.rescored >= 1
        plans = [c.plan for c in run_method("random", _ctx(resnet20, small_shapes10), episodes=2).candidates]
        assert ctx.executor.score(plans) == InlineExecutor(_ctx(resnet20, small_shapes10)).score(plans)
    finally:
        ctx.executor.close()
    rows = [
        [(e.index, e.val_acc, e.plan["groups"]) for e in store.episodes(r)] for r in (serial_id, pooled_id)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_bad_executor_settings_are_clear(resnet20, small_shapes10):
    ctx = _ctx(resnet20, small_shapes10)
    with pytest.raises(ExecutorError, match="--workers must be >= 1"):
        make_executor(ctx, workers=0)
    with pytest.raises(ExecutorError, match="unknown executor"):
        make_executor(ctx, backend="mpi", workers=2)
    ctx.score_fn = lambda plan: 1.0
    with pytest.raises(ExecutorError, match="score_fn scores in this process only"):
        make_executor(ctx, backend="process", workers=2)


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="Ray is installed here")
def test_without_ray_workers_name_the_extra(resnet20, small_shapes10):
    with pytest.raises(ExecutorError, match=r"pip install -e '\.\[ray\]'"):
        make_executor(_ctx(resnet20, small_shapes10), workers=2)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is an optional extra: pip install -e '.[ray]'"
)
def test_ray_actors_score_as_inline_and_replace_a_killed_actor(resnet20, small_shapes10):
    import ray

    from engine.search.executors import RayExecutor

    ctx = _ctx(resnet20, small_shapes10)
    plans = _plans(ctx, 4)
    inline = InlineExecutor(ctx).score(plans)
    ex = RayExecutor(ctx, 2)
    try:
        assert ex.score(plans) == inline
        ray.kill(ex._actors[0])  # a worker dies between batches
        assert ex.score(plans) == inline and ex.rescored >= 1
    finally:
        ex.close()
