"""DDPG variant of the GNN-RL agent (deterministic per-group actor, Q critic, replay, target networks).

Same interface as PPOAgent (act / observe / end_episode / state_dict), so the search driver takes either.
Exploration follows AMC: uniform-random warm-up episodes, then truncated-normal noise that decays per
episode; rewards are scaled by 1/100 and an exponential moving-average baseline is subtracted.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from engine.methods.ddpg import soft_update
from engine.rl.policy import ActorCritic, GroupQCritic, batch_states
from engine.rl.ppo import AgentStep, state_from_dict, state_to_dict
from engine.rng import private_rng

__all__ = ["DDPGConfig", "DDPGAgent"]


@dataclass
class DDPGConfig:
    """DDPG settings (AMC's defaults where they fit a short CPU search).

    Attributes:
        lr_actor, lr_critic: Adam learning rates.
        gamma: discount.
        tau: soft target update rate.
        batch_size: replay minibatch.
        buffer_size: replay capacity (transitions).
        warmup_episodes: episodes of uniform-random actions before learning.
        noise_init: initial exploration std (on the [-1, 1] action); decays by noise_decay per episode.
        noise_decay: per-episode decay after warm-up.
        updates_per_episode: gradient steps after each episode once warm.
        baseline_alpha: EMA rate of the reward baseline.
        dim, hidden, num_layers, encoder_kind: network sizes and encoder ("gnn" or "features").
    """

    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.01
    batch_size: int = 32
    buffer_size: int = 2000
    warmup_episodes: int = 10
    noise_init: float = 0.5
    noise_decay: float = 0.95
    updates_per_episode: int = 10
    baseline_alpha: float = 0.5
    dim: int = 32
    hidden: int = 64
    num_layers: int = 2
    encoder_kind: str = "gnn"


class DDPGAgent:
    """DDPG over one action per channel group.

    Args:
        config: DDPG settings.
        seed: seeds the network init and the agent's own sampling generator.
    """

    def __init__(self, config: DDPGConfig | None = None, *, seed: int = 0) -> None:
        self.config = c = config or DDPGConfig()
        with private_rng(seed):  # seeded init without touching the process-global RNG
            self.actor = ActorCritic(
                encoder_kind=c.encoder_kind, dim=c.dim, hidden=c.hidden, num_layers=c.num_layers
            )
            self.critic = GroupQCritic(
                encoder_kind=c.encoder_kind, dim=c.dim, hidden=c.hidden, num_layers=c.num_layers
            )
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.lr_critic)
        self.generator = torch.Generator().manual_seed(seed)
        self.replay: list[tuple[Data, Tensor, float, Data | None, bool]] = []
        self._pending: list[tuple[Data, Tensor]] = []
        self._episode: list[tuple[Data, Tensor, float, Data | None, bool]] = []
        self.episodes = 0
        self.baseline: float | None = None
        self.updates = 0
        self.net = self.actor  # what the driver reads group embeddings from

    @property
    def noise(self) -> float:
        c = self.config
        return c.noise_init * c.noise_decay ** max(0, self.episodes - c.warmup_episodes)

    def act(self, state: Data, *, deterministic: bool = False, record: bool = True) -> AgentStep:
        """Deterministic mean, plus warm-up uniform or truncated-normal exploration unless deterministic."""
        with torch.no_grad():
            out = self.actor(batch_states([state]))
        mean = out.mean
        if deterministic:
            action = mean.clone()
        elif self.episodes < self.config.warmup_episodes:
            action = torch.rand(mean.shape, generator=self.generator) * 2 - 1
        else:
            eps = torch.randn(mean.shape, generator=self.generator).clamp(-2, 2)  # truncated normal
            action = (mean + self.noise * eps).clamp(-1, 1)
        if record and not deterministic:
            self._pending.append((state, action))
        return AgentStep(action, mean, 0.0, 0.0, out.encoded.group_embeddings.detach())

    def observe(self, reward: float, done: bool, next_state: Data | None = None) -> None:
        """Record the outcome of the last recorded action (next_state is needed unless done)."""
        if not self._pending:
            raise RuntimeError("observe() called without a preceding recorded act()")
        state, action = self._pending.pop()
        self._episode.append((state, action, float(reward), None if done else next_state, bool(done)))

    def end_episode(self) -> dict[str, float] | None:
        """Move the episode to the replay buffer (reward minus EMA baseline, /100); train once warm."""
        c = self.config
        final = self._episode[-1][2] if self._episode else 0.0
        self.baseline = (
            final
            if self.baseline is None
            else ((1 - c.baseline_alpha) * self.baseline + c.baseline_alpha * final)
        )
        for s, a, r, ns, d in self._episode:
            self.replay.append((s, a, (r - (self.baseline if d else 0.0)) / 100.0, ns, d))
        self.replay = self.replay[-c.buffer_size :]
        self._episode = []
        self.episodes += 1
        if self.episodes < c.warmup_episodes or not self.replay:
            return None
        stats: dict[str, float] = {}
        for _ in range(c.updates_per_episode):
            stats = self._update()
        return stats

    def _update(self) -> dict[str, float]:
        c = self.config
        n = len(self.replay)
        idx = torch.randint(n, (min(c.batch_size, n),), generator=self.generator).tolist()
        batch = [self.replay[i] for i in idx]
        states = batch_states([b[0] for b in batch])
        actions = torch.cat([b[1] for b in batch])
        rewards = torch.tensor([b[2] for b in batch])
        dones = torch.tensor([b[4] for b in batch], dtype=torch.float32)
        target = rewards.clone()
        live = [i for i, b in enumerate(batch) if not b[4] and b[3] is not None]
        if live:
            with torch.no_grad():
                nxt = batch_states([batch[i][3] for i in live])
                q_next = self.critic_target(nxt, self.actor_target(nxt).mean)
            target[live] = rewards[live] + c.gamma * (1 - dones[live]) * q_next
        q = self.critic(states, actions)
        critic_loss = nn.functional.mse_loss(q, target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(states, self.actor(states).mean).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        soft_update(self.actor_target, self.actor, c.tau)
        soft_update(self.critic_target, self.critic, c.tau)
        self.updates += 1
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "noise": self.noise}

    def state_dict(self) -> dict:
        """Everything needed to resume: networks, targets, optimisers, generator, replay, counters."""

        def pack(t: tuple) -> dict:
            s, a, r, ns, d = t
            return {
                "s": state_to_dict(s),
                "a": a,
                "r": r,
                "ns": None if ns is None else state_to_dict(ns),
                "d": d,
            }

        return copy.deepcopy(
            {
                "kind": "ddpg",
                "config": asdict(self.config),
                "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(),
                "critic_target": self.critic_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "generator": self.generator.get_state(),
                "episodes": self.episodes,
                "baseline": self.baseline,
                "updates": self.updates,
                "replay": [pack(t) for t in self.replay],
            }
        )  # deep copy: optimiser state tensors would otherwise stay shared with the live agent

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved."""
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.episodes = int(state["episodes"])
        self.baseline = state["baseline"]
        self.updates = int(state["updates"])
        self.replay = [
            (
                state_from_dict(t["s"]),
                t["a"],
                float(t["r"]),
                None if t["ns"] is None else state_from_dict(t["ns"]),
                bool(t["d"]),
            )
            for t in state["replay"]
        ]

    def encoder_state_dict(self) -> dict[str, Tensor]:
        return self.actor.encoder.state_dict()

    def load_frozen_encoder(self, encoder_state: dict[str, Tensor]) -> None:
        """Load and freeze the actor's and critic's encoders; only the heads train."""
        for net in (self.actor, self.actor_target, self.critic, self.critic_target):
            net.encoder.load_state_dict(encoder_state)
            for p in net.encoder.parameters():
                p.requires_grad_(False)
        self.actor_opt = torch.optim.Adam(
            [p for p in self.actor.parameters() if p.requires_grad], lr=self.config.lr_actor
        )
        self.critic_opt = torch.optim.Adam(
            [p for p in self.critic.parameters() if p.requires_grad], lr=self.config.lr_critic
        )
