"""SuRP's successive refinement of magnitudes (Isik, Weissman, No, AISTATS 2022), vectorised, with its rate.

Follows the released code (BerivanIsik/SuRP, src/trainers/reconstruct.py): residual U = |w| (each tensor
divided by its L2 norm), reconstruction U_hat = 0, threshold tau = alpha * mean|w|; every index with U > tau is
refined (U_hat += tau, U -= tau) and tau decays by (n - 1) / n per refinement; when no index exceeds tau the
threshold is refreshed to alpha * mean(non-zero U) and alpha shrinks by 0.9 every 20 refreshes. The released
loop refines one random index of M = {U > tau} per iteration; here a round refines all of M at once and tau
decays by ((n - 1) / n) ** |M| (the same refinements in another order). In the round that crosses the target
density, the newly eligible indices are admitted in random order until the target is met exactly (the random
timing of the sequential loop at the boundary). Rate: every refinement sends an index gap k ~ Geometric(|M|/n)
(log2 k bits, as the released code estimates) and every weight that becomes non-zero a sign bit.
Nothing here touches a model: engine.methods.surp does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.errors import TopoPruneError


class SurpError(TopoPruneError, ValueError):
    """A SuRP target or setting outside its range."""


def check_sparsity(sparsity: float, *, what: str = "sparsity target") -> float:
    """`sparsity` as a float in (0, 1), or SurpError naming the bad value."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise SurpError(f"{what} must be a number in (0, 1), got {sparsity!r}") from None
    if not 0.0 < value < 1.0 or math.isnan(value):
        raise SurpError(
            f"{what} must be in (0, 1) (the fraction of weights set to zero), got {sparsity!r}; "
            "e.g. 0.9 keeps 10% of the weights"
        )
    return value


@dataclass
class Refinement:
    """The outcome of one successive-refinement run.

    Attributes:
        recon: U_hat, the reconstructed magnitudes (n,), float64; zero where pruned.
        order: Round in which each index first became non-zero (-1 = never), (n,).
        refinements: Refinements made (the released loop's iterations).
        rounds: Vectorised rounds run.
        refreshes: Threshold refreshes.
        index_bits: Sum of log2 k over the refinements (the index-coding rate).
        sign_bits: One bit per non-zero index.
        trace: (density, refinements, index bits) after every round that admitted new indices.
    """

    recon: torch.Tensor
    order: torch.Tensor
    refinements: int
    rounds: int
    refreshes: int
    index_bits: float
    sign_bits: int
    trace: list[tuple[float, int, float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.recon.numel())

    @property
    def density(self) -> float:
        return float((self.recon > 0).double().mean())

    @property
    def bits_per_weight(self) -> float:
        """(index bits + sign bits) / n: the rate of the sparse code."""
        return (self.index_bits + self.sign_bits) / max(1, self.n)


def successive_refinement(
    magnitudes: torch.Tensor,
    *,
    target_density: float,
    alpha: float = 10.0,
    seed: int = 0,
    max_rounds: int = 2_000_000,
) -> Refinement:
    """Refine normalised magnitudes until a fraction `target_density` of them is non-zero.

    Args:
        magnitudes: U = |w| / ||w_tensor||, shape (n,), non-negative.
        target_density: Fraction of indices non-zero at the end, in (0, 1].
        alpha: Threshold multiplier (10 for ResNet-20, 13 for VGG-16 in the released configs).
        seed: Seed of the boundary order and the rate's geometric draws.
        max_rounds: Safety stop.

    Raises:
        SurpError: `target_density` outside (0, 1] or `alpha` not positive.
    """
    if not 0.0 < float(target_density) <= 1.0:
        raise SurpError(f"target density must be in (0, 1], got {target_density!r}")
    if not alpha > 0:
        raise SurpError(f"alpha must be > 0, got {alpha!r}")
    rng = np.random.default_rng(seed)
    u = magnitudes.detach().double().flatten().cpu().numpy().copy()  # residual U, (n,)
    n = int(u.size)
    need = min(max(1, int(round(target_density * n))), int(np.count_nonzero(u)))
    recon = np.zeros_like(u)
    order = np.full(n, -1, dtype=np.int64)
    scale = math.log(n / math.log(n)) if n > 2 else 1.0
    a = alpha / scale  # the released code's alpha after dividing by the scale factor

    def mean_nonzero() -> float:
        return float(u.sum()) / max(1, int(np.count_nonzero(u)))

    lam_inv = a * mean_nonzero()
    decay = (n - 1) / n
    refinements = rounds = refreshes = 0
    bits = 0.0
    nonzero = 0
    trace: list[tuple[float, int, float]] = []
    while nonzero < need and rounds < max_rounds:
        tau = lam_inv * scale
        eligible = np.flatnonzero(u > tau)
        if eligible.size == 0:
            mean, top = mean_nonzero(), float(u.max())
            while True:  # refreshes until one admits an index (U is unchanged meanwhile)
                refreshes += 1
                if refreshes % 20 == 0:
                    a *= 0.9
                lam_inv = a * mean
                if lam_inv * scale < top:
                    break
            continue
        fresh = eligible[recon[eligible] == 0]
        if nonzero + fresh.size > need:  # the boundary round: admit the newly eligible in random order
            fresh = fresh[rng.permutation(fresh.size)[: need - nonzero]]
            eligible = np.concatenate([eligible[recon[eligible] > 0], fresh])
        m = int(eligible.size)
        recon[eligible] += tau
        u[eligible] -= tau
        order[fresh] = rounds
        nonzero += int(fresh.size)
        bits += float(np.log2(rng.geometric(m / n, size=m)).sum())
        refinements += m
        rounds += 1
        lam_inv *= decay**m
        if fresh.size:
            trace.append((nonzero / n, refinements, bits))
    return Refinement(
        recon=torch.from_numpy(recon),
        order=torch.from_numpy(order),
        refinements=refinements,
        rounds=rounds,
        refreshes=refreshes,
        index_bits=bits,
        sign_bits=nonzero,
        trace=trace,
    )


def normalised_magnitudes(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(|w| / ||w||, ||w||) of each tensor, flattened and concatenated: both (n,), float64."""
    mags, norms = [], []
    for t in tensors:
        flat = t.detach().double().flatten()
        norm = float(flat.norm()) or 1.0
        mags.append(flat.abs() / norm)
        norms.append(torch.full_like(flat, norm))
    return torch.cat(mags), torch.cat(norms)


def topk_support(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest scores (ties by lower index)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores.flatten(), descending=True, stable=True)[:k]] = True
    return mask


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two bool masks (1.0 for two empty masks)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mask_bits(n: int, nnz: int) -> float:
    """Bits of an ideally entropy-coded mask of n positions with nnz ones: n * H2(nnz / n)."""
    p = nnz / max(1, n)
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
