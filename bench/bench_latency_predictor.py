"""Benchmark: how well engine.latency_table predicts measured CPU latency, and landing on a latency budget.

For one model (default cifar_resnet20, batch 1, one torch thread): measure its per-group latency table
(engine.latency_table.measure_latency_table), then for 20 random plans (keep ratio per group uniform in
[0.25, 1]) compare the predicted latency with the measured one (engine.cost.measure_latency on the physically
pruned model, least of three medians, against a baseline timed just before and after it, as the table
does). Finally land a plan on Budget("latency", 0.6) with plan_for_budget and measure its latency ratio:
on budget means within 5% of 0.6 measured. Random-init weights: latency does not depend on the values.

Usage: python bench/bench_latency_predictor.py [--model cifar_resnet20] [--plans 20] [--min-run-time 0.3]
Writes bench/results/latency_predictor.json and latency_predictor.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_topology import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed_ms(model, size: int, *, threads: int, min_run_time_s: float) -> float:
    """Least of three medians (contention on a shared machine only ever adds time)."""
    from engine.cost import measure_latency

    return min(measure_latency(model, size, threads=threads, min_run_time_s=min_run_time_s / 3).median_ms
               for _ in range(3))


def measured_ratio(model, pruned, size: int, *, threads: int, min_run_time_s: float) -> tuple[float, float]:
    """(pruned ms, pruned ms / mean of the baselines timed just before and after it)."""
    before = timed_ms(model, size, threads=threads, min_run_time_s=min_run_time_s)
    ms = timed_ms(pruned, size, threads=threads, min_run_time_s=min_run_time_s)
    after = timed_ms(model, size, threads=threads, min_run_time_s=min_run_time_s)
    return ms, ms / (0.5 * (before + after))


def to_markdown(report: dict) -> str:
    """The results as markdown."""
    s = report["summary"]
    lines = [
        f"# Latency predictor ({report['model']}, batch 1, {report['threads']} thread)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average at start "
        f"{report['machine']['load_average']}, at end {report['load_average_end']}",
        "",
        f"Table: {report['table']['groups']} groups x {report['table']['keep_ratios']} keep ratios, "
        f"baseline {report['table']['baseline_ms']:.2f} ms, measured in {report['table']['measure_s']:.0f} s.",
        "",
        "| plan | MACs ratio | predicted ms | measured ms | predicted ratio | measured ratio | error |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(report["plans"]):
        lines.append(f"| {i} | {row['macs_ratio']:.3f} | {row['predicted_ms']:.2f} | {row['measured_ms']:.2f} | "
                     f"{row['predicted_ratio']:.3f} | {row['measured_ratio']:.3f} | {100 * row['error']:+.1f}% |")
    land = report["landing"]
    lines += [
        "",
        f"Ratio error (predicted ratio / measured ratio - 1) over {len(report['plans'])} random plans: "
        f"mean |error| {100 * s['mean_abs_error']:.1f}%, median |error| {100 * s['median_abs_error']:.1f}%, "
        f"max |error| {100 * s['max_abs_error']:.1f}%.",
        "",
        f"Landing on Budget('latency', {land['fraction']}): predicted ratio {land['predicted_ratio']:.3f}, "
        f"measured ratio {land['measured_ratio']:.3f} (MACs ratio {land['macs_ratio']:.3f}); within 5% measured: "
        f"**{land['within_5pct']}**.",
        "",
        "Timing noise: the same unpruned model timed before and after each plan differs by "
        f"{100 * s['baseline_spread']:.1f}% (median |before/after - 1|); errors below that spread cannot be "
        "told apart from noise.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--fraction", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from engine.graph import build_topology
    from engine.latency_table import measure_latency_table
    from engine.pruning import PruningPlan, apply_plan
    from engine.pruning.budget import Budget, plan_for_budget
    from engine.zoo import build_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": "python bench/bench_latency_predictor.py " + " ".join(argv if argv is not None
                                                                                    else sys.argv[1:]),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                    "model": args.model, "threads": args.threads, "min_run_time_s": args.min_run_time}
    torch.manual_seed(args.seed)
    model = build_model(args.model).eval()
    topology = build_topology(model, torch.zeros(1, 3, 32, 32), model_name=args.model)
    start = time.perf_counter()
    table = measure_latency_table(model, topology, threads=args.threads, min_run_time_s=args.min_run_time,
                                  callback=lambda d, t, m: print(f"table {d}/{t} {m}", flush=True))
    report["table"] = {"groups": len(table.groups), "keep_ratios": table.keep_ratios,
                       "baseline_ms": table.baseline_ms, "measure_s": time.perf_counter() - start,
                       "fitted_rate_per_mac": table.fitted_rate_per_mac}
    rng = np.random.default_rng(args.seed)
    rows, spreads = [], []
    for _ in range(args.plans):
        keep = {g.name: max(1, int(round(rng.uniform(0.25, 1.0) * g.channels))) for g in topology.prunable_groups}
        plan = PruningPlan(model=args.model, keep={k: v for k, v in keep.items() if v < topology.group(k).channels})
        pruned = apply_plan(model, topology, plan)
        before = timed_ms(model, 32, threads=args.threads, min_run_time_s=args.min_run_time)
        ms = timed_ms(pruned, 32, threads=args.threads, min_run_time_s=args.min_run_time)
        after = timed_ms(model, 32, threads=args.threads, min_run_time_s=args.min_run_time)
        spreads.append(abs(before / after - 1.0))
        predicted = table.predict_ms(plan)
        row = {"macs_ratio": Budget("macs").ratio(topology, plan), "predicted_ms": predicted, "measured_ms": ms,
               "baseline_ms_around": [before, after], "predicted_ratio": predicted / table.baseline_ms,
               "measured_ratio": ms / (0.5 * (before + after))}
        row["error"] = row["predicted_ratio"] / row["measured_ratio"] - 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["plans"] = rows
    budget = Budget("latency", args.fraction)
    plan = plan_for_budget(topology, budget)
    pruned = apply_plan(model, topology, plan)
    ms, ratio = measured_ratio(model, pruned, 32, threads=args.threads, min_run_time_s=args.min_run_time)
    report["landing"] = {"fraction": args.fraction, "predicted_ratio": budget.ratio(topology, plan),
                         "measured_ms": ms, "measured_ratio": ratio,
                         "macs_ratio": Budget("macs").ratio(topology, plan),
                         "within_5pct": bool(abs(ratio / args.fraction - 1.0) <= 0.05), "plan": plan.to_dict()}
    errors = [abs(r["error"]) for r in rows]
    report["summary"] = {"mean_abs_error": statistics.mean(errors), "median_abs_error": statistics.median(errors),
                         "max_abs_error": max(errors), "baseline_spread": statistics.median(spreads)}
    report["load_average_end"] = os.getloadavg()
    (out / "latency_predictor.json").write_text(json.dumps(report, indent=1))
    (out / "latency_predictor.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
