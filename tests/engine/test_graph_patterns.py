"""Architectures users bring: one small hand-built model per pattern (C2f, CSP, chunk, grouped conv, partial
residual, split sizes, squeeze-excite, subclassed layers, ConvTranspose, attention), each pruned on budget with
masked == physical and analytic == counted MACs; data-dependent branches refused with the module named."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine.cost import count_costs, plan_macs
from engine.errors import ModelError
from engine.graph import build_topology
from engine.pruning import apply_plan, mask_model, plan_for_budget
from tests.engine.test_graph_toy import randomize_bn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cbr(c_in: int, c_out: int, k: int = 1, groups: int = 1, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out), act()
    )


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = cbr(c, c, 3), cbr(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: conv -> chunk(2) -> bottlenecks on the last chunk, each kept -> concat -> conv."""

    def __init__(self, c_in: int, c_out: int, n: int = 2) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = cbr(c_in, 2 * self.c)
        self.cv2 = cbr((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class CSPStage(nn.Module):
    """timm's CSP stage: conv_exp -> split in halves -> blocks on one half -> concat -> transition."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_exp = cbr(c, 2 * c)
        self.blocks = nn.Sequential(Bottleneck(c), Bottleneck(c))
        self.conv_transition_b = cbr(c, c)
        self.conv_transition = cbr(2 * c, 2 * c)

    def forward(self, x):
        x = self.conv_exp(x)
        xs, xb = x.split(x.shape[1] // 2, dim=1)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class ChunkOnly(nn.Module):
    """One conv's outputs chunked into two branches that are added back (no concat)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = cbr(32, 64, 3)
        self.a, self.b = cbr(32, 32, 3), cbr(32, 32, 3)

    def forward(self, x):
        p, q = self.conv(x).chunk(2, 1)
        return self.a(p) + self.b(q)


def classifier(body: nn.Module, c: int, c_in: int = 3, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        cbr(c_in, body_in(body), 3), body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)
    )


def body_in(body: nn.Module) -> int:
    return next(m for m in body.modules() if isinstance(m, nn.Conv2d)).in_channels


class ResNeXtBlock(nn.Module):
    """1x1 -> grouped 3x3 (groups=4, not depthwise) -> 1x1 with a residual add."""

    def __init__(self, c: int, width: int, groups: int = 4) -> None:
        super().__init__()
        self.conv1, self.conv2 = cbr(c, width, act=nn.ReLU), cbr(width, width, 3, groups=groups, act=nn.ReLU)
        self.conv3 = nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.conv3(self.conv2(self.conv1(x))))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 3, act=nn.ReLU)
        self.block1, self.block2 = ResNeXtBlock(16, 32), ResNeXtBlock(16, 32)
        self.down = cbr(16, 32, 3, groups=4, act=nn.ReLU)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.down(self.block2(self.block1(self.stem(x)))))


class PartialResidual(nn.Module):
    """ReXNet: the shortcut is added to the first C of the block's C + 4 output channels only."""

    def __init__(self, c: int = 8, extra: int = 4, inplace: bool = False) -> None:
        super().__init__()
        self.c, self.inplace = c, inplace
        self.stem = cbr(3, c, 3)
        self.expand, self.dw = cbr(c, 4 * c), cbr(4 * c, 4 * c, 3, groups=4 * c)
        self.project = nn.Sequential(nn.Conv2d(4 * c, c + extra, 1, bias=False), nn.BatchNorm2d(c + extra))
        self.head = nn.Sequential(
            cbr(c + extra, 24), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)
        )

    def forward(self, x):
        x = self.stem(x)
        y = self.project(self.dw(self.expand(x)))
        if self.inplace:
            y[:, 0 : self.c] += x
        else:
            y = torch.cat([y[:, 0 : self.c] + x, y[:, self.c :]], dim=1)
        return self.head(y)


class MixConv(nn.Module):
    """MixNet: channels split by size [8, 16], a depthwise conv of its own kernel size per part, concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 24, 3)
        self.splits = [8, 16]
        self.mix = nn.ModuleList(
            nn.Conv2d(s, s, k, padding=k // 2, groups=s, bias=False)
            for s, k in zip(self.splits, (3, 5), strict=True)
        )
        self.bn = nn.BatchNorm2d(24)
        self.head = nn.Sequential(cbr(24, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        parts = torch.split(self.stem(x), self.splits, dim=1)
        return self.head(F.relu(self.bn(torch.cat([m(p) for m, p in zip(self.mix, parts, strict=True)], 1))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)
        self.act, self.gate = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class SEBlock(nn.Module):
    """MobileNetV3: expand -> hardswish -> depthwise -> SE (hardsigmoid gate) -> project, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16, 3, act=nn.Hardswish)
        self.expand = cbr(16, 48, act=nn.Hardswish)
        self.dw = cbr(48, 48, 3, groups=48, act=nn.Hardswish)
        self.se = SqueezeExcite(48)
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(
            cbr(16, 32, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)
        )

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.head(F.hardswish(x))


class ScaledConv(nn.Conv2d):
    """A conv subclass from outside torch.nn (like timm's ScaledStdConv2d) that calls F.conv2d itself."""

    def forward(self, x):
        weight = self.weight * 0.5
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BN subclass with the activation inside."""

    def forward(self, x):
        return F.relu(super().forward(x))


class MyLinear(nn.Linear):
    """timm's Linear: a subclass calling F.linear itself."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Subclassed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = ScaledConv(3, 32, 3, padding=1, bias=False), BatchNormAct(32)
        self.conv2, self.bn2 = ScaledConv(32, 48, 3, padding=1, bias=False), BatchNormAct(48)
        self.conv3, self.bn3 = ScaledConv(48, 64, 3, padding=1, bias=False), BatchNormAct(64)
        self.fc = MyLinear(64, 10)

    def forward(self, x):
        x = self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


PATTERNS = {
    "c2f": lambda: classifier(C2f(16, 32), 32),
    "csp": lambda: classifier(CSPStage(8), 16),
    "chunk": lambda: classifier(ChunkOnly(), 32),
    "grouped": Grouped,
    "partial_residual": PartialResidual,
    "partial_residual_inplace": lambda: PartialResidual(inplace=True),
    "squeeze_excite": SEBlock,
    "subclassed": Subclassed,
}


def check_pattern(model: nn.Module, x: torch.Tensor, budget: float = 0.5):
    """Topology, on-budget plan, forward, masked == physical, analytic == counted MACs."""
    topology = build_topology(model, x)
    assert topology.prunable_groups, [g.reason for g in topology.groups]
    assert topology.macs == count_costs(model, x).macs
    plan = plan_for_budget(topology, budget)
    assert plan.meta["on_budget"], plan.meta
    assert abs(plan.meta["macs_ratio"] - budget) <= 0.01 * budget
    pruned, masked = apply_plan(model, topology, plan).eval(), mask_model(model, topology, plan).eval()
    with torch.no_grad():
        reference, out_pruned, out_masked = model(x), pruned(x), masked(x)
    assert out_pruned.shape == reference.shape
    torch.testing.assert_close(out_masked, out_pruned, atol=1e-4, rtol=1e-4)
    assert count_costs(pruned, x).macs == plan_macs(topology, plan)
    return topology, plan, pruned


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_prunes_on_budget(name):
    torch.manual_seed(0)
    model = randomize_bn(PATTERNS[name]()).eval()
    check_pattern(model, torch.randn(2, 3, 16, 16))


def test_fixed_split_sizes_are_refused_with_the_reason():
    """MixNet's torch.split(x, [8, 16]) is fixed in Python: pruning either part would break forward()."""
    topology = build_topology(MixConv().eval(), torch.randn(1, 3, 16, 16))
    stem = topology.group("stem.0")
    assert not stem.prunable and "splits or slices these channels at sizes fixed in Python" in stem.reason
    assert [g.name for g in topology.prunable_groups] == ["head.0.0"]


def test_subclassed_layers_are_leaves_with_exact_costs():
    """timm-style subclasses (ScaledStdConv2d, BatchNormAct2d, Linear) are traced as the layers they are: the
    classifier keeps its 10 outputs and MACs match FlopCounterMode."""
    model, x = Subclassed().eval(), torch.randn(1, 3, 16, 16)
    topology = build_topology(model, x)
    assert topology.trace_method == "fx" and topology.layers == ["conv1", "conv2", "conv3", "fc"]
    assert topology.group_of("fc") is None and topology.group("conv3").members[-1] == ("fc", "in")
    counted = count_costs(model, x)
    assert topology.macs == counted.macs and topology.params == counted.params


class Branchy(nn.Module):
    """A tensor-valued `if` that runs different layers: tracing one path would mis-prune the other."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = cbr(3, 8, 3), cbr(8, 16, 3), cbr(8, 8, 3)
        self.gate = nn.Identity()

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:
            x = self.a(x)[:, :8]
        else:
            x = self.b(x)
        return x.mean((2, 3))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Branchy()

    def forward(self, x):
        return self.body(x)


def test_data_dependent_branch_is_refused_naming_the_module():
    with pytest.raises(ModelError, match=r"^body \(Branchy\) branches on tensor values in forward\(\)"):
        build_topology(Outer().eval(), torch.randn(1, 3, 8, 8))


class UpNet(nn.Module):
    """UNet-style decoder step: ConvTranspose2d upsampling, concat with the skip, conv."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.down = cbr(3, 16, 3), nn.Conv2d(16, 32, 2, stride=2)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = cbr(32, 16, 3)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        skip = self.enc(x)
        return self.out(self.dec(torch.cat([self.up(self.down(skip)), skip], 1)))


class ConvAttention(nn.Module):
    """conv features -> tokens -> nn.MultiheadAttention -> pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.proj = cbr(3, 32, 3), cbr(32, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (batch, tokens, 16)
        y, _ = self.attn(tokens, tokens, tokens)
        return self.fc(y.mean(1))


@pytest.mark.parametrize(
    "cls, frozen, reason, budget",
    [
        (UpNet, "down", "ConvTranspose2d, whose channels the pruner does not edit", 0.7),
        (ConvAttention, "proj.0", "MultiheadAttention, whose channels the pruner does not edit", 0.95),
    ],
)
def test_convtranspose_and_attention_costs_are_exact(cls, frozen, reason, budget):
    torch.manual_seed(0)
    model, x = randomize_bn(cls()).eval(), torch.randn(2, 3, 16, 16)
    topology = build_topology(model, x)
    assert topology.macs == count_costs(model, x).macs and topology.params == count_costs(model, x).params
    group = topology.group(frozen)
    assert not group.prunable and reason in group.reason
    plan = plan_for_budget(topology, budget)
    pruned = apply_plan(model, topology, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            mask_model(model, topology, plan).eval()(x), pruned(x), atol=1e-4, rtol=1e-4
        )
        assert pruned(x).shape == model(x).shape
    assert count_costs(pruned, x).macs == plan_macs(topology, plan) < topology.macs


def test_torch_pruning_maps_are_checked_not_trusted():
    """C2f: Torch-Pruning maps cv1's outputs past its 32 channels; the group is rebuilt from channel tracing with
    both chunks pruned alike (chunk(2) stays valid) and cv2's inputs remapped per concat slice."""
    topology = build_topology(C2f(16, 32).eval(), torch.randn(1, 16, 8, 8))
    assert any("Torch-Pruning maps cv1.0 (out)" in note for note in topology.notes)
    group = topology.group("cv1.0")
    maps = {(m.module, m.dim): m for m in group.maps}
    assert group.channels == 16 and maps[("cv1.0", "out")].channels[:4] == (0, 16, 1, 17)
    assert maps[("cv2.0", "in")].mult == 4 and maps[("cv2.0", "in")].channels[:4] == (0, 16, 32, 48)
    assert maps[("m.0.cv1.0", "in")].mult == 1


def test_grouped_conv_keeps_groups_valid():
    torch.manual_seed(0)
    model, x = randomize_bn(Grouped()).eval(), torch.randn(2, 3, 16, 16)
    topology, plan, pruned = check_pattern(model, x)
    conv = dict(pruned.named_modules())["block1.conv2.0"]
    assert conv.groups == 4 and conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    assert conv.in_channels < 32 or conv.out_channels < 32
