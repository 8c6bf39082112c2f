"""Benchmark of GNN-RL against its no-GNN ablation, AMC, random search and uniform pruning.

One model at one MACs budget, the shared scoring protocol (same val subset, BN recalibration), the same number
of scored candidates for every search method, one or more seeds. Reports the best val accuracy before
fine-tuning, test accuracy after a short fine-tune, wall time, and the time of one GNN-RL episode split into
graph building, GNN (agent forward), PPO update, landing on the budget, masking and evaluation.
Writes bench/results/gnnrl.json and gnnrl.md, rewritten after every method run, so a cut-short run still leaves
its finished rows; with --append, sections of other models already there are kept (one section per model).

    python bench/bench_gnnrl.py                                   # shipped cifar_resnet20, 50% MACs, 40 plans
    python bench/bench_gnnrl.py --candidates 40 --seeds 0 1 --val-size 256 --finetune-batches 40
    python bench/bench_gnnrl.py --untrained --quick               # smoke run on an untrained model
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.data import load_data
from engine.evaluate import Scorer, ScoringConfig, report_candidate
from engine.graph import build_topology
from engine.methods import MethodContext, get_method, run_method

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("gnnrl", "gnnrl-nognn", "amc", "random", "uniform")
OVERHEAD_KEYS = ("graph", "gnn", "update", "land")


def method_options(name: str, candidates: int) -> dict[str, Any]:
    """Options giving every search method `candidates` scored plans."""
    if name in ("gnnrl", "gnnrl-nognn"):
        # episodes + the policy-mean plan; the action wall makes every episode score exactly one plan
        return {"episodes": candidates - 1, "score_policy_plan": True, "action_wall": True}
    if name == "amc":
        return {"episodes": candidates, "warmup": max(1, candidates // 4)}
    if name == "random":
        return {"episodes": candidates}
    return {}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
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

        torch.manual_seed(0)
        return build_model(args.model).eval(), args.dataset or "shapes10", "untrained"
    if args.checkpoint:
        from engine.checkpoints import load_checkpoint

        loaded = load_checkpoint(args.checkpoint, arch=args.model)
        weights = str(args.checkpoint)
    else:
        from engine.checkpoints import load_shipped, shipped_models

        if args.model not in shipped_models():
            sys.exit(
                f"no shipped {args.model} in assets/manifest.json yet; pass --checkpoint FILE or --untrained"
            )
        loaded = load_shipped(args.model)
        weights = "shipped"
    return loaded.model.eval(), args.dataset or loaded.meta.get("dataset", "shapes10"), weights


def episode_split(candidates: list[Any]) -> dict[str, float]:
    """Mean seconds per GNN-RL episode in each phase, and the non-evaluation overhead share."""
    rows = [c.meta.get("timings_s") for c in candidates if c.meta.get("timings_s")]
    if not rows:
        return {}
    keys = ("graph", "gnn", "update", "land", "mask", "eval", "total")
    split = {k: statistics.fmean(r.get(k, 0.0) for r in rows) for k in keys}
    overhead = sum(split[k] for k in OVERHEAD_KEYS)
    split["overhead_share"] = overhead / split["total"] if split["total"] else 0.0
    split["overhead_share_with_mask"] = (overhead + split["mask"]) / split["total"] if split["total"] else 0.0
    return split


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds per method."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]

        def stat(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float, float]:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return float("nan"), 0.0
            return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)

        out.append(
            {
                "method": method,
                "seeds": len(rs),
                "val_acc": stat("val_acc"),
                "test_acc_ft": stat("test_acc"),
                "test_acc_no_ft": stat("test_acc_before_finetune"),
                "search_seconds": stat("search_seconds"),
                "n_scored": stat("n_scored"),
                "macs_ratio": stat("macs_ratio"),
            }
        )
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    """The results as markdown."""
    s = doc["settings"]
    m = doc["machine"]
    lines = [
        f"# GNN-RL benchmark: {s['model']} at {s['budget']:.0%} MACs",
        "",
        f"Command: `{doc['command']}`  ",
        f"Date: {doc['date']}  ",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"load average at start {m['load_average_at_start']} (the machine is shared: wall times are noisy)  ",
        f"Weights: {s['weights']}; dataset {s['dataset']}; val subset {s['val_size']} images, BN recalibration on "
        f"{s['bn_batches']}x{s['bn_batch_size']} train images; every search method scores {s['candidates']} plans; "
        f"seeds {s['seeds']}; fine-tune {s['finetune_epochs']} epoch(s)"
        + (f" capped at {s['finetune_batches']} batches" if s["finetune_batches"] else "")
        + ".",
        "",
    ]
    if doc.get("baseline"):
        b = doc["baseline"]
        lines += [f"Unpruned: val {b['val_acc']:.2f}%, test {b['test_acc']:.2f}%.", ""]
    lines += [
        "## Mean over seeds (± std)",
        "",
        "| method | seeds | scored | MACs kept | best val acc (no FT) | test acc (no FT) | test acc (1-epoch FT) "
        "| search s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["summary"]:

        def f(key: str, r: dict[str, Any] = r) -> str:
            mean, sd = r[key]
            return f"{mean:.2f} ± {sd:.2f}" if sd else f"{mean:.2f}"

        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['n_scored'][0]:.0f} | {r['macs_ratio'][0]:.3f} | "
            f"{f('val_acc')} | {f('test_acc_no_ft')} | {f('test_acc_ft')} | {r['search_seconds'][0]:.0f} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "| method | seed | scored | val acc | test (no FT) | test (FT) | search s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['n_scored']} | {r['val_acc']:.2f} | "
            f"{r['test_acc_before_finetune']:.2f} | {r['test_acc']:.2f} | {r['search_seconds']:.1f} |"
        )
    splits = [(r["method"], r["seed"], r["episode_split_s"]) for r in doc["rows"] if r.get("episode_split_s")]
    if splits:
        lines += [
            "",
            "## Time of one episode (mean seconds)",
            "",
            "| method | seed | graph | GNN (act) | PPO update | land | mask | eval | total | overhead share "
            "(graph+GNN+update+land) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for method, seed, sp in splits:
            lines.append(
                f"| {method} | {seed} | {sp['graph']:.3f} | {sp['gnn']:.3f} | {sp['update']:.3f} | "
                f"{sp['land']:.3f} | {sp['mask']:.3f} | {sp['eval']:.3f} | {sp['total']:.3f} | "
                f"{sp['overhead_share']:.1%} |"
            )
    if doc.get("targets"):
        lines += ["", "## Targets", ""] + [f"- {t}" for t in doc["targets"]]
    missing = [
        f"{m} (seed {sd})"
        for sd in s["seeds"]
        for m in s["methods"]
        if not any(r["method"] == m and r["seed"] == sd for r in doc["rows"])
    ]
    if missing:
        lines += ["", f"Not finished in this run: {', '.join(missing)}."]
    lines += [
        "",
        "val acc: the search score (val subset carved from train, BN recalibrated, no fine-tuning), best "
        "plan of the run. test: the held-out test split, read only here, after the search.",
    ]
    return "\n".join(lines) + "\n"


def targets(summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the means."""
    by = {r["method"]: r for r in summary}
    out = []
    if "gnnrl" in by and "uniform" in by:
        d = by["gnnrl"]["val_acc"][0] - by["uniform"]["val_acc"][0]
        out.append(
            f"beat uniform by >= 2 points (val, before FT): {'met' if d >= 2 else 'MISSED'} ({d:+.2f} points)"
        )
    if "gnnrl" in by and "random" in by:
        d = by["gnnrl"]["val_acc"][0] - by["random"]["val_acc"][0]
        out.append(
            f"beat random search at equal scored plans (val): {'met' if d > 0 else 'MISSED'} ({d:+.2f} points)"
        )
    if "gnnrl" in by and "gnnrl-nognn" in by:
        d = by["gnnrl"]["val_acc"][0] - by["gnnrl-nognn"]["val_acc"][0]
        out.append(f"GNN vs no-GNN ablation (val): {d:+.2f} points")
    shares = [
        r["episode_split_s"]["overhead_share"]
        for r in rows
        if r["method"] == "gnnrl" and r.get("episode_split_s")
    ]
    if shares:
        share = statistics.fmean(shares)
        out.append(
            f"non-evaluation overhead <= 30% of an episode: {'met' if share <= 0.30 else 'MISSED'} "
            f"({share:.1%})"
        )
    return out


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same protocol apart from the seeds (rows of both runs can share one table)."""
    skip = ("seeds",)
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of baseline MACs kept")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--candidates", type=int, default=40, help="scored plans per search method")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--val-size", type=int, default=512)
    p.add_argument("--bn-batches", type=int, default=2)
    p.add_argument("--bn-batch-size", type=int, default=128)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-batches", type=int, default=None, help="cap batches per fine-tune epoch")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the shipped baseline)")
    p.add_argument("--untrained", action="store_true", help="random weights (smoke runs only)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--append", action="store_true", help="keep other models' sections already in the output")
    p.add_argument("--out", default=str(RESULTS / "gnnrl"), help="output path without extension")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.candidates, args.val_size, args.bn_batches, args.bn_batch_size = 4, 64, 1, 64
        args.finetune_batches = args.finetune_batches or 2
    if args.candidates < 2:
        p.error("--candidates must be >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)
    model, dataset, weights = load_baseline(args)
    data = load_data(dataset, seed=0)
    size = data.input_size
    topology = build_topology(model, torch.zeros(1, 3, size, size), model_name=args.model)
    scoring = ScoringConfig(
        val_size=args.val_size, bn_batches=args.bn_batches, bn_batch_size=args.bn_batch_size
    )
    doc: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "model": args.model,
            "budget": args.budget,
            "methods": methods,
            "candidates": args.candidates,
            "seeds": args.seeds,
            "val_size": args.val_size,
            "bn_batches": args.bn_batches,
            "bn_batch_size": args.bn_batch_size,
            "finetune_epochs": args.finetune_epochs,
            "finetune_batches": args.finetune_batches,
            "dataset": dataset,
            "weights": weights,
        },
        "rows": [],
        "summary": [],
        "targets": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from engine.train import evaluate

    base_scorer = Scorer(model, topology, data, scoring)
    doc["baseline"] = {
        "val_acc": base_scorer.score_model(model),
        "test_acc": evaluate(model, data, "test").top1,
    }

    kept: list[dict[str, Any]] = []  # sections of other models already in the output (--append)
    if args.append and out.with_suffix(".json").exists():
        previous = json.loads(out.with_suffix(".json").read_text())
        sections = previous.get("sections", [previous])
        kept = [sec for sec in sections if sec["settings"]["model"] != args.model]
        same = [sec for sec in sections if sec["settings"]["model"] == args.model]
        if same and _comparable(same[0]["settings"], doc["settings"]):  # other seeds of the same protocol
            doc["rows"] = [r for r in same[0]["rows"] if r["seed"] not in args.seeds]
            doc["settings"]["seeds"] = sorted({*same[0]["settings"]["seeds"], *args.seeds})
            doc["baseline"] = same[0].get("baseline") or doc["baseline"]
            doc["command"] = f"{same[0]['command']}; then {doc['command']}"

    def write() -> None:
        doc["summary"] = summarise(doc["rows"])
        doc["targets"] = targets(doc["summary"], doc["rows"])
        sections = [doc, *kept]
        out.with_suffix(".json").write_text(json.dumps({"sections": sections}, indent=1, default=str))
        out.with_suffix(".md").write_text("\n".join(to_markdown(sec) for sec in sections))

    write()
    for seed in args.seeds:
        for method in methods:
            print(f"[bench_gnnrl] {method} seed {seed} ...", file=sys.stderr, flush=True)
            ctx = MethodContext(
                model=model,
                topology=topology,
                data=data,
                budget=args.budget,
                seed=seed,
                scorer=Scorer(model, topology, data, scoring),
            )
            start = time.perf_counter()
            result = run_method(method, ctx, **method_options(method, args.candidates))
            search_s = time.perf_counter() - start
            report = report_candidate(
                model,
                topology,
                result.plan,
                data,
                finetune_epochs=args.finetune_epochs,
                finetune_max_batches=args.finetune_batches,
                scoring=scoring,
                latency=False,
                seed=seed,
                baseline_test_acc=doc["baseline"]["test_acc"],
            )
            row = {
                "method": method,
                "seed": seed,
                "n_scored": result.n_scored,
                "val_acc": result.val_acc,
                "macs_ratio": result.macs_ratio,
                "test_acc_before_finetune": report.test_acc_before_finetune,
                "test_acc": report.test_acc,
                "search_seconds": search_s,
                "report_seconds": report.seconds,
                "plan": result.plan.to_dict(),
                "candidate_val_accs": [c.val_acc for c in result.candidates],
                "episode_split_s": episode_split(result.candidates) if method.startswith("gnnrl") else None,
                "meta": {k: v for k, v in result.meta.items() if k != "policy_plan"},
            }
            doc["rows"].append(row)
            write()
            print(
                f"[bench_gnnrl] {method} seed {seed}: val {result.val_acc:.2f} test(FT) {report.test_acc:.2f} "
                f"scored {result.n_scored} in {search_s:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
