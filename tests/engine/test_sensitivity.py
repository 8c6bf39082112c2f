"""Tests of per-group sensitivity analysis (engine.sensitivity)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from engine.evaluate import Scorer, ScoringConfig
from engine.sensitivity import SensitivityTable, analyze_sensitivity, sensitivity_cache_key, weights_sha256

TINY = ScoringConfig(val_size=16, bn_batches=2, bn_batch_size=8, batch_size=16)


@pytest.fixture(scope="module")
def data():
    from engine.data import load_data

    return load_data("shapes10", train_size=200, test_size=40)


def _two_groups(topology):
    return [g.name for g in topology.groups if g.prunable][:2]


def test_keep_ratio_one_changes_nothing(resnet20, data):
    from engine.pruning import plan_from_ratios

    model, topology = resnet20
    names = _two_groups(topology)
    table = analyze_sensitivity(model, topology, data, keep_ratios=(1.0, 0.5), scoring=TINY, groups=names)
    for row in table.groups:
        assert row.drop[0] == 0.0 and row.val_acc[0] == table.base_acc
    # scoring the 1.0 plan for real gives the base accuracy exactly
    scorer = Scorer(model, topology, data, TINY)
    full = {g.name: 1.0 for g in topology.groups if g.prunable}
    assert scorer.score(plan_from_ratios(topology, {**full, names[0]: 1.0})) == table.base_acc


def test_table_rows_shares_and_callback(resnet20, data):
    model, topology = resnet20
    names = _two_groups(topology)
    calls = []
    table = analyze_sensitivity(
        model,
        topology,
        data,
        keep_ratios=(0.5, 0.25),
        scoring=TINY,
        groups=names,
        callback=lambda done, total, msg: calls.append((done, total)),
    )
    assert [g.name for g in table.groups] == names
    assert calls[-1] == (5, 5)
    assert table.n_scored == 5
    for row in table.groups:
        assert len(row.drop) == 2 and 0.0 < row.macs_share < 1.0
        assert 0.0 < row.params_share < 1.0 and 0.0 <= row.memory_share < 1.0
    again = SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table
    assert table.drop_at(names[0], 1.0) == 0.0
    assert table.drop_at(names[0], 0.5) == pytest.approx(table.groups[0].drop[0])


def test_cache_is_keyed_by_weights_and_settings(resnet20, data, tmp_path):
    from engine.paths import cache_dir

    model, topology = resnet20
    first = analyze_sensitivity(model, topology, data, keep_ratios=(0.1,), scoring=TINY)
    assert not first.from_cache
    assert list((cache_dir() / "sensitivity").glob("*.json"))
    second = analyze_sensitivity(model, topology, data, keep_ratios=(0.1,), scoring=TINY)
    assert second.from_cache and second.groups == first.groups
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.bias[0] += 1.0
    assert weights_sha256(other) != weights_sha256(model)
    assert sensitivity_cache_key(other, data, (0.1,), TINY) != sensitivity_cache_key(
        model, data, (0.1,), TINY
    )
    assert sensitivity_cache_key(model, data, (0.2,), TINY) != sensitivity_cache_key(
        model, data, (0.1,), TINY
    )


def test_bad_keep_ratios_and_groups_are_rejected(resnet20, data):
    model, topology = resnet20
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        analyze_sensitivity(model, topology, data, keep_ratios=(0.0,), scoring=TINY)
    with pytest.raises(ValueError, match="unknown or unprunable groups"):
        analyze_sensitivity(model, topology, data, keep_ratios=(0.5,), scoring=TINY, groups=["nope"])


def test_sensitivity_never_reads_the_test_split(resnet20, data):
    model, topology = resnet20
    seen: list[str] = []
    data.on_access = seen.append
    try:
        analyze_sensitivity(
            model, topology, data, keep_ratios=(0.5,), scoring=TINY, groups=_two_groups(topology)
        )
    finally:
        data.on_access = None
    assert "test" not in seen
