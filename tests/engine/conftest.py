"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def resnet20():
    """An untrained cifar_resnet20 (seeded) in eval mode, with its topology."""
    from engine.graph import build_topology
    from engine.zoo import build_model

    model = build_model("cifar_resnet20").eval()
    return model, build_topology(model, torch.zeros(1, 3, 32, 32))
