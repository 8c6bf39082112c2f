"""Private random streams: run torch's own random code (weight init, dropout) against a seeded generator.

`private_rng(seed)` makes every torch random op in the calling thread that names no generator draw from the
seed's own `torch.Generator` instead of the process-global RNG, so two searches in two threads neither change
nor read each other's randomness. It never touches the global RNG (unlike `torch.manual_seed` or
`torch.random.fork_rng`) and it is thread-local (torch-function modes are per thread). It covers torch's
random tensor ops, every function that takes ``generator=`` (all of `torch.nn.init`) and dropout; not the few
ops with no generator argument at all (rrelu, alpha dropout, gumbel-softmax), which none of the zoo uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["PrivateRNG", "private_rng"]

_TENSOR_METHODS = {
    torch.Tensor.uniform_,
    torch.Tensor.normal_,
    torch.Tensor.bernoulli_,
    torch.Tensor.bernoulli,
    torch.Tensor.random_,
    torch.Tensor.exponential_,
    torch.Tensor.geometric_,
    torch.Tensor.log_normal_,
    torch.Tensor.cauchy_,
    torch.Tensor.multinomial,
}
_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm}
_LIKE = {
    torch.rand_like,
    torch.randn_like,
    torch.randint_like,
    torch.normal,
    torch.bernoulli,
    torch.multinomial,
    torch.poisson,
}
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d}


class PrivateRNG(TorchFunctionMode):
    """Adds ``generator=`` (one per device, all from one seed) to random ops that have none."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}

    def generator_for(self, device: torch.device | str | None) -> torch.Generator:
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self.generators:
            self.generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[device]

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func in _DROPOUTS:
            return _dropout(func, self, *args, **kwargs)
        if kwargs.get("generator") is None and (
            "generator" in kwargs or func in _TENSOR_METHODS or func in _LIKE or func in _FACTORIES
        ):  # a Python-level op that takes a generator (torch.nn.init.*) passes it as generator=None
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            device = kwargs.get("device") if func in _FACTORIES or not tensors else tensors[0].device
            kwargs["generator"] = self.generator_for(device)
        return func(*args, **kwargs)


def _dropout(
    func: Callable,
    mode: PrivateRNG,
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """torch's dropout (elementwise, or whole channels for dropout1d/2d/3d) drawing its mask from `mode`."""
    if not training or p == 0.0:
        return input
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if func is F.dropout:
        shape = input.shape
    else:  # channel dropout: one draw per (batch, channel), or per channel for unbatched input
        spatial = {F.dropout1d: 1, F.dropout2d: 2, F.dropout3d: 3}[func]
        batched = input.dim() == spatial + 2
        shape = input.shape[: 2 if batched else 1] + (1,) * spatial
    keep = torch.empty(shape, dtype=input.dtype, device=input.device)
    keep.bernoulli_(1.0 - p, generator=mode.generator_for(input.device))
    scale = keep.div_(1.0 - p) if p < 1.0 else keep
    return input.mul_(scale) if inplace else input * scale


def private_rng(seed: int) -> PrivateRNG:
    """A context manager under which this thread's torch random ops that name no generator draw from `seed`.

    The CPU stream is the one ``torch.manual_seed(seed)`` would give the global RNG, so seeded code draws the
    same numbers as before; the global RNG is neither read nor advanced. The object may be entered again
    (``with rng: ...`` once per training step): the stream continues where it stopped.

    Args:
        seed: seeds the private generators (one per device, created on first use).
    """
    return PrivateRNG(int(seed))
