"""PruningEnv and StateBuilder: shapes and bounds, termination, penalty, action wall, determinism."""

import numpy as np
import pytest
import torch

from engine.errors import BudgetError
from engine.rl.env import EnvConfig, PruningEnv
from engine.rl.gnn import GROUP_FEATURES, MOTIF_FEATURES, NODE_FEATURES


def _env(resnet20, **kw):
    model, topo = resnet20
    return PruningEnv(topo, model, config=EnvConfig(**kw), score_fn=lambda plan: 70.0)


def test_observation_shapes_and_bounds(resnet20):
    env = _env(resnet20, group_features=True)
    _, topo = resnet20
    obs = env.reset()
    s = obs.state
    g = env.num_groups
    assert g == len(topo.prunable_groups) == 12
    assert s.x.shape == (topo.graph.number_of_nodes(), NODE_FEATURES)
    assert s.edge_attr.shape == (s.edge_index.size(1), NODE_FEATURES)
    assert s.motif_x.size(1) == MOTIF_FEATURES and s.group_x.shape == (g, GROUP_FEATURES)
    assert s.motif_graph.numel() == sum(1 for n in topo.graph if topo.graph.nodes[n]["op"] == "conv")
    assert sorted(set(s.group_member.tolist())) == list(range(g))
    for t in (s.x, s.edge_attr, s.motif_x, s.group_x):
        assert torch.isfinite(t).all()
    assert obs.macs_ratio == 1.0 and np.all(obs.keep_ratios == 1.0)
    r = env.step(np.full(g, 10.0))  # clipped to +1: keep stays at the max
    assert np.all(r.keep_ratios == 1.0) and not r.done
    r = env.step(np.full(g, -0.5))
    assert np.allclose(r.keep_ratios, 0.75) and 0.5 < r.macs_ratio < 1.0
    with pytest.raises(ValueError, match=r"expected \(12,\)"):
        env.step(np.zeros(3))


def test_min_keep_respected(resnet20):
    with pytest.raises(BudgetError, match="min_keep_ratio=0.3"):
        _env(resnet20, budget=0.05, min_keep_ratio=0.3)  # unreachable: rejected at construction
    env = _env(resnet20, budget=0.2, min_keep_ratio=0.3)
    env.reset()
    keep = env.apply_action(np.full(env.num_groups, -1.0))
    assert np.all(keep >= 0.3)


def test_ends_when_budget_met(resnet20):
    env = _env(resnet20, budget=0.5)
    env.reset()
    r = env.step(np.full(env.num_groups, -1.0))  # keep 0.5 everywhere: ~0.25 of the MACs
    assert r.done and r.feasible and r.step == 1
    assert r.reward == pytest.approx(-30.0) and r.val_acc == 70.0
    assert abs(r.macs_ratio / 0.5 - 1) <= 0.01  # landed back up onto the budget
    assert r.plan is not None and r.plan.budget == 0.5
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.num_groups))


def test_no_landing_scores_the_overshoot(resnet20):
    env = _env(resnet20, budget=0.5, land_on_budget=False)
    env.reset()
    r = env.step(np.full(env.num_groups, -1.0))
    assert r.done and r.feasible and r.macs_ratio < 0.35


def test_penalty_when_budget_missed(resnet20):
    env = _env(resnet20, budget=0.5, max_steps=3, penalty=-123.0)
    env.reset()
    rewards = [env.step(np.zeros(env.num_groups)) for _ in range(3)]
    assert [r.done for r in rewards] == [False, False, True]
    assert [r.reward for r in rewards] == [0.0, 0.0, -123.0]
    assert not rewards[-1].feasible and rewards[-1].plan is None


def test_action_wall_makes_the_last_step_feasible(resnet20):
    env = _env(resnet20, budget=0.5, max_steps=2, action_wall=True)
    env.reset()
    env.step(np.zeros(env.num_groups))
    r = env.step(np.zeros(env.num_groups))
    assert r.done and r.feasible and r.reward == pytest.approx(-30.0)
    assert abs(r.macs_ratio / 0.5 - 1) <= 0.01


def test_state_is_deterministic_and_reflects_pruning(resnet20):
    env = _env(resnet20)
    a = env.builder.build(np.full(env.num_groups, 0.6))
    b = env.builder.build(np.full(env.num_groups, 0.6))
    c = env.builder.build(np.full(env.num_groups, 0.9))
    for key in ("x", "edge_attr", "motif_x"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a.x, c.x)
    assert a.motif_x.size(0) < c.motif_x.size(0)  # fewer kept input channels -> smaller motifs


def test_motif_cap(resnet20):
    model, topo = resnet20
    capped = (
        PruningEnv(topo, model, config=EnvConfig(max_motif_channels=4), score_fn=lambda p: 0.0).reset().state
    )
    sizes = torch.bincount(capped.motif_batch)
    assert int(sizes.max()) == 2 * 4 + 2
    full = (
        PruningEnv(topo, model, config=EnvConfig(max_motif_channels=0), score_fn=lambda p: 0.0).reset().state
    )
    sizes = torch.bincount(full.motif_batch)
    assert int(sizes[0]) == 2 * 3 + 2  # stem conv: 3 input channels -> the paper's 2*c_in+2 nodes
    assert int(sizes.max()) == 2 * 64 + 2
