"""Does GNN-RL learn? Best-so-far val top-1 against scored plans, for GNN-RL and its controls, many seeds.

Arms (each an independent noise stream, same scorer, same number of scored plans):
    gnnrl           the method as shipped (joined group features, exploration annealed over the run)
    gnnrl-nolearn   the same agent with learning switched off (the no-learning control)
    gnnrl-nojoin    without the joined group features (the collapsed-embedding version)
    gnnrl-decay     with the earlier fixed-clock exploration decay
    gnnrl-T1        one step per episode (T=1) instead of the paper's T=5
    gnnrl-nognn     AMC's hand-made features instead of the GNN (the paper's ablation)
    random, amc     random search and AMC
For each arm and seed it records the best val top-1 seen after 10, 20, 40, 100, ... scored plans, then reports
mean +- standard error over seeds and a paired t-test of every arm against gnnrl at each checkpoint (a
difference within the noise is reported as a tie). Val comes from train; test is not read. Results (JSON +
markdown, command and machine) go to bench/results/learning_<dataset>.{json,md} and are rewritten after every run,
so a cut-short run keeps what it finished; --resume skips (arm, seed) pairs already there.

    python bench/bench_learning.py --dataset shapes10 --plans 100 --seeds 0 1 2 3 4
    python bench/bench_learning.py --dataset fashion-mnist --plans 100 --arms gnnrl gnnrl-nolearn random
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "gnnrl": ("gnnrl", {}),
    "gnnrl-nolearn": ("gnnrl", {"learn": False}),
    "gnnrl-nojoin": ("gnnrl", {"join_features": False}),
    "gnnrl-decay": ("gnnrl", {"std_schedule": "decay"}),
    "gnnrl-T1": ("gnnrl", {"max_steps": 1}),
    "gnnrl-nognn": ("gnnrl-nognn", {}),
    "random": ("random", {}),
    "amc": ("amc", {}),
}
CHECKPOINTS = (10, 20, 40, 100, 200, 300)


def arm_options(arm: str, plans: int) -> tuple[str, dict[str, Any]]:
    method, extra = ARMS[arm]
    if method.startswith("gnnrl"):
        return method, {"episodes": plans, "score_policy_plan": False, "action_wall": True, **extra}
    if method == "amc":
        return method, {"episodes": plans, "warmup": max(1, plans // 10), **extra}
    return method, {"episodes": plans, **extra}


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def t_test_p(diffs: list[float]) -> float | None:
    """Two-sided paired t-test p-value (Student t CDF by numerical integration; no scipy needed)."""
    n = len(diffs)
    if n < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if mean != 0 else 1.0
    t, df = abs(mean / (sd / math.sqrt(n))), n - 1
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    steps = 2000
    h = t / steps
    area = (
        sum(
            (1 if i in (0, steps) else 4 if i % 2 else 2) * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2)
            for i in range(steps + 1)
        )
        * h
        / 3
        * c
    )
    return max(0.0, min(1.0, 2 * (0.5 - area)))


def curve(vals: list[float], checkpoints: tuple[int, ...]) -> dict[str, float]:
    out, best = {}, -math.inf
    marks = set(checkpoints)
    for i, v in enumerate(vals, start=1):
        best = max(best, v)
        if i in marks:
            out[str(i)] = best
    return out


def summarise(runs: list[dict[str, Any]], checkpoints: tuple[int, ...]) -> dict[str, Any]:
    by_arm: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r["best_at"]
    table: dict[str, Any] = {}
    ref = by_arm.get("gnnrl", {})
    for arm, seeds in by_arm.items():
        row: dict[str, Any] = {}
        for k in map(str, checkpoints):
            vals = [s[k] for s in seeds.values() if k in s]
            if not vals:
                continue
            se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
            entry: dict[str, Any] = {"mean": statistics.fmean(vals), "se": se, "n": len(vals)}
            paired = [ref[s][k] - seeds[s][k] for s in seeds if s in ref and k in ref[s] and k in seeds[s]]
            if arm != "gnnrl" and len(paired) >= 2:
                d_mean = statistics.fmean(paired)
                d_se = statistics.stdev(paired) / math.sqrt(len(paired))
                p = t_test_p(paired)
                verdict = (
                    "tie"
                    if (p is None or p >= 0.05 or abs(d_mean) <= d_se)
                    else ("gnnrl better" if d_mean > 0 else "gnnrl worse")
                )
                entry.update(gnnrl_minus_arm=d_mean, diff_se=d_se, p=p, verdict=verdict, pairs=len(paired))
            row[k] = entry
        table[arm] = row
    return table


def to_markdown(doc: dict[str, Any]) -> str:
    cps = [str(c) for c in doc["checkpoints"]]
    lines = [
        f"# Does GNN-RL learn? {doc['model']} on {doc['dataset']}, {doc['budget']:.0%} MACs",
        "",
        f"`{doc['command']}`",
        "",
        f"Machine: {doc['machine']['platform']}, {doc['machine']['cpu_count']} cores, torch "
        f"{doc['machine']['torch']}, {doc['machine']['torch_threads']} thread(s), load average at start "
        f"{doc['machine']['load_avg_start']}. Weights: {doc['weights']}. Search val: first {doc['val_size']} "
        "val images (carved from train); test not read.",
        "",
        "Best val top-1 (%) seen after N scored plans: mean +- standard error over seeds; in brackets "
        "gnnrl minus the arm (paired over seeds), its p-value (paired t-test) and the verdict "
        "(tie when p >= 0.05 or the difference is within its standard error).",
        "",
        "| arm | seeds | " + " | ".join(f"@{c}" for c in cps) + " | s per plan |",
        "|---|---:|" + "---:|" * len(cps) + "---:|",
    ]
    for arm, row in doc["summary"].items():
        cells = []
        for c in cps:
            e = row.get(c)
            if e is None:
                cells.append("-")
                continue
            txt = f"{e['mean']:.2f}" + (f" +- {e['se']:.2f}" if e["se"] is not None else "")
            if "verdict" in e:
                txt += f" [{e['gnnrl_minus_arm']:+.2f}, p={e['p']:.2f}, {e['verdict']}]"
            cells.append(txt)
        secs = [r["seconds"] / max(1, r["plans"]) for r in doc["runs"] if r["arm"] == arm]
        n = max((e["n"] for e in row.values()), default=0)
        lines.append(f"| {arm} | {n} | " + " | ".join(cells) + f" | {statistics.fmean(secs):.2f} |")
    lines += [
        "",
        "Episodes per minute (scoring included): "
        + ", ".join(
            f"{arm} {60 / statistics.fmean([r['seconds'] / max(1, r['plans']) for r in doc['runs'] if r['arm'] == arm]):.0f}"
            for arm in doc["summary"]
        ),
        "",
    ]
    if doc.get("notes"):
        lines += ["## Reading", "", *doc["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--dataset", default="shapes10")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--plans", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--val-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--physical", action="store_true", help="score physically pruned models")
    p.add_argument("--resume", action="store_true", help="keep runs already in the results file")
    p.add_argument("--tag", default="", help="suffix of the results file names")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from engine.data import load_data
    from engine.evaluate import Scorer, ScoringConfig
    from engine.graph import build_topology
    from engine.methods import MethodContext, run_method
    from engine.services import load_shipped_baseline as shipped

    data = load_data(args.dataset, seed=0)
    loaded = shipped(args.model, args.dataset)
    model = loaded.model.eval()
    topology = build_topology(model, torch.zeros(1, 3, data.input_size, data.input_size))
    scoring = ScoringConfig(val_size=args.val_size, bn_batches=1, bn_batch_size=128, physical=args.physical)
    name = f"learning_{args.dataset}{args.tag}"
    out_json, out_md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    runs: list[dict[str, Any]] = []
    if args.resume and out_json.exists():
        runs = json.loads(out_json.read_text())["runs"]
    done = {(r["arm"], r["seed"]) for r in runs}
    checkpoints = tuple(c for c in CHECKPOINTS if c <= args.plans)
    doc: dict[str, Any] = {
        "model": args.model,
        "dataset": args.dataset,
        "budget": args.budget,
        "plans": args.plans,
        "val_size": args.val_size,
        "weights": getattr(loaded, "meta", {}).get("sha256", "shipped"),
        "checkpoints": list(checkpoints),
        "machine": machine(),
        "command": "python bench/bench_learning.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": runs,
    }

    def write() -> None:
        doc["summary"] = summarise(runs, checkpoints)
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = out_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out_json)
        out_md.write_text(to_markdown(doc))

    for seed in args.seeds:  # seeds outermost: a cut-short run has every arm at the first seeds
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            method, options = arm_options(arm, args.plans)
            scorer = Scorer(model, topology, data, scoring)
            ctx = MethodContext(
                model=model,
                topology=topology,
                data=data,
                budget=args.budget,
                seed=seed,
                scoring=scoring,
                scorer=scorer,
            )
            start = time.perf_counter()
            result = run_method(method, ctx, **options)
            seconds = time.perf_counter() - start
            vals = [c.val_acc for c in result.candidates]
            runs.append(
                {
                    "arm": arm,
                    "method": method,
                    "options": options,
                    "seed": seed,
                    "plans": len(vals),
                    "seconds": seconds,
                    "best_at": curve(vals, checkpoints),
                    "vals": vals,
                    "best_plan": result.plan.to_dict(),
                }
            )
            print(
                f"{arm} seed {seed}: best {max(vals):.2f} after {len(vals)} plans in {seconds:.0f} s",
                flush=True,
            )
            write()
    write()


if __name__ == "__main__":
    main()
