"""Search driver and registered methods: smoke run on cifar_resnet20, same seed -> same trajectory,
pause/resume replays the uninterrupted run, the ablation and DDPG variants, encoder transfer."""

import numpy as np
import pytest
import torch

from engine.rl.env import EnvConfig
from engine.rl.search import SearchConfig, SearchRun, run_search, state_dir_for


def _score(topology):
    # a cheap stand-in for val accuracy: prefers a mean keep ratio of 0.7
    def score(plan):
        return 90.0 - 50.0 * abs(float(np.mean(list(plan.keep_ratios(topology).values()))) - 0.7)

    return score


def _trajectory(result):
    return [(h.reward, h.actions, h.plan) for h in result.history]


def test_smoke_three_episode_method_run_records_store(resnet20, small_shapes10):
    from engine.evaluate import ScoringConfig
    from engine.methods import MethodContext, get_method, run_method
    from engine.store import RunStore

    model, topo = resnet20
    accessed = []
    small_shapes10.on_access = accessed.append
    try:
        store = RunStore()
        run_id = store.create_run(method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5)
        ctx = MethodContext(
            model=model,
            topology=topo,
            data=small_shapes10,
            budget=0.5,
            seed=0,
            scoring=ScoringConfig(val_size=32, bn_batches=1, bn_batch_size=32),
            store=store,
            run_id=run_id,
        )
        assert get_method("gnnrl").kind == "search"
        result = run_method("gnnrl", ctx, episodes=3)
    finally:
        small_shapes10.on_access = None
    assert "test" not in accessed
    assert abs(result.macs_ratio / 0.5 - 1) <= 0.01
    assert result.n_scored == 4 and len(result.candidates) == 3  # 3 episodes + the policy-mean plan
    assert result.meta["policy_plan"] is not None
    episodes = store.episodes(run_id)
    assert [e.index for e in episodes] == [0, 1, 2]
    assert all(e.val_acc is not None and e.plan is not None for e in episodes)
    assert len(episodes[0].extra["embeddings"]) == 12 and len(episodes[0].extra["embedding_groups"]) == 12
    run = store.get_run(run_id)
    assert run.status == "completed" and run.best_score == pytest.approx(result.val_acc)
    assert (state_dir_for(run_id) / "search_state.pt").exists()
    assert model.conv1.weight.abs().sum() > 0  # the baseline is untouched (masking works on copies)


def test_same_seed_same_trajectory(resnet20):
    model, topo = resnet20
    cfg = dict(episodes=5, score_policy_plan=False, ppo={"update_every_episodes": 2, "epochs": 2})
    a = run_search(model, topo, config=SearchConfig(seed=1, **cfg), score_fn=_score(topo))
    b = run_search(model, topo, config=SearchConfig(seed=1, **cfg), score_fn=_score(topo))
    c = run_search(model, topo, config=SearchConfig(seed=2, **cfg), score_fn=_score(topo))
    assert _trajectory(a) == _trajectory(b)
    assert _trajectory(a) != _trajectory(c)
    assert a.best_val_acc == max(h.val_acc for h in a.history)


def test_pause_mid_episode_then_resume_replays_the_run(resnet20):
    """Through the search driver: two episodes, one env step of the third in flight, pause; a resumed driver
    replays the dropped step and ends with exactly the episodes of an uninterrupted run."""
    from engine.methods import MethodContext, get_method, run_method
    from engine.search import SearchDriver
    from engine.store import RunStore

    model, topo = resnet20
    opts = {"episodes": 5, "update_every": 2}
    store = RunStore()

    def ctx(run_id, resume=False):
        return MethodContext(
            model=model,
            topology=topo,
            data=None,
            budget=0.5,
            seed=4,
            store=store,
            run_id=run_id,
            score_fn=_score(topo),
            resume=resume,
        )

    full_id = store.create_run(method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    full = run_method("gnnrl", ctx(full_id), **opts)
    run_id = store.create_run(method="gnnrl", model="cifar_resnet20", dataset="shapes10", budget=0.5)
    spec = get_method("gnnrl")
    driver = SearchDriver(spec, ctx(run_id), spec.validate(opts))
    driver.step()
    driver.step()
    sub = driver.substep()  # one env step of episode 2 in flight ...
    assert sub.episode == 2 and sub.step == 1 and len(sub.info["keep_ratios"]) == 12
    driver.pause()  # ... is dropped and replayed on resume
    assert store.get_run(run_id).status == "paused"
    store.claim_run(run_id)
    resumed = SearchDriver(spec, ctx(run_id, resume=True), spec.validate(opts)).run()
    episodes = [(e.index, e.val_acc, e.extra["actions"]) for e in store.episodes(run_id)]
    assert episodes == [(e.index, e.val_acc, e.extra["actions"]) for e in store.episodes(full_id)]
    assert resumed.val_acc == full.val_acc and store.get_run(run_id).status == "completed"
    assert (state_dir_for(run_id) / "encoder.pt").exists()


def test_should_stop_pauses_between_episodes(resnet20, tmp_path):
    model, topo = resnet20
    calls = []
    result = run_search(
        model,
        topo,
        config=SearchConfig(episodes=5),
        score_fn=_score(topo),
        callback=calls.append,
        should_stop=lambda: len(calls) >= 2,
    )
    assert result.episodes == 2 and not result.finished
    assert [r.episode for r in calls] == [0, 1]
    assert calls[1].best_val_acc == max(r.val_acc for r in calls)
    assert set(calls[0].timings_s) >= {"graph", "gnn", "land", "mask", "eval", "update", "total"}


@pytest.mark.parametrize("agent,encoder", [("ppo", "features"), ("ddpg", "gnn")])
def test_variants_run(resnet20, agent, encoder):
    model, topo = resnet20
    cfg = SearchConfig(
        episodes=3,
        agent=agent,
        encoder=encoder,
        ddpg={"warmup_episodes": 1, "batch_size": 4, "updates_per_episode": 2},
    )
    result = run_search(model, topo, config=cfg, score_fn=_score(topo))
    assert result.episodes == 3 and result.best_plan is not None
    assert result.policy_plan is not None and abs(result.macs_ratio / 0.5 - 1) <= 0.01


def test_missing_budget_without_wall_is_penalised(resnet20):
    model, topo = resnet20
    cfg = SearchConfig(
        episodes=2,
        score_policy_plan=False,
        ppo={"std_init": 0.01, "std_min": 0.01},
        env=EnvConfig(budget=0.2, max_steps=1, max_change=0.1, action_wall=False),
    )
    result = run_search(model, topo, config=cfg, score_fn=_score(topo))
    assert [h.reward for h in result.history] == [-100.0, -100.0]
    assert result.best_plan is None and result.n_scored == 0


def test_transfer_freezes_a_trained_encoder(resnet20, tmp_path):
    model, topo = resnet20
    fast = {"update_every_episodes": 1, "epochs": 2}
    trained = SearchRun(
        model, topo, config=SearchConfig(episodes=2, score_policy_plan=False, ppo=fast), score_fn=_score(topo)
    )
    trained.run()
    (tmp_path / "src").mkdir()
    torch.save(trained.agent.encoder_state_dict(), tmp_path / "src" / "encoder.pt")
    src = torch.load(tmp_path / "src" / "encoder.pt", weights_only=True)
    cfg = SearchConfig(
        episodes=2,
        seed=9,
        score_policy_plan=False,
        transfer_from=str(tmp_path / "src" / "encoder.pt"),
        ppo=fast,
    )
    run = SearchRun(model, topo, config=cfg, score_fn=_score(topo))
    run.run()
    for k, v in run.agent.encoder_state_dict().items():
        assert torch.equal(v, src[k])
