"""engine.cost.measure_latency_stats: median and spread over interleaved repeats (issue 16, M4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.cost import LatencyStats, measure_latency_stats


def test_stats_over_repeats_are_ordered_and_models_untouched():
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).train()
    big = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 3), nn.ReLU())
    before = [p.clone() for p in small.parameters()]
    stats = measure_latency_stats({"small": small, "big": big}, 16, repeats=4, threads=1, min_run_time_s=0.08)
    assert list(stats) == ["small", "big"]
    for s in stats.values():
        assert isinstance(s, LatencyStats) and s.repeats == 4 and s.threads == 1 and s.batch == 1
        assert 0 < s.min_ms <= s.p25_ms <= s.median_ms <= s.p75_ms <= s.max_ms
        assert s.to_dict()["iqr_ms"] == pytest.approx(s.p75_ms - s.p25_ms)
        assert s.noisy == (s.iqr_ms > 0.1 * s.median_ms)
    assert stats["big"].median_ms > stats["small"].median_ms
    assert small.training and all(torch.equal(a, b) for a, b in zip(before, small.parameters(), strict=True))


def test_a_single_repeat_has_no_spread():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    stats = measure_latency_stats({"m": model}, (4, 1, 1), repeats=1, threads=1, min_run_time_s=0.02)["m"]
    assert stats.min_ms == stats.p25_ms == stats.median_ms == stats.max_ms and not stats.noisy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repeats": 0}, "repeats must be >= 1, got 0"),
        ({"batch": 0}, "batch must be >= 1, got 0"),
        ({"threads": 0}, "threads must be >= 1 or None, got 0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_latency_stats({"m": nn.Identity()}, 8, **kwargs)


def test_no_models_is_an_error():
    with pytest.raises(ValueError, match="needs at least one model"):
        measure_latency_stats({}, 8)
