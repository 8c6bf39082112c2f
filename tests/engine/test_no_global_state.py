"""Seeded engine work leaves process-global state alone, so two threads (two GUI sessions) cannot change each other.

Each thread's result equals what the same call gives alone, and neither the global RNG nor the thread count moves.
"""

import threading

import pytest
import torch
from torch import nn

from engine.data import DataSplits
from engine.rl.ddpg import DDPGAgent
from engine.rl.ppo import PPOAgent, PPOConfig
from engine.rl.synthetic import SyntheticEnv
from engine.rng import private_rng
from engine.train import TrainConfig, train_model
from engine.zoo import build_model

TARGET = [0.3, 0.8, 0.5, 0.9]


def _tiny_data(n: int = 64) -> DataSplits:
    g = torch.Generator().manual_seed(5)
    images = {
        s: torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        for s in ("train", "val", "test")
    }
    labels = {s: torch.randint(0, 4, (n,), generator=g) for s in ("train", "val", "test")}
    return DataSplits("tiny", 4, 8, ("a", "b", "c", "d"), images, labels, (0.5,) * 3, (0.25,) * 3)


def _train_with_dropout(seed: int) -> torch.Tensor:
    """Build (seeded init), then train a small net whose forward draws dropout masks; returns its weights."""
    with private_rng(seed):
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    train_model(
        model, _tiny_data(), TrainConfig(epochs=2, batch_size=16, seed=seed, augment=True), validate=False
    )
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _ppo_rewards(seed: int) -> list[float]:
    env, agent, rewards = (
        SyntheticEnv(TARGET),
        PPOAgent(PPOConfig(update_every_episodes=2, epochs=1), seed=seed),
        [],
    )
    for _ in range(4):
        s, done = env.reset(), False
        while not done:
            r = env.step(agent.act(s).action)
            agent.observe(r.reward, r.done)
            s, done = r.state, r.done
        rewards.append(r.reward)
        agent.end_episode()
    return rewards


def _resnet_and_ddpg(seed: int) -> torch.Tensor:
    model = build_model("cifar_resnet20", width=0.25, seed=seed)
    agent = DDPGAgent(seed=seed)
    return torch.cat([p.detach().flatten() for p in [*model.parameters(), *agent.actor.parameters()]])


def _same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize(
    ("job_a", "job_b"), [(_train_with_dropout, _ppo_rewards), (_resnet_and_ddpg, _train_with_dropout)]
)
def test_two_seeded_jobs_in_two_threads_equal_their_serial_results(job_a, job_b):
    serial_a, serial_b = job_a(1), job_b(2)
    threads, initial = torch.get_num_threads(), torch.get_rng_state()
    torch.rand(3)
    expected = torch.get_rng_state()  # where only the main thread's own draw below may take the global RNG
    torch.set_rng_state(initial)
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(key, job, seed):
        try:
            start.wait()
            results[key] = job(seed)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    workers = [
        threading.Thread(target=run, args=("a", job_a, 1)),
        threading.Thread(target=run, args=("b", job_b, 2)),
    ]
    for w in workers:
        w.start()
    torch.rand(3)  # the main thread drawing from the global RNG meanwhile must not disturb the workers
    for w in workers:
        w.join()
    assert not errors, errors
    assert _same(results["a"], serial_a) and _same(results["b"], serial_b)
    assert torch.equal(torch.get_rng_state(), expected), "a worker read or advanced the process-global RNG"
    assert torch.get_num_threads() == threads


def test_seeded_build_and_training_neither_read_nor_advance_the_global_rng():
    torch.manual_seed(0)
    a = _train_with_dropout(3)
    torch.manual_seed(99)  # a different global state gives the same result ...
    state = torch.get_rng_state()
    assert torch.equal(_train_with_dropout(3), a)
    assert torch.equal(torch.get_rng_state(), state)  # ... and leaves the global RNG where it was
    assert not torch.equal(_train_with_dropout(4), a)


def test_private_rng_draws_the_stream_manual_seed_would_and_continues_across_entries():
    rng = private_rng(11)
    with rng:
        first = torch.rand(3)
        weight = nn.Linear(4, 2).weight.detach().clone()  # torch.nn.init gets the private generator too
    with rng:
        dropped = nn.functional.dropout(torch.ones(16), 0.5)
    torch.manual_seed(11)
    assert torch.equal(first, torch.rand(3))
    assert torch.equal(weight, nn.Linear(4, 2).weight.detach())
    assert torch.equal(dropped, nn.functional.dropout(torch.ones(16), 0.5))


def test_private_rng_is_per_thread():
    with private_rng(0):
        before = torch.get_rng_state()
        torch.rand(5)  # this thread: the private stream
        assert torch.equal(torch.get_rng_state(), before)
        other = threading.Thread(target=torch.rand, args=(5,))  # another thread: still the global RNG
        other.start()
        other.join()
        assert not torch.equal(torch.get_rng_state(), before)
