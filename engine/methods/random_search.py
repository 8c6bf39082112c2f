"""`random`: sample N random keep-ratio profiles, land each on the budget, keep the best on val.

A baseline for the search methods: same scorer, same number of scored candidates, no learning. It runs through
the one search driver (engine.search), so it is recorded, steppable and resumable like every search method;
its resumable state is the sampling generator and the count of profiles drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import BudgetError
from engine.methods.candidates import fit_ratios_to_budget, prunable_groups
from engine.methods.registry import MethodSpec, OptionSpec
from engine.search.protocol import Proposal, Scored, SearchMethod, rng_state, set_rng_state

NAME = "random"
MAX_DRAWS_PER_PLAN = 50  # profiles that cannot be landed are redrawn, at most this many times per plan


class RandomSearch(SearchMethod):
    """Uniform keep ratios in [min_keep_ratio, 1] per group, scaled onto the budget."""

    name = NAME

    def __init__(self, ctx: Any, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.groups = prunable_groups(ctx.topology)
        self.rng = np.random.default_rng(ctx.seed)
        self.proposed = 0

    @property
    def finished(self) -> bool:
        return self.proposed >= self.options["episodes"]

    def propose(self, n: int = 1) -> list[Proposal]:
        out = []
        lo = self.options["min_keep_ratio"]
        while len(out) < n and not self.finished:
            for _ in range(MAX_DRAWS_PER_PLAN):
                ratios = {g.name: float(self.rng.uniform(lo, 1.0)) for g in self.groups}
                try:
                    plan = fit_ratios_to_budget(
                        self.ctx, ratios, method=NAME, min_keep_ratio=lo, meta={"sample": self.proposed}
                    )
                    break
                except BudgetError:
                    continue  # this profile cannot be scaled onto the budget under the bounds; draw another
            else:
                raise BudgetError(
                    f"{MAX_DRAWS_PER_PLAN} random profiles in a row could not be landed on the budget "
                    f"{self.ctx.budget}; lower min_keep_ratio or raise the budget"
                )
            out.append(Proposal(plan, {"sample": self.proposed}))
            self.proposed += 1
        return out

    def observe(self, scored: Sequence[Scored]) -> list[float | None]:
        return [s.val_acc for s in scored]  # no learning: the reward is the val accuracy itself

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "proposed": self.proposed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])
        self.proposed = int(state["proposed"])


SPEC = MethodSpec(
    name=NAME,
    description="N random per-group keep-ratio profiles scaled onto the budget; the best on val wins.",
    kind="search",
    options={
        "episodes": OptionSpec("episodes", int, 40, "number of random plans scored (one per episode)", min=1),
        "min_keep_ratio": OptionSpec(
            "min_keep_ratio", float, 0.2, "smallest keep ratio sampled per group", min=0.01, max=1.0
        ),
    },
    searcher=RandomSearch,
    budget_metrics=("macs", "params", "memory", "latency", "size"),
)
