"""Tests of sensitivity progress: ETA, per-group partial tables, a stopped analysis keeps its groups and continues."""

from __future__ import annotations

import pytest

from engine.evaluate import ScoringConfig
from engine.sensitivity import QUICK_KEEP_RATIOS, QUICK_SCORING, SensitivityTable, analyze_sensitivity

TINY = ScoringConfig(val_size=16, bn_batches=2, bn_batch_size=8, batch_size=16)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def data():
    from engine.data import load_data

    return load_data("shapes10", train_size=200, test_size=40)


def _groups(topology, n):
    return [g.name for g in topology.groups if g.prunable][:n]


def test_progress_reports_eta_and_partial_groups(resnet20, data):
    model, topology = resnet20
    names = _groups(topology, 3)
    seen = []
    table = analyze_sensitivity(
        model,
        topology,
        data,
        keep_ratios=(0.5, 0.25),
        scoring=TINY,
        groups=names,
        progress=lambda p: seen.append(
            (p.done, p.total, p.eta_s, p.group_done, [g.name for g in p.table.groups], p.table.partial)
        ),
    )
    assert [s[0] for s in seen] == list(range(1, 8)) and {s[1] for s in seen} == {7}
    assert seen[0][2] is None  # no plan timed yet
    assert all(s[2] is not None and s[2] >= 0 for s in seen[1:]) and seen[-1][2] == 0
    finished = [s[4] for s in seen if s[3]]
    assert finished == [names[:1], names[:2], names]  # one more group each time a group finishes
    assert [s[5] for s in seen if s[3]] == [True, True, False]
    assert not table.partial and [g.name for g in table.groups] == names


def test_stopped_analysis_keeps_finished_groups_and_continues(resnet20, data):
    model, topology = resnet20
    names = _groups(topology, 3)
    last = {}

    def stop_after_two_groups(p):
        last["table"] = SensitivityTable.from_dict(p.table.to_dict())
        if p.group_done and len(p.table.groups) == 2:
            raise Stop

    with pytest.raises(Stop):
        analyze_sensitivity(
            model,
            topology,
            data,
            keep_ratios=(0.5,),
            scoring=TINY,
            groups=names,
            progress=stop_after_two_groups,
        )
    partial = last["table"]
    assert partial.partial and [g.name for g in partial.groups] == names[:2]
    scored = []
    table = analyze_sensitivity(
        model,
        topology,
        data,
        keep_ratios=(0.5,),
        scoring=TINY,
        groups=names,
        resume=partial,
        callback=lambda done, total, msg: scored.append((done, total)),
    )
    assert scored[-1] == (2, 2)  # only the third group was scored
    assert table.n_scored == partial.n_scored + 1 and not table.partial
    assert [g.name for g in table.groups] == names and table.groups[:2] == partial.groups
    full = analyze_sensitivity(model, topology, data, keep_ratios=(0.5,), scoring=TINY, groups=names)
    assert [g.drop for g in full.groups] == [g.drop for g in table.groups]


def test_resume_from_other_settings_is_ignored(resnet20, data):
    model, topology = resnet20
    names = _groups(topology, 1)
    other = analyze_sensitivity(model, topology, data, keep_ratios=(0.25,), scoring=TINY, groups=names)
    calls = []
    analyze_sensitivity(
        model,
        topology,
        data,
        keep_ratios=(0.5,),
        scoring=TINY,
        groups=names,
        resume=other,
        callback=lambda done, total, msg: calls.append(total),
    )
    assert calls[-1] == 2  # baseline + one plan: nothing reused from a table of another grid


def test_quick_defaults_are_cheaper_than_the_full_protocol():
    assert len(QUICK_KEEP_RATIOS) == 3 and all(0 < r < 1 for r in QUICK_KEEP_RATIOS)
    assert QUICK_SCORING.val_size * 2 <= ScoringConfig().val_size
    assert QUICK_SCORING.bn_batches * QUICK_SCORING.bn_batch_size < ScoringConfig().bn_batches * 128
