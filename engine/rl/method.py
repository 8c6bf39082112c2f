"""GNN-RL as the search methods `gnnrl` and `gnnrl-nognn` (the no-GNN ablation), on the search protocol.

`GnnRlSearch` adapts engine.rl.search.SearchRun (the agent in the environment, with deferred scoring) to
engine.search.protocol: an episode's T steps happen in `propose` (or one at a time in `substep`, the GUI's
Step), the driver scores the landed plan, and `observe` hands the reward to the agent. Recording, stepping
and resume are the driver's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.methods.registry import MethodContext, MethodSpec, OptionSpec
from engine.rl.records import ENCODER_FILE
from engine.search.protocol import Proposal, Scored, SearchMethod, SubStep

__all__ = ["GNNRL_SPEC", "GNNRL_NOGNN_SPEC", "SPECS", "GnnRlSearch", "search_config_from_options"]


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
            "std_schedule",
            str,
            "anneal",
            "exploration: anneal (std_init to 0.05 over the run's length) "
            "or decay (x0.95 per update, the earlier fixed clock)",
            choices=("anneal", "decay"),
        ),
        OptionSpec(
            "join_features",
            bool,
            True,
            "join each group's structural features to its GNN embedding (keeps groups apart; gnnrl only)",
        ),
        OptionSpec(
            "learn", bool, True, "false = the no-learning control: same sampling and schedule, no update"
        ),
        OptionSpec(
            "score_policy_plan", bool, True, "also score the policy-mean plan at the end (+1 scored plan)"
        ),
        OptionSpec(
            "transfer_run", int, 0, "run id whose trained encoder is loaded and frozen (0 = none)", min=0
        ),
    ]
    return {o.name: o for o in opts}


def search_config_from_options(ctx: MethodContext, options: dict[str, Any], *, encoder: str) -> Any:
    """The SearchConfig a method call describes."""
    from engine.rl.env import EnvConfig
    from engine.rl.ppo import PPOConfig
    from engine.rl.search import SearchConfig
    from engine.search.driver import state_dir_for

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
        std_mode=options["std_schedule"],
        join_group_features=options["join_features"] and encoder == "gnn",
        learn=options["learn"],
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


class GnnRlSearch(SearchMethod):
    """GNN-RL's agent and environment behind the search protocol (one episode per proposal)."""

    encoder = "gnn"
    name = "gnnrl"

    def __init__(self, ctx: MethodContext, options: dict[str, Any]) -> None:
        from engine.rl.search import SearchRun

        super().__init__(ctx, options)
        self.run = SearchRun(
            ctx.model, ctx.topology, config=search_config_from_options(ctx, options, encoder=self.encoder)
        )
        self._ended: Any = None  # the StepReport that ended the episode awaiting observe()

    @property
    def finished(self) -> bool:
        return self.run.finished and self._ended is None

    def substep(self) -> SubStep:
        if self._ended is not None:
            raise RuntimeError("the episode's plan awaits its score; the driver observes it first")
        rep = self.run.step()
        info = {
            "episode": rep.episode,
            "step": rep.step,
            "action": rep.action,
            "keep_ratios": rep.keep_ratios,
            "macs_ratio": rep.macs_ratio,
            "reward": rep.reward,
            "done": rep.done,
        }
        proposal = None
        if rep.done:
            self._ended = rep
            plan = rep.pending_plan
            if plan is not None:
                plan.method = self.name
            proposal = Proposal(plan, self._meta(rep))
        return SubStep(rep.episode, rep.step, info, proposal)

    def _meta(self, rep: Any) -> dict[str, Any]:
        ep = self.run._ep
        emb = ep.get("embeddings")
        return {
            "step": rep.step,
            "actions": list(ep.get("actions", [])),
            "embeddings": emb.numpy().round(5).tolist() if emb is not None else None,
            "embedding_groups": self.run.group_names,
            "keep_ratios": {k: round(float(v), 5) for k, v in rep.keep_ratios.items()},
        }

    def propose(self, n: int = 1) -> list[Proposal]:
        # PPO learns between episodes, so a batch holds one episode (vectorised episodes: a later issue)
        while not self.run.finished:
            sub = self.substep()
            if sub.proposal is not None:
                return [sub.proposal]
        return []

    def observe(self, scored: Sequence[Scored]) -> list[float | None]:
        rewards: list[float | None] = []
        for s in scored:
            rep, self._ended = self._ended, None
            if rep is None:
                raise RuntimeError("observe() without a proposed episode")
            if s.val_acc is None:  # missed the budget: the agent already got the penalty
                rewards.append(float(rep.reward))
                continue
            report = self.run.complete_episode(s.val_acc)
            s.proposal.meta.update(timings_s=report.timings_s, update=report.update)
            rewards.append(float(report.reward))
        return rewards

    def state_dict(self) -> dict[str, Any]:
        return self.run.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run.load_state_dict(state)
        self._ended = None

    def save_artifacts(self, directory: Path) -> None:
        """The trained encoder, for `transfer_run` of a later search."""
        torch.save(self.run.agent.encoder_state_dict(), directory / ENCODER_FILE)

    def final_proposals(self) -> list[Proposal]:
        if not self.run.config.score_policy_plan:
            return []
        plan = self.run.evaluate_policy(score=False)
        return [] if plan is None else [Proposal(plan, {"policy_mean": True})]

    def observe_final(self, scored: Sequence[Scored]) -> None:
        for s in scored:
            if s.proposal.meta.get("policy_mean"):
                self.run.policy_val_acc = s.val_acc

    def summary(self) -> dict[str, Any]:
        plan = self.run.policy_plan
        return {
            "policy_plan": None if plan is None else plan.to_dict(),
            "policy_val_acc": self.run.policy_val_acc,
        }


class GnnRlNoGnnSearch(GnnRlSearch):
    """The ablation: the same search with AMC's hand-made per-group features instead of the GNN."""

    encoder = "features"
    name = "gnnrl-nognn"


GNNRL_SPEC = MethodSpec(
    name="gnnrl",
    description="GNN-RL (Yu et al., ICML 2022): a multi-stage GNN embeds the topology, a PPO agent sets every "
    "group's keep ratio per step until the MACs budget is met; the best plan on val wins.",
    kind="search",
    options=_options(),
    searcher=GnnRlSearch,
)
GNNRL_NOGNN_SPEC = MethodSpec(
    name="gnnrl-nognn",
    description="GNN-RL's search with the GNN replaced by AMC's 10 hand-made per-group features (ablation).",
    kind="search",
    options=_options(),
    searcher=GnnRlNoGnnSearch,
)

SPECS = (GNNRL_SPEC, GNNRL_NOGNN_SPEC)
