"""Regularised per-group latency rates: least squares per group, shrunk towards the pooled rate, bounded.

Pure numpy on measured savings (engine.latency_table measures them and explains the model); no timing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE_FLOOR = 0.25  # x pooled rate: the least a group's removed MACs save
RATE_CEILING = 4.0  # x pooled rate: the most
MIN_SAVING_SE = (
    0.005  # a saving's standard error is never taken below this (a fit never trusts one timing fully)
)


@dataclass(frozen=True)
class FittedRates:
    """What `fit_rates` returns: per-group rates (fraction of baseline latency saved per MAC removed)."""

    rates: np.ndarray  # (groups,) regularised, all in [RATE_FLOOR, RATE_CEILING] x pooled
    raw: np.ndarray  # (groups,) least squares through the origin, per group
    pooled: float  # one rate over every group's measurements


def fit_rates(
    saved: np.ndarray,
    removed_macs: np.ndarray,
    saving_se: np.ndarray,
    *,
    total_macs: float,
    uniform_saved: np.ndarray | None = None,
    uniform_macs: np.ndarray | None = None,
) -> FittedRates:
    """Per-group rates from measured savings, shrunk towards the pooled rate by their noise, then bounded.

    Args:
        saved: (groups, keep_ratios) measured savings, fractions of the baseline latency.
        removed_macs: (groups, keep_ratios) MACs each measurement removed.
        saving_se: (groups, keep_ratios) standard errors of `saved` (floored at MIN_SAVING_SE).
        total_macs: the baseline's MACs (the pooled rate falls back to 1 / total_macs, latency
            proportional to MACs, when the measurements show no saving at all).
        uniform_saved: savings of every group cut together (one per measurement), if measured: they move many
            MACs at the same timing noise, so they pin the pooled rate far better than single groups.
        uniform_macs: the MACs those uniform cuts removed.

    Returns:
        FittedRates; see the module docstring for the model.
    """
    saved = np.asarray(saved, dtype=np.float64)
    macs = np.asarray(removed_macs, dtype=np.float64)
    se = np.maximum(np.asarray(saving_se, dtype=np.float64), MIN_SAVING_SE)
    sxx = np.sum(macs * macs, axis=1)  # (groups,)
    moved = sxx > 0
    raw = np.where(moved, np.sum(saved * macs, axis=1) / np.where(moved, sxx, 1.0), 0.0)
    var = np.where(moved, np.sum(macs * macs * se * se, axis=1) / np.where(moved, sxx, 1.0) ** 2, np.inf)
    num, den = float(np.sum(saved * macs)), float(np.sum(sxx))
    if uniform_saved is not None and uniform_macs is not None:
        u_macs = np.asarray(uniform_macs, dtype=np.float64)
        num += float(np.dot(np.asarray(uniform_saved, dtype=np.float64), u_macs))
        den += float(np.dot(u_macs, u_macs))
    pooled = num / den if den > 0 else 0.0
    if not np.isfinite(pooled) or pooled <= 0:
        pooled = 1.0 / max(float(total_macs), 1.0)
    # between-group variance of the true rates, beyond what the noise explains (method of moments)
    tau2 = max(float(np.mean((raw[moved] - pooled) ** 2) - np.mean(var[moved])), 0.0) if moved.any() else 0.0
    weight = np.where(moved, tau2 / (tau2 + var), 0.0) if tau2 > 0 else np.zeros_like(raw)
    rates = np.clip(pooled + weight * (raw - pooled), RATE_FLOOR * pooled, RATE_CEILING * pooled)
    return FittedRates(rates=rates, raw=raw, pooled=pooled)
