"""CLI commands about recorded runs: ``search`` (a search method, every episode written to the run store),
``resume`` (continue an interrupted or paused run of any search method) and ``runs`` (list runs, show one,
move a corrupt store aside). The run lifecycle (scoring, recording, resumable state) is engine.search's driver;
this module only turns arguments into a MethodContext and the result into output.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli.context import CommandContext
from engine.cli.inputs import (
    apply_run_config,
    build_topology_for,
    check_budget,
    get_method_named,
    parse_options,
    scoring_config,
)
from engine.errors import TopoPruneError
from engine.pruning.budget import METRICS as BUDGET_METRICS


def check_workers(a: argparse.Namespace) -> None:
    """--workers must be >= 1 (checked before any run is created or claimed)."""
    if a.workers < 1:
        raise TopoPruneError(f"--workers must be >= 1, got {a.workers}; 1 scores in this process")
    if a.executor == "process" and a.ray_address:
        raise TopoPruneError("--ray-address joins a Ray cluster; drop --executor process (or the address)")


def _weights_digest(model: Any) -> str:
    from engine.sensitivity import weights_sha256

    return str(weights_sha256(model))


def is_resumable(method: str) -> bool:
    """True for search methods: the search driver records their episodes and resumable state."""
    from engine.methods import get_method

    return get_method(method).kind == "search"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``search``, ``resume`` and ``runs`` to the sub-command parser."""
    from engine.cli import _positive_int, _run_id

    p = commands.add_parser(
        "search",
        parents=[common],
        help="run a search method; episodes go to the run store",
        description="Search for a plan on budget; every episode is recorded in the run store.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--method", required=True, metavar="M", help="search method (gnnrl, amc, random, ...)")
    p.add_argument(
        "--budget",
        type=float,
        required=True,
        metavar="B",
        help="fraction of the baseline's value of --budget-metric to keep, in (0, 1]",
    )
    p.add_argument(
        "--budget-metric",
        default="macs",
        choices=BUDGET_METRICS,
        metavar="METRIC",
        help=f"what the budget is a fraction of: {', '.join(BUDGET_METRICS)} (default macs)",
    )
    p.add_argument("--episodes", type=_positive_int, metavar="N", help="episodes (scored candidates)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option (repeatable; `topoprune info --methods --json` lists them)",
    )
    p.add_argument(
        "--val-size", type=_positive_int, default=512, metavar="N", help="val images scored (default 512)"
    )
    p.add_argument("--round-to", type=_positive_int, default=1, metavar="N", help="round channel counts to N")
    p.add_argument(
        "--rescore-top",
        type=int,
        default=0,
        metavar="K",
        help="re-score the K best plans on --rescore-val-size val images; that score picks the winner",
    )
    p.add_argument(
        "--rescore-val-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="val images of the re-score (default: the whole val split)",
    )
    add_executor_arguments(p)
    p.set_defaults(handler=cmd_search)

    p = commands.add_parser(
        "resume",
        parents=[common],
        help="continue an interrupted or paused search run",
        description="Continue a run from its last recorded episode and saved state.",
    )
    p.add_argument("run_id", type=_run_id, metavar="RUN_ID")
    add_executor_arguments(p)
    p.set_defaults(handler=cmd_resume)

    p = commands.add_parser(
        "runs",
        parents=[common],
        help="list the recorded runs (or show one)",
        description="List the runs in the run store, or show one run with its episodes.",
    )
    p.add_argument("run_id", nargs="?", type=_run_id, metavar="RUN_ID", help="show this run and its episodes")
    p.add_argument("--status", choices=("running", "paused", "interrupted", "completed", "failed"))
    p.add_argument("--limit", type=_positive_int, metavar="N", help="at most N runs (newest first)")
    p.add_argument(
        "--move-corrupt-store",
        action="store_true",
        help="rename a corrupt runs.sqlite to runs.sqlite.corrupt-<timestamp> (never deletes it)",
    )
    p.set_defaults(handler=cmd_runs)


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """--workers / --executor / --ray-address: where candidates are scored (the run store stays here)."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="score N candidates at a time in N workers (default 1: in this process)",
    )
    p.add_argument(
        "--executor",
        choices=("process", "ray"),
        default=None,
        help="workers as local processes, or Ray actors (default: ray; needs pip install -e '.[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join a running Ray cluster (e.g. 10.0.0.5:6379) instead of starting a local one",
    )


def _executor(ctx: CommandContext, mctx: Any) -> Any:
    from engine.search.executors import make_executor

    a = ctx.args
    return make_executor(mctx, backend=a.executor, workers=a.workers, address=a.ray_address)


# ----------------------------------------------------------------------------------------------- search
def cmd_search(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune search MODEL --method M --budget B --episodes N``: run_id, episodes, best_val_acc, ..."""
    a = ctx.args
    budget = check_budget(a.budget)
    check_workers(a)
    spec = get_method_named(a.method)
    metric = getattr(a, "budget_metric", None) or "macs"
    if metric not in spec.budget_metrics:
        raise TopoPruneError(
            f"method {a.method!r} cannot land on a {metric!r} budget; it supports "
            f"{', '.join(spec.budget_metrics)}: pick one of those with --budget-metric, or another method"
        )
    if spec.kind != "search":
        raise TopoPruneError(
            f"method {a.method!r} is one-shot; use `topoprune prune {a.model} --method {a.method}`"
        )
    options = parse_options(a.option)
    if "resume" in options:
        raise TopoPruneError("--option resume is set by `topoprune resume RUN_ID`; drop it from search")
    if a.episodes is not None:
        if "episodes" not in spec.options:
            raise TopoPruneError(f"method {a.method!r} has no episode count; drop --episodes")
        options["episodes"] = a.episodes
    options = spec.validate(options)
    if a.rescore_top < 0:
        raise TopoPruneError(f"--rescore-top must be >= 0, got {a.rescore_top}; 0 turns the re-score off")
    ctx.store()  # a store that cannot open fails before the data and model load
    data = ctx.data()
    n_val = data.size("val")
    # --val-size is a cap (the first N val images, all of them when the split is smaller), as for `prune`; a
    # re-score subset larger than the split would re-score on the same images: refused
    if a.rescore_val_size is not None and a.rescore_val_size > n_val:
        raise TopoPruneError(
            f"--rescore-val-size {a.rescore_val_size} is larger than the val split of {data.name} "
            f"({n_val} images); use at most {n_val}"
        )
    loaded = ctx.load_model(a.model, need_data=True)
    config = {
        "model": a.model,
        "method": a.method,
        "budget": budget,
        "budget_metric": metric,
        "options": options,
        "val_size": a.val_size,
        "batch_size": max(1, a.workers),
        "rescore_top": a.rescore_top,
        "rescore_val_size": a.rescore_val_size,
        "round_to": a.round_to,
        "dataset": a.dataset,
        "data_dir": a.data_dir,
        "checkpoint": a.checkpoint,
        "input_size": loaded.input_size,
        "seed": a.seed,
        "num_classes": loaded.num_classes,
        "width": loaded.width,
        "weights": loaded.weights,
        "command": ctx.command_line,
        "weights_sha256": _weights_digest(loaded.model),
    }
    store = ctx.store()
    run_id = store.create_run(method=a.method, model=a.model, dataset=data.name, budget=budget, config=config)
    ctx.active_run_id = run_id
    ctx.active_run_resumable = True
    ctx.log(
        f"topoprune: run {run_id} started ({a.method} on {a.model}, budget {budget:g} of the {metric}); "
        f"`topoprune resume {run_id}` continues it if stopped"
    )
    return _drive(ctx, run_id, loaded, config, resume=False)


def _drive(ctx: CommandContext, run_id: int, loaded: Any, config: dict[str, Any], *, resume: bool):
    """Run (or continue) the search of ``run_id`` through the search driver; returns the ``search`` result."""
    from engine.methods import MethodContext, run_method

    store = ctx.store()
    data = ctx.data()
    topology = build_topology_for(ctx, loaded)
    method = config["method"]
    metric = config.get("budget_metric") or "macs"
    if metric == "latency":
        from engine.latency_table import ensure_latency_table

        ensure_latency_table(loaded.model, topology)
    total = int(config["options"].get("episodes") or 0) or None
    bar = ctx.progress(total=total, desc=f"{method} run {run_id}")

    def on_event(event: Any) -> None:
        bar.update_to(int(event.step), int(event.total) or total, event.message)

    mctx = MethodContext(
        model=loaded.model,
        topology=topology,
        data=data,
        budget=config["budget"],
        seed=int(config["seed"]),
        scoring=scoring_config(ctx, int(config["val_size"])),
        callback=on_event,
        store=store,
        run_id=run_id,
        round_to=int(config.get("round_to", 1)),
        budget_metric=metric,
        resume=resume,
        batch_size=int(
            config.get("batch_size") or 1
        ),  # the run's own: a resume with other --workers replays it
        rescore_top=int(config.get("rescore_top") or 0),
        rescore_val_size=config.get("rescore_val_size"),
    )
    mctx.executor = _executor(ctx, mctx)
    try:
        result = run_method(method, mctx, **dict(config["options"]))
    finally:
        mctx.executor.close()
    bar.close()
    from engine.pruning.budget import Budget

    store.update_run(
        run_id,
        extra={
            "budget_metric": metric,
            "budget_ratio": Budget(metric, config["budget"]).ratio(topology, result.plan),
        },
    )
    ctx.active_run_id = None
    return run_result(store.get_run(run_id)), _human_search


def run_result(run: Any) -> dict[str, Any]:
    """The ``search``/``resume`` JSON of a stored run."""
    return {
        "run_id": run.id,
        "status": run.status,
        "method": run.method,
        "model": run.model,
        "budget": run.budget,
        "episodes": run.n_episodes,
        "best_val_acc": run.best_score,
        "best_plan": run.best_plan,
        "macs_ratio": run.extra.get("macs_ratio"),
        "budget_metric": run.extra.get("budget_metric") or run.config.get("budget_metric") or "macs",
        "budget_ratio": run.extra.get("budget_ratio"),
        "seconds": run.extra.get("seconds"),
    }


def _human_search(r: dict[str, Any]) -> str:
    best = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.2f}%"
    ratio = "-" if r["macs_ratio"] is None else f"{100 * r['macs_ratio']:.1f}%"
    return (
        f"run {r['run_id']} {r['status']}: {r['method']} on {r['model']}, {r['episodes']} episodes in "
        f"{r['seconds'] or 0:.1f} s; best val acc {best} at {ratio} of the MACs (budget {r['budget']:g})\n"
        f"`topoprune export {r['run_id']} --format state_dict` writes the pruned model"
    )


# ----------------------------------------------------------------------------------------------- resume
def cmd_resume(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune resume RUN_ID``: continue the run; output as ``search``."""
    a = ctx.args
    check_workers(a)
    store = ctx.store()
    run = store.get_run(a.run_id)
    if not is_resumable(run.method):
        raise TopoPruneError(
            f"run {run.id} used the one-shot method {run.method!r}, which has nothing to resume; run "
            f"`topoprune prune {run.model} --method {run.method}` again"
        )
    previous_status = run.status
    run = store.claim_run(a.run_id)  # refuses completed/failed runs and runs alive in another process
    try:
        config = resume_config(run, checkpoint=a.checkpoint)
    except TopoPruneError:
        store.update_run(run.id, status="interrupted" if previous_status == "running" else previous_status)
        raise
    ctx.active_run_id = run.id
    ctx.active_run_resumable = True
    apply_run_config(ctx, config)
    loaded = ctx.load_model(run.model, need_data=True)
    recorded = config.get("weights_sha256")
    if recorded and _weights_digest(loaded.model) != recorded:
        ctx.active_run_id = None  # nothing ran: leave the run as it was
        store.update_run(run.id, status="interrupted" if previous_status == "running" else previous_status)
        raise TopoPruneError(
            f"run {run.id} was searched on weights {recorded[:12]}, but {config.get('checkpoint')} holds "
            f"{_weights_digest(loaded.model)[:12]}; pass the weights it started from with --checkpoint"
        )
    ctx.log(f"topoprune: resuming run {run.id} after {run.n_episodes} recorded episodes")
    return _drive(ctx, run.id, loaded, config, resume=True)


def resume_config(run: Any, *, checkpoint: str | None) -> dict[str, Any]:
    """What ``_drive`` needs to continue ``run``: its recorded config, completed from the run's own columns for
    runs started elsewhere (the GUI records less than the CLI).

    Raises:
        TopoPruneError: the run did not record its weights and ``--checkpoint`` does not name them.
    """
    recorded = dict(run.config)
    scoring = recorded.get("scoring") or {}
    config = {
        "seed": 0,
        "round_to": 1,
        "options": {},
        "dataset": run.dataset,
        "val_size": scoring.get("val_size") or 512,
        **recorded,
    }
    config.update(method=run.method, budget=run.budget, model=run.model)
    if "checkpoint" not in recorded:
        if checkpoint is None:
            raise TopoPruneError(
                f"run {run.id} was not started by the CLI and did not record its weights; pass the weights it "
                f"started from: `topoprune resume {run.id} --checkpoint PATH|shipped`"
            )
        config["checkpoint"] = checkpoint
    return config


# ----------------------------------------------------------------------------------------------- runs
def cmd_runs(ctx: CommandContext) -> tuple[dict[str, Any], Any]:
    """``topoprune runs``: ``runs`` (id, method, model, status, best score); with RUN_ID, one run + episodes."""
    from engine.store import move_corrupt_store

    a = ctx.args
    if a.move_corrupt_store:
        moved = move_corrupt_store()
        return {
            "moved_to": str(moved)
        }, lambda r: f"moved the corrupt store to {r['moved_to']}; a new one starts empty"
    from engine.store import default_store_path

    # An existing store is only read (nothing migrated or marked); a missing one is created empty, as before.
    store = ctx.store(read_only=default_store_path().is_file())
    if a.run_id is not None:
        run = store.get_run(a.run_id)
        episodes = [e.to_dict() for e in store.episodes(run.id)]
        return {
            "run": _run_row(run) | {"config": run.config, "best_plan": run.best_plan, "extra": run.extra},
            "episodes": episodes,
        }, _human_run
    runs = [_run_row(r) for r in store.list_runs(status=a.status, limit=a.limit)]
    return {"runs": runs, "store": str(store.path)}, _human_runs


def _shown_status(run: Any) -> str:
    """The status, with a ``running`` run whose process on this host is gone shown as ``interrupted`` (what
    the next writer records; a read-only listing does not write it)."""
    from engine.store.process import hostname, pid_alive

    if run.status == "running" and run.host in (None, hostname()) and not pid_alive(run.pid):
        return "interrupted"
    return run.status


def _run_row(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "method": run.method,
        "model": run.model,
        "dataset": run.dataset,
        "budget": run.budget,
        "status": _shown_status(run),
        "best_score": run.best_score,
        "episodes": run.n_episodes,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
    }


def _human_runs(r: dict[str, Any]) -> str:
    if not r["runs"]:
        return f"no runs recorded in {r['store']}"
    lines = [
        f"{'id':>4}  {'status':<11} {'method':<12} {'model':<22} {'budget':>6} {'episodes':>8} {'best':>7}"
    ]
    for run in r["runs"]:
        best = "-" if run["best_score"] is None else f"{run['best_score']:.2f}"
        budget = "-" if run["budget"] is None else f"{run['budget']:g}"
        lines.append(
            f"{run['id']:>4}  {run['status']:<11} {run['method']:<12} {run['model'][:22]:<22} "
            f"{budget:>6} {run['episodes']:>8} {best:>7}"
        )
    return "\n".join(lines)


def _human_run(r: dict[str, Any]) -> str:
    run = r["run"]
    lines = [
        _human_runs({"runs": [run], "store": ""}),
        "",
        f"{'episode':>7} {'reward':>9} {'val acc':>8} {'MACs %':>7}",
    ]
    for e in r["episodes"]:

        def fmt(v: Any, scale: float = 1.0) -> str:
            return "-" if v is None else f"{scale * v:.2f}"

        lines.append(
            f"{e['index']:>7} {fmt(e['reward']):>9} {fmt(e['val_acc']):>8} {fmt(e['macs_ratio'], 100):>7}"
        )
    return "\n".join(lines)
