"""`amc`: AutoML for Model Compression (He et al., ECCV 2018) over coupled channel groups, scaled for CPU.

A DDPG agent picks one keep ratio per prunable group in sequence from AMC's 10-feature hand-made state; the
action wall keeps the MACs budget reachable; the episode's profile is landed on the budget and scored
(reward = -val error). `amc_state_features` is public: the GNN-RL ablation (engine.rl) reuses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from engine.errors import BudgetError
from engine.methods.candidates import (
    baseline_macs,
    fit_ratios_to_budget,
    full_keep,
    keep_macs,
    prunable_groups,
)
from engine.methods.ddpg import DDPGAgent, DDPGConfig, truncated_normal
from engine.methods.registry import MethodContext, MethodSpec, OptionSpec
from engine.search.protocol import Proposal, Scored, SearchMethod, rng_state, set_rng_state

NAME = "amc"
AMC_FEATURES: tuple[str, ...] = (
    "index",
    "type",
    "in_channels",
    "out_channels",
    "stride",
    "kernel",
    "weights",
    "reduced_macs",
    "rest_macs",
    "prev_action",
)


def _producer(topology: Any, group: Any, modules: dict[str, nn.Module] | None) -> dict[str, float]:
    """in_channels, stride, kernel and type (conv 0 / linear 1) of the first conv/linear producing `group`."""
    for name, role in group.members:
        if role != "out":
            continue
        module = modules.get(name) if modules is not None else None
        if isinstance(module, nn.Conv2d):
            return {
                "type": 0.0,
                "in_channels": float(module.in_channels),
                "stride": float(module.stride[0]),
                "kernel": float(module.kernel_size[0]),
            }
        if isinstance(module, nn.Linear):
            return {"type": 1.0, "in_channels": float(module.in_features), "stride": 1.0, "kernel": 1.0}
        info = (getattr(topology, "layer_info", None) or {}).get(name) if module is None else None
        if info is not None:
            kernel, stride = info.get("kernel") or (1,), info.get("stride") or (1,)
            return {
                "type": 1.0 if info.get("kind") == "linear" else 0.0,
                "in_channels": float(info.get("in_channels") or 0),
                "stride": float(stride[0]),
                "kernel": float(kernel[0]),
            }
    return {"type": 0.0, "in_channels": float(group.channels), "stride": 1.0, "kernel": 1.0}


class AmcFeatures:
    """AMC's per-group state: static columns computed once, dynamic columns per partial profile."""

    def __init__(self, topology: Any, *, model: nn.Module | None = None) -> None:
        self.topology = topology
        self.groups = prunable_groups(topology)
        modules = dict(model.named_modules()) if model is not None else None
        self.base = baseline_macs(topology)
        rows = []
        for t, g in enumerate(self.groups):
            p = _producer(topology, g, modules)
            rows.append(
                [
                    t,
                    p["type"],
                    p["in_channels"],
                    float(g.channels),
                    p["stride"],
                    p["kernel"],
                    float(getattr(g, "params_per_channel", 0) or 0) * g.channels,
                ]
            )
        static = np.asarray(rows, dtype=np.float64).reshape(len(self.groups), 7)  # (groups, 7)
        lo, hi = static.min(0), static.max(0)
        self.static = (static - lo) / np.where(hi > lo, hi - lo, 1.0)
        macs = np.asarray([float(getattr(g, "macs_per_channel", 0) or 0) * g.channels for g in self.groups])
        total = macs.sum() or 1.0
        self.rest = np.asarray([macs[t + 1 :].sum() / total for t in range(len(self.groups))])

    def row(self, t: int, keep_ratios: Mapping[str, float]) -> np.ndarray:
        """State of step t: groups before t pruned to `keep_ratios`, group t and later untouched."""
        keep = full_keep(self.topology)
        for g in self.groups[:t]:
            keep[g.name] = max(1, int(round(keep_ratios.get(g.name, 1.0) * g.channels)))
        reduced = (self.base - keep_macs(self.topology, keep)) / self.base
        prev = keep_ratios.get(self.groups[t - 1].name, 1.0) if t > 0 else 1.0
        return np.concatenate([self.static[t], [reduced, self.rest[t], prev]]).astype(np.float32)


def amc_state_features(
    topology: Any,
    *,
    model: nn.Module | None = None,
    keep_ratios: Mapping[str, float] | Sequence[float] | None = None,
) -> torch.Tensor:
    """AMC's 10 hand-made features for every prunable group (rows in topology order).

    Columns (see AMC_FEATURES): index, type (conv 0 / linear 1), in_channels, out_channels, stride, kernel and
    #weights of the group's first producing layer (min-max normalised over groups), then MACs already removed
    by the groups before it / total, MACs share of the groups after it, and the previous group's keep ratio.

    Args:
        topology: The baseline's Topology.
        model: The model (for kernel/stride/in_channels); read from the topology graph when None.
        keep_ratios: Keep ratios of groups already decided (name -> ratio, or a sequence in prunable-group
            order); row t only uses the ratios of groups before t. None = nothing pruned yet.

    Returns:
        Float tensor (n_prunable_groups, 10).
    """
    feats = AmcFeatures(topology, model=model)
    if keep_ratios is None:
        ratios: dict[str, float] = {}
    elif isinstance(keep_ratios, Mapping):
        ratios = {k: float(v) for k, v in keep_ratios.items()}
    else:
        ratios = {g.name: float(r) for g, r in zip(feats.groups, keep_ratios, strict=False)}
    rows = [feats.row(t, ratios) for t in range(len(feats.groups))]
    return torch.as_tensor(np.stack(rows) if rows else np.zeros((0, 10)), dtype=torch.float32)


def action_wall(
    topology: Any,
    groups: Sequence[Any],
    t: int,
    ratios: Mapping[str, float],
    target_macs: float,
    *,
    lbound: float,
) -> float:
    """Largest keep ratio of group t that still lets the budget be met if every later group keeps `lbound`."""
    g = groups[t]
    keep = full_keep(topology)
    for h in groups[:t]:
        keep[h.name] = max(1, int(round(ratios[h.name] * h.channels)))
    for h in groups[t + 1 :]:
        keep[h.name] = max(1, int(math.ceil(lbound * h.channels)))
    lo, hi = max(1, int(math.ceil(lbound * g.channels))), int(g.channels)
    if keep_macs(topology, {**keep, g.name: hi}) <= target_macs:
        return 1.0
    while lo < hi:  # largest count whose MACs fit
        mid = (lo + hi + 1) // 2
        if keep_macs(topology, {**keep, g.name: mid}) <= target_macs:
            lo = mid
        else:
            hi = mid - 1
    return lo / g.channels


def _reward(val_acc: float) -> float:
    """AMC's resource-constrained reward: -val error (fraction)."""
    return -(100.0 - val_acc) / 100.0


class AmcSearch(SearchMethod):
    """DDPG over per-group keep ratios, one group per step, from AMC's 10-feature state (engine.search protocol).

    Resumable state: the agent (networks, optimisers, replay memory, reward baseline, its RNG), the noise RNG
    and the episode counter.
    """

    name = NAME

    def __init__(self, ctx: MethodContext, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        if options["lbound"] >= options["rbound"]:
            raise ValueError(f"lbound ({options['lbound']}) must be below rbound ({options['rbound']})")
        self.feats = AmcFeatures(ctx.topology, model=ctx.model)
        self.groups = self.feats.groups
        if not self.groups:
            raise BudgetError("the model has no prunable channel group; AMC has nothing to act on")
        self.target = ctx.budget * self.feats.base
        self.agent = DDPGAgent(
            DDPGConfig(
                hidden=options["hidden"],
                lr_actor=options["lr_actor"],
                lr_critic=options["lr_critic"],
                tau=options["tau"],
                batch_size=options["batch_size"],
                discount=options["discount"],
                memory_size=100 * len(self.groups),
            ),
            seed=ctx.seed,
        )
        self.rng = np.random.default_rng(
            (ctx.seed, 0x414D43)
        )  # own stream: warm-up must not replay `random`'s
        self.episode = 0
        self._pending: list[list[tuple[np.ndarray, float, np.ndarray, bool]]] = []

    @property
    def finished(self) -> bool:
        return self.episode >= self.options["episodes"]

    def _episode(self) -> Proposal:
        o = self.options
        lbound, rbound, warmup, episode = o["lbound"], o["rbound"], o["warmup"], self.episode
        ratios: dict[str, float] = {}
        transitions: list[tuple[np.ndarray, float, np.ndarray, bool]] = []
        sigma = o["init_delta"] * o["delta_decay"] ** max(0, episode - warmup)
        state = self.feats.row(0, ratios)
        for t, g in enumerate(self.groups):
            if episode < warmup:
                action = float(self.rng.uniform(lbound, rbound))
            else:
                action = truncated_normal(self.agent.act(state), sigma, lbound, rbound, self.rng)
            action = min(
                action,
                action_wall(
                    self.ctx.topology, self.groups, t, {**ratios, g.name: action}, self.target, lbound=lbound
                ),
            )
            ratios[g.name] = action
            done = t == len(self.groups) - 1
            next_state = state if done else self.feats.row(t + 1, ratios)
            transitions.append((state, action, next_state, done))
            state = next_state
        self._pending.append(transitions)
        self.episode += 1
        meta = {"sigma": sigma, "warmup": episode < warmup}
        try:
            plan = fit_ratios_to_budget(
                self.ctx, ratios, method=NAME, min_keep_ratio=min(lbound, 0.05), meta={"episode": episode}
            )
        except BudgetError:
            return Proposal(None, meta)
        return Proposal(plan, meta)

    def propose(self, n: int = 1) -> list[Proposal]:
        out = []
        while len(out) < n and not self.finished:
            out.append(self._episode())
        return out

    def observe(self, scored: Sequence[Scored]) -> list[float | None]:
        pending, self._pending = self._pending, []
        rewards: list[float | None] = []
        for s, transitions in zip(scored, pending, strict=True):
            if s.val_acc is None:
                rewards.append(None)
                continue
            reward = _reward(s.val_acc)
            rewards.append(reward)
            self.agent.learn_episode(transitions, reward, update=not s.proposal.meta["warmup"])
        return rewards

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "rng": rng_state(self.rng), "episode": self.episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        set_rng_state(self.rng, state["rng"])
        self.episode = int(state["episode"])
        self._pending = []


SPEC = MethodSpec(
    name=NAME,
    description="AMC: a DDPG agent sets each group's keep ratio in sequence from a 10-feature state, with the "
    "action wall guaranteeing the MACs budget and reward = -val error.",
    kind="search",
    options={
        "episodes": OptionSpec("episodes", int, 40, "episodes (scored candidates); AMC used 800", min=1),
        "warmup": OptionSpec(
            "warmup", int, 10, "episodes of uniform-random actions first; AMC used 100", min=0
        ),
        "lbound": OptionSpec("lbound", float, 0.2, "smallest keep ratio of a group", min=0.01, max=1.0),
        "rbound": OptionSpec("rbound", float, 1.0, "largest keep ratio of a group", min=0.01, max=1.0),
        "init_delta": OptionSpec(
            "init_delta", float, 0.5, "initial std of the truncated-normal noise", min=0.0
        ),
        "delta_decay": OptionSpec(
            "delta_decay", float, 0.95, "noise decay per episode after warm-up", min=0.0, max=1.0
        ),
        "hidden": OptionSpec("hidden", int, 300, "hidden units of actor and critic", min=1),
        "lr_actor": OptionSpec("lr_actor", float, 1e-4, "actor learning rate", min=0.0),
        "lr_critic": OptionSpec("lr_critic", float, 1e-3, "critic learning rate", min=0.0),
        "tau": OptionSpec("tau", float, 0.01, "soft target update rate", min=0.0, max=1.0),
        "batch_size": OptionSpec("batch_size", int, 64, "DDPG minibatch size", min=1),
        "discount": OptionSpec("discount", float, 1.0, "discount factor", min=0.0, max=1.0),
    },
    searcher=AmcSearch,
)
