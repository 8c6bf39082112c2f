"""CLI commands that prune: ``sensitivity`` (per-group accuracy drop), ``prune`` (one plan from a method or a
plan file, measured and recorded as a candidate) and ``export`` (a run's best plan or a plan file, applied and
written as state_dict / pt2 / onnx). Searches that record episodes live in run_cmds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from engine.cli.context import CommandContext
from engine.cli.inputs import (
    add_budget_arguments,
    apply_run_config,
    budget_from_args,
    build_topology_for,
    check_plan_model,
    get_method_named,
    load_plan_file,
    method_callback,
    parse_options,
    plan_from_dict,
    scoring_config,
)
from engine.errors import TopoPruneError
from engine.outputs import check_output_dir, check_outputs, write_text_atomic

EXPORT_SUFFIX = {"state_dict": ".pt", "pt2": ".pt2", "onnx": ".onnx"}
PRUNE_FILES = ("pruned_state_dict.pt", "plan.json", "metrics.json")  # what `prune --out DIR` writes
DEFAULT_KEEP_RATIOS = "0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``sensitivity``, ``prune`` and ``export`` to the sub-command parser."""
    from engine.cli import _non_negative_int, _positive_int, _run_id

    p = commands.add_parser(
        "sensitivity",
        parents=[common],
        help="per-group val accuracy drop per keep ratio",
        description="Prune one group at a time to each keep ratio; report the val accuracy drop.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--keep-ratios",
        default=DEFAULT_KEEP_RATIOS,
        metavar="R,R,...",
        help=f"keep ratios (fraction of channels kept), default {DEFAULT_KEEP_RATIOS}",
    )
    p.add_argument(
        "--groups", metavar="NAME,NAME,...", help="only these groups (default: every prunable group)"
    )
    p.add_argument(
        "--val-size", type=_positive_int, default=512, metavar="N", help="val images scored (default 512)"
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if a cached table exists")
    p.set_defaults(handler=cmd_sensitivity)

    p = commands.add_parser(
        "prune",
        parents=[common],
        help="prune a model with a method (or a saved plan)",
        description="Choose a plan with a method (or load one), prune, measure, record it.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--method", metavar="M", help="pruning method (`topoprune info --methods` lists them)")
    add_budget_arguments(p)
    p.add_argument("--plan", metavar="FILE", help="apply this saved plan (JSON) instead of running a method")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option (repeatable; `topoprune info --methods --json` lists them)",
    )
    p.add_argument("--finetune-epochs", type=_non_negative_int, default=0, metavar="N")
    p.add_argument("--distill", action="store_true", help="fine-tune by distilling from the unpruned model")
    p.add_argument(
        "--finetune-kd",
        action="store_true",
        help="fine-tune with knowledge distillation from the unpruned "
        "baseline (loss (1-w)*CE + w*T^2*KL); see --kd-temperature and --kd-weight",
    )
    p.add_argument(
        "--kd-temperature", type=float, default=4.0, metavar="T", help="KD softmax temperature (default 4)"
    )
    p.add_argument(
        "--kd-weight", type=float, default=0.9, metavar="W", help="KD term weight in [0, 1] (default 0.9)"
    )
    p.add_argument(
        "--val-size", type=_positive_int, default=512, metavar="N", help="val images scored (default 512)"
    )
    p.add_argument("--round-to", type=_positive_int, default=1, metavar="N", help="round channel counts to N")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--out", metavar="DIR", help="save the pruned state_dict and plan JSON into DIR")
    p.add_argument("--force", action="store_true", help="replace files already in --out DIR")
    p.set_defaults(handler=cmd_prune)

    p = commands.add_parser(
        "export",
        parents=[common],
        help="export a run's best plan (or a plan file) as a model",
        description="Apply a run's best plan (or --plan FILE) to its model and write it out.",
    )
    p.add_argument("run_id", nargs="?", type=_run_id, metavar="RUN_ID")
    p.add_argument("--plan", metavar="FILE", help="export this plan (JSON) instead of a run's best plan")
    p.add_argument("--model", metavar="MODEL", help="model of --plan (default: the plan's own model name)")
    p.add_argument("--format", choices=tuple(EXPORT_SUFFIX), default="state_dict")
    p.add_argument("--out", metavar="PATH", help="output file (default: ./<model>-pruned[-run<ID>]<suffix>)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing output file (and its .plan.json)"
    )
    p.set_defaults(handler=cmd_export)


# ----------------------------------------------------------------------------------------------- sensitivity
def cmd_sensitivity(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune sensitivity MODEL``: ``groups`` with the val accuracy drop per keep ratio."""
    from engine.sensitivity import analyze_sensitivity

    a = ctx.args
    try:
        ratios = [float(r) for r in a.keep_ratios.split(",") if r.strip()]
    except ValueError:
        raise TopoPruneError(f"--keep-ratios {a.keep_ratios!r} must be numbers separated by commas") from None
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise TopoPruneError(
            f"--keep-ratios {a.keep_ratios!r}: each must be in (0, 1] (fraction of channels kept)"
        )
    groups = [g.strip() for g in a.groups.split(",") if g.strip()] if a.groups else None
    ctx.store()  # the table is recorded at the end: a store that cannot open fails now, not after the work
    data = ctx.data()
    loaded = ctx.load_model(a.model, need_data=True)
    topology = build_topology_for(ctx, loaded)
    bar = ctx.progress(total=None, desc=f"sensitivity {a.model}")
    table = analyze_sensitivity(
        loaded.model,
        topology,
        data,
        keep_ratios=ratios,
        scoring=scoring_config(ctx, a.val_size),
        groups=groups,
        use_cache=not a.no_cache,
        callback=lambda done, total, msg: bar.update_to(done, total, msg),
    )
    bar.close()
    table_dict = table.to_dict()
    key = table_dict.get("cache_key") or ""
    if key and groups is None:
        ctx.store().save_sensitivity(
            key,
            model=a.model,
            dataset=data.name,
            settings={
                "keep_ratios": ratios,
                "scoring": table_dict.get("scoring", {}),
                "weights": loaded.weights,
            },
            table=table_dict,
        )
    result = {
        "model": a.model,
        "dataset": data.name,
        "keep_ratios": table_dict["keep_ratios"],
        "base_acc": table_dict["base_acc"],
        "groups": table_dict["groups"],
        "from_cache": table_dict.get("from_cache", False),
        "seconds": table_dict.get("seconds", 0.0),
        "key": key,
    }
    return result, _human_sensitivity


def _human_sensitivity(r: dict[str, Any]) -> str:
    ratios = r["keep_ratios"]
    head = f"{'group':<28} {'MACs%':>6} " + " ".join(f"{k:>6.2f}" for k in ratios)
    lines = [
        f"{r['model']} on {r['dataset']}: base val acc {r['base_acc']:.2f}%; accuracy drop (points) "
        f"per keep ratio",
        head,
    ]
    for g in r["groups"]:
        lines.append(
            f"{g['name'][:28]:<28} {100 * g.get('macs_share', 0):>6.1f} "
            + " ".join(f"{d:>6.2f}" for d in g["drop"])
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- prune
def cmd_prune(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune prune MODEL --method M --budget B``: costs before/after, accuracies, plan; recorded."""
    from engine.evaluate import report_candidate

    a = ctx.args
    if a.plan is None:
        if not a.method:
            raise TopoPruneError("prune needs --method M (and --budget B), or --plan FILE")
        spec = budget_from_args(a)
    else:
        spec = None if a.budget is None else budget_from_args(a)
    budget = None if spec is None else spec.fraction
    metric = spec.metric if spec is not None else (getattr(a, "budget_metric", None) or "macs")
    options = parse_options(a.option)
    kd = None
    if a.finetune_kd:  # checked before anything loads
        from engine.kd import KDConfig

        kd = KDConfig(temperature=a.kd_temperature, weight=a.kd_weight)
    if a.method and a.plan is None:
        from engine.methods import MethodError

        method_spec = get_method_named(a.method)
        method_spec.validate(options)  # fail fast, before loading anything
        if metric not in method_spec.budget_metrics:
            raise MethodError(
                f"method {a.method!r} cannot land on a {metric!r} budget; it supports "
                f"{', '.join(method_spec.budget_metrics)}: pick one of those with --budget-metric, "
                "or another method"
            )
    plan = load_plan_file(a.plan) if a.plan is not None else None  # fail fast, before loading anything
    out_dir = check_output_dir(a.out, PRUNE_FILES, force=a.force) if a.out else None
    ctx.store()  # the candidate is recorded at the end: a store that cannot open fails now, not after the work
    data = ctx.data()
    loaded = ctx.load_model(a.model, need_data=True)
    topology = build_topology_for(ctx, loaded)
    scoring = scoring_config(ctx, a.val_size)
    if metric == "latency":  # measured once per architecture and machine (cached), before the method needs it
        from engine.latency_table import ensure_latency_table

        lat_bar = ctx.progress(total=None, desc="latency table")
        ensure_latency_table(
            loaded.model, topology, callback=lambda done, total, msg: lat_bar.update_to(done, total, msg)
        )
        lat_bar.close()
    method_result = None
    if plan is not None:
        check_plan_model(plan, a.model, a.plan)
        method = a.method or getattr(plan, "method", None) or "plan"
    else:
        from engine.methods import MethodContext, run_method

        callback, bar = method_callback(ctx, f"{a.method} {a.model}")
        mctx = MethodContext(
            model=loaded.model,
            topology=topology,
            data=data,
            budget=budget,
            seed=a.seed,
            scoring=scoring,
            callback=callback,
            round_to=a.round_to,
            budget_metric=metric,
        )
        method_result = run_method(a.method, mctx, **options)
        bar.close()
        plan, method = method_result.plan, a.method
    bar = ctx.progress(total=a.finetune_epochs or None, desc="measure")
    report = report_candidate(
        loaded.model,
        topology,
        plan,
        data,
        finetune_epochs=a.finetune_epochs,
        distill=a.distill,
        scoring=scoring,
        latency=not a.no_latency,
        seed=a.seed,
        kd=kd,
        callback=lambda p: bar.update_to(int(getattr(p, "epoch", 0)), a.finetune_epochs or None),
    )
    bar.close()
    metrics = {k: v for k, v in report.to_dict().items() if k != "plan"}
    plan_dict = plan.to_dict()
    artifacts: dict[str, str] = {}
    if out_dir is not None:
        artifacts = save_pruned(
            report.pruned_model, plan_dict, metrics, out_dir, example=ctx.example_inputs(loaded)
        )
    budget_ratio = achieved_ratio(metric, topology, plan, report)
    store = ctx.store()
    candidate_id = store.add_candidate(
        method=method,
        model=a.model,
        dataset=data.name,
        plan=plan_dict,
        metrics={
            **metrics,
            "budget": budget,
            "budget_metric": metric,
            "budget_ratio": budget_ratio,
            "weights": loaded.weights,
            "options": method_result.options if method_result else {},
        },
        artifacts=artifacts,
    )
    result = {
        "candidate_id": candidate_id,
        "model": a.model,
        "method": method,
        "budget": budget,
        "budget_metric": metric,
        "budget_ratio": budget_ratio,
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
        "macs_ratio": report.macs_ratio,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "latency_ms_before": report.latency_ms_before,
        "latency_ms_after": report.latency_ms_after,
        "val_acc": report.val_acc,
        "test_acc": report.test_acc,
        "test_acc_before_finetune": report.test_acc_before_finetune,
        "baseline_test_acc": report.baseline_test_acc,
        "finetune_epochs": a.finetune_epochs,
        "finetune_kd": None if kd is None else {"temperature": kd.temperature, "weight": kd.weight},
        "plan": plan_dict,
        "artifacts": artifacts,
        "seconds": report.seconds + (method_result.seconds if method_result else 0.0),
    }
    return result, _human_prune


def achieved_ratio(metric: str, topology: Any, plan: Any, report: Any) -> float | None:
    """The plan's fraction of the baseline in `metric`: analytic, except latency, which is the measured ratio
    when latency was measured and the table's prediction otherwise (None without either)."""
    from engine.pruning.budget import LATENCY_ATTR, Budget

    if metric == "latency":
        if report.latency_ms_before and report.latency_ms_after is not None:
            return report.latency_ms_after / report.latency_ms_before
        if getattr(topology, LATENCY_ATTR, None) is None:
            return None
    return Budget(metric, 1.0).ratio(topology, plan)


def save_pruned(
    pruned: Any, plan: dict[str, Any], metrics: dict[str, Any], out_dir: Path, *, example: Any
) -> dict[str, str]:
    """Write the pruned model's state_dict, its plan and metrics into ``out_dir``; returns their paths."""
    from engine.pruning import export_pruned
    from engine.store.codec import strict_json

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = export_pruned(pruned, out_dir / PRUNE_FILES[0], format="state_dict", example_inputs=example)
    plan_path = out_dir / PRUNE_FILES[1]
    _write_json(plan_path, plan)
    metrics_path = out_dir / PRUNE_FILES[2]
    _write_json(metrics_path, strict_json(metrics))
    return {
        "state_dict": str(Path(weights).resolve()),
        "plan": str(plan_path.resolve()),
        "metrics": str(metrics_path.resolve()),
    }


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


def _human_prune(r: dict[str, Any]) -> str:
    def lat(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    lines = [
        f"{r['model']} pruned by {r['method']} (candidate {r['candidate_id']}):",
        f"  MACs     {r['macs_before']:,} -> {r['macs_after']:,}  ({100 * r['macs_ratio']:.1f}% kept)",
        *(
            [
                f"  budget   {100 * r['budget_ratio']:.1f}% of the {r['budget_metric']} kept"
                f" (budget {100 * r['budget']:.0f}%)"
            ]
            if r["budget_ratio"] is not None and r["budget"]
            else []
        ),
        f"  params   {r['params_before']:,} -> {r['params_after']:,}",
        f"  latency  {lat(r['latency_ms_before'])} -> {lat(r['latency_ms_after'])}",
        f"  val acc  {r['val_acc']:.2f}%   test acc {r['test_acc']:.2f}% (unpruned {r['baseline_test_acc']:.2f}%)",
    ]
    if r["artifacts"]:
        lines.append(f"  saved    {r['artifacts'].get('state_dict')} and {r['artifacts'].get('plan')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- export
def cmd_export(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune export RUN_ID|--plan FILE --format F``: path."""
    a = ctx.args
    if (a.run_id is None) == (a.plan is None):
        raise TopoPruneError("export needs exactly one of RUN_ID or --plan FILE")
    if a.run_id is not None:
        run = ctx.store().get_run(a.run_id)
        if not run.best_plan:
            raise TopoPruneError(f"run {run.id} has no recorded plan yet; resume it or pick another run")
        apply_run_config(ctx, run.config)
        if "checkpoint" not in run.config and a.checkpoint is None:
            raise TopoPruneError(
                f"run {run.id} was not started by the CLI and did not record its weights; pass the weights it "
                f"started from: `topoprune export {run.id} --checkpoint PATH|shipped`"
            )
        plan = plan_from_dict(run.best_plan)
        model_name = run.model
        default_name = f"{model_name}-pruned-run{run.id}"
    else:
        plan = load_plan_file(a.plan)
        from engine.zoo import list_models

        model_name = a.model or getattr(plan, "model", None)
        if not model_name or model_name not in list_models():
            raise TopoPruneError(
                f"plan {a.plan} does not name a zoo model ({model_name!r}); pass --model MODEL"
            )
        check_plan_model(plan, model_name, a.plan)
        default_name = f"{model_name}-pruned"
    out = Path(a.out).expanduser() if a.out else Path.cwd() / (default_name + EXPORT_SUFFIX[a.format])
    check_outputs([out, out.with_name(out.name + ".plan.json")], force=a.force)
    if a.plan is not None and a.checkpoint is None:
        ctx.log("topoprune: warning: no --checkpoint given; exporting randomly initialised weights")
    from engine.pruning import apply_plan, export_pruned

    loaded = ctx.load_model(model_name)
    topology = build_topology_for(ctx, loaded)
    start = time.perf_counter()
    pruned = apply_plan(loaded.model, topology, plan).eval()
    path = Path(export_pruned(pruned, out, format=a.format, example_inputs=ctx.example_inputs(loaded)))
    plan_path = path.with_name(path.name + ".plan.json")
    _write_json(plan_path, plan.to_dict())
    result = {
        "path": str(path.resolve()),
        "plan_path": str(plan_path.resolve()),
        "format": a.format,
        "model": model_name,
        "run_id": a.run_id,
        "seconds": time.perf_counter() - start,
    }
    return result, lambda r: f"wrote {r['path']} ({r['format']}) and its plan {r['plan_path']}"
