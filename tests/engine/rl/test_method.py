"""Registry entries of gnnrl / gnnrl-nognn: listed, options validated, option -> SearchConfig mapping."""

import pytest

from engine.methods import MethodContext, MethodError, get_method, list_methods


def test_registered_with_options():
    names = [m.name for m in list_methods()]
    assert "gnnrl" in names and "gnnrl-nognn" in names
    spec = get_method("gnnrl")
    assert spec.kind == "search" and {"episodes", "agent", "action_wall"} <= set(spec.options)
    assert spec.searcher is not None and "resume" not in spec.options  # resume is the driver's (ctx.resume)
    with pytest.raises(MethodError, match="accepted values: ppo, ddpg"):
        spec.validate({"agent": "sac"})


def test_options_map_to_search_config(resnet20):
    from engine.rl.method import search_config_from_options

    model, topo = resnet20
    ctx = MethodContext(model=model, topology=topo, data=None, budget=0.4, seed=3, round_to=2)
    opts = get_method("gnnrl-nognn").validate({"episodes": 7, "max_steps": 3, "lr": 1e-3})
    cfg = search_config_from_options(ctx, opts, encoder="features")
    assert (cfg.episodes, cfg.seed, cfg.encoder, cfg.ppo.encoder_kind) == (7, 3, "features", "features")
    assert (cfg.env.budget, cfg.env.max_steps, cfg.env.round_to, cfg.env.group_features) == (0.4, 3, 2, True)
    assert cfg.ppo.lr == 1e-3 and cfg.env.action_wall
    with pytest.raises(ValueError, match="no trained encoder"):
        search_config_from_options(ctx, {**opts, "transfer_run": 999}, encoder="features")


def test_method_stops_and_resumes_a_stored_run(resnet20, small_shapes10):
    from engine.evaluate import ScoringConfig
    from engine.methods import run_method
    from engine.store import RunStore

    model, topo = resnet20
    store = RunStore()
    run_id = store.create_run(method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    events = []
    ctx = MethodContext(
        model=model,
        topology=topo,
        data=small_shapes10,
        budget=0.5,
        seed=0,
        store=store,
        run_id=run_id,
        scoring=ScoringConfig(val_size=16, bn_batches=1, bn_batch_size=16),
        callback=events.append,
        should_stop=lambda: len(events) >= 1,
        resume=True,
    )
    first = run_method("gnnrl", ctx, episodes=2, score_policy_plan=False)  # resume, but no state yet: fresh
    assert not first.meta["finished"] and store.get_run(run_id).status == "paused"
    store.claim_run(run_id)
    ctx.should_stop = None
    second = run_method("gnnrl", ctx, episodes=2, score_policy_plan=False)
    assert second.meta["finished"] and second.meta["episodes"] == 2
    assert [e.index for e in store.episodes(run_id)] == [0, 1]
    assert events[0].candidate.meta["embedding_groups"] == [g.name for g in topo.prunable_groups]
