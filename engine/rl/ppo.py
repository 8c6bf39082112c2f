"""PPO agent for GNN-RL: a Gaussian policy over the per-group action vector, clipped surrogate updates.

Owns sampling (from its own seeded generator, so runs are reproducible and resumable), the on-policy buffer
and the update. It does not know what an action means (engine.rl.env does) nor when to stop (search.py).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from engine.rl.gnn import MultiStageData
from engine.rl.policy import ActorCritic, batch_states
from engine.rng import private_rng

__all__ = ["PPOConfig", "AgentStep", "PPOAgent", "state_to_dict", "state_from_dict"]


@dataclass
class PPOConfig:
    """PPO settings (defaults follow the paper's released code where it is sound).

    Attributes:
        lr: Adam learning rate for encoder and heads.
        gamma: discount.
        clip: PPO ratio clip.
        epochs: K optimisation epochs over the buffer per update (full batch, no shuffling: deterministic).
        entropy_coef: entropy bonus weight (it has a gradient only through a learned std).
        value_coef: critic loss weight.
        std_init: initial policy std.
        std_min: floor of the std.
        std_mode: "decay" (default: std multiplied by std_decay after each update, floored at std_min) or
            "learned" (a state-independent log-std parameter bounded to [std_min, std_init]; on the synthetic
            env the entropy bonus held it at its ceiling, so decay learned faster).
            "anneal": log-linear from std_init at the run's start to std_min at its end, set by the search from
            the fraction of the run done (`set_progress`), so exploration follows the run's length.
        std_decay: multiplicative decay per update in "decay" mode.
        gae_lambda: None for Monte-Carlo returns (the paper); else GAE(lambda) advantages.
        normalize_returns: normalise returns by their batch mean/std (the paper) before the value loss.
        update_every_episodes: update after this many finished episodes.
        max_grad_norm: gradient clipping.
        dim, hidden, num_layers: network sizes (see ActorCritic).
        encoder_kind: "gnn" or "features" (the no-GNN ablation).
        join_group_features: the gnn encoder's group embeddings are joined with the per-group structural
            features before the actor head (see ActorCritic).
        learn: False switches learning off (no update ever: the no-learning control arm); sampling and the
            exploration schedule are unchanged.
    """

    lr: float = 3e-4
    gamma: float = 0.99
    clip: float = 0.2
    epochs: int = 10
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    std_init: float = 0.5
    std_min: float = 0.05
    std_mode: str = "decay"
    std_decay: float = 0.95
    gae_lambda: float | None = None
    normalize_returns: bool = True
    update_every_episodes: int = 4
    max_grad_norm: float = 0.5
    dim: int = 32
    hidden: int = 64
    num_layers: int = 2
    encoder_kind: str = "gnn"
    join_group_features: bool = False
    learn: bool = True

    def __post_init__(self) -> None:
        if self.std_mode not in ("learned", "decay", "anneal"):
            raise ValueError(f"std_mode={self.std_mode!r} is unknown; use 'anneal', 'decay' or 'learned'")
        if not 0 < self.std_min <= self.std_init:
            raise ValueError(f"need 0 < std_min ({self.std_min}) <= std_init ({self.std_init})")
        if self.update_every_episodes < 1:
            raise ValueError(f"update_every_episodes={self.update_every_episodes} must be >= 1")


@dataclass
class AgentStep:
    """One decision: the raw action sampled (per group) and what the GUI wants to show about it.

    Attributes:
        action: (num_groups,) sampled action (unclipped; the env clips to [-1, 1]).
        mean: (num_groups,) policy mean.
        value: critic value of the state (0.0 for agents without one).
        log_prob: log-probability of `action` under the policy.
        group_embeddings: (num_groups, dim) encoder output, detached.
    """

    action: Tensor
    mean: Tensor
    value: float
    log_prob: float
    group_embeddings: Tensor


def state_to_dict(state: Data) -> dict[str, Tensor]:
    """A state as a plain dict of tensors (safe for torch.save / weights_only load)."""
    return {k: v for k, v in state.to_dict().items() if isinstance(v, Tensor)}


def state_from_dict(d: dict[str, Tensor]) -> MultiStageData:
    """Inverse of state_to_dict."""
    return MultiStageData(**d)


@dataclass
class _Buffer:
    states: list[Data] = field(default_factory=list)
    actions: list[Tensor] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dones: list[bool] = field(default_factory=list)

    def clear(self) -> None:
        for v in vars(self).values():
            v.clear()


class PPOAgent:
    """PPO with a Gaussian policy over one action per channel group.

    Use: `step = agent.act(state)`, then `agent.observe(reward, done)`; when an episode ends, call
    `agent.end_episode()` (updates every `update_every_episodes` episodes and returns the loss stats then).

    Args:
        config: PPO settings.
        seed: seeds the network init and the agent's own sampling generator.
    """

    def __init__(self, config: PPOConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or PPOConfig()
        c = self.config
        with private_rng(seed):  # seeded init without touching the process-global RNG
            self.net = ActorCritic(
                encoder_kind=c.encoder_kind,
                dim=c.dim,
                hidden=c.hidden,
                num_layers=c.num_layers,
                join_group_features=c.join_group_features,
            )
        self.log_std = nn.Parameter(torch.tensor(math.log(c.std_init)), requires_grad=c.std_mode == "learned")
        params = [p for p in self.net.parameters() if p.requires_grad]
        if c.std_mode == "learned":
            params.append(self.log_std)
        self.optimizer = torch.optim.Adam(params, lr=c.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = _Buffer()
        self.episodes_since_update = 0
        self.updates = 0

    # -- acting -----------------------------------------------------------------------------------------
    @property
    def std(self) -> float:
        return float(self._std())

    def _std(self) -> Tensor:
        c = self.config
        return self.log_std.clamp(math.log(c.std_min), math.log(c.std_init)).exp()

    def act(self, state: Data, *, deterministic: bool = False, record: bool = True) -> AgentStep:
        """Choose an action for one state (sampled, or the mean when deterministic)."""
        with torch.no_grad():
            out = self.net(batch_states([state]))
            std = self._std()
            if deterministic:
                action = out.mean.clone()
            else:
                eps = torch.randn(out.mean.shape, generator=self.generator)
                action = out.mean + std * eps
            log_prob = float(torch.distributions.Normal(out.mean, std).log_prob(action).sum())
        if record and not deterministic:
            b = self.buffer
            b.states.append(state)
            b.actions.append(action)
            b.log_probs.append(log_prob)
            b.values.append(float(out.value[0]))
        return AgentStep(
            action, out.mean, float(out.value[0]), log_prob, out.encoded.group_embeddings.detach()
        )

    def observe(self, reward: float, done: bool) -> None:
        """Record the outcome of the last recorded action."""
        if len(self.buffer.rewards) >= len(self.buffer.actions):
            raise RuntimeError("observe() called without a preceding recorded act()")
        self.buffer.rewards.append(float(reward))
        self.buffer.dones.append(bool(done))

    def end_episode(self) -> dict[str, float] | None:
        """Count a finished episode; update (and return loss stats) when the cadence says so."""
        self.episodes_since_update += 1
        if self.episodes_since_update >= self.config.update_every_episodes:
            if not self.config.learn:  # the no-learning control: same sampling, nothing learned
                self.buffer.clear()
                self.episodes_since_update = 0
                return None
            return self.update()
        return None

    def set_progress(self, fraction: float) -> None:
        """In "anneal" mode, set the std for a run that is `fraction` (0..1) done."""
        c = self.config
        if c.std_mode != "anneal":
            return
        f = min(1.0, max(0.0, float(fraction)))
        with torch.no_grad():
            self.log_std.copy_(torch.tensor((1 - f) * math.log(c.std_init) + f * math.log(c.std_min)))

    # -- learning ---------------------------------------------------------------------------------------
    def _targets(self) -> tuple[Tensor, Tensor]:
        c, b = self.config, self.buffer
        rewards = torch.tensor(b.rewards)
        values = torch.tensor(b.values)
        n = len(rewards)
        returns = torch.zeros(n)
        if c.gae_lambda is None:
            running = 0.0
            for t in range(n - 1, -1, -1):
                running = rewards[t] + c.gamma * running * (0.0 if b.dones[t] else 1.0)
                returns[t] = running
            if c.normalize_returns and n > 1:
                returns = (returns - returns.mean()) / (returns.std() + 1e-6)
            advantages = returns - values
        else:
            # GAE on raw rewards; returns = advantages + values.
            advantages = torch.zeros(n)
            gae = 0.0
            for t in range(n - 1, -1, -1):
                last = b.dones[t] or t == n - 1
                next_value = 0.0 if last else values[t + 1]
                delta = rewards[t] + c.gamma * next_value - values[t]
                gae = delta + c.gamma * c.gae_lambda * (0.0 if last else 1.0) * gae
                advantages[t] = gae
            returns = advantages + values
            if n > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-6)
        return returns, advantages

    def update(self) -> dict[str, float]:
        """K epochs of clipped-surrogate PPO over the buffer; then clear it and decay the std."""
        return self._update()

    def _update(self) -> dict[str, float]:
        c, b = self.config, self.buffer
        self.episodes_since_update = 0
        n = len(b.rewards)
        if n == 0:
            return {"loss": 0.0, "n": 0.0}
        if len(b.actions) != n:
            raise RuntimeError(
                f"buffer holds {len(b.actions)} actions but {n} rewards; call observe() after act()"
            )
        returns, advantages = self._targets()
        batch = batch_states(b.states)
        actions = torch.cat(b.actions)  # (groups_total,)
        old_log_probs = torch.tensor(b.log_probs)
        stats: dict[str, float] = {}
        for _ in range(c.epochs):
            out = self.net(batch)
            std = self._std()
            dist = torch.distributions.Normal(out.mean, std)
            log_probs = scatter(
                dist.log_prob(actions), out.encoded.group_graph, dim=0, dim_size=n, reduce="sum"
            )
            entropy = dist.entropy().expand_as(out.mean).mean()  # per action dimension
            ratio = torch.exp(log_probs - old_log_probs)  # (n,)
            surr1 = ratio * advantages
            surr2 = ratio.clamp(1 - c.clip, 1 + c.clip) * advantages
            policy_loss = -torch.min(surr1, surr2).mean()
            value_loss = nn.functional.mse_loss(out.value, returns)
            loss = policy_loss + c.value_coef * value_loss - c.entropy_coef * entropy
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], c.max_grad_norm
            )
            self.optimizer.step()
            stats = {
                "loss": loss.item(),
                "policy_loss": policy_loss.item(),
                "value_loss": value_loss.item(),
                "entropy": entropy.item(),
            }
        if c.std_mode == "decay":
            with torch.no_grad():
                self.log_std.copy_(
                    torch.tensor(max(math.log(c.std_min), float(self.log_std) + math.log(c.std_decay)))
                )
        b.clear()
        self.updates += 1
        stats.update({"n": float(n), "std": self.std, "updates": float(self.updates)})
        return stats

    # -- persistence ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume bit-for-bit: weights, optimiser, std, generator, pending buffer."""
        b = self.buffer
        return copy.deepcopy(
            {  # deep copy: optimiser state tensors would otherwise stay shared with the agent
                "kind": "ppo",
                "config": asdict(self.config),
                "net": self.net.state_dict(),
                "log_std": self.log_std.detach().clone(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "episodes_since_update": self.episodes_since_update,
                "updates": self.updates,
                "buffer": {
                    "states": [state_to_dict(s) for s in b.states],
                    "actions": list(b.actions),
                    "log_probs": list(b.log_probs),
                    "values": list(b.values),
                    "rewards": list(b.rewards),
                    "dones": list(b.dones),
                },
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved (the config must match the one this agent was built with)."""
        self.net.load_state_dict(state["net"])
        with torch.no_grad():
            self.log_std.copy_(state["log_std"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.episodes_since_update = int(state["episodes_since_update"])
        self.updates = int(state["updates"])
        buf = state["buffer"]
        self.buffer = _Buffer(
            [state_from_dict(s) for s in buf["states"]],
            list(buf["actions"]),
            list(buf["log_probs"]),
            list(buf["values"]),
            list(buf["rewards"]),
            list(buf["dones"]),
        )

    # -- transfer ---------------------------------------------------------------------------------------
    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder's weights alone (what transfer loads into another agent)."""
        return self.net.encoder.state_dict()

    def load_frozen_encoder(self, encoder_state: dict[str, Tensor]) -> None:
        """Load an encoder trained elsewhere and freeze it: only the actor/critic heads (and std) train."""
        self.net.encoder.load_state_dict(encoder_state)
        for p in self.net.encoder.parameters():
            p.requires_grad_(False)
        params = list(self.net.actor.parameters()) + list(self.net.critic.parameters())
        if self.config.std_mode == "learned":
            params.append(self.log_std)
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr)
