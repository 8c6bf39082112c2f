"""Benchmark: how well engine.latency_table predicts measured CPU latency, and landing on a latency budget.

For one model (default cifar_resnet20, batch 1, one torch thread): measure its per-group latency table
(engine.latency_table.measure_latency_table: paired thread-CPU-time timing, regularised rates), then for 20
random plans (keep ratio per group uniform in [0.25, 1]) compare the predicted latency ratio with the measured
one (engine.latency_timer.measure_paired: the physically pruned model interleaved with the baseline, median of
per-pair ratios). Finally land plans on Budget("latency", f) for each --fractions (plan_for_budget verifies by
measurement and corrects with secant steps) and re-measure each landed plan independently: on budget means
within 5% of f measured. The noise floor is the baseline timed against a copy of itself. Random-init weights:
latency does not depend on the values.

Usage: python bench/bench_latency_predictor.py [--model cifar_resnet20] [--plans 20] [--min-run-time 0.3]
Writes bench/results/latency_predictor.json and latency_predictor.md.
"""

from __future__ import annotations

import argparse
import copy
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


def paired(model, other, *, min_run_time_s: float):
    """engine.latency_timer.measure_paired at 32x32 (other's time / model's, median of interleaved pairs)."""
    from engine.latency_timer import measure_paired

    return measure_paired(model, other, (3, 32, 32), min_run_time_s=min_run_time_s)


def to_markdown(report: dict) -> str:
    """The results as markdown."""
    s = report["summary"]
    t = report["table"]
    lines = [
        f"# Latency predictor ({report['model']}, batch 1, {report['threads']} thread)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average (1, 5, 15 min) "
        f"at start {fmt_load(report['machine']['load_average'])}, at end {fmt_load(report['load_average_end'])}",
        "",
        f"Clock: {t['clock']} (one torch thread: the thread's CPU time, immune to being descheduled by other "
        "processes; baseline and variant interleaved, median of per-pair ratios).",
        "",
        f"Table: {t['groups']} groups x {t['keep_ratios']} keep ratios, baseline {t['baseline_ms']:.2f} ms "
        f"(CPU time), measured in {t['measure_s']:.0f} s; rates regularised (shrunk towards the pooled rate, "
        f"bounded to [0.25, 4] x pooled); raw rates <= 0: {t['raw_rates_nonpositive']}.",
        "",
        "| plan | MACs ratio | predicted ratio | measured ratio | +- se | error |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(report["plans"]):
        lines.append(
            f"| {i} | {row['macs_ratio']:.3f} | {row['predicted_ratio']:.3f} | "
            f"{row['measured_ratio']:.3f} | {row['measured_se']:.3f} | {100 * row['error']:+.1f}% |"
        )
    lines += [
        "",
        f"Ratio error (predicted ratio / measured ratio - 1) over {len(report['plans'])} random plans: "
        f"mean |error| {100 * s['mean_abs_error']:.1f}%, median |error| {100 * s['median_abs_error']:.1f}%, "
        f"max |error| {100 * s['max_abs_error']:.1f}%.",
        "",
        "Noise floor: the baseline against a copy of itself measured "
        f"{', '.join(f'{r:.3f}' for r in s['self_ratios'])} (median |ratio - 1| "
        f"{100 * s['self_spread']:.1f}%).",
        "",
        "| latency budget | predicted-only landing: MACs ratio | measured landing: tries (predictor fraction -> "
        "measured) | chosen measured ratio | re-measured ratio | MACs ratio | within 5% (re-measured) |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    for land in report["landings"]:
        if "unreachable" in land:
            lines.append(
                f"| {land['fraction']} | unreachable: {land['unreachable']} (measured: every group near "
                f"min_keep_ratio, MACs ratio {land['floor_macs_ratio']:.3f}, runs at "
                f"{land['floor_measured_ratio']:.3f} of the baseline) | | | | | **False** |"
            )
            continue
        tries = "; ".join(
            f"{t['predictor_fraction']:.3f} -> {t['measured_ratio']:.3f}" for t in land["tries"]
        )
        lines.append(
            f"| {land['fraction']} | {land['predicted_only_macs_ratio']:.3f} | {tries} | "
            f"{land['measured_ratio']:.3f} | {land['remeasured_ratio']:.3f} | {land['macs_ratio']:.3f} | "
            f"**{land['within_5pct']}** |"
        )
    lines += [
        "",
        "The re-measured ratio is an independent timing of the chosen plan (the chosen one is the best "
        "of up to three noisy timings, so it is biased towards the budget).",
    ]
    return "\n".join(lines) + "\n"


def fmt_load(load) -> str:
    """(7.79, 6.6, 3.69) -> '7.79, 6.60, 3.69'."""
    return ", ".join(f"{x:.2f}" for x in load)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--plans", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.6, 0.4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from engine.errors import BudgetError
    from engine.graph import build_topology
    from engine.latency_table import measure_latency_table
    from engine.pruning import PruningPlan, apply_plan
    from engine.pruning.budget import Budget, plan_for_budget
    from engine.zoo import build_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "command": "python bench/bench_latency_predictor.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": args.model,
        "threads": args.threads,
        "min_run_time_s": args.min_run_time,
    }
    torch.manual_seed(args.seed)
    model = build_model(args.model).eval()
    topology = build_topology(model, torch.zeros(1, 3, 32, 32), model_name=args.model)
    start = time.perf_counter()
    table = measure_latency_table(
        model,
        topology,
        min_run_time_s=args.min_run_time,
        callback=lambda d, t, m: print(f"table {d}/{t} {m}", flush=True),
    )
    report["table"] = {
        "groups": len(table.groups),
        "keep_ratios": table.keep_ratios,
        "clock": table.clock,
        "baseline_ms": table.baseline_ms,
        "measure_s": time.perf_counter() - start,
        "fitted_rate_per_mac": table.fitted_rate_per_mac,
        "raw_rate_per_mac": table.raw_rate_per_mac,
        "pooled_rate_per_mac": table.pooled_rate_per_mac,
        "raw_rates_nonpositive": sum(r <= 0 for r in table.raw_rate_per_mac),
    }
    check_s = max(1.0, 4 * args.min_run_time)
    self_ratios = [paired(model, copy.deepcopy(model), min_run_time_s=check_s).ratio for _ in range(3)]
    rng = np.random.default_rng(args.seed)
    rows = []
    for _ in range(args.plans):
        keep = {
            g.name: max(1, int(round(rng.uniform(0.25, 1.0) * g.channels))) for g in topology.prunable_groups
        }
        plan = PruningPlan(
            model=args.model, keep={k: v for k, v in keep.items() if v < topology.group(k).channels}
        )
        timing = paired(model, apply_plan(model, topology, plan), min_run_time_s=check_s)
        predicted = table.predict_ms(plan) / table.baseline_ms
        row = {
            "macs_ratio": Budget("macs").ratio(topology, plan),
            "predicted_ratio": predicted,
            "measured_ratio": timing.ratio,
            "measured_se": timing.ratio_se,
            "pairs": timing.pairs,
            "error": predicted / timing.ratio - 1.0,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["plans"] = rows
    landings = []
    for fraction in args.fractions:
        budget = Budget("latency", fraction)
        try:
            predicted_only = plan_for_budget(topology, budget, measure=False)
            plan = plan_for_budget(topology, budget)
        except BudgetError as exc:  # e.g. per-op overhead the pruning cannot remove: say so, do not hide it
            floor = PruningPlan(
                model=args.model,
                keep={g.name: max(1, int(np.ceil(0.05 * g.channels))) for g in topology.prunable_groups},
            )
            ratio = paired(model, apply_plan(model, topology, floor), min_run_time_s=check_s).ratio
            landings.append(
                {
                    "fraction": fraction,
                    "unreachable": str(exc),
                    "floor_macs_ratio": Budget("macs").ratio(topology, floor),
                    "floor_measured_ratio": ratio,
                }
            )
            print(json.dumps(landings[-1]), flush=True)
            continue
        again = paired(model, apply_plan(model, topology, plan), min_run_time_s=check_s)
        land = {
            "fraction": fraction,
            "predicted_only_macs_ratio": Budget("macs").ratio(topology, predicted_only),
            "tries": plan.meta["latency_landing"],
            "measured_ratio": plan.meta["latency_measured_ratio"],
            "predictor_fraction": plan.meta["latency_predictor_fraction"],
            "predicted_ratio": plan.meta["latency_predicted_ratio"],
            "remeasured_ratio": again.ratio,
            "remeasured_se": again.ratio_se,
            "macs_ratio": Budget("macs").ratio(topology, plan),
            "within_5pct": bool(abs(again.ratio / fraction - 1.0) <= 0.05),
            "plan": plan.to_dict(),
        }
        landings.append(land)
        print(json.dumps({k: v for k, v in land.items() if k != "plan"}), flush=True)
    report["landings"] = landings
    errors = [abs(r["error"]) for r in rows]
    report["summary"] = {
        "mean_abs_error": statistics.mean(errors),
        "median_abs_error": statistics.median(errors),
        "max_abs_error": max(errors),
        "self_ratios": self_ratios,
        "self_spread": statistics.median(abs(r - 1.0) for r in self_ratios),
    }
    report["load_average_end"] = os.getloadavg()
    (out / "latency_predictor.json").write_text(json.dumps(report, indent=1))
    (out / "latency_predictor.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
