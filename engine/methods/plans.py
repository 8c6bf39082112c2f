"""Building PruningPlans from channel counts and kept indices (the one place methods construct plans).

Selection of which channels to keep belongs to each method; this module only packs the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.methods.candidates import full_keep
from engine.methods.registry import MethodContext


def plan_with_indices(
    ctx: MethodContext,
    keep: Mapping[str, int],
    indices: Mapping[str, Sequence[int]] | None,
    *,
    method: str,
    criterion: str = "l1",
    meta: dict[str, Any] | None = None,
) -> Any:
    """A PruningPlan keeping `keep[g]` channels of each group (the ones in `indices[g]` when given).

    Groups whose count equals their size carry no indices (nothing is removed there).
    """
    from engine.pruning import PruningPlan

    counts = {**full_keep(ctx.topology), **{k: int(v) for k, v in keep.items()}}
    sizes = full_keep(ctx.topology)
    idx = None
    if indices is not None:
        idx = {}
        for name, chosen in indices.items():
            chosen = sorted(int(c) for c in chosen)
            if len(chosen) != counts[name]:
                raise ValueError(f"group {name!r}: {len(chosen)} indices for {counts[name]} kept channels")
            if counts[name] < sizes[name]:
                idx[name] = chosen
    from engine.pruning.budget import record_budget

    plan = PruningPlan(
        model=str(getattr(ctx.topology, "model_name", "")),
        keep={k: v for k, v in counts.items() if v < sizes[k]},
        indices=idx or None,
        channels=sizes,
        criterion=criterion,  # PruningPlan refuses an unregistered criterion
        round_to=ctx.round_to,
        budget=ctx.budget,
        method=method,
        meta=dict(meta or {}),
    )
    return record_budget(plan, ctx.budget_spec)
