"""Build models by name: CIFAR-style networks for 32x32 inputs and every torchvision classifier.

Models are plain nn.Modules made of nn.Conv2d / nn.BatchNorm2d / nn.ReLU / nn.Linear so that the topology
tracer and the structural pruner see every channel. This module builds models; it never loads user weights
(see engine.checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from engine.errors import EnvironmentMismatchError, ModelError
from engine.rng import private_rng

CIFAR_MODELS: tuple[str, ...] = (
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_vgg16",
    "cifar_mobilenet_v1",
    "cifar_mobilenet_v2",
    "cifar_shufflenet_v2",
)


def _scaled(channels: int, width: float, *, divisor: int = 1) -> int:
    """Channels after a width multiplier, at least 1 (or `divisor`), rounded to a multiple of `divisor`."""
    scaled = max(divisor, int(math.floor(channels * width / divisor + 0.5)) * divisor)
    return max(1, scaled)


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


# --- CIFAR ResNet (He et al. 2016, 6n+2 layers) -------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or 1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stem, three stages of n basic blocks (16/32/64 channels), pool, fc."""

    def __init__(self, depth: int, *, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = widths[0]
        stages = []
        for index, channels in enumerate(widths):
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- CIFAR VGG-16 with BN -----------------------------------------------------------------------------------

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs (13 convs, 5 max-pools, one linear classifier)."""

    def __init__(self, *, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out_channels = _scaled(int(item), width)
            layers += [*_conv_bn(in_channels, out_channels, 3), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# --- CIFAR MobileNet v1 -------------------------------------------------------------------------------------

_MOBILENET_V1 = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels), nn.ReLU(inplace=True)
        )
        self.pointwise = nn.Sequential(*_conv_bn(in_channels, out_channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class CifarMobileNetV1(nn.Module):
    """MobileNet v1 for 32x32 inputs (stem stride 1; 13 depthwise-separable blocks)."""

    def __init__(self, *, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem = _scaled(32, width)
        self.stem = nn.Sequential(*_conv_bn(3, stem, 3), nn.ReLU(inplace=True))
        blocks, in_channels = [], stem
        for channels, stride in _MOBILENET_V1:
            out_channels = _scaled(channels, width)
            blocks.append(DepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


# --- CIFAR MobileNet v2 -------------------------------------------------------------------------------------

# (expansion t, channels c, repeats n, stride s); strides of the first stages are 1 for 32x32 inputs.
_MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 project (linear), with a residual add when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(in_channels, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, out_channels, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNet v2 for 32x32 inputs (stem stride 1, first two stages at full resolution)."""

    def __init__(self, *, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        in_channels = _scaled(32, width, divisor=8)
        last = _scaled(1280, max(1.0, width), divisor=8)
        self.stem = nn.Sequential(*_conv_bn(3, in_channels, 3), nn.ReLU6(inplace=True))
        blocks = []
        for expansion, channels, repeats, stride in _MOBILENET_V2:
            out_channels = _scaled(channels, width, divisor=8)
            for index in range(repeats):
                blocks.append(
                    InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expansion)
                )
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(in_channels, last, 1), nn.ReLU6(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


# --- CIFAR ShuffleNet v2 ------------------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)  # (batch, groups, per_group, h, w)
    return x.transpose(1, 2).contiguous().view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNet v2 unit: split (stride 1) or two branches (stride 2), concat, channel shuffle."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
                *_conv_bn(in_channels, branch, 1),
                nn.ReLU(inplace=True),
            )
        source = in_channels if stride > 1 else branch
        self.branch2 = nn.Sequential(
            *_conv_bn(source, branch, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(branch, branch, 3, stride, groups=branch),
            *_conv_bn(branch, branch, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat((left, self.branch2(right)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class CifarShuffleNetV2(nn.Module):
    """ShuffleNet v2 (1.0x stage widths 116/232/464) for 32x32 inputs: stem stride 1, no max-pool."""

    def __init__(self, *, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem = _scaled(24, width)
        self.stem = nn.Sequential(*_conv_bn(3, stem, 3), nn.ReLU(inplace=True))
        in_channels, stages = stem, []
        for channels, repeats in ((116, 4), (232, 8), (464, 4)):
            out_channels = _scaled(channels, width, divisor=2)
            units = [ShuffleUnit(in_channels, out_channels, 2)]
            units += [ShuffleUnit(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            in_channels = out_channels
        self.stage2, self.stage3, self.stage4 = stages
        last = _scaled(1024, max(1.0, width))
        self.head = nn.Sequential(*_conv_bn(in_channels, last, 1), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stem(x))))
        return self.classifier(torch.flatten(self.avgpool(self.head(x)), 1))


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


_CIFAR_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **{f"cifar_resnet{d}": (lambda d=d, **kw: CifarResNet(d, **kw)) for d in (20, 32, 44, 56, 110)},
    "cifar_vgg16": CifarVGG,
    "cifar_mobilenet_v1": CifarMobileNetV1,
    "cifar_mobilenet_v2": CifarMobileNetV2,
    "cifar_shufflenet_v2": CifarShuffleNetV2,
}


# --- torchvision --------------------------------------------------------------------------------------------


def import_torchvision():
    """Import torchvision, turning a torch/torchvision build mismatch into one sentence that names the fix."""
    try:
        import torchvision
    except (RuntimeError, ImportError, OSError) as exc:
        raise EnvironmentMismatchError(
            f"torchvision cannot be imported with torch {torch.__version__} ({str(exc).splitlines()[0]}): "
            "the two builds do not match; reinstall them as a pair with "
            "`pip install --upgrade --force-reinstall torch torchvision` (or run `make clean-venv app`)."
        ) from exc
    return torchvision


def torchvision_models() -> list[str]:
    """Names of every torchvision image-classification model."""
    torchvision = import_torchvision()
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """Every model name build_model accepts: the CIFAR zoo first, then torchvision classifiers."""
    try:
        return [*CIFAR_MODELS, *torchvision_models()]
    except EnvironmentMismatchError:
        return list(CIFAR_MODELS)


def default_input_size(name: str) -> int:
    """The input resolution a model is built for: 32 for the CIFAR zoo, 224 for torchvision (299 inception)."""
    if name in _CIFAR_BUILDERS:
        return 32
    return 299 if name == "inception_v3" else 224


def build_model(
    name: str, *, num_classes: int = 10, width: float = 1.0, pretrained: bool = False, seed: int | None = 0
) -> nn.Module:
    """Build a model by name, its random initialisation seeded (the global RNG is left untouched).

    Args:
        name: a CIFAR zoo name (``cifar_resnet20`` ...) or a torchvision classifier name (``resnet50`` ...).
        num_classes: size of the classifier output.
        width: channel width multiplier (CIFAR zoo; torchvision models that take ``width_mult``).
        pretrained: load torchvision's default weights (needs the network or a filled torch hub cache).
        seed: seeds the random initialisation so the same call builds the same weights; None draws from
            the global RNG.

    Raises:
        ModelError: unknown name, bad width, or pretrained weights that cannot be had.
    """
    if seed is None:
        return _build(name, num_classes=num_classes, width=width, pretrained=pretrained)
    with private_rng(seed):
        return _build(name, num_classes=num_classes, width=width, pretrained=pretrained)


def _build(name: str, *, num_classes: int, width: float, pretrained: bool) -> nn.Module:
    if width <= 0:
        raise ModelError(f"width multiplier must be > 0, got {width}")
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if name in _CIFAR_BUILDERS:
        if pretrained:
            raise ModelError(
                f"{name} has no published pretrained weights; use --checkpoint shipped or train one"
            )
        return _CIFAR_BUILDERS[name](num_classes=num_classes, width=width)
    torchvision = import_torchvision()
    known = torchvision_models()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, [*CIFAR_MODELS, *known], n=1)
        hint = f"did you mean {close[0]!r}? Otherwise " if close else ""
        raise ModelError(
            f"unknown model {name!r}: {hint}choose a CIFAR zoo model ({', '.join(CIFAR_MODELS)}) "
            "or a torchvision classifier name (`topoprune info --list` shows them all)"
        )
    kwargs: dict = {}
    if width != 1.0:
        if name.startswith(("mobilenet_v2", "mnasnet")):
            kwargs["width_mult" if name.startswith("mobilenet") else "alpha"] = width
        else:
            raise ModelError(f"torchvision model {name!r} takes no width multiplier; use width 1.0")
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
    except Exception as exc:  # network errors come as URLError, OSError, RuntimeError ...
        raise ModelError(
            f"could not get pretrained weights for {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the machine is probably offline: build it without pretrained weights, or put the weights file in "
            "the torch hub cache ($TORCH_HOME/hub/checkpoints)"
        ) from exc
    if num_classes != 1000:
        _replace_classifier(model, num_classes, name)
    return model


def _replace_classifier(model: nn.Module, num_classes: int, name: str) -> None:
    """Swap a pretrained 1000-way head for a fresh `num_classes`-way one (fine-tuning starts from there)."""
    for parent_name in ("fc", "classifier", "heads", "head"):
        parent = getattr(model, parent_name, None)
        if isinstance(parent, nn.Linear):
            setattr(model, parent_name, nn.Linear(parent.in_features, num_classes))
            return
        if isinstance(parent, nn.Sequential) and isinstance(parent[-1], nn.Linear):
            parent[-1] = nn.Linear(parent[-1].in_features, num_classes)
            return
    raise ModelError(
        f"cannot find the classifier of {name!r} to resize it; use num_classes=1000 with pretrained"
    )
