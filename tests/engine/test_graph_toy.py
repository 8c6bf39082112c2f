"""Tiny hand-built models shared by the graph / cost / pruning tests (no tests of its own)."""

import torch
from torch import nn


class Toy(nn.Module):
    """stem -> residual add (a) -> depthwise conv -> concat of two 1x1 convs -> head -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(8, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.relu(x + self.bn_a(self.a(x)))
        z = self.relu(self.bn_dw(self.dw(x)))
        u = torch.cat([self.b(z), self.c(x)], 1)
        return self.fc(torch.flatten(self.pool(self.head(u)), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial affine terms and running stats (so leaks would show)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = torch.rand(n, generator=generator) - 0.5
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model
