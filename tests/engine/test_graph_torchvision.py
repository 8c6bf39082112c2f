"""The torchvision list of issue 3: topology, groups, exact costs and pruning at a 50% budget (slow sweep)."""

from __future__ import annotations

import pytest
import torch

from engine.cost import count_costs, plan_costs
from engine.graph import build_topology
from engine.pruning import apply_plan, mask_model, plan_for_budget

TORCHVISION = [
    "resnet18",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "densenet121",
    "efficientnet_b0",
    "regnet_y_400mf",
    "mnasnet1_0",
    "googlenet",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model_prunes_exactly(name):
    from engine.zoo import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(name, num_classes=1000).eval()
        x = torch.randn(1, 3, 224, 224)
        topology = build_topology(model, x, model_name=name)
        assert topology.prunable_groups
        assert count_costs(model, x).macs == topology.macs
        plan = plan_for_budget(topology, 0.5)
        pruned, masked = apply_plan(model, topology, plan).eval(), mask_model(model, topology, plan).eval()
        counted, analytic = count_costs(pruned, x), plan_costs(topology, plan)
        assert (counted.macs, counted.params) == (analytic.macs, analytic.params)
        assert 0.495 <= counted.macs / topology.macs <= 0.5
        small = torch.randn(1, 3, 96, 96)
        with torch.no_grad():
            reference, out = masked(small), pruned(small)
        assert out.shape == (1, 1000)
        torch.testing.assert_close(out, reference, atol=1e-4 * reference.abs().max().item() + 1e-5, rtol=1e-3)
    finally:
        torch.set_num_threads(threads)
