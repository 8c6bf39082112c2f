"""Tests of Group Fisher importance (engine.methods.fisher)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.methods.fisher import fisher_channel_scores, group_consumers


class _Residual(nn.Module):
    """A stream group read by two consumers (conv_a and head) and tied across a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.bn(self.stem(x)))
        s = F.relu(s + self.bn_a(self.conv_a(s)))
        return self.head(F.adaptive_avg_pool2d(s, 1).flatten(1))


class _ZeroChannel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 0] = 1.0  # channel 1 carries the label signal
            self.conv.weight[2, 1] = 0.1  # channel 2 carries noise
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[1, 1] = 2.0  # logit 1 = 2 * channel 1, logit 0 = 1
            self.head.bias[0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def _topology(model: nn.Module):
    from engine.graph import build_topology

    return build_topology(model, torch.zeros(1, 3, 8, 8))


def _stream_group(topology):
    return next(g for g in topology.groups if g.prunable and any(n == "stem" for n, _ in g.members))


def test_coupled_group_shares_one_score_summed_before_squaring():
    torch.manual_seed(0)
    model = _Residual().eval()
    topology = _topology(model)
    group = _stream_group(topology)
    assert sorted(group_consumers(model, group)) == ["conv_a", "head"]
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
    scores = fisher_channel_scores(model, topology, [(x, y)], groups=[group])
    assert list(scores) == [group.name] and scores[group.name].shape == (4,)

    # reference: one mask shared by both consumers, per-sample gradient, then squared
    mask = torch.ones(4, requires_grad=True)
    hooks = [
        model.conv_a.register_forward_pre_hook(lambda m, i: (i[0] * mask.view(1, -1, 1, 1),)),
        model.head.register_forward_pre_hook(lambda m, i: (i[0] * mask.view(1, -1),)),
    ]
    expected = torch.zeros(4, dtype=torch.float64)
    separate = torch.zeros(4, dtype=torch.float64)
    for n in range(6):
        loss = F.cross_entropy(model(x[n : n + 1]), y[n : n + 1])
        (g,) = torch.autograd.grad(loss, mask)
        expected += g.double() ** 2
    for h in hooks:
        h.remove()
    assert torch.allclose(scores[group.name], expected, rtol=1e-4, atol=1e-10)

    # squaring each layer's gradient separately (ignoring the coupling) gives a different answer
    m_a = torch.ones(4, requires_grad=True)
    m_h = torch.ones(4, requires_grad=True)
    hooks = [
        model.conv_a.register_forward_pre_hook(lambda m, i: (i[0] * m_a.view(1, -1, 1, 1),)),
        model.head.register_forward_pre_hook(lambda m, i: (i[0] * m_h.view(1, -1),)),
    ]
    separate = torch.zeros(4, dtype=torch.float64)
    for n in range(6):
        loss = F.cross_entropy(model(x[n : n + 1]), y[n : n + 1])
        g_a, g_h = torch.autograd.grad(loss, [m_a, m_h])
        separate += g_a.double() ** 2 + g_h.double() ** 2
    for h in hooks:
        h.remove()
    assert not torch.allclose(scores[group.name], separate, rtol=1e-3)


def test_a_channel_whose_removal_raises_the_loss_ranks_above_a_zero_weight_channel():
    torch.manual_seed(0)
    model = _ZeroChannel().eval()
    topology = _topology(model)
    group = next(g for g in topology.groups if g.prunable and any(n == "conv" for n, _ in g.members))
    sign = torch.tensor([1.0, -1.0]).repeat(16)  # (32,)
    x = sign.view(-1, 1, 1, 1) + 0.1 * torch.randn(32, 3, 8, 8)
    y = (sign > 0).long()
    scores = fisher_channel_scores(model, topology, [(x, y)], groups=[group])[group.name]
    assert scores[0] == 0.0  # zero weights: zero activation, zero mask gradient
    assert scores[1] > scores[0]
    assert int(scores.argmin()) == 0  # removed first
    # and removing channel 1 does raise the loss
    base = F.cross_entropy(model(x), y)
    with torch.no_grad():
        model.conv.weight[1].zero_()
    assert F.cross_entropy(model(x), y) > base


def test_fisher_scores_leave_the_model_untouched():
    torch.manual_seed(0)
    model = _Residual().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    topology = _topology(model)
    fisher_channel_scores(model, topology, [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())
