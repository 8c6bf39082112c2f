"""Benchmark: time to build topology + groups + costs, ours vs Torch-Pruning, on torchvision models at 224x224.

Ours = engine.graph.build_topology (op graph, coupled groups, hierarchy and the analytic cost table, whose
totals are the model's MACs/params). Theirs = tp.DependencyGraph().build_dependency + tp.utils.count_ops_and_params
on the same model and input. Each figure is the median of --repeats runs after one warm-up run per side.

Usage: python bench/bench_topology.py [--models resnet18 resnet50 ...] [--repeats 3] [--threads 1]
Writes bench/results/topology.json and topology.md (rewritten after every model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["resnet18", "resnet50", "resnet101", "resnet152", "densenet121"]


def machine() -> dict:
    """CPU model, cores, load, library versions."""
    import torch_pruning as tp

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
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def time_ours(model, x) -> tuple[float, dict]:
    from engine.graph import build_topology

    start = time.perf_counter()
    topology = build_topology(model, x)
    seconds = time.perf_counter() - start
    return seconds, {
        "macs": topology.macs,
        "params": topology.params,
        "groups": len(topology.groups),
        "nodes": topology.graph.number_of_nodes(),
    }


def time_tp(model, x) -> tuple[float, dict]:
    import torch_pruning as tp

    start = time.perf_counter()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    groups = len(list(graph.get_all_groups()))
    macs, params = tp.utils.count_ops_and_params(model, x)
    seconds = time.perf_counter() - start
    return seconds, {"macs": int(macs), "params": int(params), "groups": groups}


def to_markdown(report: dict) -> str:
    """The results as a markdown table."""
    m = report["machine"]
    lines = [
        "# Topology build time: TopoPrune vs Torch-Pruning",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average'][0]:.1f} at start "
        f"(shared with other jobs), torch {m['torch']}, torch-pruning {m['torch_pruning']}, "
        f"{report['threads']} torch thread(s), input {report['input']}",
        "",
        "Ours = build_topology (op graph + coupled groups + hierarchy + analytic costs). TP = DependencyGraph."
        "build_dependency + get_all_groups + count_ops_and_params. Median of the timed runs after a warm-up.",
        "",
        "| model | ours (s) | TP (s) | ours / TP | ours GMACs | TP GMACs | ours groups | TP groups | nodes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['model']} | {row['ours_s']:.3f} | {row['tp_s']:.3f} | {row['ours_s'] / row['tp_s']:.2f} | "
            f"{row['ours']['macs'] / 1e9:.3f} | {row['tp']['macs'] / 1e9:.3f} | {row['ours']['groups']} | "
            f"{row['tp']['groups']} | {row['ours']['nodes']} |"
        )
    rows = {r["model"]: r for r in report["rows"]}
    lines.append("")
    if "resnet50" in rows:
        lines.append(
            f"- Target ResNet-50 <= 2 s: {rows['resnet50']['ours_s']:.3f} s "
            f"({'met' if rows['resnet50']['ours_s'] <= 2 else 'missed'}); ours <= 0.5x TP: "
            f"{rows['resnet50']['ours_s'] / rows['resnet50']['tp_s']:.2f}x."
        )
    if "resnet50" in rows and "resnet152" in rows:
        ratio = rows["resnet152"]["ours_s"] / rows["resnet50"]["ours_s"]
        lines.append(
            f"- Linear growth with depth: ResNet-152 / ResNet-50 = {ratio:.2f} (target <= 3; "
            "ResNet-152 has 3x the blocks)."
        )
    lines.append(
        "- TP's MACs include BN (its convention); ours count conv + linear only (the papers' 4.09 G)."
    )
    lines.append(
        f"- Cold first build in a fresh process: {report['cold_s']:.2f} s (one-off: importing torch._dynamo, "
        "which torchvision and meta-tensor decompositions pull in, and first-call kernel set-up)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from engine.zoo import build_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(1, 3, args.size, args.size)
    report = {
        "command": "python bench/bench_topology.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "input": [1, 3, args.size, args.size],
        "rows": [],
    }
    cold_start = time.perf_counter()
    time_ours(build_model("resnet18", num_classes=1000), x)
    report["cold_s"] = time.perf_counter() - cold_start
    for name in args.models:
        model = build_model(name, num_classes=1000).eval()
        time_ours(model, x)
        time_tp(model, x)
        ours, theirs = [], []
        for _ in range(args.repeats):
            seconds, ours_info = time_ours(model, x)
            ours.append(seconds)
            seconds, tp_info = time_tp(model, x)
            theirs.append(seconds)
        report["rows"].append(
            {
                "model": name,
                "ours_s": statistics.median(ours),
                "tp_s": statistics.median(theirs),
                "ours_runs_s": ours,
                "tp_runs_s": theirs,
                "ours": ours_info,
                "tp": tp_info,
            }
        )
        (out / "topology.json").write_text(json.dumps(report, indent=1))
        (out / "topology.md").write_text(to_markdown(report))
        print(
            f"{name}: ours {statistics.median(ours):.3f} s, TP {statistics.median(theirs):.3f} s", flush=True
        )


if __name__ == "__main__":
    main()
