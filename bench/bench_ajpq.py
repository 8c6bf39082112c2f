"""AJPQ vs prune-then-quantize vs quantization-only vs fixed-precision at equal size budgets, plus int8 ONNX
latency against fp32. Writes bench/results/ajpq.{json,md} with the command and the machine.

Every method lands at or under the same size budget (fraction of the fp32 weight bytes) and is scored by the
shared scorer on its fake-quantized candidate (val, BN recalibrated, no fine-tune); 3 seeds; mean +- standard
error; a paired t-test of AJPQ (joint) against the 8-bit two-step baseline over (budget, seed) pairs.

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/bench_ajpq.py > /tmp/bench_ajpq.log 2>&1 &
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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.data import load_data
from engine.evaluate import Scorer, ScoringConfig
from engine.graph import build_topology
from engine.methods import MethodContext, run_method
from engine.pruning.budget import Budget
from engine.quant_cost import plan_quant_cost

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = {  # arm -> (method, options)
    "ajpq (joint)": ("ajpq", {"mode": "joint"}),
    "ajpq fixed 8-bit": ("ajpq", {"mode": "fixed"}),
    "quantization only": ("ajpq", {"mode": "quant"}),
    "prune-then-quantize 8-bit": ("prune-quantize", {"bits": 8}),
    "prune-then-quantize 4-bit": ("prune-quantize", {"bits": 4}),
}


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def _paired_t(a: list[float], b: list[float]) -> dict:
    d = np.asarray(a) - np.asarray(b)
    n = len(d)
    se = d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    t = float(d.mean() / se) if se and np.isfinite(se) and se > 0 else float("nan")
    try:
        from scipy import stats

        p = float(2 * stats.t.sf(abs(t), n - 1)) if np.isfinite(t) else float("nan")
    except ImportError:
        p = float("nan")
    return {"n": n, "mean_diff": float(d.mean()), "t": t, "p": p}


def _latency_ms(path: str, x: torch.Tensor, repeats: int) -> float:
    from engine.export_quant import onnx_session

    session = onnx_session(path)
    name = session.get_inputs()[0].name
    feed = {name: x[:1].numpy()}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--budgets", default="0.2,0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "ajpq"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    from engine.services import load_shipped_baseline

    model = load_shipped_baseline(args.model).model.eval()
    data = load_data("shapes10", seed=0)
    example = torch.zeros(1, 3, data.input_size, data.input_size)
    topology = build_topology(model, example)
    scoring = ScoringConfig(val_size=args.val_size, bn_batches=2, bn_batch_size=128)
    scorer = Scorer(model, topology, data, scoring)
    fp32_val = scorer.score_model(model)
    base_size = Budget("size").baseline(topology)
    rows = []
    for budget in [float(b) for b in args.budgets.split(",")]:
        for seed in range(args.seeds):
            for arm, (method, options) in ARMS.items():
                opts = dict(options)
                if method == "ajpq":
                    opts.update(episodes=args.episodes, warmup=args.warmup)
                ctx = MethodContext(
                    model=model,
                    topology=topology,
                    data=data,
                    budget=budget,
                    seed=seed,
                    scorer=scorer,
                    budget_metric="size",
                )
                t0 = time.perf_counter()
                try:
                    result = run_method(method, ctx, **opts)
                except Exception as exc:  # a baseline that cannot reach the budget is a result, not a crash
                    rows.append(
                        {"budget": budget, "seed": seed, "arm": arm, "error": f"{type(exc).__name__}: {exc}"}
                    )
                    print(f"{budget} {seed} {arm}: {exc}", flush=True)
                    continue
                cost = plan_quant_cost(topology, result.plan)
                rows.append(
                    {
                        "budget": budget,
                        "seed": seed,
                        "arm": arm,
                        "val_acc": result.val_acc,
                        "size_ratio": cost.size_bits / 8 / base_size,
                        "size_kb": cost.size_kb,
                        "bitops": cost.bitops,
                        "macs_ratio": result.macs_ratio,
                        "n_scored": result.n_scored,
                        "seconds": time.perf_counter() - t0,
                        "plan": result.plan.to_dict(),
                    }
                )
                print(
                    f"{budget} {seed} {arm}: val {result.val_acc:.2f} size {rows[-1]['size_ratio']:.4f} "
                    f"macs {result.macs_ratio:.3f} {rows[-1]['seconds']:.1f}s",
                    flush=True,
                )
    # int8 ONNX vs fp32 latency: the fixed 8-bit AJPQ plan of the first budget and seed
    from engine.export_quant import export_fp32_onnx, export_quantized_onnx, onnx_logits
    from engine.pruning import PruningPlan, apply_plan
    from engine.quant import quantize_model

    latency = {}
    fixed = next((r for r in rows if r["arm"] == "ajpq fixed 8-bit" and "plan" in r), None)
    if fixed is not None:
        plan = PruningPlan.from_dict(fixed["plan"])
        qmodel = quantize_model(model, topology, plan, calibration=scorer.calibration_inputs)
        scorer.prepare(qmodel)  # BN recalibrated as scored
        x, y = scorer.val_tensors
        with tempfile.TemporaryDirectory() as tmp:
            q = export_quantized_onnx(qmodel, Path(tmp) / "q8.onnx", x)
            f_pruned = export_fp32_onnx(apply_plan(model, topology, plan), Path(tmp) / "fp32_pruned.onnx", x)
            f_full = export_fp32_onnx(model, Path(tmp) / "fp32_full.onnx", x)
            with torch.no_grad():
                torch_top1 = float((qmodel(x).argmax(1) == y).float().mean() * 100)
            onnx_top1 = float((torch.as_tensor(onnx_logits(q.path, x)).argmax(1) == y).float().mean() * 100)
            latency = {
                "int8_onnx_ms": _latency_ms(q.path, x, 200),
                "fp32_pruned_onnx_ms": _latency_ms(str(f_pruned), x, 200),
                "fp32_full_onnx_ms": _latency_ms(str(f_full), x, 200),
                "int8_file_bytes": q.file_bytes,
                "packed_weight_bytes": q.packed_weight_bytes,
                "fp32_pruned_file_bytes": os.path.getsize(f_pruned),
                "torch_fakequant_val_top1": torch_top1,
                "onnx_int8_val_top1": onnx_top1,
                "plan_budget": fixed["budget"],
                "batch": 1,
                "threads": 1,
            }
    summary = {}
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        for arm in ARMS:
            vals = [
                r["val_acc"] for r in rows if r["budget"] == budget and r["arm"] == arm and "val_acc" in r
            ]
            sizes = [
                r["size_ratio"] for r in rows if r["budget"] == budget and r["arm"] == arm and "val_acc" in r
            ]
            if vals:
                m, se = _mean_se(vals)
                summary[f"{budget}|{arm}"] = {
                    "budget": budget,
                    "arm": arm,
                    "val_mean": m,
                    "val_se": se,
                    "size_ratio_mean": float(np.mean(sizes)),
                    "n": len(vals),
                    "seconds_mean": float(
                        np.mean(
                            [
                                r["seconds"]
                                for r in rows
                                if r["budget"] == budget and r["arm"] == arm and "seconds" in r
                            ]
                        )
                    ),
                }
    paired = {}
    for other in (
        "prune-then-quantize 8-bit",
        "prune-then-quantize 4-bit",
        "ajpq fixed 8-bit",
        "quantization only",
    ):
        a, b = [], []
        for budget in {r["budget"] for r in rows}:
            for seed in range(args.seeds):
                ra = next(
                    (
                        r
                        for r in rows
                        if r["budget"] == budget
                        and r["seed"] == seed
                        and r["arm"] == "ajpq (joint)"
                        and "val_acc" in r
                    ),
                    None,
                )
                rb = next(
                    (
                        r
                        for r in rows
                        if r["budget"] == budget
                        and r["seed"] == seed
                        and r["arm"] == other
                        and "val_acc" in r
                    ),
                    None,
                )
                if ra and rb:
                    a.append(ra["val_acc"])
                    b.append(rb["val_acc"])
        if a:
            paired[f"ajpq (joint) - {other}"] = _paired_t(a, b)
    out = {
        "command": "OMP_NUM_THREADS=1 " + shlex.join([sys.executable.split("/")[-1], *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": 1,
        },
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "model": args.model,
        "dataset": "shapes10",
        "fp32_val_acc": fp32_val,
        "fp32_size_kb": base_size / 1024,
        "episodes": args.episodes,
        "scoring": scoring.to_dict(),
        "rows": rows,
        "summary": summary,
        "paired": paired,
        "latency": latency,
        "seconds": time.perf_counter() - start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    Path(args.out + ".md").write_text(_markdown(out))
    print(f"wrote {args.out}.json/.md in {out['seconds']:.0f}s", flush=True)


def _markdown(out: dict) -> str:
    lines = [
        f"# AJPQ vs two-step at equal size ({out['model']} on {out['dataset']})",
        "",
        f"Command: `{out['command']}`  ",
        f"Machine: {out['machine']}  ",
        f"Date: {out['date']}, total {out['seconds'] / 60:.1f} min on one torch thread.",
        "",
        f"fp32 baseline: val {out['fp32_val_acc']:.2f}%, {out['fp32_size_kb']:.1f} KB of weights. "
        f"Val top-1 of the fake-quantized candidate (BN recalibrated, no fine-tune), {out['episodes']} "
        "episodes per search arm, mean +- standard error over seeds.",
        "",
        "| size budget | arm | val top-1 % | size / fp32 | s per run | n |",
        "|---|---|---|---|---|---|",
    ]
    for s in out["summary"].values():
        lines.append(
            f"| {s['budget']:.0%} | {s['arm']} | {s['val_mean']:.2f} +- {s['val_se']:.2f} | "
            f"{s['size_ratio_mean']:.4f} | {s['seconds_mean']:.0f} | {s['n']} |"
        )
    errors = [r for r in out["rows"] if "error" in r]
    if errors:
        lines += ["", "Runs that could not land:"] + [
            f"- {r['budget']:.0%} {r['arm']} seed {r['seed']}: {r['error']}" for r in errors
        ]
    lines += ["", "Paired t-tests over (budget, seed):", ""]
    for k, v in out["paired"].items():
        lines.append(
            f"- {k}: mean diff {v['mean_diff']:+.2f} pt, t = {v['t']:.2f}, p = {v['p']:.3f}, n = {v['n']}"
        )
    lat = out["latency"]
    if lat:
        lines += [
            "",
            "int8 ONNX (QDQ) vs fp32 on onnxruntime CPU, batch 1, one thread (median of 200):",
            "",
            f"- int8 pruned {lat['int8_onnx_ms']:.3f} ms, fp32 pruned {lat['fp32_pruned_onnx_ms']:.3f} ms, "
            f"fp32 unpruned {lat['fp32_full_onnx_ms']:.3f} ms",
            f"- val top-1: torch fake-quant {lat['torch_fakequant_val_top1']:.2f}%, onnxruntime int8 "
            f"{lat['onnx_int8_val_top1']:.2f}%",
            f"- file {lat['int8_file_bytes']} B int8 vs {lat['fp32_pruned_file_bytes']} B fp32; packed weights "
            f"{lat['packed_weight_bytes']:.0f} B",
        ]
    lines += ["", "## Reading", "", "(see the closing note of issue 11 for the interpretation)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
