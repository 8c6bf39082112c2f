"""Tests of the shared scoring protocol (engine.evaluate)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from engine.evaluate import (
    CandidateReport,
    Scorer,
    ScoringConfig,
    accuracy_top1,
    recalibrate_bn,
    report_candidate,
)

TINY = ScoringConfig(val_size=16, bn_batches=2, bn_batch_size=8, batch_size=16)


@pytest.fixture(scope="module")
def data():
    from engine.data import load_data

    return load_data("shapes10", train_size=200, test_size=40)


def _accessed(data):
    seen: list[str] = []
    data.on_access = seen.append
    return seen


def test_scoring_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="val_size"):
        ScoringConfig(val_size=0)
    with pytest.raises(ValueError, match="bn_batches"):
        ScoringConfig(bn_batches=0)
    assert json.dumps(ScoringConfig().to_dict())


def test_recalibrate_bn_sets_cumulative_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5))
    x = torch.randn(12, 3, 8, 8)
    recalibrate_bn(model, x, batch_size=4)
    with torch.no_grad():
        feats = model[0](x)  # (12, 4, 6, 6)
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.3  # restored
    assert not model.training and not model[2].training


def test_accuracy_top1_counts_correct_predictions():
    model = nn.Sequential(nn.Flatten(), nn.Identity())
    x = torch.tensor([[[[0.0]], [[1.0]]], [[[1.0]], [[0.0]]], [[[1.0]], [[0.0]]]])  # (3, 2, 1, 1)
    y = torch.tensor([1, 0, 1])
    assert accuracy_top1(model, x, y) == pytest.approx(200.0 / 3)


def test_full_plan_scores_like_the_unpruned_model_and_leaves_it_untouched(resnet20, data):
    from engine.pruning import plan_from_ratios

    model, topology = resnet20
    before = copy.deepcopy(model.state_dict())
    seen = _accessed(data)
    scorer = Scorer(model, topology, data, TINY)
    full = plan_from_ratios(topology, {g.name: 1.0 for g in topology.groups if g.prunable})
    assert scorer.score(full) == scorer.score_model(model)
    assert scorer.n_scored == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert "test" not in seen and "val" in seen
    data.on_access = None


def test_scorer_caches_val_tensors(resnet20, data):
    model, topology = resnet20
    scorer = Scorer(model, topology, data, TINY)
    x1, _ = scorer.val_tensors
    x2, _ = scorer.val_tensors
    assert x1 is x2 and x1.shape[0] == 16
    assert scorer.calibration_inputs.shape[0] == 16


def test_report_candidate_measures_the_physical_model(resnet20, data):
    from engine.pruning import plan_for_budget

    model, topology = resnet20
    plan = plan_for_budget(topology, 0.5)
    report = report_candidate(model, topology, plan, data, scoring=TINY, latency=False)
    assert isinstance(report, CandidateReport)
    assert report.macs_after < report.macs_before
    assert report.params_after < report.params_before
    assert report["macs_ratio"] == pytest.approx(0.5, rel=0.02)
    assert 0.0 <= report.test_acc <= 100.0 and report.test_acc == report.test_acc_before_finetune
    assert json.dumps(report.to_dict())
    out = report.pruned_model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_bn_recalibration_helps_a_uniformly_pruned_shipped_resnet20():
    from engine.checkpoints import load_shipped, shipped_models
    from engine.data import load_data
    from engine.graph import build_topology
    from engine.pruning import plan_for_budget

    if "cifar_resnet20" not in shipped_models():
        pytest.skip("the shipped cifar_resnet20 is not in assets/manifest.json yet")
    loaded = load_shipped("cifar_resnet20")
    model = loaded.model.eval()
    dataset = loaded.meta.get("dataset", "shapes10")
    if dataset != "shapes10":
        pytest.skip(f"the shipped cifar_resnet20 was trained on {dataset}, which tests cannot load")
    data = load_data("shapes10", train_size=1500, test_size=50)  # fresh images of the same distribution
    topology = build_topology(model, torch.zeros(1, 3, 32, 32))
    plan = plan_for_budget(topology, 0.5)
    config = ScoringConfig(val_size=150, bn_batches=2, bn_batch_size=64)
    with_bn = Scorer(model, topology, data, config).score(plan)
    without = Scorer(model, topology, data, ScoringConfig(val_size=150, recalibrate_bn=False)).score(plan)
    assert with_bn > without


def test_physical_scoring_matches_masked_scoring(resnet20, data):
    from dataclasses import replace

    from engine.pruning import plan_for_budget

    model, topology = resnet20
    plan = plan_for_budget(topology, 0.5)
    masked = Scorer(model, topology, data, TINY).score(plan)
    physical = Scorer(model, topology, data, replace(TINY, physical=True)).score(plan)
    assert physical == pytest.approx(masked, abs=100.0 / 16 + 1e-9)  # at most one image may flip on rounding


def test_report_candidate_fine_tunes_with_distillation_and_reads_test(resnet20, data):
    from engine.pruning import plan_for_budget

    model, topology = resnet20
    before = copy.deepcopy(model.state_dict())
    seen = _accessed(data)
    progress = []
    try:
        report = report_candidate(
            model,
            topology,
            plan_for_budget(topology, 0.5),
            data,
            finetune_epochs=1,
            finetune_max_batches=1,
            distill=True,
            scoring=TINY,
            latency=False,
            test_before_finetune=False,
            callback=progress.append,
        )
    finally:
        data.on_access = None
    assert report.finetune_epochs == 1 and report.distill
    assert report.test_acc_before_finetune is None and 0.0 <= report.test_acc <= 100.0
    assert progress, "fine-tuning reports progress through the callback"
    assert "test" in seen  # the report is where the test split is read
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
