"""Shared fixtures of the RL tests: an untrained cifar_resnet20 and its topology, built once per session."""

import pytest
import torch


@pytest.fixture(scope="session")
def resnet20():
    """(model, topology) of an untrained cifar_resnet20 (seeded)."""
    from engine.graph import build_topology
    from engine.zoo import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet20").eval()
    topology = build_topology(model, torch.randn(1, 3, 32, 32), model_name="cifar_resnet20")
    return model, topology
