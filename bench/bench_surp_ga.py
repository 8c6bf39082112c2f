"""Benchmark of issue 13: SuRP vs global magnitude (rate-distortion), ga vs L1 top-k vs sensitivity, KD vs plain.

On a shipped baseline (default cifar_resnet20 on shapes10), with one torch thread:
1. SuRP, "SuRP mask + original weights" and normalised global magnitude at 80/90/95% weight sparsity: val top-1,
   logit MSE on val, bits per weight, nnz-MACs ("needs sparse kernels"); the mask overlap of SuRP and magnitude;
   and surp-channel vs magnitude (l2, normalised by l2) at the channel budget: how many kept channels agree.
2. At a MACs budget (default 50%) and per seed: `ga` (sensitivity amounts), L1 top-k at the GA's amounts, and the
   `sensitivity` method, before fine-tuning: val (the selection split), a held-out val slice no method saw, and
   test (reporting only). Mean +- standard error over seeds and a paired t statistic of GA - L1.
3. Plain vs KD fine-tuning of each seed's GA plan at equal length: test top-1, paired.
Writes bench/results/surp_ga.json and .md (command, machine, numbers), rewritten after every section.

    python bench/bench_surp_ga.py                      # ~30 minutes on a 2-core box under load ~12
    python bench/bench_surp_ga.py --quick --out /tmp/surp_ga
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.checkpoints import load_shipped
from engine.data import load_data
from engine.evaluate import Scorer, ScoringConfig, accuracy_top1, report_candidate
from engine.graph import build_topology
from engine.kd import KDConfig
from engine.methods import MethodContext, run_method
from engine.methods.plans import plan_with_indices
from engine.pruning import apply_plan, select_channels
from engine.surp_rd import rate_distortion


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in load] if load else None,
    }


def mean_se(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "se": se, "n": n}


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean +- SE of a - b and the paired t statistic (df = n - 1; |t| > 4.30 is p < 0.05 two-sided at n = 3)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    stats = mean_se(diffs)
    t = stats["mean"] / stats["se"] if stats["se"] > 0 else (math.inf if stats["mean"] else 0.0)
    return {
        **stats,
        "t": t,
        "df": len(diffs) - 1,
        "wins": sum(d > 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
    }


def holdout_acc(
    model: torch.nn.Module, topology: Any, plan: Any, data: Any, scorer: Scorer, start: int
) -> float:
    """Top-1 on val images [start:] (never used for selection), after the scorer's BN recalibration."""
    x, y = data.tensors("val")
    pruned = scorer.prepare(apply_plan(model, topology, plan))
    return accuracy_top1(pruned, x[start:], y[start:])


def section_surp(model, topology, data, args, doc) -> None:
    t0 = time.perf_counter()
    points, overlaps = rate_distortion(
        model,
        topology,
        data,
        sparsities=args.sparsities,
        alpha=args.alpha,
        scoring=ScoringConfig(val_size=args.val_size),
    )
    doc["surp"] = {"points": [p.to_dict() for p in points], "overlap": [o.to_dict() for o in overlaps]}
    ctx = MethodContext(
        model=model,
        topology=topology,
        data=data,
        budget=args.budget,
        scoring=ScoringConfig(val_size=args.val_size),
    )
    channel = run_method("surp-channel", ctx)
    magnitude = run_method("magnitude", ctx, norm="l2", normalize="l2")
    same = sum(
        len(set(channel.plan.indices.get(g, [])) & set(magnitude.plan.indices.get(g, [])))
        for g in set(channel.plan.indices or {}) | set(magnitude.plan.indices or {})
    )
    kept = sum(len(v) for v in (channel.plan.indices or {}).values())
    doc["surp_channel"] = {
        "budget": args.budget,
        "val_surp_channel": channel.val_acc,
        "val_magnitude_l2_l2": magnitude.val_acc,
        "kept_channels_in_pruned_groups": kept,
        "kept_channels_shared": same,
        "mask_bits": channel.meta["surp_channel"]["mask_bits"],
    }
    doc["seconds"]["surp"] = time.perf_counter() - t0


def section_selection(model, topology, data, args, doc) -> list[Any]:
    t0 = time.perf_counter()
    scoring = ScoringConfig(val_size=args.val_size)
    scorer = Scorer(model, topology, data, scoring)
    rows, ga_plans = [], []
    for seed in args.seeds:
        ctx = MethodContext(
            model=model,
            topology=topology,
            data=data,
            budget=args.budget,
            seed=seed,
            scoring=scoring,
            scorer=scorer,
        )
        ga = run_method(
            "ga",
            ctx,
            population=args.population,
            generations=args.generations,
            elite=args.elite,
            grid_step=args.grid_step,
        )
        keep = ga.meta["ga_keep"]
        indices = {n: select_channels(model, topology, n, k, criterion="l1") for n, k in keep.items()}
        l1 = plan_with_indices(ctx, keep, indices, method="l1-topk")
        sens = run_method("sensitivity", ctx, grid_step=args.grid_step)
        for name, plan, val in (
            ("ga", ga.plan, ga.val_acc),
            ("l1-topk", l1, scorer.score(l1)),
            ("sensitivity", sens.plan, sens.val_acc),
        ):
            report = report_candidate(model, topology, plan, data, scoring=scoring, latency=False)
            rows.append(
                {
                    "seed": seed,
                    "method": name,
                    "val": val,
                    "val_holdout": holdout_acc(model, topology, plan, data, scorer, args.val_size),
                    "test": report.test_acc_before_finetune,
                    "macs_ratio": report.macs_ratio,
                    "params_ratio": report.params_after / report.params_before,
                    "same_amounts_as_ga": dict(plan.keep) == dict(ga.plan.keep),
                }
            )
        ga_plans.append((seed, ga.plan))
        log(
            f"seed {seed}: "
            + ", ".join(
                f"{r['method']} val {r['val']:.1f} hold {r['val_holdout']:.1f} test {r['test']:.1f}"
                for r in rows[-3:]
            )
        )
        doc["selection"] = summarise(rows, ("ga", "l1-topk", "sensitivity"), ("val", "val_holdout", "test"))
        doc["selection"]["rows"] = rows
        doc["seconds"]["selection"] = time.perf_counter() - t0
        write(doc, args)
    return ga_plans


def section_kd(model, topology, data, ga_plans, args, doc) -> None:
    t0 = time.perf_counter()
    rows = []
    for seed, plan in ga_plans:
        common = {
            "finetune_epochs": 1,
            "finetune_max_batches": args.finetune_batches,
            "finetune_lr": args.lr,
            "seed": seed,
            "latency": False,
            "scoring": ScoringConfig(val_size=args.val_size),
            "test_before_finetune": False,
        }
        plain = report_candidate(model, topology, plan, data, **common)
        kd = report_candidate(
            model, topology, plan, data, kd=KDConfig(args.kd_temperature, args.kd_weight), **common
        )
        rows.append({"seed": seed, "plain": plain.test_acc, "kd": kd.test_acc})
        log(f"seed {seed}: fine-tune plain {plain.test_acc:.2f} kd {kd.test_acc:.2f}")
        doc["kd"] = {
            "rows": rows,
            "plain": mean_se([r["plain"] for r in rows]),
            "kd": mean_se([r["kd"] for r in rows]),
            "kd_minus_plain": paired([r["kd"] for r in rows], [r["plain"] for r in rows]),
            "finetune_batches": args.finetune_batches,
            "lr": args.lr,
            "kd_temperature": args.kd_temperature,
            "kd_weight": args.kd_weight,
        }
        doc["seconds"]["kd"] = time.perf_counter() - t0
        write(doc, args)


def summarise(rows, methods, keys) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        out[m] = {k: mean_se([r[k] for r in rows if r["method"] == m]) for k in keys}
    for k in keys:
        ga = [r[k] for r in rows if r["method"] == "ga"]
        l1 = [r[k] for r in rows if r["method"] == "l1-topk"]
        out[f"ga_minus_l1_{k}"] = paired(ga, l1)
    return out


def fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.2f} +- {s['se']:.2f}"


def to_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# SuRP, ga and KD on {doc['model']} / {doc['dataset']}",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"with {m['torch_threads']} thread, load {m['load_average_at_start']}; {doc['date']}",
        "",
    ]
    if "surp" in doc:
        lines += [
            "## Rate-distortion (val; logit MSE vs the unpruned model; no fine-tune)",
            "",
            "| method | sparsity | bits/weight | val top-1 | logit MSE | nnz-MACs (needs sparse kernels) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['method']} | {p['sparsity']:.3f} | {p['bits_per_weight']:.3f} | {p['val_acc']:.2f} | "
            f"{p['logit_mse']:.4f} | {p['nnz_macs_ratio']:.3f} |"
            for p in doc["surp"]["points"]
        ]
        lines += [
            "",
            "Dense MACs are unchanged (1.000) for every row above.",
            "",
            "| sparsity | Jaccard(SuRP, normalised magnitude) | pre-boundary SuRP weights in magnitude top-k | "
            "mean shrink of kept magnitudes |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {o['sparsity']} | {o['jaccard']:.4f} | {o['outside_last_round']:.4f} | {o['shrink']:.4f} |"
            for o in doc["surp"]["overlap"]
        ]
        c = doc["surp_channel"]
        lines += [
            "",
            f"surp-channel vs magnitude (l2, normalised by l2) at {c['budget']} MACs: val "
            f"{c['val_surp_channel']:.2f} vs {c['val_magnitude_l2_l2']:.2f}; {c['kept_channels_shared']} of "
            f"{c['kept_channels_in_pruned_groups']} kept channels shared; mask {c['mask_bits']:.0f} bits.",
            "",
        ]
    if "selection" in doc:
        s = doc["selection"]
        lines += [
            f"## Channel selection at {doc['budget']} MACs, before fine-tune (mean +- SE over seeds "
            f"{doc['seeds']})",
            "",
            "| method | val (selection) | val held-out | test |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {fmt(s[k]['val'])} | {fmt(s[k]['val_holdout'])} | {fmt(s[k]['test'])} |"
            for k in ("ga", "l1-topk", "sensitivity")
            if k in s
        ]
        for key in ("val", "val_holdout", "test"):
            p = s[f"ga_minus_l1_{key}"]
            lines.append(
                f"- ga - l1-topk ({key}): {p['mean']:+.2f} +- {p['se']:.2f}, paired t = {p['t']:.2f} "
                f"(df {p['df']}), ga ahead in {p['wins']} of {p['n']}"
            )
        lines.append("")
    if "kd" in doc:
        k = doc["kd"]
        p = k["kd_minus_plain"]
        lines += [
            f"## Fine-tune of the GA plans: {k['finetune_batches']} batches, lr {k['lr']}, KD T={k['kd_temperature']}"
            f" w={k['kd_weight']}",
            "",
            f"- plain: test {fmt(k['plain'])}",
            f"- KD: test {fmt(k['kd'])}",
            f"- KD - plain: {p['mean']:+.2f} +- {p['se']:.2f}, paired t = {p['t']:.2f}, KD ahead in {p['wins']} "
            f"of {p['n']}",
            "",
        ]
    lines += [f"Seconds per section: {json.dumps({k: round(v) for k, v in doc['seconds'].items()})}", ""]
    return "\n".join(lines)


def write(doc: dict[str, Any], args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(to_markdown(doc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--dataset", default="shapes10")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sparsities", default="0.8,0.9,0.95")
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--elite", type=int, default=2)
    p.add_argument("--grid-step", type=float, default=0.25)
    p.add_argument("--finetune-batches", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--kd-weight", type=float, default=0.9)
    p.add_argument("--quick", action="store_true", help="one seed, tiny GA, few batches (a smoke run)")
    p.add_argument("--out", default="bench/results/surp_ga")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.sparsities = [float(s) for s in args.sparsities.split(",")]
    if args.quick:
        args.seeds, args.population, args.generations, args.finetune_batches = [0], 4, 2, 3
        args.sparsities, args.val_size = [0.9], 64
    model = load_shipped(args.model, dataset=args.dataset).model.eval()
    data = load_data(args.dataset, seed=0)
    topology = build_topology(model, torch.zeros(1, 3, data.input_size, data.input_size))
    doc: dict[str, Any] = {
        "command": "python " + shlex.join(["bench/bench_surp_ga.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "date": f"{dt.date.today()}",
        "model": args.model,
        "dataset": args.dataset,
        "budget": args.budget,
        "seeds": args.seeds,
        "seconds": {},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    log("rate-distortion")
    section_surp(model, topology, data, args, doc)
    write(doc, args)
    log("channel selection")
    plans = section_selection(model, topology, data, args, doc)
    log("fine-tune plain vs KD")
    section_kd(model, topology, data, plans, args, doc)
    write(doc, args)
    log(f"wrote {args.out}.json/.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
