"""Pruning plans and their application: PruningPlan (v2, with GroupPlan entries), the channel-criteria
registry, budget planning, channel selection, physical and masked pruning, export.

Public API: PruningPlan, GroupPlan, PLAN_VERSION, plan_from_ratios, plan_for_budget, register_criterion,
get_criterion, list_criteria, select_channels, apply_plan, mask_model, resolve_plan, export_pruned,
load_pruned. `CRITERIA` (the registered criteria's names) stays for older imports.
"""

from typing import Any

from engine.pruning.apply import apply_plan, resolve_plan
from engine.pruning.budget import memory_aware_scores, plan_for_budget
from engine.pruning.criteria import (
    Criterion,
    get_criterion,
    list_criteria,
    register_criterion,
    unregister_criterion,
)
from engine.pruning.export import FORMATS, export_pruned, load_pruned
from engine.pruning.group_plan import GroupPlan
from engine.pruning.mask import mask_model
from engine.pruning.plan import PLAN_VERSION, PruningPlan
from engine.pruning.ratios import plan_from_ratios, round_keep
from engine.pruning.select import channel_scores, select_channels

__all__ = [
    "CRITERIA",
    "FORMATS",
    "PLAN_VERSION",
    "Criterion",
    "GroupPlan",
    "PruningPlan",
    "apply_plan",
    "channel_scores",
    "export_pruned",
    "get_criterion",
    "list_criteria",
    "load_pruned",
    "mask_model",
    "memory_aware_scores",
    "plan_for_budget",
    "plan_from_ratios",
    "register_criterion",
    "resolve_plan",
    "round_keep",
    "select_channels",
    "unregister_criterion",
]


def __getattr__(name: str) -> Any:
    if name == "CRITERIA":  # compatibility: v1 exported a closed tuple; now the registry's current names
        return list_criteria()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
