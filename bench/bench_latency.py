"""Benchmark: CPU latency of physically pruned models at 25/50/75% MACs vs the unpruned model.

For cifar_resnet56 and cifar_mobilenet_v2 at batch 64 and batch 1, two set-ups side by side:
  plain       uniform keep ratios on the MACs budget (plan_for_budget), round_to=1, NCHW, eval + inference_mode;
  engineered  round_to=8 channel counts, channels_last memory format, BatchNorm folded into the convs,
              eval + inference_mode (applied to the unpruned baseline too, so the ratio is like for like);
  latency-aware  engineered + memory-aware allocation: plan_for_budget(scores=memory_aware_scores(topology))
              prunes the groups with the least MACs per activation byte hardest (same MACs budget).
Latency from engine.cost.measure_latency (torch.utils.benchmark: warm-up, median, IQR) with fixed threads.
Random-init weights: latency does not depend on the values.

Usage: python bench/bench_latency.py [--threads 1] [--min-run-time 1.0] [--models ...] [--batches 64 1]
Writes bench/results/latency.json and latency.md (rewritten after every measurement).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_topology import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = (0.75, 0.5, 0.25)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of an eval model with every conv -> BN pair (BN the conv's only consumer) folded into the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from engine.graph import build_topology

    folded = copy.deepcopy(model).eval()
    topology = build_topology(folded, example)
    graph = topology.graph
    modules = dict(folded.named_modules())
    for node, data in graph.nodes(data=True):
        succ = list(graph.successors(node))
        if data["op"] != "conv" or len(succ) != 1 or graph.nodes[succ[0]]["op"] != "batchnorm":
            continue
        conv_name, bn_name = data["module"], graph.nodes[succ[0]]["module"]
        parent, _, child = bn_name.rpartition(".")
        conv_parent, _, conv_child = conv_name.rpartition(".")
        fused = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        setattr(modules[conv_parent] if conv_parent else folded, conv_child, fused)
        setattr(modules[parent] if parent else folded, child, nn.Identity())
    return folded


def cpu_time_ms(model: nn.Module, size: int, *, batch: int, runs: int, channels_last: bool) -> float:
    """Median CPU time (this thread's, so time spent waiting for a busy core is excluded) of one forward pass.

    With one torch thread the forward runs on the calling thread, so thread CPU time is the work itself; on a
    machine shared with other jobs it is far steadier than wall time.
    """
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(runs):
            start = time.thread_time()
            model(x)
            times.append((time.thread_time() - start) * 1e3)
    return statistics.median(times)


def prepare(model: nn.Module, setup: str, size: int) -> nn.Module:
    model = copy.deepcopy(model).eval()
    if setup != "plain":
        model = fold_batchnorm(model, torch.randn(1, 3, size, size))
    return model


def to_markdown(report: dict) -> str:
    """The results as markdown tables, one per model."""
    m = report["machine"]
    lines = [
        "# CPU latency of pruned models",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average'][0]:.1f} at start (shared "
        f"with other agents' jobs: figures are noisy), torch {m['torch']}, {report['threads']} thread(s)",
        "",
        "Each variant is timed in --rounds interleaved rounds (torch.utils.benchmark median per round); "
        "best = fastest round (least disturbed by other jobs). Latency ratio = pruned best / unpruned best "
        "of the same set-up (ideal = MACs ratio); median ratio = ratio of the round medians. CPU ms = median "
        "thread CPU time of a forward (excludes waiting for a core; the steadier figure on a shared "
        "machine), best of the rounds; CPU ratio = pruned / unpruned CPU ms.",
        "",
    ]
    for model in report["models"]:
        lines += [
            f"## {model}",
            "",
            "| setup | batch | budget | MACs ratio | best ms | median ms | latency ratio "
            "| median ratio | CPU ms | CPU ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in [r for r in report["rows"] if r["model"] == model]:
            lines.append(
                f"| {row['setup']} | {row['batch']} | {row['budget']} | {row['macs_ratio']:.3f} | "
                f"{row['best_ms']:.2f} | {row['median_ms']:.2f} | {row['latency_ratio']:.3f} | "
                f"{row['median_ratio']:.3f} | {row['cpu_ms']:.2f} | {row['cpu_ratio']:.3f} |"
            )
        lines.append("")
    lines += ["## Target: latency ratio <= 0.6 at a 50% budget, batch 64", ""]
    for row in report["rows"]:
        if row["budget"] == 0.5 and row["batch"] == 64:
            verdict = "met" if row["cpu_ratio"] <= 0.6 else "missed"
            lines.append(
                f"- {row['model']} ({row['setup']}): CPU-time ratio {row['cpu_ratio']:.3f} - {verdict} "
                f"(wall: best-of-rounds {row['latency_ratio']:.3f}, median {row['median_ratio']:.3f})"
            )
    lines += ["", *report.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_mobilenet_v2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    parser.add_argument("--setups", nargs="+", default=["plain", "engineered", "latency-aware"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from engine.cost import measure_latency, plan_macs
    from engine.graph import build_topology
    from engine.pruning import apply_plan, memory_aware_scores, plan_for_budget
    from engine.zoo import build_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python bench/bench_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "models": args.models,
        "rows": [],
    }
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name).eval()
        size = 32
        topology = build_topology(model, torch.randn(1, 3, size, size), model_name=name)
        for setup in args.setups:
            round_to = 1 if setup == "plain" else 8
            scores = memory_aware_scores(topology) if setup == "latency-aware" else None
            variants = [(1.0, model, 1.0)]
            for budget in BUDGETS:
                plan = plan_for_budget(topology, budget, round_to=round_to, scores=scores, method=setup)
                variants.append(
                    (budget, apply_plan(model, topology, plan), plan_macs(topology, plan) / topology.macs)
                )
            for batch in args.batches:
                timed = [prepare(variant, setup, size) for _, variant, _ in variants]
                samples: list[list[float]] = [[] for _ in variants]
                cpu: list[list[float]] = [[] for _ in variants]
                for _ in range(args.rounds):  # interleaved rounds: drift and bursts of load hit every variant
                    for index, model_variant in enumerate(timed):
                        latency = measure_latency(
                            model_variant,
                            size,
                            batch=batch,
                            threads=args.threads,
                            min_run_time_s=args.min_run_time,
                            channels_last=setup != "plain",
                        )
                        samples[index].append(latency.median_ms)
                        cpu[index].append(
                            cpu_time_ms(
                                model_variant,
                                size,
                                batch=batch,
                                runs=3 if batch > 8 else 30,
                                channels_last=setup != "plain",
                            )
                        )
                best = [min(s) for s in samples]
                cpu_best = [min(c) for c in cpu]
                for (budget, _, macs_ratio), runs, fastest, cpu_runs, cpu_fastest in zip(
                    variants, samples, best, cpu, cpu_best, strict=True
                ):
                    row = {
                        "model": name,
                        "setup": setup,
                        "batch": batch,
                        "budget": budget,
                        "macs_ratio": macs_ratio,
                        "best_ms": fastest,
                        "median_ms": statistics.median(runs),
                        "rounds_ms": runs,
                        "latency_ratio": fastest / best[0],
                        "median_ratio": statistics.median(runs) / statistics.median(samples[0]),
                        "cpu_ms": cpu_fastest,
                        "cpu_rounds_ms": cpu_runs,
                        "cpu_ratio": cpu_fastest / cpu_best[0],
                    }
                    report["rows"].append(row)
                    print(json.dumps(row), flush=True)
                (out / "latency.json").write_text(json.dumps(report, indent=1))
                (out / "latency.md").write_text(to_markdown(report))


if __name__ == "__main__":
    main()
