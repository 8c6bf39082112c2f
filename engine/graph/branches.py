"""Data-dependent Python control flow (`if x.sum() > 0:` in forward): re-run the channel tracing with each such
branch forced the other way and refuse the model when the layers run or their channel coupling differ.

A branch whose outcomes run the same layers with the same coupling (e.g. `x = x * 2` or not) is harmless for
pruning and is only noted. This module decides; tracing itself is channels.py's job.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import ModelError
from engine.graph.channels import ChannelClasses, class_members, trace_channels

MAX_SITES = 8


def _structure(classes: ChannelClasses) -> tuple:
    members = class_members(classes)
    partition = frozenset(
        frozenset((k[0], k[1], c) for k, chs in slots.items() for c in chs) for slots in members.values()
    )
    return tuple(classes.order), partition


def check_branches(model: nn.Module, inputs: tuple[torch.Tensor, ...], classes: ChannelClasses) -> list[str]:
    """Notes on harmless tensor-valued branches; raises on any that changes the pruned structure.

    Raises:
        ModelError: forcing a tensor-valued `if` in forward() the other way runs other layers, couples channels
            differently, or fails; the message names the module whose forward() holds it.
    """
    reference = _structure(classes)
    sites = classes.branches
    for index in range(min(len(sites), MAX_SITES)):
        module = sites[index] or "the model's own forward()"
        kind = type(dict(model.named_modules()).get(sites[index], model)).__name__
        try:
            flipped, _ = trace_channels(model, inputs, flip={index})
            changed = _structure(flipped) != reference
        except Exception:  # noqa: BLE001 - the other branch does not even run on these inputs
            changed = True
        if changed:
            raise ModelError(
                f"{module} ({kind}) branches on tensor values in forward() (an `if` on a tensor) and the other "
                "branch runs different layers or connects channels differently, so one traced path cannot be "
                "pruned safely; make forward() take the same path for every input (move the test out of the "
                "model or make it depend on shapes only)"
            )
    where = ", ".join(sorted({s or "forward()" for s in sites}))
    return [
        f"forward() branches on tensor values in {where}; both outcomes run the same layers with the same "
        "channel coupling, so pruning is unaffected"
    ]
