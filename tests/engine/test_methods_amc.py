"""Tests of AMC (engine.methods.amc): state features, the action wall, DDPG noise, a 3-episode search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.evaluate import ScoringConfig
from engine.methods import MethodContext, amc_state_features, run_method
from engine.methods.amc import AMC_FEATURES, action_wall
from engine.methods.candidates import baseline_macs, full_keep, keep_macs, prunable_groups
from engine.methods.ddpg import DDPGAgent, DDPGConfig, truncated_normal

TINY = ScoringConfig(val_size=8, bn_batches=1, bn_batch_size=8, batch_size=8)


def test_state_features_shape_range_and_dynamic_columns(resnet20):
    model, topology = resnet20
    n = len(prunable_groups(topology))
    fresh = amc_state_features(topology, model=model)
    assert fresh.shape == (n, len(AMC_FEATURES)) == (n, 10)
    assert float(fresh.min()) >= 0.0 and float(fresh.max()) <= 1.0
    assert torch.all(fresh[:, 7] == 0.0) and torch.all(fresh[:, 9] == 1.0)
    half = amc_state_features(topology, model=model, keep_ratios=[0.5] * n)
    assert torch.all(half[1:, 9] == 0.5)
    assert torch.all(half[1:, 7] >= half[:-1, 7]) and half[-1, 7] > 0.0
    assert torch.all(half[:, :7] == fresh[:, :7])
    # the topology's layer table alone (no model) gives the same features
    assert torch.equal(amc_state_features(topology), fresh)


def test_action_wall_keeps_the_budget_reachable(resnet20):
    _, topology = resnet20
    groups = prunable_groups(topology)
    target = 0.5 * baseline_macs(topology)
    rng = np.random.default_rng(0)
    ratios: dict[str, float] = {}
    for t, g in enumerate(groups):
        wall = action_wall(topology, groups, t, ratios, target, lbound=0.2)
        ratios[g.name] = min(float(rng.uniform(0.2, 1.0)), wall)
        keep = full_keep(topology)
        for h in groups[: t + 1]:
            keep[h.name] = max(1, int(round(ratios[h.name] * h.channels)))
        for h in groups[t + 1 :]:
            keep[h.name] = max(1, int(np.ceil(0.2 * h.channels)))
        assert keep_macs(topology, keep) <= target * 1.001


def test_truncated_normal_stays_in_bounds():
    rng = np.random.default_rng(0)
    draws = [truncated_normal(0.9, 0.5, 0.2, 1.0, rng) for _ in range(200)]
    assert min(draws) >= 0.2 and max(draws) <= 1.0 and np.std(draws) > 0.05
    assert truncated_normal(0.5, 0.0, 0.2, 1.0, rng) == 0.5


def test_ddpg_agent_updates_after_enough_transitions():
    agent = DDPGAgent(DDPGConfig(hidden=8, batch_size=4), seed=0)
    state = np.zeros(10, dtype=np.float32)
    assert agent.update() is None
    for k in range(10):
        agent.observe(state, 0.5, agent.baseline_reward(-0.1 * k), state, k % 2 == 0)
    losses = agent.update()
    assert losses is not None and all(np.isfinite(losses))
    assert 0.0 <= agent.act(state) <= 1.0


def test_amc_completes_a_three_episode_search(resnet20):
    from engine.data import load_data

    model, topology = resnet20
    data = load_data("shapes10", train_size=120, test_size=20)
    ctx = MethodContext(model=model, topology=topology, data=data, budget=0.5, scoring=TINY, seed=1)
    result = run_method("amc", ctx, episodes=3, warmup=1, hidden=16, batch_size=4)
    assert len(result.candidates) == 3
    assert [c.meta["episode"] for c in result.candidates] == [0, 1, 2]
    assert result.candidates[0].meta["warmup"] and not result.candidates[2].meta["warmup"]
    assert abs(result.macs_ratio / 0.5 - 1.0) <= 0.01
    assert result.val_acc == max(c.val_acc for c in result.candidates)
    for c in result.candidates:  # reward = -val error, recorded for the run store
        assert c.meta["reward"] == pytest.approx(-(100.0 - c.val_acc) / 100.0)
