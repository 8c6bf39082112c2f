"""Pruning plans and their application: PruningPlan, budget planning, channel selection, physical and masked
pruning, export.

Public API: PruningPlan, plan_from_ratios, plan_for_budget, select_channels, apply_plan, mask_model,
resolve_plan, export_pruned, load_pruned.
"""

from engine.pruning.apply import apply_plan, resolve_plan
from engine.pruning.budget import memory_aware_scores, plan_for_budget
from engine.pruning.export import FORMATS, export_pruned, load_pruned
from engine.pruning.mask import mask_model
from engine.pruning.plan import CRITERIA, PruningPlan, plan_from_ratios, round_keep
from engine.pruning.select import channel_scores, select_channels

__all__ = ["CRITERIA", "FORMATS", "PruningPlan", "apply_plan", "channel_scores", "export_pruned", "load_pruned", "mask_model", "memory_aware_scores", "plan_for_budget",
           "plan_from_ratios", "resolve_plan", "round_keep", "select_channels"]
