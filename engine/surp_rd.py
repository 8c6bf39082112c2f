"""Rate-distortion points of SuRP and of global normalised magnitude pruning, and the check that their masks agree.

Each point: weight sparsity, bits per weight, val top-1 and the MSE of the logits against the unpruned model on
val (both after the shared scorer's BN recalibration; test is never read). Three rows per sparsity, on the same
parameter set (conv/linear weights):
- `surp`: SuRP's mask and its reconstructed values; rate = index gaps (sum of log2 k) + one sign bit per kept weight.
- `surp-mask`: SuRP's mask on the original weights (the ablation); rate = entropy-coded mask + 32 bits a value.
- `magnitude`: global magnitude with per-tensor L2 normalisation (the released baseline); same rate as surp-mask.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from engine.pruning.sparse import prunable_weights
from engine.surp_core import check_sparsity, jaccard, mask_bits, normalised_magnitudes, topk_support


@dataclass(frozen=True)
class RDPoint:
    """One rate-distortion point (see the module docstring for the rows and their rates)."""

    method: str
    sparsity: float
    bits_per_weight: float
    val_acc: float
    logit_mse: float
    nnz_macs_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MaskOverlap:
    """How SuRP's support compares with the normalised-magnitude top-k of the same size.

    Attributes:
        sparsity: Target sparsity.
        jaccard: |SuRP & magnitude| / |SuRP | magnitude|.
        outside_last_round: Fraction of SuRP's kept weights, admitted before its last (boundary) round, that are
            also in the magnitude top-k (1.0 = only the boundary's random order differs).
        shrink: Mean relative shrinkage of kept magnitudes, 1 - U_hat / |w| (normalised).
    """

    sparsity: float
    jaccard: float
    outside_last_round: float
    shrink: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(model: nn.Module, flat: torch.Tensor) -> nn.Module:
    out = copy.deepcopy(model)
    start = 0
    with torch.no_grad():
        for w in prunable_weights(out).values():
            w.copy_(flat[start : start + w.numel()].reshape(w.shape).to(w.dtype))
            start += w.numel()
    return out


def _measure(scorer: Any, baseline_logits: torch.Tensor, model: nn.Module) -> tuple[float, float]:
    from engine.evaluate import accuracy_top1

    scorer.prepare(model)
    x, y = scorer.val_tensors
    with torch.inference_mode():
        logits = model(x)
    return accuracy_top1(model, x, y), float(((logits - baseline_logits) ** 2).mean())


def rate_distortion(
    model: nn.Module,
    topology: Any,
    data: Any,
    *,
    sparsities: Sequence[float] = (0.8, 0.9, 0.95),
    alpha: float = 10.0,
    seed: int = 0,
    scoring: Any = None,
) -> tuple[list[RDPoint], list[MaskOverlap]]:
    """SuRP, SuRP-mask-with-original-weights and normalised global magnitude at each sparsity.

    Returns:
        (points, overlaps): three RDPoints per sparsity, and one MaskOverlap per sparsity.

    Raises:
        SurpError: a sparsity outside (0, 1).
    """
    from engine.evaluate import Scorer
    from engine.surp_core import successive_refinement

    targets = [check_sparsity(s) for s in sparsities]
    scorer = Scorer(model, topology, data, scoring)
    base = scorer.prepare(copy.deepcopy(model))
    x, _ = scorer.val_tensors
    with torch.inference_mode():
        base_logits = base(x)
    weights = list(prunable_weights(model).values())
    mags, norms = normalised_magnitudes(weights)
    signs = torch.cat([w.detach().double().flatten().sign() for w in weights])
    original = torch.cat([w.detach().double().flatten() for w in weights])
    n = mags.numel()
    points: list[RDPoint] = []
    overlaps: list[MaskOverlap] = []
    for s in targets:
        ref = successive_refinement(mags, target_density=1.0 - s, alpha=alpha, seed=seed)
        support = ref.recon > 0
        nnz = int(support.sum())
        top = topk_support(mags, nnz)
        float_rate = (mask_bits(n, nnz) + 32 * nnz) / n
        last = int(ref.order.max())
        early = support & (ref.order < last)
        overlaps.append(
            MaskOverlap(
                sparsity=s,
                jaccard=jaccard(support, top),
                outside_last_round=float((early & top).sum()) / max(1, int(early.sum())),
                shrink=float((1 - ref.recon[support] / mags[support]).mean()),
            )
        )
        for method, flat, rate in (
            ("surp", ref.recon * norms * signs, ref.bits_per_weight),
            ("surp-mask", original * support, float_rate),
            ("magnitude", original * top, float_rate),
        ):
            pruned = _load(model, flat)
            acc, mse = _measure(scorer, base_logits, pruned)
            points.append(
                RDPoint(
                    method=method,
                    sparsity=1 - nnz / n,
                    bits_per_weight=rate,
                    val_acc=acc,
                    logit_mse=mse,
                    nnz_macs_ratio=_nnz_ratio(model, pruned, data),
                )
            )
    return points, overlaps


def _nnz_ratio(model: nn.Module, pruned: nn.Module, data: Any) -> float:
    from engine.cost import count_costs
    from engine.pruning.sparse import nnz_macs

    example = torch.zeros(1, 3, data.input_size, data.input_size)
    return nnz_macs(pruned, example) / max(1, count_costs(model, example).macs)
