"""Registers GNN-RL as pruning methods `gnnrl` and `gnnrl-nognn` (the no-GNN ablation) in the methods registry.

A thin adapter: options -> SearchConfig, episodes -> registry Candidates/MethodEvents; the search itself is
engine.rl.search. These methods record their own episodes in the run store (ctx.store / ctx.run_id) and
resume a stored run when called with resume=True.
"""

from __future__ import annotations

from typing import Any

from engine.errors import BudgetError
from engine.methods.registry import (
    Candidate,
    MethodContext,
    MethodResult,
    MethodSpec,
    OptionSpec,
    list_methods,
    register_method,
)

__all__ = ["GNNRL_SPEC", "GNNRL_NOGNN_SPEC", "search_config_from_options"]


def _options() -> dict[str, OptionSpec]:
    opts = [
        OptionSpec(
            "episodes", int, 40, "episodes to run (each scores one plan with the action wall on)", min=1
        ),
        OptionSpec("agent", str, "ppo", "RL algorithm: ppo (the paper) or ddpg", choices=("ppo", "ddpg")),
        OptionSpec(
            "max_steps",
            int,
            5,
            "most steps per episode (T); the episode ends when the budget is met",
            min=1,
            max=50,
        ),
        OptionSpec("penalty", float, -100.0, "reward of an episode that misses the budget by step T"),
        OptionSpec(
            "max_change",
            float,
            0.5,
            "an action in [-1, 1] scales a keep ratio by 1 + max_change * a",
            min=0.01,
            max=0.99,
        ),
        OptionSpec(
            "min_keep_ratio", float, 0.2, "lowest keep ratio of any group (AMC's lbound)", min=0.01, max=1.0
        ),
        OptionSpec(
            "action_wall", bool, True, "at step T, scale the plan onto the budget instead of the penalty"
        ),
        OptionSpec(
            "max_motif_channels",
            int,
            16,
            "channel nodes per conv motif (0 = all, the paper's 2*c_in+2)",
            min=0,
        ),
        OptionSpec("lr", float, 3e-4, "Adam learning rate of the PPO agent", min=1e-6, max=1.0),
        OptionSpec(
            "std_init", float, 0.5, "initial std of the PPO policy (decays per update)", min=0.01, max=2.0
        ),
        OptionSpec("update_every", int, 4, "PPO update after this many episodes", min=1),
        OptionSpec(
            "score_policy_plan", bool, True, "also score the policy-mean plan at the end (+1 scored plan)"
        ),
        OptionSpec(
            "transfer_run", int, 0, "run id whose trained encoder is loaded and frozen (0 = none)", min=0
        ),
        OptionSpec("resume", bool, False, "continue the stored run ctx.run_id from its saved state"),
    ]
    return {o.name: o for o in opts}


def search_config_from_options(ctx: MethodContext, options: dict[str, Any], *, encoder: str) -> Any:
    """The SearchConfig a method call describes."""
    from engine.rl.env import EnvConfig
    from engine.rl.ppo import PPOConfig
    from engine.rl.search import ENCODER_FILE, SearchConfig, state_dir_for

    transfer = None
    if options["transfer_run"]:
        path = state_dir_for(options["transfer_run"]) / ENCODER_FILE
        if not path.exists():
            raise ValueError(
                f"transfer_run={options['transfer_run']}: no trained encoder at {path}; "
                "pick a gnnrl run that finished at least one episode"
            )
        transfer = str(path)
    env = EnvConfig(
        budget=float(ctx.budget),
        max_steps=options["max_steps"],
        penalty=options["penalty"],
        max_change=options["max_change"],
        min_keep_ratio=options["min_keep_ratio"],
        action_wall=options["action_wall"],
        land_on_budget=True,
        round_to=int(ctx.round_to or 1),
        max_motif_channels=options["max_motif_channels"],
    )
    ppo = PPOConfig(
        lr=options["lr"],
        std_init=options["std_init"],
        update_every_episodes=options["update_every"],
        std_min=min(0.05, options["std_init"]),
    )
    return SearchConfig(
        episodes=options["episodes"],
        agent=options["agent"],
        encoder=encoder,
        seed=int(ctx.seed),
        score_policy_plan=options["score_policy_plan"],
        transfer_from=transfer,
        env=env,
        ppo=ppo,
    )


def _run(ctx: MethodContext, options: dict[str, Any], *, encoder: str, name: str) -> MethodResult:
    from engine.methods.candidates import check_on_budget
    from engine.pruning import PruningPlan
    from engine.rl.search import SearchRun

    candidates: list[Candidate] = []
    total = options["episodes"]

    def on_episode(report: Any) -> None:
        meta = {
            "episode": report.episode,
            "reward": report.reward,
            "step": report.steps,
            "actions": report.actions,
            "embeddings": report.embeddings,
            "embedding_groups": report.embedding_groups,
            "timings_s": report.timings_s,
        }
        if report.plan is None:
            ctx.emit(
                name,
                report.episode + 1,
                total,
                f"episode {report.episode}: budget missed, reward {report.reward:.1f}",
            )
            return
        cand = Candidate(
            index=len(candidates),
            plan=PruningPlan.from_dict(report.plan),
            val_acc=float(report.val_acc),
            macs_ratio=report.macs_ratio,
            meta=meta,
        )
        candidates.append(cand)
        ctx.emit(
            name,
            report.episode + 1,
            total,
            f"episode {report.episode}: val {report.val_acc:.2f}% at "
            f"{report.macs_ratio:.3f} MACs (best {report.best_val_acc:.2f}%)",
            cand,
        )

    from engine.rl.search import STATE_FILE, state_dir_for

    scorer = ctx.get_scorer()
    if options["resume"] and (ctx.store is None or ctx.run_id is None):
        raise ValueError(f"method '{name}' got resume=True without a stored run (ctx.store and ctx.run_id)")
    # a run killed before its first episode ended has no state yet: it simply starts again
    if options["resume"] and (state_dir_for(ctx.run_id) / STATE_FILE).exists():
        run = SearchRun.resume(
            ctx.model, ctx.topology, run_id=ctx.run_id, scorer=scorer, store=ctx.store, callback=on_episode
        )
    else:
        run = SearchRun(
            ctx.model,
            ctx.topology,
            config=search_config_from_options(ctx, options, encoder=encoder),
            scorer=scorer,
            store=ctx.store,
            run_id=ctx.run_id,
            callback=on_episode,
            dataset=getattr(ctx.data, "name", ""),
        )
    result = run.run(should_stop=ctx.should_stop)
    if result.best_plan is None:
        raise BudgetError(
            f"no episode of '{name}' met the budget {ctx.budget}; turn action_wall on, raise "
            "max_steps or max_change, or lower min_keep_ratio"
        )
    plan = result.best_plan
    plan.method = name
    plan.budget = float(ctx.budget)
    ratio = check_on_budget(ctx, plan, name)
    meta = {
        "run_id": result.run_id,
        "best_episode": result.best_episode,
        "episodes": result.episodes,
        "policy_plan": result.policy_plan.to_dict() if result.policy_plan is not None else None,
        "policy_val_acc": result.policy_val_acc,
        "state_dir": result.state_dir,
        "finished": result.finished,
    }
    return MethodResult(
        method=name,
        plan=plan,
        val_acc=float(result.best_val_acc),
        macs_ratio=ratio,
        candidates=candidates,
        n_scored=result.n_scored,
        meta=meta,
    )


def run_gnnrl(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """GNN-RL: multi-stage GNN state + PPO over all groups' keep ratios; the best plan seen wins."""
    return _run(ctx, options, encoder="gnn", name="gnnrl")


def run_gnnrl_nognn(ctx: MethodContext, options: dict[str, Any]) -> MethodResult:
    """The ablation: the same search with AMC's hand-made per-group features instead of the GNN."""
    return _run(ctx, options, encoder="features", name="gnnrl-nognn")


GNNRL_SPEC = MethodSpec(
    name="gnnrl",
    description="GNN-RL (Yu et al., ICML 2022): a multi-stage GNN embeds the topology, a PPO agent sets every "
    "group's keep ratio per step until the MACs budget is met; the best plan on val wins.",
    kind="search",
    options=_options(),
    fn=run_gnnrl,
)
GNNRL_NOGNN_SPEC = MethodSpec(
    name="gnnrl-nognn",
    description="GNN-RL's search with the GNN replaced by AMC's 10 hand-made per-group features (ablation).",
    kind="search",
    options=_options(),
    fn=run_gnnrl_nognn,
)

for _spec in (GNNRL_SPEC, GNNRL_NOGNN_SPEC):
    if _spec.name not in {m.name for m in list_methods()}:
        register_method(_spec)
