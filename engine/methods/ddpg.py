"""A small DDPG agent for AMC: actor/critic MLPs, replay buffer, soft target updates, truncated-normal noise.

Follows mit-han-lab/amc's agent (sigmoid actor output = keep ratio, moving-average reward baseline);
it knows nothing about networks or pruning (amc.py builds states and rewards).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from engine.rng import private_rng


@dataclass(frozen=True)
class DDPGConfig:
    """DDPG hyper-parameters (AMC defaults: hidden 300, lr 1e-4 / 1e-3, tau 0.01, batch 64, discount 1)."""

    state_dim: int = 10
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    discount: float = 1.0
    memory_size: int = 2000
    moving_alpha: float = 0.5


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of a DDPG target network: target <- (1 - tau) * target + tau * source."""
    for p, tp in zip(source.parameters(), target.parameters(), strict=True):
        tp.mul_(1 - tau).add_(tau * p)


def _mlp(n_in: int, hidden: int, out: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Linear(n_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    ]
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


def truncated_normal(mean: float, sigma: float, low: float, high: float, rng: np.random.Generator) -> float:
    """One draw of N(mean, sigma) truncated to [low, high] (inverse-CDF sampling)."""
    if sigma <= 0:
        return float(min(max(mean, low), high))
    a = (low - mean) / sigma / np.sqrt(2.0)
    b = (high - mean) / sigma / np.sqrt(2.0)
    ca, cb = (
        torch.special.erf(torch.tensor(a, dtype=torch.float64)),
        torch.special.erf(torch.tensor(b, dtype=torch.float64)),
    )
    u = ca + (cb - ca) * float(rng.uniform())
    u = torch.clamp(u, -1 + 1e-12, 1 - 1e-12)
    value = mean + sigma * np.sqrt(2.0) * float(torch.special.erfinv(u))
    return float(min(max(value, low), high))


class DDPGAgent:
    """Actor-critic with target networks; transitions carry the episode's final reward."""

    def __init__(self, config: DDPGConfig, *, seed: int = 0) -> None:
        self.config = config
        with private_rng(seed):  # seeded init without touching the process-global RNG
            self.actor = _mlp(config.state_dim, config.hidden, nn.Sigmoid())
            self.critic = _mlp(config.state_dim + 1, config.hidden, None)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic)
        self.rng = np.random.default_rng(seed)
        self.memory: list[tuple[np.ndarray, float, float, np.ndarray, float]] = []
        self.moving_average: float | None = None

    def act(self, state: np.ndarray) -> float:
        """Deterministic policy output (keep ratio in [0, 1]) for one state (state_dim,)."""
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(state, dtype=torch.float32).unsqueeze(0))[0, 0])

    def observe(
        self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, done: bool
    ) -> None:
        """Store one transition (the oldest is dropped beyond memory_size)."""
        self.memory.append((state, action, reward, next_state, 0.0 if done else 1.0))
        if len(self.memory) > self.config.memory_size:
            self.memory.pop(0)

    def baseline_reward(self, reward: float) -> float:
        """Reward minus an exponential moving average of past rewards (AMC's variance reduction)."""
        if self.moving_average is None:
            self.moving_average = reward
        else:
            self.moving_average += self.config.moving_alpha * (reward - self.moving_average)
        return reward - self.moving_average

    def update(self) -> tuple[float, float] | None:
        """One gradient step on a random minibatch; returns (critic loss, actor loss) or None if too few samples."""
        cfg = self.config
        if len(self.memory) < min(cfg.batch_size, 8):
            return None
        idx = self.rng.choice(len(self.memory), size=min(cfg.batch_size, len(self.memory)), replace=False)
        s, a, r, s2, nd = zip(*(self.memory[i] for i in idx), strict=True)
        s_t = torch.as_tensor(np.stack(s), dtype=torch.float32)  # (batch, state_dim)
        a_t = torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # (batch, 1)
        r_t = torch.as_tensor(r, dtype=torch.float32).unsqueeze(1)
        s2_t = torch.as_tensor(np.stack(s2), dtype=torch.float32)
        nd_t = torch.as_tensor(nd, dtype=torch.float32).unsqueeze(1)
        with torch.no_grad():
            next_q = self.critic_target(torch.cat([s2_t, self.actor_target(s2_t)], dim=1))
            target = r_t + cfg.discount * nd_t * next_q
        q = self.critic(torch.cat([s_t, a_t], dim=1))
        critic_loss = nn.functional.mse_loss(q, target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(torch.cat([s_t, self.actor(s_t)], dim=1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        soft_update(self.actor_target, self.actor, cfg.tau)
        soft_update(self.critic_target, self.critic, cfg.tau)
        return float(critic_loss.detach()), float(actor_loss.detach())

    def learn_episode(self, transitions: list, reward: float, *, update: bool) -> None:
        """AMC's episode learning: every (state, action, next_state, done) of the episode gets the baselined
        final reward; after warm-up (`update`), one gradient step per transition."""
        shaped = self.baseline_reward(reward)
        for state, action, next_state, done in transitions:
            self.observe(state, action, shaped, next_state, done)
        if update:
            for _ in range(len(transitions)):
                self.update()

    def state_dict(self) -> dict:
        """Everything needed to continue: networks, optimisers, replay memory, baseline and sampling RNG."""
        memory = {}
        if self.memory:
            s, a, r, s2, nd = zip(*self.memory, strict=True)
            memory = {
                "s": torch.as_tensor(np.stack(s)),
                "a": torch.as_tensor(a, dtype=torch.float64),
                "r": torch.as_tensor(r, dtype=torch.float64),
                "s2": torch.as_tensor(np.stack(s2)),
                "nd": torch.as_tensor(nd, dtype=torch.float64),
            }
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "rng": dict(self.rng.bit_generator.state),
            "memory": memory,
            "moving_average": self.moving_average,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved."""
        for key in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, key).load_state_dict(state[key])
        self.rng.bit_generator.state = state["rng"]
        m = state["memory"]
        self.memory = []
        if m:
            for i in range(int(m["a"].shape[0])):
                self.memory.append(
                    (
                        m["s"][i].numpy(),
                        float(m["a"][i]),
                        float(m["r"][i]),
                        m["s2"][i].numpy(),
                        float(m["nd"][i]),
                    )
                )
        self.moving_average = state["moving_average"]
