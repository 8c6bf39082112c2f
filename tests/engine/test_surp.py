"""SuRP: the vectorised refinement, the unstructured `surp` plan (masks applied everywhere a plan is), the channel
variant on budget, rate-distortion points, and bad sparsity targets."""

from __future__ import annotations

import pytest
import torch

from engine.evaluate import ScoringConfig
from engine.methods import MethodContext, run_method
from engine.pruning import PruningPlan, apply_plan, mask_model
from engine.pruning.sparse import nnz_macs, prunable_weights, weight_density
from engine.surp_core import SurpError, check_sparsity, jaccard, successive_refinement, topk_support

FAST_SCORING = ScoringConfig(val_size=32, bn_batches=1, bn_batch_size=32)


def _ctx(resnet20, data, budget=0.2, metric="params"):
    model, topo = resnet20
    return MethodContext(
        model=model, topology=topo, data=data, budget=budget, budget_metric=metric, scoring=FAST_SCORING
    )


def test_refinement_lands_on_the_target_density_and_only_shrinks():
    torch.manual_seed(0)
    u = torch.distributions.Laplace(0.0, 1.0).sample((2000,)).abs()
    ref = successive_refinement(u, target_density=0.1, alpha=10.0, seed=1)
    assert int((ref.recon > 0).sum()) == 200
    kept = ref.recon > 0
    assert torch.all(ref.recon[kept] <= u[kept].double() + 1e-12)  # a refinement never passes the magnitude
    assert torch.all(ref.order[kept] >= 0) and torch.all(ref.order[~kept] == -1)
    assert ref.refinements >= 200 and ref.index_bits > 0 and ref.sign_bits == 200
    # every index admitted before the boundary round is among the 200 largest
    early = kept & (ref.order < ref.order.max())
    assert bool((early & ~topk_support(u, 200)).sum() == 0)
    assert jaccard(kept, topk_support(u, 200)) > 0.5


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, "x"])
def test_sparsity_outside_the_open_interval_is_one_clear_error(bad):
    with pytest.raises(SurpError, match=r"must be .*\(0, 1\)"):
        check_sparsity(bad)


def test_surp_method_refuses_sparsity_one(resnet20, small_shapes10):
    with pytest.raises(SurpError, match=r"in \(0, 1\)"):
        run_method("surp", _ctx(resnet20, small_shapes10), sparsity=1.0)


def test_surp_plan_carries_masks_that_mask_and_apply_alike(resnet20, small_shapes10):
    model, topo = resnet20
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_method("surp", _ctx(resnet20, small_shapes10, budget=0.2))
    summary = result.meta["surp"]
    assert summary["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert summary["nnz_macs_note"] == "needs sparse kernels" and summary["nnz_macs_ratio"] < 0.5
    assert result.macs_ratio == 1.0  # dense MACs do not shrink
    plan = PruningPlan.from_dict(result.plan.to_dict())  # masks survive the JSON form
    masked, physical = mask_model(model, topo, plan), apply_plan(model, topo, plan)
    density = weight_density(physical)
    total = sum(w.numel() for w in prunable_weights(physical).values())
    kept = sum(density[k] * w.numel() for k, w in prunable_weights(physical).items())
    assert kept / total == pytest.approx(0.2, abs=1e-4)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(masked(x), physical(x), atol=1e-5)
    assert not torch.allclose(physical(x), model(x), atol=1e-3)
    assert nnz_macs(physical, torch.zeros(1, 3, 32, 32)) == summary["nnz_macs"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # baseline untouched


def test_surp_values_shrink_and_the_ablation_keeps_the_original_weights(resnet20, small_shapes10):
    model, topo = resnet20
    surp = apply_plan(model, topo, run_method("surp", _ctx(resnet20, small_shapes10), sparsity=0.9).plan)
    orig = apply_plan(
        model, topo, run_method("surp", _ctx(resnet20, small_shapes10), sparsity=0.9, values="original").plan
    )
    for name, w in prunable_weights(model).items():
        s, o = prunable_weights(surp)[name], prunable_weights(orig)[name]
        assert torch.equal(s != 0, o != 0)  # same mask (same seed)
        assert torch.equal(o[o != 0], w[o != 0])  # the ablation: original values
        assert torch.all(s[s != 0].abs() <= w[s != 0].abs() + 1e-6)  # SuRP's values are shrunk magnitudes


def test_iterative_surp_retrains_under_the_mask(resnet20, small_shapes10):
    model, topo = resnet20
    result = run_method(
        "surp", _ctx(resnet20, small_shapes10), sparsity=0.8, iterative=True, schedule="0.5", retrain_steps=2
    )
    assert [r["sparsity"] for r in result.meta["surp"]["rounds"]] == [0.5, 0.8]
    pruned = apply_plan(model, topo, result.plan)
    assert result.meta["surp"]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    changed = [
        not torch.equal(p, prunable_weights(model)[k] * (p != 0)) for k, p in prunable_weights(pruned).items()
    ]
    assert any(changed)  # retraining moved the kept weights


@pytest.mark.parametrize("metric,budget", [("macs", 0.5), ("params", 0.6)])
def test_surp_channel_lands_on_the_budget_with_a_channel_plan(resnet20, small_shapes10, metric, budget):
    model, topo = resnet20
    result = run_method("surp-channel", _ctx(resnet20, small_shapes10, budget=budget, metric=metric))
    plan = result.plan
    assert plan.meta.get("sparse") is None and plan.indices
    assert plan.meta["budget_ratio"] == pytest.approx(budget, rel=0.01)
    assert result.meta["surp_channel"]["mask_bits"] > 0
    pruned = apply_plan(model, topo, plan)
    assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_rate_distortion_rows_and_the_mask_overlap(resnet20, small_shapes10):
    from engine.surp_rd import rate_distortion

    model, topo = resnet20
    points, overlaps = rate_distortion(model, topo, small_shapes10, sparsities=(0.9,), scoring=FAST_SCORING)
    assert [p.method for p in points] == ["surp", "surp-mask", "magnitude"]
    assert all(p.sparsity == pytest.approx(0.9, abs=1e-4) for p in points)
    assert points[0].bits_per_weight < points[2].bits_per_weight  # the coded rate beats float values
    assert all(p.logit_mse > 0 for p in points)
    (o,) = overlaps
    assert 0.0 < o.jaccard <= 1.0 and o.outside_last_round == 1.0 and 0.0 < o.shrink < 1.0
    with pytest.raises(SurpError):
        rate_distortion(model, topo, small_shapes10, sparsities=(0.0,))
