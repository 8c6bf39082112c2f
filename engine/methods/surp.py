"""`surp` (unstructured SuRP) and `surp-channel` (SuRP over coupled-group channel norms) as one-shot methods.

`surp` keeps every channel: its plan carries unstructured masks (and SuRP's reconstructed values) in
`plan.meta["sparse"]` (engine.pruning.sparse), so dense MACs stay as they are; the result reports nnz-MACs,
labelled "needs sparse kernels", beside the dense figures. Its target is the `sparsity` option, or else
1 - budget on a `params` budget (fraction of conv/linear weights kept non-zero). Optionally iterative: prune,
retrain briefly with masked gradients, refine again to the next target of a schedule.
`surp-channel` runs the same refinement on per-group L2-normalised channel L2 norms and keeps the channels in
the order they become non-zero until the budget (any metric) is met: a normal channel plan.
The refinement itself lives in engine.surp_core; the rate-distortion curves in engine.surp_rd.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.methods.candidates import (
    check_on_budget,
    fit_ratios_to_budget,
    full_keep,
    keep_value,
    prunable_groups,
    score_candidate,
    stamp,
)
from engine.methods.plans import plan_with_indices
from engine.methods.registry import MethodContext, MethodResult, MethodSpec, OptionSpec
from engine.pruning.budget import METRICS
from engine.pruning.sparse import encode_sparse, nnz_macs, prunable_weights
from engine.surp_core import SurpError, check_sparsity, normalised_magnitudes, successive_refinement

NAME = "surp"
CHANNEL_NAME = "surp-channel"
SPARSE_LABEL = "needs sparse kernels"


def parse_schedule(text: str, target: float) -> list[float]:
    """The iterative targets below `target` from a comma list (each in (0, 1)), then `target` itself."""
    try:
        steps = [float(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise SurpError(
            f"schedule {text!r} must be comma-separated sparsities in (0, 1), e.g. 0.5,0.75,0.9"
        ) from None
    for s in steps:
        check_sparsity(s, what="schedule sparsity")
    return sorted(s for s in set(steps) if s < target) + [target]


def surp_weights(
    model: nn.Module, sparsity: float, *, alpha: float = 10.0, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
    """SuRP on a model's conv/linear weights (each tensor L2-normalised, signs kept).

    Returns:
        (masks, values, refinement): bool masks and reconstructed weights (sign * U_hat * norm) per weight name,
        and the engine.surp_core.Refinement (rate, refinements, trace).

    Raises:
        SurpError: `sparsity` outside (0, 1).
    """
    sparsity = check_sparsity(sparsity)
    weights = prunable_weights(model)
    mags, norms = normalised_magnitudes(list(weights.values()))
    ref = successive_refinement(mags, target_density=1.0 - sparsity, alpha=alpha, seed=seed)
    signs = torch.cat([w.detach().double().flatten().sign() for w in weights.values()])
    flat = ref.recon * norms * signs  # (n,)
    masks, values, start = {}, {}, 0
    for name, w in weights.items():
        n = w.numel()
        values[name] = flat[start : start + n].reshape(w.shape).to(w.dtype)
        masks[name] = (ref.recon[start : start + n] > 0).reshape(w.shape)
        start += n
    return masks, values, ref


def retrain_masked(
    model: nn.Module,
    data: Any,
    masks: dict[str, torch.Tensor],
    *,
    steps: int,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int = 128,
) -> nn.Module:
    """Retrain `model` in place for `steps` batches of train, gradients (and weights) masked to the non-zeros."""
    from engine.data import augment_batch

    generator = torch.Generator().manual_seed(seed)
    x, y = data.tensors("train")
    weights = prunable_weights(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    order = torch.randperm(x.shape[0], generator=generator)
    for step in range(steps):
        start = (step * batch_size) % max(1, x.shape[0])
        index = order[start : start + batch_size]
        loss = F.cross_entropy(model(augment_batch(x[index], generator)), y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for name, w in weights.items():
            if w.grad is not None:
                w.grad.mul_(masks[name])
        opt.step()
        with torch.no_grad():  # weight decay and momentum must not revive pruned weights
            for name, w in weights.items():
                w.mul_(masks[name])
    return model.eval()


def _sparse_summary(model: nn.Module, sparse_model: nn.Module, data: Any, ref: Any, sparsity: float) -> dict:
    example = torch.zeros(1, 3, data.input_size, data.input_size)
    from engine.cost import count_costs

    dense = count_costs(model, example)
    nnz = nnz_macs(sparse_model, example)
    weights = prunable_weights(sparse_model)
    total = sum(w.numel() for w in weights.values())
    kept = sum(int((w != 0).sum()) for w in weights.values())
    return {
        "sparsity_target": sparsity,
        "sparsity": 1 - kept / total,
        "nnz_weights": kept,
        "weights": total,
        "bits_per_weight": ref.bits_per_weight,
        "index_bits": ref.index_bits,
        "sign_bits": ref.sign_bits,
        "refinements": ref.refinements,
        "refreshes": ref.refreshes,
        "dense_macs": int(dense.macs),
        "nnz_macs": nnz,
        "nnz_macs_ratio": nnz / max(1, dense.macs),
        "nnz_macs_note": SPARSE_LABEL,
    }


def _target_sparsity(ctx: MethodContext, options: dict[str, Any]) -> float:
    if options["sparsity"]:
        return check_sparsity(options["sparsity"])
    return check_sparsity(1.0 - float(ctx.budget), what="sparsity 1 - budget")


def run_surp(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Unstructured SuRP to the target sparsity (one-shot or iterative); the plan carries the masks."""
    target = _target_sparsity(ctx, options)
    steps = parse_schedule(options["schedule"], target) if options["iterative"] else [target]
    work = copy.deepcopy(ctx.model)
    history: list = []
    rounds = []
    for i, sparsity in enumerate(steps):
        masks, values, ref = surp_weights(work, sparsity, alpha=options["alpha"], seed=ctx.seed + i)
        if options["values"] == "surp" or i < len(steps) - 1:
            with torch.no_grad():
                for name, w in prunable_weights(work).items():
                    w.copy_(values[name])
        else:  # the ablation: SuRP's mask on the (current) original weights
            with torch.no_grad():
                for name, w in prunable_weights(work).items():
                    w.mul_(masks[name])
        if i < len(steps) - 1 and options["retrain_steps"] > 0:
            retrain_masked(
                work,
                ctx.data,
                masks,
                steps=options["retrain_steps"],
                lr=options["retrain_lr"],
                seed=ctx.seed + i,
            )
        rounds.append({"sparsity": sparsity, "bits_per_weight": ref.bits_per_weight})
        ctx.emit(NAME, i + 1, len(steps), f"refined to {sparsity:.3f} sparsity")
    weights = prunable_weights(work)
    masks = {k: w != 0 for k, w in weights.items()}
    plan = plan_with_indices(ctx, {}, None, method=NAME)
    stamp(plan, method=NAME, budget=ctx.budget_spec)
    own_values = options["values"] == "surp" or len(steps) > 1  # else the baseline's weights under the mask
    values = {k: w.detach() for k, w in weights.items()} if own_values else None
    plan.meta = {**plan.meta, "sparse": encode_sparse(masks, values), "unstructured": True}
    summary = _sparse_summary(ctx.model, work, ctx.data, ref, target)
    summary.update({"values": options["values"], "iterative": bool(options["iterative"]), "rounds": rounds})
    plan.meta["surp"] = {k: v for k, v in summary.items() if k != "rounds"}
    cand = score_candidate(ctx, NAME, plan, history, step=len(steps), total=len(steps))
    return MethodResult(
        method=NAME,
        plan=plan,
        val_acc=cand.val_acc,
        macs_ratio=1.0,
        candidates=history,
        meta={"surp": summary},
    )


def channel_scores_l2(ctx: MethodContext) -> dict[str, torch.Tensor]:
    """u_{g,c}: L2 filter norms pooled over the group's producers, divided by the group's L2 norm."""
    from engine.methods.magnitude import group_channel_norms, normalise_scores

    return {
        g.name: normalise_scores(group_channel_norms(ctx.model, ctx.topology, g.name, norm="l2"), "l2")
        for g in prunable_groups(ctx.topology)
    }


def channel_entry_order(scores: dict[str, torch.Tensor], *, alpha: float, seed: int) -> tuple[list, Any]:
    """(group, channel) in the order SuRP makes them non-zero (same round: random order), and the Refinement."""
    names = list(scores)
    flat = torch.cat([scores[n].double() for n in names])
    ref = successive_refinement(flat, target_density=1.0, alpha=alpha, seed=seed)
    owner = [(n, c) for n in names for c in range(scores[n].numel())]
    tiebreak = np.random.default_rng(seed + 1).permutation(len(owner))
    rank = sorted(
        range(len(owner)),
        key=lambda i: (int(ref.order[i]) if ref.order[i] >= 0 else 1 << 60, int(tiebreak[i])),
    )
    return [owner[i] for i in rank], ref


def run_surp_channel(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Channel-SuRP: keep channels in SuRP's entry order until the budget is met; a normal channel plan."""
    scores = channel_scores_l2(ctx)
    order, ref = channel_entry_order(scores, alpha=options["alpha"], seed=ctx.seed)
    groups = {g.name: g for g in prunable_groups(ctx.topology)}
    floor = {n: max(1, math.ceil(options["min_keep_ratio"] * g.channels)) for n, g in groups.items()}
    budget = ctx.budget_spec
    target = budget.fraction * budget.baseline(ctx.topology)

    def chosen(p: int) -> dict[str, list[int]]:
        picked: dict[str, list[int]] = {n: [] for n in groups}
        for name, c in order:  # the floor first: each group's earliest channels
            if len(picked[name]) < floor[name]:
                picked[name].append(c)
        taken = {(n, c) for n, cs in picked.items() for c in cs}
        for name, c in order[:p]:
            if (name, c) not in taken:
                picked[name].append(c)
        return picked

    def value(p: int) -> float:
        return keep_value(
            ctx.topology, {**full_keep(ctx.topology), **{n: len(v) for n, v in chosen(p).items()}}, budget
        )

    lo, hi = 0, len(order)  # largest prefix whose plan stays within the budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if value(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    picked = chosen(lo)
    keep = {n: len(v) for n, v in picked.items()}
    taken = {(n, c) for n, cs in picked.items() for c in cs}
    for name, c in order[lo:]:  # fill the slack a coarse next channel (a wide residual group) left
        if (name, c) in taken:
            continue
        trial = {**keep, name: keep[name] + 1}
        if keep_value(ctx.topology, {**full_keep(ctx.topology), **trial}, budget) <= target:
            keep = trial
            picked[name].append(c)
    if ctx.round_to > 1:
        ratios = {n: keep[n] / groups[n].channels for n in groups}
        rounded = fit_ratios_to_budget(
            ctx, ratios, method=CHANNEL_NAME, min_keep_ratio=options["min_keep_ratio"]
        )
        keep = {n: int(rounded.keep.get(n, groups[n].channels)) for n in groups}
        rank = {oc: i for i, oc in enumerate(order)}
        picked = {
            n: sorted(range(groups[n].channels), key=lambda c, n=n: rank[(n, c)])[: keep[n]] for n in groups
        }
    entered = sum(keep.values()) / max(1, len(order))
    bits = next((b for d, _, b in ref.trace if d >= entered), ref.index_bits)
    meta = {
        "mask_bits": bits,
        "channels_kept": sum(keep.values()),
        "channels": len(order),
        "refinements": ref.refinements,
        "refreshes": ref.refreshes,
    }
    plan = plan_with_indices(
        ctx, keep, picked, method=CHANNEL_NAME, criterion="l2", meta={"surp_channel": meta}
    )
    ratio = check_on_budget(ctx, plan, CHANNEL_NAME)
    history: list = []
    cand = score_candidate(ctx, CHANNEL_NAME, plan, history, step=1, total=1)
    return MethodResult(
        method=CHANNEL_NAME,
        plan=plan,
        val_acc=cand.val_acc,
        macs_ratio=ratio,
        candidates=history,
        meta={"surp_channel": meta},
    )


_ALPHA = OptionSpec(
    "alpha", float, 10.0, "SuRP threshold multiplier (10 for ResNet-20, 13 for VGG-16)", min=0.1, max=100.0
)
SPECS = (
    MethodSpec(
        name=NAME,
        description="SuRP (successive refinement, AISTATS 2022): unstructured weight masks with coded rate; "
        "dense MACs unchanged (nnz-MACs need sparse kernels).",
        kind="oneshot",
        options={
            "sparsity": OptionSpec(
                "sparsity",
                float,
                0.0,
                "fraction of conv/linear weights set to zero, in (0, 1); 0 = 1 - budget on a params budget",
                min=0.0,
                max=1.0,
            ),
            "alpha": _ALPHA,
            "values": OptionSpec(
                "values",
                str,
                "surp",
                "kept weights: SuRP's reconstruction or the original values under SuRP's mask (the ablation)",
                choices=("surp", "original"),
            ),
            "iterative": OptionSpec(
                "iterative", bool, False, "prune, retrain briefly, refine to the next target"
            ),
            "schedule": OptionSpec("schedule", str, "0.5,0.75,0.9,0.95,0.98", "iterative sparsity targets"),
            "retrain_steps": OptionSpec(
                "retrain_steps", int, 50, "batches of masked retraining per iterative step", min=0
            ),
            "retrain_lr": OptionSpec(
                "retrain_lr", float, 0.01, "learning rate of the masked retraining", min=1e-6, max=1.0
            ),
        },
        fn=run_surp,
        budget_metrics=("params",),
    ),
    MethodSpec(
        name=CHANNEL_NAME,
        description="Channel-SuRP: successive refinement over per-group L2-normalised channel norms, kept in "
        "entry order until the budget (any metric) is met.",
        kind="oneshot",
        options={
            "alpha": _ALPHA,
            "min_keep_ratio": OptionSpec(
                "min_keep_ratio", float, 0.1, "smallest fraction of a group kept", min=0.01, max=1.0
            ),
        },
        fn=run_surp_channel,
        budget_metrics=METRICS,
    ),
)
