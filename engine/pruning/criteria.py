"""The channel-criteria registry: named functions that score each channel of a group (higher = keep).

Built in: l1, l2 (filter norms), bn_scale (|gamma|), taylor (|w * grad|), fisher (scores given by the caller)
and random (seeded by the group name). Ranking and picking channels is select.py's job; this module only
names and computes scores. An unknown name is always an error, never a silent fallback to l1.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import PlanError
from engine.graph import ChannelGroup, Topology

ScoreFn = Callable[[nn.Module, Topology, str], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A registered channel criterion.

    Attributes:
        name: the name plans and methods use ("l1", ...).
        fn: (model, topology, group name) -> per-channel scores, shape (channels,), higher = keep.
        description: one line for help texts and error messages.
    """

    name: str
    fn: ScoreFn
    description: str


_REGISTRY: dict[str, Criterion] = {}


def register_criterion(name: str, fn: ScoreFn, description: str, *, replace: bool = False) -> Criterion:
    """Register a channel criterion under `name` so plans, methods and select_channels accept it.

    Args:
        name: a non-empty name without spaces.
        fn: (model, topology, group name) -> per-channel scores (channels,), higher = keep.
        description: one line saying what it scores.
        replace: allow replacing an existing criterion of that name.

    Returns:
        The registered Criterion.

    Raises:
        PlanError: a bad name, a non-callable fn, or a name already registered (without replace=True).
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise PlanError(f"criterion name {name!r} must be a non-empty string without spaces")
    if not callable(fn):
        raise PlanError(
            f"criterion {name!r} needs a callable (model, topology, group name) -> scores, "
            f"got {type(fn).__name__}"
        )
    if name in _REGISTRY and not replace:
        raise PlanError(f"criterion {name!r} is already registered; pick another name or pass replace=True")
    entry = Criterion(name, fn, str(description))
    _REGISTRY[name] = entry
    return entry


def unregister_criterion(name: str) -> None:
    """Remove a registered criterion (tests and plug-ins that registered their own).

    Raises:
        PlanError: `name` is not registered.
    """
    get_criterion(name)
    del _REGISTRY[name]


def list_criteria() -> tuple[str, ...]:
    """Names of every registered criterion, in registration order (built-ins first)."""
    return tuple(_REGISTRY)


def get_criterion(name: str) -> Criterion:
    """The registered criterion called `name`.

    Raises:
        PlanError: `name` is not registered (the message lists the registered ones).
    """
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise PlanError(
            f"unknown channel criterion {name!r}; choose one of {', '.join(_REGISTRY)} "
            "(or register yours with engine.pruning.register_criterion)"
        )
    return entry


def _per_channel(
    values: torch.Tensor, group: ChannelGroup, channels: tuple[int, ...], mult: int
) -> torch.Tensor:
    picked = values[list(channels)].reshape(group.channels, mult)  # (group channels, mult)
    return picked.sum(dim=1)


def _member_sum(
    model: nn.Module,
    topology: Topology,
    group_name: str,
    member_values: Callable[[str, nn.Module, str], torch.Tensor | None],
) -> tuple[torch.Tensor, int]:
    """Per-channel scores summed over a group's members, each member normalised by its mean."""
    group = topology.group(group_name)
    modules = dict(model.named_modules())
    total = torch.zeros(group.channels, dtype=torch.float64)
    used = 0
    for m in group.maps:
        values = member_values(m.module, modules[m.module], m.dim)
        if values is None:
            continue
        per = _per_channel(values.double().cpu(), group, m.channels, m.mult)
        total += per / (per.mean() + 1e-12)
        used += 1
    return total, used


def _is_producer(module: nn.Module, dim: str) -> bool:
    return dim == "out" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


def _norm_scores(model: nn.Module, topology: Topology, group_name: str, *, p: int) -> torch.Tensor:
    def values(_: str, module: nn.Module, dim: str) -> torch.Tensor | None:
        if not _is_producer(module, dim):
            return None
        flat = module.weight.detach().flatten(1)  # (out channels, fan-in)
        return flat.abs().sum(1) if p == 1 else flat.pow(2).sum(1).sqrt()

    return _member_sum(model, topology, group_name, values)[0]


def l1_scores(model: nn.Module, topology: Topology, group_name: str) -> torch.Tensor:
    """L1 norm of each channel's filters (summed over the group's producing convs/linears)."""
    return _norm_scores(model, topology, group_name, p=1)


def l2_scores(model: nn.Module, topology: Topology, group_name: str) -> torch.Tensor:
    """L2 norm of each channel's filters (summed over the group's producing convs/linears)."""
    return _norm_scores(model, topology, group_name, p=2)


def bn_scale_scores(model: nn.Module, topology: Topology, group_name: str) -> torch.Tensor:
    """|gamma| of the group's BatchNorms; a group without a BN with weights is scored by L1 instead."""

    def values(_: str, module: nn.Module, __: str) -> torch.Tensor | None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            return module.weight.detach().abs()
        return None

    total, used = _member_sum(model, topology, group_name, values)
    return total if used else l1_scores(model, topology, group_name)


def taylor_scores(model: nn.Module, topology: Topology, group_name: str) -> torch.Tensor:
    """First-order Taylor importance |w * dL/dw| of each channel's filters (needs a backward pass first)."""

    def values(name: str, module: nn.Module, dim: str) -> torch.Tensor | None:
        if not _is_producer(module, dim):
            return None
        if module.weight.grad is None:
            raise PlanError(
                f"criterion 'taylor' needs gradients but {name}.weight.grad is None; "
                "run a backward pass on some batches first"
            )
        return (module.weight.detach() * module.weight.grad.detach()).abs().flatten(1).sum(1)

    return _member_sum(model, topology, group_name, values)[0]


def fisher_scores(model: nn.Module, topology: Topology, group_name: str) -> torch.Tensor:
    """Group Fisher scores come from the method that measured them; they cannot be computed from weights."""
    raise PlanError(
        f"criterion 'fisher' needs per-channel scores for group {group_name!r}: pass importance=... "
        "(the Group Fisher method does), or store the kept indices in the plan"
    )


def random_scores(model: nn.Module, topology: Topology, group_name: str) -> torch.Tensor:
    """Uniform random scores, reproducible per group name."""
    generator = torch.Generator().manual_seed(zlib.crc32(group_name.encode()))
    return torch.rand(topology.group(group_name).channels, generator=generator)


for _name, _fn, _text in (
    ("l1", l1_scores, "L1 norm of each channel's filters"),
    ("l2", l2_scores, "L2 norm of each channel's filters"),
    ("bn_scale", bn_scale_scores, "|gamma| of the group's BatchNorms (L1 where there is none)"),
    ("taylor", taylor_scores, "first-order Taylor |w * grad| (needs a backward pass)"),
    ("fisher", fisher_scores, "Group Fisher scores given by the method (importance=...)"),
    ("random", random_scores, "random, seeded by the group name"),
):
    register_criterion(_name, _fn, _text)
