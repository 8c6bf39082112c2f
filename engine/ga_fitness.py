"""Step-1 fitness of the `ga` method: how well a group's consumers can rebuild their outputs from the kept channels.

For a group and each consumer (a conv with groups=1 or a linear layer reading the group's channels), inputs X
are taken from the network pruned so far (earlier groups committed) and targets Y = W * X_baseline from the
unpruned network, on a cached calibration batch at sampled spatial positions (ThiNet / CP style). For a keep mask
S the consumer's weights are refit by (ridge) least squares on the kept input columns, and the fitness is
-sum over consumers of ||Y - W_S X_S||^2 / ||Y||^2, computed from the Gram matrices X^T X and X^T Y.
Nothing here chooses channels; engine.methods.ga runs the GA over masks with this fitness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ConsumerStats:
    """Least-squares statistics of one consumer: gram = X^T X (D, D), cross = X^T Y (D, out), energy = ||Y||^2,
    and group_cols[j] = the input columns fed by group channel j."""

    gram: torch.Tensor
    cross: torch.Tensor
    energy: float
    group_cols: list[np.ndarray]
    other_cols: np.ndarray


def _consumers(
    model: nn.Module, topology, group_name: str
) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    modules = dict(model.named_modules())
    out = []
    for m in topology.group(group_name).maps:
        module = modules.get(m.module)
        if m.dim != "in":
            continue
        if isinstance(module, nn.Conv2d) and module.groups == 1 or isinstance(module, nn.Linear):
            out.append((m.module, module, m.channels, m.mult))
    return out


def consumer_names(model: nn.Module, topology, group_name: str) -> list[str]:
    """Modules whose inputs the fitness of `group_name` reads."""
    return [c[0] for c in _consumers(model, topology, group_name)]


def capture_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    """The input tensor of each named module on one forward of `x`."""
    handles = [
        modules[n].register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, args[0].detach()))
        for n in names
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _columns(module: nn.Module, x: torch.Tensor, positions: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
    """Input columns (rows = samples) of a consumer: its patches at the sampled (image, row, col) positions, in
    F.unfold's (channel, kh, kw) order, or x itself for a linear layer."""
    if isinstance(module, nn.Linear):
        return x.flatten(1).double()  # (batch, in_features)
    (kh, kw), (ph, pw), (dh, dw) = module.kernel_size, module.padding, module.dilation
    b, i, j = positions  # (samples,) each, in output coordinates
    xp = F.pad(x, (pw, pw, ph, ph))
    rows = (i * module.stride[0])[:, None, None] + (torch.arange(kh) * dh)[None, :, None]  # (S, kh, 1)
    cols = (j * module.stride[1])[:, None, None] + (torch.arange(kw) * dw)[None, None, :]  # (S, 1, kw)
    patches = xp.permute(0, 2, 3, 1)[b[:, None, None], rows, cols]  # (S, kh, kw, C)
    return patches.permute(0, 3, 1, 2).reshape(b.shape[0], -1).double()  # (S, C*kh*kw)


def _positions(module: nn.Conv2d, x: torch.Tensor, per_image: int, generator: torch.Generator) -> tuple:
    (kh, kw), (ph, pw), (dh, dw), (sh, sw) = (
        module.kernel_size,
        module.padding,
        module.dilation,
        module.stride,
    )
    out_h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    batch = x.shape[0]
    b = torch.arange(batch).repeat_interleave(per_image)
    return (
        b,
        torch.randint(0, out_h, (batch * per_image,), generator=generator),
        torch.randint(0, out_w, (batch * per_image,), generator=generator),
    )


def consumer_stats(
    baseline: nn.Module,
    current: nn.Module,
    topology,
    group_name: str,
    inputs: torch.Tensor,
    *,
    positions_per_image: int = 10,
    seed: int = 0,
    base_inputs: dict[str, torch.Tensor] | None = None,
) -> list[ConsumerStats]:
    """Gram statistics of every usable consumer of `group_name` (empty when it has none).

    Args:
        baseline: The unpruned network (targets Y).
        current: The network pruned so far, same module names and shapes (inputs X).
        topology: Their topology.
        group_name: The group whose channels are being chosen.
        inputs: Calibration images (N, 3, H, W) from train.
        positions_per_image: Spatial positions sampled per image for conv consumers.
        seed: Seed of the sampled positions.
        base_inputs: The baseline's inputs to the consumers on `inputs` (capture_inputs), if already captured.
    """
    consumers = _consumers(baseline, topology, group_name)
    if not consumers:
        return []
    names = [c[0] for c in consumers]
    base_in = base_inputs if base_inputs is not None else capture_inputs(baseline, names, inputs)
    cur_in = capture_inputs(current, names, inputs)
    generator = torch.Generator().manual_seed(seed)
    stats = []
    for name, module, channels, mult in consumers:
        positions = None
        if isinstance(module, nn.Conv2d):
            positions = _positions(module, base_in[name], positions_per_image, generator)
        x_cur = _columns(module, cur_in[name], positions)  # (samples, D)
        weight = module.weight.detach().double().flatten(1)  # (out, D)
        y = _columns(module, base_in[name], positions) @ weight.T  # (samples, out)
        width = weight.shape[1] // (
            module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        )
        group_cols = []
        for j in range(len(channels) // mult):
            chans = channels[j * mult : (j + 1) * mult]
            group_cols.append(np.concatenate([np.arange(c * width, (c + 1) * width) for c in chans]))
        used = np.concatenate(group_cols) if group_cols else np.array([], dtype=np.int64)
        other = np.setdiff1d(np.arange(weight.shape[1]), used)
        stats.append(
            ConsumerStats(
                gram=(x_cur.T @ x_cur).float(),
                cross=(x_cur.T @ y).float(),
                energy=float((y**2).sum()),
                group_cols=group_cols,
                other_cols=other,
            )
        )
    return stats


def reconstruction_fitness(stats: list[ConsumerStats], mask: np.ndarray, *, ridge: float = 1e-4) -> float:
    """-sum_consumers ||Y - W_S X_S||^2 / ||Y||^2 after the least-squares refit on the kept channels (higher =
    better; 0 = perfect). `mask` is a 0/1 vector over the group's channels."""
    keep = np.flatnonzero(np.asarray(mask) > 0)
    total = 0.0
    for s in stats:
        cols = np.concatenate([s.other_cols] + [s.group_cols[j] for j in keep]).astype(np.int64)
        idx = torch.from_numpy(cols)
        gram = s.gram[idx][:, idx]
        gram = gram + ridge * (float(gram.diagonal().mean()) + 1e-12) * torch.eye(len(cols), dtype=gram.dtype)
        cross = s.cross[idx]
        chol, info = torch.linalg.cholesky_ex(gram)
        solved = (
            torch.cholesky_solve(cross, chol) if int(info) == 0 else torch.linalg.lstsq(gram, cross).solution
        )
        explained = float((cross * solved).sum())
        total += max(0.0, s.energy - explained) / max(s.energy, 1e-12)
    return -total
