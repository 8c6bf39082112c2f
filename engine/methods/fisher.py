"""`fisher`: Group Fisher pruning (Liu et al., ICML 2021), scaled for CPU.

Every consumer of a channel group (a conv/linear reading its channels) sees its input times a shared 0/1 mask.
The per-sample mask gradient of each consumer is sum_hw(A * dL/dA~); the copies of a group are summed per sample
*before* squaring (Eq. 4), accumulated over batches, and divided by the cost one channel removes (activation
memory, or MACs). The least important channel is removed, with short training between removals, until the
MACs budget is met. The training only guides the choice: the plan is scored on the untouched baseline.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.methods.candidates import (
    baseline_macs,
    check_on_budget,
    full_keep,
    keep_macs,
    prunable_groups,
    refill_to_budget,
)
from engine.methods.candidates import score_candidate as _score
from engine.methods.plans import plan_with_indices
from engine.methods.registry import MethodContext, MethodResult, MethodSpec, OptionSpec
from engine.rng import private_rng

NAME = "fisher"


def _input_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    if isinstance(module, nn.Linear):
        return module.in_features
    return None


def consumer_sites(model: nn.Module, group: Any) -> list[tuple[str, list[int], int]]:
    """Where a group's channels enter convs/linears: (module name, input channel indices, mult) per consumer.

    Indices follow the group's member maps (concat offsets, flatten multiplicity); a depthwise conv of the group
    reads the same channels it writes.
    """
    modules = dict(model.named_modules())
    maps = getattr(group, "maps", None) or []
    sites: dict[str, tuple[str, list[int], int]] = {}
    entries = [(m.module, m.dim, list(m.channels), int(m.mult)) for m in maps] or [
        (name, role, list(range(int(group.channels))), 1) for name, role in group.members
    ]
    for name, role, channels, mult in entries:
        module = modules.get(name)
        width = _input_width(module) if module is not None else None
        if width is None or name in sites or len(channels) != int(group.channels) * mult:
            continue
        depthwise = (
            isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1
        )
        if (role == "in" or depthwise) and max(channels) < width:
            sites[name] = (name, channels, mult)
    return list(sites.values())


def group_consumers(model: nn.Module, group: Any) -> list[str]:
    """Names of the convs/linears that read `group`'s channels (depthwise convs included)."""
    return [name for name, _, _ in consumer_sites(model, group)]


class FisherHooks:
    """Masks every consumer's input by its group's 0/1 mask and accumulates Group Fisher importance.

    Use as a context manager; after each `loss.backward()` call `collect()`. `fisher[g]` (channels,) holds
    sum_n (sum_consumers dL_n/dm)^2 since the last `reset()`.
    """

    def __init__(self, model: nn.Module, topology: Any, *, groups: list[Any] | None = None) -> None:
        self.model = model
        groups = groups if groups is not None else prunable_groups(topology)
        modules = dict(model.named_modules())
        sites = {g.name: consumer_sites(model, g) for g in groups}
        self.consumers = {name: [s[0] for s in found] for name, found in sites.items()}
        self.groups = [g for g in groups if sites[g.name]]
        self.masks = {g.name: torch.ones(int(g.channels)) for g in self.groups}
        self.fisher = {g.name: torch.zeros(int(g.channels), dtype=torch.float64) for g in self.groups}
        self._batch: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._sites = [
            (modules[name], g.name, torch.tensor(idx), mult)
            for g in self.groups
            for name, idx, mult in sites[g.name]
        ]

    def __enter__(self) -> FisherHooks:
        for module, group, idx, mult in self._sites:
            self._handles.append(module.register_forward_pre_hook(self._make_hook(group, idx, mult)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, group: str, idx: torch.Tensor, mult: int):
        channels = int(self.masks[group].shape[0])

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = inputs[0]
            full = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
            full[idx] = self.masks[group].to(x.dtype).repeat_interleave(mult)
            masked = x * full.view((1, -1) + (1,) * (x.dim() - 2))
            if masked.requires_grad:
                saved = x.detach()

                def on_grad(grad: torch.Tensor) -> None:
                    prod = saved * grad
                    per_input = prod.flatten(2).sum(-1) if prod.dim() > 2 else prod  # (N, C_in)
                    per_sample = per_input[:, idx].reshape(-1, channels, mult).sum(-1)  # (N, channels)
                    prev = self._batch.get(group)
                    self._batch[group] = per_sample if prev is None else prev + per_sample

                masked.register_hook(on_grad)
            return (masked, *inputs[1:])

        return hook

    def collect(self) -> None:
        """Square the per-sample gradients summed over a group's consumers, add them to `fisher`."""
        for group, per_sample in self._batch.items():
            self.fisher[group] += per_sample.double().pow(2).sum(0)
        self._batch.clear()

    def reset(self) -> None:
        """Zero the accumulated importance."""
        for v in self.fisher.values():
            v.zero_()


def fisher_channel_scores(
    model: nn.Module,
    topology: Any,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    groups: list[Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Group Fisher importance (unnormalised) of every channel of every prunable group, on `batches`.

    The model is put in eval mode and not modified. One score vector per group: every layer of a coupled group
    shares it.

    Returns:
        Group name -> (channels,) float64 importance.
    """
    model.eval()
    with FisherHooks(model, topology, groups=groups) as hooks:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="sum").backward()  # sum: exact per-sample gradients
            hooks.collect()
    model.zero_grad(set_to_none=True)
    return {k: v.clone() for k, v in hooks.fisher.items()}


def _removal_costs(topology: Any, groups: list[Any], keep: dict[str, int], how: str) -> dict[str, float]:
    if how == "none":
        return {g.name: 1.0 for g in groups}
    if how == "memory":
        return {g.name: max(float(getattr(g, "memory_bytes_per_channel", 0) or 0), 1e-12) for g in groups}
    macs = keep_macs(topology, keep)
    return {
        g.name: max(float(macs - keep_macs(topology, {**keep, g.name: keep[g.name] - 1})), 1e-12)
        for g in groups
        if keep[g.name] > 1
    }


def _round_counts(
    ctx: MethodContext,
    keep: dict[str, int],
    masks: dict[str, torch.Tensor],
    removed: list[tuple[str, int]],
    min_keep_ratio: float,
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Counts rounded to ctx.round_to (on budget), kept channels chosen alive-first, then latest-removed."""
    from engine.methods.candidates import fit_ratios_to_budget
    from engine.pruning import channel_scores

    groups = {g.name: g for g in prunable_groups(ctx.topology)}
    ratios = {name: keep[name] / g.channels for name, g in groups.items()}
    rounded = fit_ratios_to_budget(ctx, ratios, method=NAME, min_keep_ratio=min_keep_ratio)
    counts = {name: int(rounded.keep.get(name, g.channels)) for name, g in groups.items()}
    priority = {name: m.double() * 1e9 for name, m in masks.items()}  # alive channels first
    for rank, (name, c) in enumerate(removed):
        priority[name][c] = float(rank)  # later removal = more important
    for name in groups.keys() - masks.keys():  # groups no consumer reads: L1 magnitude
        priority[name] = channel_scores(ctx.model, ctx.topology, name, criterion="l1").double()
    indices = {
        name: sorted(torch.argsort(p, descending=True)[: counts[name]].tolist())
        for name, p in priority.items()
    }
    return {**keep, **counts}, indices


def run_fisher(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Prune-while-training with Group Fisher importance until the MACs budget is met."""
    rng = private_rng(ctx.seed)  # what the forward passes draw (dropout), leaving the global RNG alone
    work = copy.deepcopy(ctx.model)
    target = ctx.budget * baseline_macs(ctx.topology)
    keep = full_keep(ctx.topology)
    groups = prunable_groups(ctx.topology)
    min_keep = {g.name: max(1, math.ceil(options["min_keep_ratio"] * g.channels)) for g in groups}
    x_train, y_train = ctx.data.tensors("train", limit=options["train_size"])
    batch = options["batch_size"]
    n_batches = max(1, x_train.shape[0] // batch)
    gen = torch.Generator().manual_seed(ctx.seed)
    opt = (
        torch.optim.SGD(work.parameters(), lr=options["lr"], momentum=0.9, weight_decay=5e-4)
        if options["train"]
        else None
    )
    macs = keep_macs(ctx.topology, keep)
    per_step = options["channels_per_step"]
    if per_step == 0:  # auto: spread the removals over about `steps` rounds
        estimate = sum(g.channels for g in groups) * (1.0 - math.sqrt(ctx.budget))
        per_step = max(1, math.ceil(estimate / options["steps"]))
    rounds = 0
    history_removed: list[tuple[str, int]] = []
    work.train(options["train"])
    with FisherHooks(work, ctx.topology, groups=groups) as hooks:
        active = {g.name for g in hooks.groups}
        order = torch.randperm(x_train.shape[0], generator=gen)
        it = 0
        while macs > target:
            if ctx.stopped():
                break
            for _ in range(options["interval"]):
                b = it % n_batches
                if b == 0 and it > 0:
                    order = torch.randperm(x_train.shape[0], generator=gen)
                idx = order[b * batch : (b + 1) * batch]
                work.zero_grad(set_to_none=True)
                with rng:
                    logits = work(x_train[idx])
                F.cross_entropy(logits, y_train[idx]).backward()
                hooks.collect()
                if opt is not None:
                    opt.step()
                it += 1
            removed = 0
            active_groups = [g for g in groups if g.name in active]
            costs = _removal_costs(ctx.topology, active_groups, keep, options["normalize"])
            queues = {  # alive channels of each group, least important first
                name: [c for c in torch.argsort(hooks.fisher[name]).tolist() if hooks.masks[name][c] > 0]
                for name in costs
            }
            while removed < per_step and macs > target:
                best: tuple[float, str] | None = None
                for name, queue in queues.items():
                    if keep[name] <= min_keep[name] or not queue or name not in costs:
                        continue
                    value = float(hooks.fisher[name][queue[0]]) / costs[name]
                    if best is None or value < best[0]:
                        best = (value, name)
                if best is None:
                    break
                name = best[1]
                c = queues[name].pop(0)
                hooks.masks[name][c] = 0.0
                keep[name] -= 1
                history_removed.append((name, c))
                macs = keep_macs(ctx.topology, keep)
                removed += 1
                if options["normalize"] == "macs":
                    costs = _removal_costs(ctx.topology, active_groups, keep, "macs")
            hooks.reset()
            rounds += 1
            ctx.emit(NAME, rounds, 0, f"round {rounds}: MACs ratio {macs / (target / ctx.budget):.3f}")
            if removed == 0:
                break
        masks = {k: v.clone() for k, v in hooks.masks.items()}
    keep, still_removed = refill_to_budget(ctx.topology, keep, history_removed, ctx.budget)
    for name, c in set(history_removed) - set(still_removed):
        masks[name][c] = 1.0
    indices = {name: torch.nonzero(m > 0).flatten().tolist() for name, m in masks.items()}
    if ctx.round_to > 1:  # re-land on budget with rounded counts; give back the latest-removed channels first
        keep, indices = _round_counts(ctx, keep, masks, history_removed, options["min_keep_ratio"])
    plan = plan_with_indices(
        ctx,
        keep,
        indices,
        method=NAME,
        criterion="fisher",
        meta={"rounds": rounds, "iterations": it, "normalize": options["normalize"]},
    )
    ratio = check_on_budget(ctx, plan, NAME)
    history: list = []
    cand = _score(ctx, NAME, plan, history, step=rounds, total=rounds)
    return MethodResult(
        method=NAME,
        plan=plan,
        val_acc=cand.val_acc,
        macs_ratio=ratio,
        candidates=history,
        meta={"rounds": rounds, "iterations": it},
    )


SPEC = MethodSpec(
    name=NAME,
    description="Group Fisher pruning: channel-mask Fisher importance summed over coupled layers, normalised "
    "by activation memory (or MACs); removes the least important channel with short training in between.",
    kind="oneshot",
    options={
        "normalize": OptionSpec(
            "normalize",
            str,
            "memory",
            "cost a channel's importance is divided by",
            choices=("memory", "macs", "none"),
        ),
        "interval": OptionSpec("interval", int, 4, "training iterations between removals (paper: 25)", min=1),
        "channels_per_step": OptionSpec(
            "channels_per_step", int, 0, "channels removed per round (paper: 1; 0 = auto from `steps`)", min=0
        ),
        "steps": OptionSpec(
            "steps", int, 40, "rounds the removals are spread over when channels_per_step=0", min=1
        ),
        "train": OptionSpec("train", bool, True, "train (SGD) between removals, as in the paper"),
        "lr": OptionSpec("lr", float, 0.005, "SGD learning rate of the training between removals", min=0.0),
        "batch_size": OptionSpec("batch_size", int, 64, "images per training iteration", min=2),
        "train_size": OptionSpec("train_size", int, 4096, "train images cycled through", min=2),
        "min_keep_ratio": OptionSpec(
            "min_keep_ratio", float, 0.1, "smallest fraction of a group's channels kept", min=0.01, max=1.0
        ),
    },
    fn=run_fisher,
)
