"""`ajpq`: joint channel pruning and mixed-precision quantization (Tang, Wei, Li, arXiv 2011.06231), scaled for CPU.

Pruning a channel is quantizing it to 0 bits. One DDPG agent (engine.methods.ddpg, as in AMC) alternates two
controllers per prunable group, HAQ-style (a toggle in the state says which one acts): the layer controller
picks the group's keep ratio, the channel controller its top bit-width; both follow one L1 ranking of the
group's channels, so the least important kernels get 0 bits and, among the kept ones, the fewest bits (a
monotone curve over `buckets` importance quantiles). An action wall keeps the size budget reachable at every
step; a final wall and fill land the plan within 1% under it. Reward = -val error of the fake-quantized
candidate under the shared scorer. Modes: `joint` (default), `fixed` (every kept kernel at 8 bits, sparsity
only: the paper's fixed precision) and `quant` (bits only, no pruning: the HAQ-like quantization-only
baseline). The two-step baseline (prune to a budget, then uniform bits) is the one-shot `prune-quantize`.
Plans carry explicit kept indices and bits (0-bit channels already removed), so every plan tool reads them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import BudgetError
from engine.methods.amc import AmcFeatures
from engine.methods.candidates import check_on_budget, prunable_groups, stamp
from engine.methods.ddpg import DDPGAgent, DDPGConfig, truncated_normal
from engine.methods.registry import MethodContext, MethodResult, MethodSpec, OptionSpec
from engine.pruning.budget import TOLERANCE, Budget
from engine.pruning.plan import GroupPlan, PruningPlan
from engine.quant import MAX_BITS, MIN_BITS
from engine.quant_cost import group_quant_cost
from engine.search.protocol import Proposal, Scored, SearchMethod, rng_state, set_rng_state

NAME = "ajpq"
TWO_STEP = "prune-quantize"
MODES = ("joint", "fixed", "quant")
FIXED_BITS = 8
STATE_DIM = 13  # AMC's 10 features + [controller toggle, size used / target, previous top bits]


def group_importance(ctx: MethodContext, groups: Sequence[Any]) -> dict[str, np.ndarray]:
    """One L1 ranking per group, shared by both controllers (the paper's "same importance criterion")."""
    from engine.pruning import channel_scores

    return {
        g.name: channel_scores(ctx.model, ctx.topology, g.name, criterion="l1").double().numpy()
        for g in groups
    }


def bucket_bits(n_keep: int, top: int, *, buckets: int, spread: int, low: int = MIN_BITS) -> list[int]:
    """Widths of `n_keep` kept channels sorted by rising importance: `buckets` quantiles, the most important
    at `top` bits, each less important bucket lower, down to top - spread (never below `low`)."""
    out = []
    for rank in range(n_keep):
        bucket = min(buckets - 1, rank * buckets // max(n_keep, 1))
        drop = 0 if buckets == 1 else int(round(spread * (buckets - 1 - bucket) / (buckets - 1)))
        out.append(max(low, top - drop))
    return out


class JointPlanner:
    """Turns per-group (keep count, top bits, bucket widths) into sizes and plans for one model and budget."""

    def __init__(self, ctx: MethodContext, options: dict[str, Any]) -> None:
        self.ctx, self.topology = ctx, ctx.topology
        self.mode = options["mode"]
        self.buckets, self.spread = options["buckets"], options["spread"]
        self.groups = prunable_groups(ctx.topology)
        self.fixed_groups = [g for g in ctx.topology.groups if not g.prunable]
        self.importance = group_importance(ctx, self.groups)
        self.order = {name: np.argsort(-imp, kind="stable") for name, imp in self.importance.items()}
        self.base = Budget("size").baseline(ctx.topology)
        self.target = ctx.budget * self.base
        self.low_keep = 1.0 if self.mode == "quant" else options["lbound"]
        self.min_top = FIXED_BITS if self.mode == "fixed" else MIN_BITS
        self._kept = ctx.topology.keep_vector({}).astype(np.float64)  # (groups,) every group whole ...
        self._total = self._kept * FIXED_BITS  # ... at 8 bits (non-prunable groups stay so)
        self._quantized = np.ones(len(self._kept), dtype=bool)

    def min_count(self, g: Any) -> int:
        return g.channels if self.mode == "quant" else max(1, int(math.ceil(self.low_keep * g.channels)))

    def widths(self, g: Any, n_keep: int, top: int) -> list[int]:
        """Per kept channel (rising importance) widths: fixed mode 8 everywhere, else the bucket curve."""
        if self.mode == "fixed":
            return [FIXED_BITS] * n_keep
        return bucket_bits(n_keep, top, buckets=self.buckets, spread=self.spread)

    def bits_map(self, counts: dict[str, int], widths: dict[str, list[int]]) -> dict[str, list[int]]:
        """Group -> one width per channel in channel order (0 = pruned), every group of the topology."""
        out = {}
        for g in self.groups:
            per = np.zeros(g.channels, dtype=int)
            kept = self.order[g.name][: counts[g.name]][::-1]  # rising importance
            per[kept] = widths[g.name]
            out[g.name] = per.tolist()
        for g in self.fixed_groups:  # not prunable, still quantizable: kept whole at 8 bits
            out[g.name] = [FIXED_BITS] * g.channels
        return out

    def size(self, counts: dict[str, int], widths: dict[str, list[int]]) -> float:
        """Size in bytes of a (counts, widths) profile (vectorised: only counts and width sums matter)."""
        kept, total = self._kept.copy(), self._total.copy()
        for g in self.groups:
            kept[g.index], total[g.index] = counts[g.name], sum(widths[g.name])
        return group_quant_cost(self.topology, kept, total, self._quantized).size_bits / 8.0

    def floor(self) -> float:
        """The smallest size this planner can reach: every group at its minimum keep and minimum bits."""
        counts = {g.name: self.min_count(g) for g in self.groups}
        return self.size(counts, {g.name: self.widths(g, counts[g.name], self.min_top) for g in self.groups})

    def check_reachable(self) -> None:
        floor = self.floor()
        if floor > self.target * (1 + 1e-9):
            what = {
                "joint": f"at keep ratio {self.low_keep} and {MIN_BITS} bits",
                "fixed": f"at keep ratio {self.low_keep} and {FIXED_BITS} bits",
                "quant": f"unpruned at {MIN_BITS} bits",
            }[self.mode]
            raise BudgetError(
                f"size budget {self.ctx.budget} is below what {self.mode!r} AJPQ can reach: every group {what} "
                f"keeps {floor / self.base:.4f} of the fp32 weight bytes; raise the budget"
                + ("" if self.mode == "quant" else " or lower lbound")
            )

    def land(
        self, counts: dict[str, int], tops: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, list[int]]]:
        """HAQ's final action wall, then a fill: lower widths (least important buckets, back to front), then
        channels, until the size fits; then give back bits and channels while they fit (within 1% under)."""
        counts, widths = (
            dict(counts),
            {g.name: self.widths(g, counts[g.name], tops[g.name]) for g in self.groups},
        )
        size = self.size(counts, widths)
        backwards = list(reversed(self.groups))
        while size > self.target:
            changed = False
            for g in backwards:  # one step per group per sweep, from the back
                w = widths[g.name]
                if self.mode != "fixed" and w and max(w) > MIN_BITS:
                    v = min(
                        b for b in w if b > MIN_BITS
                    )  # the least important bucket above the floor: -1 bit
                    widths[g.name] = [b - 1 if b == v else b for b in w]
                elif counts[g.name] > self.min_count(g):
                    counts[g.name] -= 1
                    widths[g.name] = w[1:]  # the least important kept kernel goes to 0 bits
                else:
                    continue
                changed = True
                size = self.size(counts, widths)
                if size <= self.target:
                    break
            if not changed:
                raise BudgetError(
                    f"the size budget {self.ctx.budget} cannot be met under the keep and bit bounds; "
                    "raise the budget or lower lbound"
                )
        return self._fill(counts, widths, size)

    def _fill(self, counts: dict[str, int], widths: dict[str, list[int]], size: float):
        """Give back slack while it fits, alternating sweeps of channels and bits so the agent's profile keeps
        its shape (AMC scales its ratios onto the budget the same way): coarse steps (a twentieth of a group's
        channels, a whole bucket +1 bit), then single channels and kernels; bit curves stay monotone."""
        kinds = {"joint": ("channels", "bits"), "fixed": ("channels",), "quant": ("bits",)}[self.mode]
        for coarse in (True, False):
            grown = True
            while grown and size < self.target * (1 - TOLERANCE / 4):
                grown = False
                for kind in kinds:
                    for g in self.groups:
                        trial = self._grow(g, counts, widths, kind=kind, coarse=coarse)
                        if trial is None:
                            continue
                        trial_size = self.size(*trial)
                        if trial_size <= self.target:
                            (counts, widths), size, grown = trial, trial_size, True
        return counts, widths

    def _grow(self, g: Any, counts: dict[str, int], widths: dict[str, list[int]], *, kind: str, coarse: bool):
        w = list(widths[g.name])
        top, low = max(w), min(w)
        c = dict(counts)
        if kind == "channels":
            room = g.channels - c[g.name]
            if room <= 0:
                return None
            n = min(room, max(1, g.channels // 20)) if coarse else 1
            c[g.name] += n
            w = [low] * n + w  # the best pruned channels come back at the lowest width kept
        elif low < top:
            if coarse:
                w = [b + 1 if b == low else b for b in w]
            else:
                w[max(i for i, b in enumerate(w) if b == low)] += 1
        elif top < MAX_BITS:
            w[-1] += 1
        else:
            return None
        return c, {**widths, g.name: w}

    def plan(
        self, counts: dict[str, int], widths: dict[str, list[int]], *, method: str, meta: dict[str, Any]
    ) -> PruningPlan:
        """The plan: kept indices (sorted) with their widths; non-prunable groups whole at 8 bits."""
        groups = {}
        for g in self.groups:
            kept = self.order[g.name][: counts[g.name]][::-1]
            width_of = dict(zip(kept.tolist(), widths[g.name], strict=True))
            idx = sorted(width_of)
            groups[g.name] = GroupPlan(len(idx), g.channels, idx, [width_of[i] for i in idx])
        for g in self.fixed_groups:
            groups[g.name] = GroupPlan(g.channels, g.channels, None, [FIXED_BITS] * g.channels)
        plan = PruningPlan(self.topology.model_name, groups=groups, criterion="l1", method=method)
        bits_used = [b for w in widths.values() for b in w]
        meta = {
            **meta,
            "mode": self.mode,
            "mean_bits": float(np.mean(bits_used)) if bits_used else 0.0,
            "size_ratio": self.size(counts, widths) / self.base,
        }
        return stamp(plan, method=method, budget=Budget("size", self.ctx.budget), meta=meta)


class AjpqSearch(SearchMethod):
    """One DDPG agent, two alternating controllers per group (keep ratio, top bits); see the module docstring.

    Resumable state: the agent (networks, optimisers, replay memory, reward baseline, its RNG), the noise RNG
    and the episode counter.
    """

    name = NAME

    def __init__(self, ctx: MethodContext, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        if ctx.budget_metric != "size":
            raise BudgetError(
                f"ajpq lands on a 'size' budget (weight bytes), not {ctx.budget_metric!r}; "
                "pass --budget-metric size"
            )
        if options["lbound"] >= options["rbound"]:
            raise ValueError(f"lbound ({options['lbound']}) must be below rbound ({options['rbound']})")
        self.planner = JointPlanner(ctx, options)
        self.groups = self.planner.groups
        if not self.groups:
            raise BudgetError("the model has no prunable channel group; AJPQ has nothing to act on")
        self.planner.check_reachable()
        self.feats = AmcFeatures(ctx.topology, model=ctx.model)
        self.agent = DDPGAgent(
            DDPGConfig(
                state_dim=STATE_DIM,
                hidden=options["hidden"],
                lr_actor=options["lr_actor"],
                lr_critic=options["lr_critic"],
                tau=options["tau"],
                batch_size=options["batch_size"],
                discount=1.0,
                memory_size=200 * len(self.groups),
            ),
            seed=ctx.seed,
        )
        self.rng = np.random.default_rng((ctx.seed, 0x414A5051))  # own stream ("AJPQ")
        self.episode = 0
        self._pending: list[list[tuple[np.ndarray, float, np.ndarray, bool]]] = []

    @property
    def finished(self) -> bool:
        return self.episode >= self.options["episodes"]

    # -- one episode ----------------------------------------------------------------------------------
    def _state(
        self, t: int, ratios: dict[str, float], controller: int, used: float, prev_top: float
    ) -> np.ndarray:
        row = self.feats.row(t, ratios)
        return np.concatenate([row, [controller, used, prev_top / MAX_BITS]]).astype(np.float32)

    def _profile(self, t: int, counts: dict[str, int], tops: dict[str, int]) -> tuple[dict, dict]:
        """Groups < t as decided (and group t where set), later groups at their minimum: the wall's worst case."""
        p = self.planner
        c = {
            g.name: counts.get(g.name, p.min_count(g)) if i <= t else p.min_count(g)
            for i, g in enumerate(self.groups)
        }
        top = {
            g.name: tops.get(g.name, p.min_top) if i <= t else p.min_top for i, g in enumerate(self.groups)
        }
        return c, {g.name: p.widths(g, c[g.name], top[g.name]) for g in self.groups}

    def _wall_keep(self, t: int, counts: dict[str, int], tops: dict[str, int]) -> int:
        """Largest keep count of group t that still lets every later group fit at its minimum."""
        g, p = self.groups[t], self.planner
        lo, hi = p.min_count(g), g.channels
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if p.size(*self._profile(t, {**counts, g.name: mid}, {**tops, g.name: p.min_top})) <= p.target:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _wall_top(self, t: int, counts: dict[str, int], tops: dict[str, int]) -> int:
        g, p = self.groups[t], self.planner
        top = MAX_BITS
        while top > MIN_BITS and p.size(*self._profile(t, counts, {**tops, g.name: top})) > p.target:
            top -= 1
        return top

    def _act(self, state: np.ndarray, low: float, high: float, sigma: float, warm: bool) -> float:
        if warm:
            return float(self.rng.uniform(low, high))
        return truncated_normal(self.agent.act(state), sigma, low, high, self.rng)

    def _episode(self) -> Proposal:
        o, p = self.options, self.planner
        warm = self.episode < o["warmup"]
        sigma = o["init_delta"] * o["delta_decay"] ** max(0, self.episode - o["warmup"])
        ratios: dict[str, float] = {}
        counts: dict[str, int] = {}
        tops: dict[str, int] = {}
        steps: list[np.ndarray] = []
        actions: list[float] = []
        prev_top = float(MAX_BITS)
        for t, g in enumerate(self.groups):
            used = p.size(*self._profile(t - 1, counts, tops)) / p.target if t else 0.0
            if p.mode != "quant":  # layer controller: keep ratio, walled
                state = self._state(t, ratios, 0, used, prev_top)
                a = self._act(state, o["lbound"], o["rbound"], sigma, warm)
                wall = self._wall_keep(t, counts, tops) / g.channels
                a = min(a, wall)
                counts[g.name] = max(p.min_count(g), min(g.channels, int(round(a * g.channels))))
                ratios[g.name] = counts[g.name] / g.channels
                steps.append(state)
                actions.append(a)
            else:
                counts[g.name] = g.channels
                ratios[g.name] = 1.0
            if p.mode != "fixed":  # channel controller: top bits of the kept kernels, walled
                state = self._state(t, ratios, 1, used, prev_top)
                a = self._act(state, 0.0, 1.0, sigma, warm)
                top = int(round(MIN_BITS - 0.5 + (MAX_BITS - MIN_BITS + 1) * a))  # HAQ's lb-0.5 .. rb+0.5
                top = min(max(MIN_BITS, min(MAX_BITS, top)), self._wall_top(t, counts, tops))
                tops[g.name] = top
                prev_top = float(top)
                steps.append(state)
                actions.append(a)
            else:
                tops[g.name] = FIXED_BITS
        transitions = [
            (s, a, steps[i + 1] if i + 1 < len(steps) else s, i + 1 == len(steps))
            for i, (s, a) in enumerate(zip(steps, actions, strict=True))
        ]
        self._pending.append(transitions)
        episode, self.episode = self.episode, self.episode + 1
        meta = {"sigma": sigma, "warmup": warm, "keep_ratios": dict(ratios), "top_bits": dict(tops)}
        try:
            final_counts, widths = p.land(counts, tops)
        except BudgetError:
            return Proposal(None, meta)
        return Proposal(p.plan(final_counts, widths, method=NAME, meta={"episode": episode}), meta)

    # -- protocol -------------------------------------------------------------------------------------
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
            reward = -(100.0 - s.val_acc) / 100.0  # -val error as AMC; HAQ's 0.1*(acc - acc_fp) differs by an
            rewards.append(reward)  # affine map, which the agent's moving-average baseline absorbs
            self.agent.learn_episode(transitions, reward, update=not s.proposal.meta["warmup"])
        return rewards

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict(), "rng": rng_state(self.rng), "episode": self.episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        set_rng_state(self.rng, state["rng"])
        self.episode = int(state["episode"])
        self._pending = []

    def summary(self) -> dict[str, Any]:
        return {"mode": self.options["mode"]}


# -- the two-step baseline ---------------------------------------------------------------------------------
def prune_then_quantize(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """Prune with `prune_method` to the fp32 size that `bits`-bit weights bring onto the size budget, then
    quantize every kept kernel uniformly at `bits` (the sequential baseline AJPQ claims to beat).

    The pruning fraction is corrected by secant steps, because biases and BN stay at 32 bits.

    Raises:
        BudgetError: the budget is not a size budget, or unreachable (pruning cannot go low enough).
    """
    from engine.methods.registry import run_method
    from engine.quant import uniform_bits

    if ctx.budget_metric != "size":
        raise BudgetError(
            f"{TWO_STEP} lands on a 'size' budget, not {ctx.budget_metric!r}; pass --budget-metric size"
        )
    bits, target = options["bits"], ctx.budget
    size = Budget("size", target)
    fraction = min(1.0, target * 32 / bits)
    tried = []
    for _ in range(4):
        sub = dataclasses.replace(
            ctx, budget=fraction, budget_metric="size", store=None, run_id=None, callback=None, resume=False
        )
        pruned = run_method(options["prune_method"], sub) if fraction < 1.0 else None
        base = pruned.plan if pruned is not None else PruningPlan(ctx.topology.model_name, keep={})
        plan = uniform_bits(base, ctx.topology, bits)
        ratio = size.ratio(ctx.topology, plan)
        tried.append((ratio, fraction, plan))
        if ratio <= target and (ratio >= target * (1 - TOLERANCE) or fraction >= 1.0):
            break
        fraction = min(1.0, fraction * target / ratio * (1 - TOLERANCE / 4))
    fits = [t for t in tried if t[0] <= target * (1 + 1e-9)]
    if not fits:
        raise BudgetError(
            f"{TWO_STEP} could not bring {options['prune_method']} at {bits} bits under a size "
            f"budget of {target}; raise the budget or the bits"
        )
    ratio, fraction, plan = max(fits, key=lambda t: t[0])
    plan = stamp(
        plan,
        method=TWO_STEP,
        budget=size,
        meta={
            "bits": bits,
            "prune_method": options["prune_method"],
            "prune_fraction": fraction,
            "size_ratio": ratio,
        },
    )
    acc = ctx.score(plan)
    from engine.methods.candidates import macs_ratio
    from engine.methods.registry import Candidate

    cand = Candidate(
        index=0, plan=plan, val_acc=acc, macs_ratio=macs_ratio(ctx.topology, plan), meta={"size_ratio": ratio}
    )
    if ratio >= target * (1 - TOLERANCE):
        check_on_budget(ctx, plan, TWO_STEP)
    return MethodResult(
        method=TWO_STEP,
        plan=plan,
        val_acc=acc,
        macs_ratio=cand.macs_ratio,
        candidates=[cand],
        meta={"size_ratio": ratio, "prune_fraction": fraction, "bits": bits},
    )


SPECS = (
    MethodSpec(
        name=NAME,
        description="AJPQ: one DDPG agent sets each group's keep ratio (layer controller) and its kernels' "
        "bit-widths over importance buckets (channel controller); 0 bits = pruned; reward = -val error of the "
        "fake-quantized candidate under a size budget (modes: joint, fixed 8-bit, quant-only).",
        kind="search",
        options={
            "episodes": OptionSpec("episodes", int, 40, "episodes (scored candidates)", min=1),
            "warmup": OptionSpec("warmup", int, 10, "episodes of uniform-random actions first", min=0),
            "mode": OptionSpec(
                "mode",
                str,
                "joint",
                "joint (prune + mixed bits), fixed (8-bit, sparsity only) or quant (mixed bits, no pruning)",
                choices=MODES,
            ),
            "buckets": OptionSpec(
                "buckets", int, 4, "importance buckets per group for the bit curve", min=1, max=16
            ),
            "spread": OptionSpec(
                "spread", int, 2, "bits fewer for the least important bucket than the top one", min=0, max=6
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
        },
        searcher=AjpqSearch,
        budget_metrics=("size",),
    ),
    MethodSpec(
        name=TWO_STEP,
        description="Two-step baseline for AJPQ: prune with a method to a size budget, then quantize every kept "
        "kernel uniformly (8 or 4 bits) so the quantized model meets the size budget.",
        kind="oneshot",
        options={
            "prune_method": OptionSpec(
                "prune_method",
                str,
                "magnitude",
                "pruning method of the first step (any method that lands on a size budget)",
            ),
            "bits": OptionSpec(
                "bits", int, 8, "uniform bit-width of the second step", choices=(2, 3, 4, 5, 6, 8)
            ),
        },
        fn=prune_then_quantize,
        budget_metrics=("size",),
    ),
)
