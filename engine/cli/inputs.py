"""Turning command-line values into engine inputs: budgets, method options, plan files, topologies,
scoring settings, and a stored run's recorded options. Shared by the command modules; no command logic here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli.context import CommandContext
from engine.errors import BudgetError, PlanError, TopoPruneError


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` (values stay strings; the method's OptionSpec coerces them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TopoPruneError(
                f"--option {pair!r} must look like KEY=VALUE (e.g. --option n_candidates=20)"
            )
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def get_method_named(name: str):
    """The MethodSpec of `name`; an unknown name's MethodError suggests the closest registered one."""
    import difflib

    from engine.methods import MethodError, get_method, list_methods

    try:
        return get_method(name)
    except MethodError:
        names = [m.name for m in list_methods()]
        close = difflib.get_close_matches(name, names, n=1)
        if name in names or not close:
            raise
        raise MethodError(
            f"unknown pruning method {name!r}; did you mean {close[0]!r}? (available methods: "
            f"{', '.join(names)})"
        ) from None


def check_budget(budget: float | None, metric: str = "macs") -> float:
    """The budget, or BudgetError naming the accepted range."""
    from engine.pruning.budget import UNITS

    what = UNITS.get(metric, metric)
    if budget is None:
        raise BudgetError(f"--budget is required: the fraction of the baseline's {what} to keep, in (0, 1]")
    if not 0.0 < budget <= 1.0:
        raise BudgetError(
            f"budget {budget:g} is outside (0, 1]; it is the fraction of the baseline's {what} to keep "
            f"(0.5 keeps half)"
        )
    return float(budget)


def add_budget_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Add `--budget B` and `--budget-metric METRIC` (shared by `prune` and `search`)."""
    from engine.pruning.budget import METRICS

    parser.add_argument(
        "--budget",
        type=float,
        required=required,
        metavar="B",
        help="fraction of the baseline's value of --budget-metric to keep, in (0, 1]",
    )
    parser.add_argument(
        "--budget-metric",
        default="macs",
        metavar="METRIC",
        help=f"what the budget is a fraction of: {', '.join(METRICS)} (default macs); latency "
        "is predicted from a per-group table measured once on this machine",
    )


def budget_from_args(args: argparse.Namespace):
    """The engine.pruning.budget.Budget of `--budget` and `--budget-metric`.

    Raises:
        BudgetError: no --budget, a fraction outside (0, 1], or an unknown metric (the message lists them).
    """
    from engine.pruning.budget import Budget

    metric = getattr(args, "budget_metric", None) or "macs"
    Budget(metric, 1.0)  # an unknown metric is reported before a missing or bad fraction
    return Budget(metric, check_budget(getattr(args, "budget", None), metric))


MAX_PLAN_BYTES = 64 << 20  # a plan of every channel index of a large torchvision model is a few MB


def load_plan_file(path_text: str):
    """A PruningPlan from a JSON file, with a clear error for a missing or malformed file."""
    from engine.pruning import PruningPlan

    path = Path(path_text).expanduser()
    if not path.is_file():
        raise TopoPruneError(f"plan file {path} does not exist; check the path given to --plan")
    size = path.stat().st_size
    if size > MAX_PLAN_BYTES:
        raise PlanError(
            f"plan file {path} is {size:,} bytes, more than a plan can be ({MAX_PLAN_BYTES:,}); "
            "check that --plan names a plan.json written by `prune --out`"
        )
    try:
        return PruningPlan.from_json(path.read_text())
    except PlanError as exc:
        raise PlanError(f"plan file {path}: {exc}") from None
    except RecursionError:
        raise PlanError(
            f"plan file {path} is nested too deeply to be a TopoPrune plan; save one with `prune --out`"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise TopoPruneError(
            f"plan file {path} is not a TopoPrune plan ({exc}); save one with `prune --out`"
        ) from None


def plan_from_dict(data: dict[str, Any]):
    """A PruningPlan from its stored dict."""
    from engine.pruning import PruningPlan

    return PruningPlan.from_dict(data)


def check_plan_model(plan: Any, model: str, source: str) -> None:
    """Refuse a plan saved for another zoo model (plans naming a class, not a zoo model, pass)."""
    from engine.zoo import list_models

    named = getattr(plan, "model", None)
    if named and named != model and named in list_models():
        raise TopoPruneError(f"plan {source} is for model {named!r}, not {model!r}; pass the matching MODEL")


def build_topology_for(ctx: CommandContext, loaded: Any):
    """The topology of a loaded model (traced on CPU with a zero batch).

    torch.fx's ShapeProp prints a traceback to stderr before re-raising a failed forward pass; the CLI keeps
    stderr to its one error line, so that noise is swallowed (the ModelError carries what went wrong).
    """
    import contextlib
    import io

    from engine.graph import build_topology

    with contextlib.redirect_stderr(io.StringIO()):
        return build_topology(loaded.model.eval(), ctx.example_inputs(loaded), model_name=loaded.name)


def scoring_config(ctx: CommandContext, val_size: int):
    """The shared scoring protocol's settings from the command line."""
    from engine.evaluate import ScoringConfig

    return ScoringConfig(val_size=val_size, device=ctx.device())


def method_callback(ctx: CommandContext, desc: str, total: int | None = None):
    """A MethodEvent callback driving a progress bar; returns (callback, bar)."""
    bar = ctx.progress(total=total, desc=desc)

    def callback(event: Any) -> None:
        bar.update_to(int(event.step), int(event.total) or None, event.message)

    return callback, bar


RUN_CONFIG_KEYS = ("dataset", "data_dir", "checkpoint", "input_size", "seed", "num_classes", "width")


def apply_run_config(ctx: CommandContext, config: dict[str, Any]) -> None:
    """Make the context rebuild a run's model and data: its recorded common options override the defaults."""
    for key in RUN_CONFIG_KEYS:
        if key in config:
            setattr(ctx.args, key, config[key])
