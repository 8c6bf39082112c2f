"""The sweep of bench_methods.py: every method at several MACs budgets and seeds, each plan measured on val and
test before and after a short fine-tune, summarised as mean +- standard error over seeds, with the pairs of
methods the noise cannot tell apart. Runs from bench_methods.py (--budgets / --seeds); it trains nothing else.

The data split stays the baseline's own (data seed 0), so val never holds an image the baseline was trained on;
a seed changes the methods' randomness and the fine-tune's batch order and augmentation.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.data import load_data
from engine.evaluate import Scorer, ScoringConfig
from engine.graph import build_topology
from engine.methods import MethodContext, get_method, run_method
from engine.pruning import apply_plan, plan_from_ratios
from engine.train import TrainConfig, evaluate, train_model

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("val_before", "test_before", "val_after", "test_after")
LABELS = {
    "val_before": "val (no FT)",
    "test_before": "test (no FT)",
    "val_after": "val (FT)",
    "test_after": "test (FT)",
}


def sweep_options(
    name: str, episodes: int, quick: bool, method_options: Callable[[str, int, bool], dict[str, Any]]
) -> dict[str, Any]:
    """bench_methods' options, except that sensitivity reuses its curves: they depend on neither the budget
    nor the seed (deterministic on the fixed val subset), so later runs are cache hits with the same plan."""
    opts = method_options(name, episodes, quick)
    if name == "sensitivity":
        opts["use_cache"] = True
    return opts


def measure_plan(
    model: torch.nn.Module,
    topology: Any,
    plan: Any,
    data: Any,
    scoring: ScoringConfig,
    *,
    seed: int,
    finetune_batches: int,
    finetune_lr: float,
    val_size: int | None,
    test_size: int | None,
) -> dict[str, float]:
    """Physically prune, recalibrate BN, measure val/test; fine-tune `finetune_batches` batches; measure again."""
    started = time.perf_counter()
    pruned = apply_plan(model, topology, plan)
    Scorer(model, topology, data, scoring).prepare(pruned)
    row = {
        "val_before": evaluate(pruned, data, "val", limit=val_size).top1,
        "test_before": evaluate(pruned, data, "test", limit=test_size).top1,
    }
    config = TrainConfig(epochs=1, lr=finetune_lr, seed=seed, max_batches_per_epoch=finetune_batches)
    train_model(pruned, data, config, validate=False)
    row["val_after"] = evaluate(pruned, data, "val", limit=val_size).top1
    row["test_after"] = evaluate(pruned, data, "test", limit=test_size).top1
    row["report_seconds"] = time.perf_counter() - started
    return row


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget and method: mean +- SE of each metric; per budget and metric: the pairs that tie.

    Two methods tie on a metric when their means differ by less than twice the standard error of the
    difference, 2 * sqrt(se_a^2 + se_b^2): a gap inside the seed-to-seed noise.
    """
    out: dict[str, Any] = {}
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        methods: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(r["method"] for r in rows if r["budget"] == budget):
            mine = [r for r in rows if r["budget"] == budget and r["method"] == name and "test_after" in r]
            if not mine:
                continue
            methods[name] = {
                "seeds": len(mine),
                "macs_ratio": statistics.fmean(r["macs_ratio"] for r in mine),
                **{m: mean_se([r[m] for r in mine]) for m in METRICS},
            }
        separation = {}
        for metric in METRICS:
            pairs = list(itertools.combinations(methods, 2))
            apart = [
                (a, b)
                for a, b in pairs
                if abs(methods[a][metric][0] - methods[b][metric][0])
                > 2 * math.hypot(methods[a][metric][1], methods[b][metric][1])
            ]
            means = [methods[n][metric][0] for n in methods]
            separation[metric] = {
                "pairs": len(pairs),
                "apart": len(apart),
                "spread": (max(means) - min(means)) if means else 0.0,
                "median_se": statistics.median(methods[n][metric][1] for n in methods) if methods else 0.0,
                "best": max(methods, key=lambda n: methods[n][metric][0]) if methods else None,
                "ties_with_best": [],
            }
            best = separation[metric]["best"]
            if methods and min(r["seeds"] for r in methods.values()) < 2:  # no standard error: cannot judge
                separation[metric].update(apart=None, ties_with_best=None)
            elif best is not None:
                separation[metric]["ties_with_best"] = [
                    n
                    for n in methods
                    if n != best
                    and abs(methods[best][metric][0] - methods[n][metric][0])
                    <= 2 * math.hypot(methods[best][metric][1], methods[n][metric][1])
                ]
        out[f"{budget:g}"] = {"methods": methods, "separation": separation}
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    """The sweep as markdown: settings, mean +- SE per budget, separation, per-seed rows."""
    s = doc["settings"]
    m = doc["machine"]
    lines = [
        f"# Pruning methods on {s['dataset']}: {s['model']} at {', '.join(f'{b:.0%}' for b in s['budgets'])} MACs, "
        f"{len(s['seeds'])} seeds",
        "",
        f"Command: `{doc['command']}`  ",
        f"Date: {doc['date']}  ",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load average at start {m['load_average_at_start']}, at last write {doc.get('load_average_last')}  ",
        f"Weights: {s['weights']}. Search score: val subset of {s['val_size']} images, BN recalibrated on "
        f"{s['bn_batches']}x{s['bn_batch_size']} train images; search methods score {s['episodes']} candidates each. "
        f"Measured: val {s['report_val_size'] or 'all'} images, test {s['test_size'] or 'all'} images (first N), "
        f"after BN recalibration; fine-tune {s['finetune_batches']} batches of 128 "
        f"({s['finetune_fraction']:.1%} of an epoch), lr {s['finetune_lr']}, cosine, SGD. Seeds {s['seeds']} "
        "(methods' randomness and fine-tune order; the data split is the baseline's).",
        "",
        f"Unpruned: val {doc['baseline']['val_acc']:.2f}%, test {doc['baseline']['test_acc']:.2f}%, "
        f"{doc['baseline']['macs'] / 1e6:.2f} M MACs. Wall time so far {doc.get('seconds', 0):.0f} s.",
    ]
    for budget, block in doc.get("summary", {}).items():
        lines += [
            "",
            f"## {float(budget):.0%} MACs (mean +- standard error over seeds)",
            "",
            "| method | seeds | MACs kept | " + " | ".join(LABELS[k] for k in METRICS) + " |",
            "|---|---:|---:|" + "---:|" * len(METRICS),
        ]
        for name, r in block["methods"].items():
            cells = " | ".join(f"{r[k][0]:.2f} +- {r[k][1]:.2f}" for k in METRICS)
            lines.append(f"| {name} | {r['seeds']} | {r['macs_ratio']:.3f} | {cells} |")
        lines += [
            "",
            "| metric | best | ties with best (gap < 2 SE of the difference) | pairs apart | "
            "spread of means | median SE |",
            "|---|---|---|---:|---:|---:|",
        ]
        for k in METRICS:
            sep = block["separation"][k]
            if sep["apart"] is None:
                ties, apart = "n/a (needs 2+ seeds per method)", "n/a"
            else:
                ties, apart = ", ".join(sep["ties_with_best"]) or "none", f"{sep['apart']}/{sep['pairs']}"
            lines.append(
                f"| {LABELS[k]} | {sep['best']} | {ties} | {apart} | {sep['spread']:.2f} | "
                f"{sep['median_se']:.2f} |"
            )
    lines += [
        "",
        "## Every run",
        "",
        "| budget | seed | method | MACs kept | search val | "
        + " | ".join(LABELS[k] for k in METRICS)
        + " | search s | measure s |",
        "|---:|---:|---|---:|---:|" + "---:|" * len(METRICS) + "---:|---:|",
    ]
    for r in doc["rows"]:
        cells = " | ".join(f"{r[k]:.2f}" if k in r else "n/a" for k in METRICS)
        lines.append(
            f"| {r['budget']:g} | {r['seed']} | {r['method']} | {r['macs_ratio']:.3f} | {r['val_acc']:.2f} | "
            f"{cells} | {r['search_seconds']:.1f} | {r.get('report_seconds', float('nan')):.1f} |"
        )
    lines += [
        "",
        "search val: the method's own best score (val subset, no fine-tune). Ties: two methods whose mean "
        "gap is under twice the standard error of the difference cannot be told apart by these seeds.",
    ]
    return "\n".join(lines) + "\n"


def run_sweep(
    args: Any,
    names: list[str],
    model: torch.nn.Module,
    dataset: str,
    weights: str,
    *,
    command: str,
    machine: dict[str, Any],
    log: Callable[[str], None],
    method_options: Callable[[str, int, bool], dict[str, Any]],
) -> dict[str, Any]:
    """Run every method at every budget and seed; rewrite the JSON and markdown after every run."""
    budgets = [float(b) for b in (args.budgets or str(args.budget)).split(",")]
    seeds = [int(x) for x in (args.seeds or str(args.seed)).split(",")]
    data = load_data(dataset, seed=0)
    example = torch.zeros(1, 3, data.input_size, data.input_size)
    topology = build_topology(model, example, model_name=args.model)
    scoring = ScoringConfig(
        val_size=args.val_size, bn_batches=args.bn_batches, bn_batch_size=args.bn_batch_size, physical=True
    )
    from engine.cost import count_costs

    costs = count_costs(model, example)
    full = plan_from_ratios(topology, {g.name: 1.0 for g in topology.prunable_groups})
    finetune_batches = args.finetune_batches or 20
    steps_per_epoch = math.ceil(data.size("train") / 128)
    doc: dict[str, Any] = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "model": args.model,
            "dataset": dataset,
            "weights": weights,
            "methods": names,
            "budgets": budgets,
            "seeds": seeds,
            "episodes": args.episodes,
            "val_size": args.val_size,
            "bn_batches": args.bn_batches,
            "bn_batch_size": args.bn_batch_size,
            "report_val_size": args.report_val_size,
            "test_size": args.test_size,
            "finetune_batches": finetune_batches,
            "finetune_fraction": finetune_batches / steps_per_epoch,
            "finetune_lr": args.finetune_lr,
            "scoring": scoring.to_dict(),
            "options": {n: sweep_options(n, args.episodes, args.quick, method_options) for n in names},
        },
        "baseline": {
            "search_val_acc": Scorer(model, topology, data, scoring).score(full),
            "val_acc": evaluate(model, data, "val", limit=args.report_val_size).top1,
            "test_acc": evaluate(model, data, "test", limit=args.test_size).top1,
            "macs": costs.macs,
            "params": costs.params,
        },
        "rows": [],
    }
    out = Path(args.out if args.out != str(RESULTS / "methods") else RESULTS / f"methods_{dataset}")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def save() -> None:
        doc["seconds"] = time.perf_counter() - start
        doc["load_average_last"] = (
            [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
        )
        doc["summary"] = summarise(doc["rows"])
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        out.with_suffix(".md").write_text(to_markdown(doc))

    for seed, budget in itertools.product(seeds, budgets):  # seed-major: a cut-short run has every budget
        for name in names:
            scorer = Scorer(model, topology, data, scoring)
            ctx = MethodContext(
                model=model, topology=topology, data=data, budget=budget, seed=seed, scorer=scorer
            )
            result = run_method(name, ctx, **sweep_options(name, args.episodes, args.quick, method_options))
            row = {
                "budget": budget,
                "seed": seed,
                "method": name,
                "kind": get_method(name).kind,
                "n_scored": result.n_scored,
                "search_seconds": result.seconds,
                "val_acc": result.val_acc,
                "macs_ratio": result.macs_ratio,
                "plan": result.plan.to_dict(),
            }
            row.update(
                measure_plan(
                    model,
                    topology,
                    result.plan,
                    data,
                    scoring,
                    seed=seed,
                    finetune_batches=finetune_batches,
                    finetune_lr=args.finetune_lr,
                    val_size=args.report_val_size,
                    test_size=args.test_size,
                )
            )
            doc["rows"].append(row)
            save()
            log(
                f"budget {budget:g} seed {seed} {name}: search val {result.val_acc:.2f} "
                f"test {row['test_before']:.2f} -> {row['test_after']:.2f} "
                f"({result.seconds:.0f}+{row['report_seconds']:.0f}s)"
            )
    save()
    print(to_markdown(doc))
    return doc


def render(path: str | Path) -> None:
    """Rewrite a sweep's markdown (and summary) from its JSON: `python bench/methods_sweep.py FILE.json`."""
    path = Path(path)
    doc = json.loads(path.read_text())
    doc["summary"] = summarise(doc["rows"])
    path.write_text(json.dumps(doc, indent=1))
    path.with_suffix(".md").write_text(to_markdown(doc))


if __name__ == "__main__":
    import sys

    render(sys.argv[1])
