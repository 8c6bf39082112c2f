"""Benchmark of the baseline pruning methods: the yardstick the GNN-RL issue is measured against.

For one model at one MACs budget, runs every built-in method under the shared scoring protocol (same val
subset, BN recalibration, same number of scored candidates for the search methods), then reports val
accuracy before fine-tuning, test accuracy after a short fine-tune, MACs/params/latency and wall time.
Writes bench/results/methods.json ({"runs": [one per model]}) and methods.md, rewritten after every step, so
a cut-short run still leaves its finished rows; --append keeps the other models' runs.

    python bench/bench_methods.py                         # shipped cifar_resnet20, 50% MACs
    python bench/bench_methods.py --episodes 30 --val-size 256 --finetune-batches 30
    python bench/bench_methods.py --model cifar_resnet56 --append --episodes 24 --val-size 256 --bn-batches 2
    python bench/bench_methods.py --untrained --quick --out /tmp/methods   # smoke run on an untrained model

Sweep mode (--budgets and --seeds): every method at every budget and seed, measured val and test accuracy before
and after a short fine-tune, then mean +- standard error over seeds and which methods the noise cannot tell apart
(see bench/methods_sweep.py). Written to methods_<dataset>.json/.md:

    python bench/bench_methods.py --dataset fashion-mnist --budgets 0.5,0.3 --seeds 0,1,2 --finetune-batches 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.data import load_data
from engine.evaluate import Scorer, ScoringConfig, report_candidate
from engine.graph import build_topology
from engine.methods import MethodContext, get_method, run_method
from engine.pruning import plan_from_ratios

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("uniform", "magnitude", "sensitivity", "fisher", "random", "amc")


def method_options(name: str, episodes: int, quick: bool) -> dict[str, Any]:
    """CPU-sized options per method; search methods all score `episodes` candidates."""
    if name in ("random", "amc"):
        opts: dict[str, Any] = {"episodes": episodes}
        if name == "amc":
            opts["warmup"] = max(1, episodes // 4)
        return opts
    if name == "sensitivity":
        return {"grid_step": 0.5 if quick else 0.25, "use_cache": False}  # time the curves, not a cache hit
    if name == "fisher":
        return {"interval": 1, "steps": 3, "train_size": 64, "batch_size": 16} if quick else {"interval": 2}
    return {}


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in load] if load else None,
    }


def load_baseline(args: argparse.Namespace) -> tuple[torch.nn.Module, str, str]:
    """(model, dataset, weights description)."""
    if args.untrained:
        from engine.zoo import build_model

        torch.manual_seed(args.seed)
        return build_model(args.model).eval(), args.dataset or "shapes10", "untrained"
    if args.checkpoint:
        from engine.checkpoints import load_checkpoint

        loaded = load_checkpoint(args.checkpoint, arch=args.model)
        weights = str(args.checkpoint)
    else:
        from engine.checkpoints import DEFAULT_DATASET, load_shipped, shipped_models

        dataset = args.dataset or DEFAULT_DATASET
        if args.model not in shipped_models(dataset):
            sys.exit(
                f"no shipped {args.model} for {dataset} in assets/manifest.json yet; pass --checkpoint FILE "
                "or --untrained"
            )
        loaded = load_shipped(args.model, dataset=dataset)
        weights = f"shipped (sha256 {loaded.meta['manifest']['sha256'][:16]}...)"
    return loaded.model.eval(), args.dataset or loaded.meta.get("dataset", "shapes10"), weights


def to_markdown(doc: dict[str, Any]) -> str:
    """The results table as markdown."""
    s = doc["settings"]
    lines = [
        f"# Baseline pruning methods: {s['model']} at {s['budget']:.0%} MACs",
        "",
        f"Command: `{doc['command']}`  ",
        f"Date: {doc['date']}  ",
        f"Machine: {doc['machine']['platform']}, {doc['machine']['cpu_count']} cores, torch {doc['machine']['torch']} "
        f"({doc['machine']['torch_threads']} threads), load average at start {doc['machine']['load_average_at_start']}  ",
        f"Weights: {s['weights']}; dataset {s['dataset']}; val subset {s['val_size']} images, BN recalibration on "
        f"{s['bn_batches']}x{s['bn_batch_size']} train images; search methods score {s['episodes']} candidates each; "
        f"fine-tune {s['finetune_epochs']} epoch(s)"
        + (f" capped at {s['finetune_batches']} batches of 128" if s["finetune_batches"] else "")
        + ".",
        "",
        f"Unpruned: val {doc['baseline']['val_acc']:.2f}%, test {doc['baseline']['test_acc']:.2f}%, "
        f"{doc['baseline']['macs'] / 1e6:.2f} M MACs, {doc['baseline']['params'] / 1e3:.1f} k params.",
        "",
        "| method | kind | scored | MACs kept | params kept | val acc (no FT) | test acc (no FT) | test acc (FT) "
        "| latency ms (before -> after) | search s | report s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]

    def num(value: Any, fmt: str = ".2f") -> str:
        return "n/a" if value is None else format(value, fmt)

    for r in doc["rows"]:
        lat = (
            f"{r['latency_ms_before']:.2f} -> {r['latency_ms_after']:.2f}"
            if r.get("latency_ms_after") is not None
            else "n/a"
        )
        params = r["params_after"] / r["params_before"] if r.get("params_after") else None
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['n_scored']} | {r['macs_ratio']:.3f} | {num(params, '.3f')} | "
            f"{r['val_acc']:.2f} | {num(r.get('test_acc_before_finetune'))} | {num(r.get('test_acc'))} | {lat} | "
            f"{r['search_seconds']:.1f} | {num(r.get('report_seconds'), '.1f')} |"
        )
    missing = [m for m in s["methods"] if m not in {r["method"] for r in doc["rows"]}]
    if missing:
        lines += ["", f"Not finished in this run: {', '.join(missing)}."]
    pending = [r["method"] for r in doc["rows"] if "test_acc" not in r]
    if pending:
        lines += ["", f"Fine-tune/test report not finished for: {', '.join(pending)} (n/a above)."]
    lines += [
        "",
        f"Wall time so far: {doc.get('seconds', 0.0):.0f} s; load average at last write: "
        f"{doc.get('load_average_last')}.",
    ]
    lines += [
        "",
        "val acc: the search score (val subset, BN recalibrated, no fine-tuning). test acc (FT): after the fine-tune.",
        "scored: plans scored by the method (sensitivity counts its per-group curves).",
        "latency: batch-1 CPU median on a shared, heavily loaded 2-core machine; treat it as indicative only.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of baseline MACs kept")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--episodes", type=int, default=30, help="scored candidates per search method")
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--bn-batches", type=int, default=2)
    p.add_argument("--bn-batch-size", type=int, default=128)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-batches", type=int, default=None, help="cap batches per fine-tune epoch")
    p.add_argument(
        "--test-before-ft", action="store_true", help="also measure test accuracy before fine-tuning"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the shipped baseline)")
    p.add_argument("--untrained", action="store_true", help="random weights (smoke runs only)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--out", default=str(RESULTS / "methods"), help="output path without extension")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the other models' runs already in the output files (one run per model)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 is several times faster than 2 on a loaded 2-core machine)",
    )
    p.add_argument("--budgets", default=None, help="sweep mode: comma-separated MACs budgets, e.g. 0.5,0.3")
    p.add_argument("--seeds", default=None, help="sweep mode: comma-separated seeds, e.g. 0,1,2")
    p.add_argument(
        "--test-size", type=int, default=None, help="sweep mode: first N test images (default all)"
    )
    p.add_argument(
        "--report-val-size",
        type=int,
        default=None,
        help="sweep mode: val images measured before/after fine-tune (default all)",
    )
    p.add_argument("--finetune-lr", type=float, default=0.01)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.episodes, args.val_size, args.bn_batches, args.bn_batch_size = 3, 32, 1, 32
        args.finetune_batches = args.finetune_batches or 2
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in names:
        get_method(name)

    model, dataset, weights = load_baseline(args)
    if args.budgets or args.seeds:
        from methods_sweep import run_sweep  # the sibling module (bench/ is on sys.path for a script)

        command = "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
        )
        run_sweep(
            args,
            names,
            model,
            dataset,
            weights,
            command=command,
            machine=machine(),
            log=log,
            method_options=method_options,
        )
        return
    data = load_data(dataset, seed=args.seed)
    topology = build_topology(
        model, torch.zeros(1, 3, data.input_size, data.input_size), model_name=args.model
    )
    scoring = ScoringConfig(
        val_size=args.val_size, bn_batches=args.bn_batches, bn_batch_size=args.bn_batch_size, physical=True
    )
    base_scorer = Scorer(model, topology, data, scoring)
    full = plan_from_ratios(topology, {g.name: 1.0 for g in topology.prunable_groups})
    from engine.cost import count_costs
    from engine.train import evaluate

    costs = count_costs(model, torch.zeros(1, 3, data.input_size, data.input_size))
    baseline = {
        "val_acc": base_scorer.score(full),
        "test_acc": evaluate(model, data, "test").top1,
        "macs": costs.macs,
        "params": costs.params,
    }
    doc: dict[str, Any] = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "model": args.model,
            "budget": args.budget,
            "methods": names,
            "episodes": args.episodes,
            "val_size": args.val_size,
            "bn_batches": args.bn_batches,
            "bn_batch_size": args.bn_batch_size,
            "finetune_epochs": args.finetune_epochs,
            "finetune_batches": args.finetune_batches,
            "seed": args.seed,
            "dataset": dataset,
            "weights": weights,
            "scoring": scoring.to_dict(),
        },
        "baseline": baseline,
        "rows": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()

    earlier: list[dict[str, Any]] = []
    if args.append and out.with_suffix(".json").exists():  # keep the other models' runs in the same files
        old = json.loads(out.with_suffix(".json").read_text())
        earlier = [r for r in old.get("runs", [old]) if r["settings"]["model"] != args.model]

    def save() -> None:
        doc["seconds"] = time.perf_counter() - start
        doc["load_average_last"] = (
            [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
        )
        runs = [*earlier, doc]
        out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
        out.with_suffix(".md").write_text("\n".join(to_markdown(r) for r in runs))

    # phase 1: every method's search (val accuracies), so a cut-short run still has the whole search table
    plans = {}
    for name in names:
        spec = get_method(name)
        scorer = Scorer(model, topology, data, scoring)
        ctx = MethodContext(
            model=model, topology=topology, data=data, budget=args.budget, seed=args.seed, scorer=scorer
        )
        opts = method_options(name, args.episodes, args.quick)
        log(f"{name} {opts}")
        result = run_method(name, ctx, **opts)
        plans[name] = result.plan
        doc["rows"].append(
            {
                "method": name,
                "kind": spec.kind,
                "options": result.options,
                "n_scored": result.n_scored,
                "search_seconds": result.seconds,
                "val_acc": result.val_acc,
                "macs_ratio": result.macs_ratio,
                "candidates_val_acc": [c.val_acc for c in result.candidates],
                "plan": result.plan.to_dict(),
            }
        )
        save()
        log(f"  val {result.val_acc:.2f}  MACs {result.macs_ratio:.3f}  {result.seconds:.0f}s")
    # phase 2: physical pruning, fine-tune, test accuracy, costs and latency
    for row in doc["rows"]:
        log(f"report {row['method']}")
        report = report_candidate(
            model,
            topology,
            plans[row["method"]],
            data,
            finetune_epochs=args.finetune_epochs,
            finetune_max_batches=args.finetune_batches,
            scoring=scoring,
            seed=args.seed,
            baseline_test_acc=baseline["test_acc"],
            test_before_finetune=args.test_before_ft,
            latency_min_run_time_s=0.3,
        )
        found = report.to_dict()
        row.update({k: v for k, v in found.items() if k not in ("plan", "val_acc", "seconds")})
        row["report_val_acc"] = found["val_acc"]
        row["report_seconds"] = found["seconds"]
        save()
        log(f"  test(FT) {report.test_acc:.2f}  {report.seconds:.0f}s")
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
