"""`ga`: genetic channel selection (Hu, Sun, Li, Wang, Gu, arXiv 1805.11394) as a search on the driver.

Per-group amounts come from the sensitivity curves (engine.sensitivity, allocation landed on the budget; or
uniform). Then group by group, input to output, a pygad GA runs over keep masks with exactly k_g ones: the L1
top-k seeds the population beside random feasible masks; tournament selection, uniform crossover and a swap
mutation, each followed by our repair to exactly k ones; elitism. Two-step fitness: step 1 (every individual)
is the least-squares reconstruction error of the group's consumers (engine.ga_fitness, features of the net
pruned so far); step 2 (the elite only) is val top-1, scored by the driver: each elite is proposed as a full plan
(groups done: their chosen masks; this group: the elite; groups to come: L1 top-k at their amounts), so every
candidate has the same amounts and lands on the budget. When every elite of a group is scored the best on val
is committed and the next group starts. One group's GA runs inside one `propose`; the state (amounts, committed
masks, pending elites, the group's final population, per-generation fitness, RNG) is saved after every batch.
Not done: the paper's short fine-tune between groups (a plan is scored on the baseline's weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.methods.candidates import fit_ratios_to_budget, prunable_groups
from engine.methods.plans import plan_with_indices
from engine.methods.registry import MethodSpec, OptionSpec
from engine.pruning.budget import METRICS
from engine.search.protocol import Proposal, Scored, SearchMethod, rng_state, set_rng_state

NAME = "ga"


def repair(mask: np.ndarray, k: int, rng: Any) -> np.ndarray:
    """`mask` (0/1) with exactly k ones: random ones switched off, or random zeros switched on."""
    mask = (np.asarray(mask) > 0).astype(np.int64)
    ones, zeros = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    if ones.size > k:
        mask[rng.choice(ones, ones.size - k, replace=False)] = 0
    elif ones.size < k:
        mask[rng.choice(zeros, k - ones.size, replace=False)] = 1
    return mask


def amounts_for_budget(ctx: Any, options: dict[str, Any]) -> dict[str, int]:
    """Channels kept per prunable group: sensitivity-allocated (or uniform) keep ratios landed on the budget."""
    groups = prunable_groups(ctx.topology)
    if options["allocation"] == "sensitivity":
        from engine.methods.sensitivity_guided import allocate_greedy
        from engine.sensitivity import analyze_sensitivity

        step = options["grid_step"]
        grid = [round(1.0 - step * i, 6) for i in range(1, int(round(1.0 / step)))]
        table = analyze_sensitivity(
            ctx.model,
            ctx.topology,
            ctx.data,
            keep_ratios=grid,
            scorer=ctx.get_scorer(),
            round_to=ctx.round_to,
        )
        ratios = allocate_greedy(ctx.topology, table, ctx.budget_spec)
    else:
        ratios = {g.name: 1.0 for g in groups}
    plan = fit_ratios_to_budget(ctx, ratios, method=NAME, min_keep_ratio=options["min_keep_ratio"])
    return {g.name: int(plan.keep.get(g.name, g.channels)) for g in groups}


class GASearch(SearchMethod):
    """Group-by-group GA over fixed-k masks (see the module docstring)."""

    name = NAME

    def __init__(self, ctx: Any, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.rng = np.random.default_rng(ctx.seed)
        self.keep: dict[str, int] | None = None
        self.order: list[str] = []
        self.position = 0  # index into order of the group being chosen
        self.committed: dict[str, list[int]] = {}
        self.pending: list[dict[str, Any]] = []  # elites of the current group awaiting their val score
        self.scored: list[dict[str, Any]] = []  # elites of the current group with their val
        self.population: list[list[int]] = []
        self.groups_log: list[dict[str, Any]] = []  # per group: fitness per generation, chosen channels
        self._l1: dict[str, list[int]] = {}
        self._calib = None
        self._base_inputs: dict | None = None

    # -- the protocol --------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.order) * self.options["elite"] if self.order else 0

    @property
    def finished(self) -> bool:
        return self.keep is not None and self.position >= len(self.order) and not self.pending

    def propose(self, n: int = 1) -> list[Proposal]:
        self._ensure_amounts()
        while not self.pending and self.position < len(self.order):
            self._run_group()
            if not self.pending:  # nothing to choose (no consumer to fit): L1 top-k, next group
                self._commit(self._l1_mask(self.order[self.position]), None)
        out = []
        while self.pending and len(out) < n:
            elite = self.pending.pop(0)
            name = self.order[self.position]
            channels = [int(c) for c in np.flatnonzero(np.asarray(elite["mask"]))]
            plan = self._plan({name: channels})
            out.append(Proposal(plan, {"group": name, "elite": elite["rank"], "fitness": elite["fitness"]}))
            self.scored.append(elite)
        return out

    def observe(self, scored: Sequence[Scored]) -> list[float | None]:
        for s in scored:
            rank = s.proposal.meta["elite"]
            for e in self.scored:
                if e["rank"] == rank and "val" not in e:
                    e["val"] = float(s.val_acc) if s.val_acc is not None else float("-inf")
                    break
        if not self.pending and self.scored and all("val" in e for e in self.scored):
            best = max(self.scored, key=lambda e: (e["val"], e["fitness"], -e["rank"]))
            self._commit(best["mask"], [e["val"] for e in self.scored])
        return [s.val_acc for s in scored]

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": rng_state(self.rng),
            "keep": self.keep,
            "order": list(self.order),
            "position": self.position,
            "committed": self.committed,
            "pending": self.pending,
            "scored": self.scored,
            "population": self.population,
            "groups_log": self.groups_log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])
        self.keep = state["keep"]
        self.order = list(state["order"])
        self.position = int(state["position"])
        self.committed = {k: list(v) for k, v in state["committed"].items()}
        self.pending, self.scored = list(state["pending"]), list(state["scored"])
        self.population = [list(p) for p in state["population"]]
        self.groups_log = list(state["groups_log"])

    def summary(self) -> dict[str, Any]:
        return {"ga_groups": self.groups_log, "ga_keep": self.keep or {}}

    # -- internals -----------------------------------------------------------------------------------
    def _ensure_amounts(self) -> None:
        if self.keep is None:
            self.keep = amounts_for_budget(self.ctx, self.options)
            groups = {g.name: g for g in prunable_groups(self.ctx.topology)}
            self.order = [n for n in groups if self.keep[n] < groups[n].channels]

    def _l1_mask(self, name: str) -> list[int]:
        if name not in self._l1:
            from engine.pruning import select_channels

            chosen = select_channels(self.ctx.model, self.ctx.topology, name, self.keep[name], criterion="l1")
            size = self.ctx.topology.group(name).channels
            self._l1[name] = [1 if c in set(chosen) else 0 for c in range(size)]
        return self._l1[name]

    def _plan(self, override: dict[str, list[int]]) -> Any:
        indices = {}
        for name in self.order:
            if name in override:
                indices[name] = override[name]
            elif name in self.committed:
                indices[name] = self.committed[name]
            else:
                indices[name] = [int(c) for c in np.flatnonzero(self._l1_mask(name))]
        keep = {n: len(v) for n, v in indices.items()}
        return plan_with_indices(self.ctx, keep, indices, method=NAME, meta={"ga_group": self.position})

    def _commit(self, mask: Sequence[int], vals: list[float] | None) -> None:
        name = self.order[self.position]
        chosen = [int(c) for c in np.flatnonzero(np.asarray(mask))]
        self.committed[name] = chosen
        if self.groups_log and self.groups_log[-1]["group"] == name:
            self.groups_log[-1].update({"chosen": chosen, "elite_val": vals})
        else:
            self.groups_log.append(
                {"group": name, "k": len(chosen), "chosen": chosen, "elite_val": vals, "best": [], "mean": []}
            )
        self.scored, self.pending = [], []
        self.position += 1

    def _calibration(self) -> Any:
        if self._calib is None:
            x, _ = self.ctx.data.tensors("train", limit=self.options["calib_images"])
            self._calib = x
        return self._calib

    def _run_group(self) -> None:
        import pygad

        from engine.ga_fitness import capture_inputs, consumer_names, consumer_stats, reconstruction_fitness
        from engine.pruning import mask_model

        name = self.order[self.position]
        k, size = self.keep[name], self.ctx.topology.group(name).channels
        done = {n: self.committed[n] for n in self.order if n in self.committed}
        current = mask_model(
            self.ctx.model,
            self.ctx.topology,
            plan_with_indices(self.ctx, {n: len(v) for n, v in done.items()}, done, method=NAME),
        )
        seed = int(self.rng.integers(2**31 - 1))
        if self._base_inputs is None:  # the baseline's consumer inputs, captured once for every group
            names = sorted(
                {c for g in self.order for c in consumer_names(self.ctx.model, self.ctx.topology, g)}
            )
            self._base_inputs = capture_inputs(self.ctx.model, names, self._calibration())
        stats = consumer_stats(
            self.ctx.model,
            current,
            self.ctx.topology,
            name,
            self._calibration(),
            positions_per_image=self.options["positions"],
            seed=seed,
            base_inputs=self._base_inputs,
        )
        if not stats:
            return
        cache: dict[bytes, float] = {}

        def fitness(ga, solution, index) -> float:
            key = np.asarray(solution, dtype=np.int8).tobytes()
            if key not in cache:
                cache[key] = reconstruction_fitness(stats, np.asarray(solution))
            return cache[key]

        def crossover(parents, offspring_size, ga):
            rs = ga.numpy_random_generator
            out = np.empty(offspring_size, dtype=np.int64)
            for i in range(offspring_size[0]):
                a, b = parents[i % parents.shape[0]], parents[(i + 1) % parents.shape[0]]
                child = np.where(rs.random_sample(size) < 0.5, a, b)  # uniform crossover
                out[i] = repair(child, k, rs)
            return out

        def mutation(offspring, ga):
            rs = ga.numpy_random_generator
            for i in range(offspring.shape[0]):
                if rs.random_sample() < self.options["mutation_p"]:  # swap one kept and one removed channel
                    ones, zeros = np.flatnonzero(offspring[i] > 0), np.flatnonzero(offspring[i] == 0)
                    if ones.size and zeros.size:
                        offspring[i, rs.choice(ones)] = 0
                        offspring[i, rs.choice(zeros)] = 1
            return offspring

        pop = self.options["population"]
        init = [self._l1_mask(name)]
        for _ in range(pop - 1):
            mask = np.zeros(size, dtype=np.int64)
            mask[self.rng.choice(size, k, replace=False)] = 1
            init.append(mask.tolist())
        log = {
            "group": name,
            "k": k,
            "channels": size,
            "best": [],
            "mean": [],
            "chosen": None,
            "elite_val": None,
        }

        def on_generation(ga) -> None:
            fit = np.asarray(ga.last_generation_fitness, dtype=float)
            log["best"].append(float(fit.max()))
            log["mean"].append(float(fit.mean()))

        ga = pygad.GA(
            num_generations=self.options["generations"],
            num_parents_mating=max(2, pop // 2),
            fitness_func=fitness,
            initial_population=np.asarray(init),
            gene_type=int,
            gene_space=[0, 1],
            parent_selection_type="tournament",
            K_tournament=3,
            crossover_type=crossover,
            mutation_type=mutation,
            keep_elitism=min(2, pop),
            random_seed=seed,
            stop_criteria=f"saturate_{self.options['patience']}",
            on_generation=on_generation,
            suppress_warnings=True,
        )
        ga.run()
        population = np.asarray(ga.population, dtype=np.int64)
        scores = [fitness(ga, p, i) for i, p in enumerate(population)]
        self.population = population.tolist()
        self.groups_log.append(log)
        ranked, seen = [], set()
        for i in np.argsort(scores, kind="stable")[::-1]:
            key = population[i].tobytes()
            if key not in seen and int(population[i].sum()) == k:
                seen.add(key)
                ranked.append(
                    {"rank": len(ranked), "mask": population[i].tolist(), "fitness": float(scores[i])}
                )
            if len(ranked) >= self.options["elite"]:
                break
        self.pending = ranked


SPEC = MethodSpec(
    name=NAME,
    description="Genetic channel selection (arXiv 1805.11394): sensitivity amounts on the budget, then a GA per "
    "group over exactly-k masks with a least-squares reconstruction fitness; the elite is scored on val.",
    kind="search",
    options={
        "population": OptionSpec("population", int, 24, "masks per GA population", min=2),
        "generations": OptionSpec("generations", int, 25, "most GA generations per group", min=1),
        "patience": OptionSpec(
            "patience", int, 5, "stop a group's GA after this many generations without gain", min=1
        ),
        "elite": OptionSpec("elite", int, 3, "best masks per group scored on val (step-2 fitness)", min=1),
        "mutation_p": OptionSpec(
            "mutation_p", float, 0.1, "chance of a swap mutation per offspring", min=0.0, max=1.0
        ),
        "allocation": OptionSpec(
            "allocation",
            str,
            "sensitivity",
            "per-group amounts: from sensitivity curves or uniform",
            choices=("sensitivity", "uniform"),
        ),
        "grid_step": OptionSpec(
            "grid_step", float, 0.1, "keep-ratio grid step of the sensitivity curves", min=0.02, max=0.5
        ),
        "min_keep_ratio": OptionSpec(
            "min_keep_ratio", float, 0.1, "smallest keep ratio of a group", min=0.01, max=1.0
        ),
        "calib_images": OptionSpec(
            "calib_images", int, 128, "train images whose features the fitness uses", min=2
        ),
        "positions": OptionSpec(
            "positions",
            int,
            16,
            "spatial positions sampled per image (images x positions "
            "should well exceed 9 x the group's channels)",
            min=1,
        ),
    },
    searcher=GASearch,
    budget_metrics=METRICS,
)
