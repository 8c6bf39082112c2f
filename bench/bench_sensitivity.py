"""Benchmark: the Sensitivity page's default analysis (engine.sensitivity QUICK_KEEP_RATIOS / QUICK_SCORING) on
cifar_resnet20 with its shipped shapes10 baseline, one torch thread, cache off; the GUI's target is <= 3 minutes.

Also records the seconds per plan and the ETA the progress callback gave after the first group (how true it was).

Usage: python bench/bench_sensitivity.py [--model cifar_resnet20] [--threads 1] [--full]
  --full also times the full grid (DEFAULT_KEEP_RATIOS, default ScoringConfig) on one group, extrapolated.
Writes bench/results/sensitivity.json and sensitivity.md, with the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S = 180.0


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def run(model_name: str, full: bool) -> dict:
    from engine import services
    from engine.data import load_data
    from engine.evaluate import Scorer, ScoringConfig
    from engine.graph import build_topology
    from engine.pruning import plan_from_ratios
    from engine.sensitivity import DEFAULT_KEEP_RATIOS, QUICK_KEEP_RATIOS, QUICK_SCORING, analyze_sensitivity

    t0 = time.perf_counter()
    loaded = services.load_model(
        services.ModelRequest(model_name, weights="shipped", dataset="shapes10", shipped_fallback=True)
    )
    data = load_data("shapes10")
    topology = build_topology(loaded.model, torch.zeros(1, 3, data.input_size, data.input_size))
    setup_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    first_group: dict = {}

    def progress(p) -> None:
        if p.group_done and len(p.table.groups) == 1 and not first_group:
            first_group.update(elapsed_s=p.elapsed_s, eta_s=p.eta_s, done=p.done, total=p.total)

    t1 = time.perf_counter()
    table = analyze_sensitivity(
        loaded.model,
        topology,
        data,
        keep_ratios=QUICK_KEEP_RATIOS,
        scoring=QUICK_SCORING,
        use_cache=False,
        progress=progress,
    )
    seconds = time.perf_counter() - t1
    out = {
        "model": model_name,
        "dataset": "shapes10",
        "weights": loaded.provenance.label(),
        "keep_ratios": list(QUICK_KEEP_RATIOS),
        "scoring": QUICK_SCORING.to_dict(),
        "groups": len(table.groups),
        "plans": table.n_scored,
        "seconds": round(seconds, 1),
        "seconds_per_plan": round(seconds / max(1, table.n_scored), 2),
        "setup_seconds": round(setup_s, 1),
        "within_target": seconds <= TARGET_S,
        "target_seconds": TARGET_S,
        "base_val_acc": table.base_acc,
        "eta_after_first_group": {
            k: round(v, 1) if isinstance(v, float) else v for k, v in first_group.items()
        },
        "eta_error_s": round(first_group["elapsed_s"] + first_group["eta_s"] - seconds, 1)
        if first_group
        else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if full:  # the old default (9 ratios, 512 val + 512 BN images, masked): time 3 plans, extrapolate
        scorer = Scorer(loaded.model, topology, data, ScoringConfig())
        prunable = [g for g in topology.groups if g.prunable]
        keep = {g.name: 1.0 for g in prunable}
        scorer.score(plan_from_ratios(topology, keep))
        t2 = time.perf_counter()
        for r in (0.75, 0.5, 0.25):
            scorer.score(plan_from_ratios(topology, {**keep, prunable[0].name: r}))
        per_plan = (time.perf_counter() - t2) / 3
        n = 1 + len(prunable) * len(DEFAULT_KEEP_RATIOS)
        out["full_grid"] = {
            "seconds_per_plan": round(per_plan, 2),
            "plans": n,
            "extrapolated_s": round(per_plan * n),
        }
    return out


def write(result: dict, command: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        **result,
    }
    (RESULTS / "sensitivity.json").write_text(json.dumps(result, indent=2) + "\n")
    m, eta = result["machine"], result["eta_after_first_group"]
    lines = [
        "# Sensitivity: the GUI default on " + result["model"],
        "",
        f"`{command}`, {result['when']}. Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} thread). Load average (1/5/15 min) before {result['load_average_before']}, "
        f"after {result['load_average_after']}: the machine is shared, so times are pessimistic.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| keep ratios | {', '.join(str(r) for r in result['keep_ratios'])} |",
        f"| val images / BN images | {result['scoring']['val_size']} / "
        f"{result['scoring']['bn_batches'] * result['scoring']['bn_batch_size']} |",
        f"| scored | physically pruned: {result['scoring']['physical']} |",
        f"| weights | {result['weights']} |",
        "",
        "| groups | plans | seconds | s / plan | target | within | ETA after group 1 (error) |",
        "|---|---|---|---|---|---|---|",
        f"| {result['groups']} | {result['plans']} | {result['seconds']} | {result['seconds_per_plan']} | "
        f"{result['target_seconds']:.0f} | {'yes' if result['within_target'] else 'NO'} | "
        f"{eta.get('eta_s', 'n/a')} s at {eta.get('elapsed_s', 'n/a')} s ({result['eta_error_s']} s) |",
    ]
    if "full_grid" in result:
        f = result["full_grid"]
        lines += [
            "",
            f"The previous default (9 ratios, 512 val + 512 BN images, masked): {f['seconds_per_plan']} s "
            f"per plan x {f['plans']} plans = about {f['extrapolated_s']} s (extrapolated from 3 plans).",
        ]
    (RESULTS / "sensitivity.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.model, args.full)
    write(result, "python bench/bench_sensitivity.py " + " ".join(sys.argv[1:]))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
