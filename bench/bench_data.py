"""Benchmark: shapes10 generation speed (target >= 5,000 images/s) and cached load time.

Usage: python bench/bench_data.py   (writes bench/results/data.json and data.md)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    os.environ["TOPOPRUNE_HOME"] = tempfile.mkdtemp(prefix="topoprune-bench-")
    from engine.data import generate_shapes10, load_data

    generate_shapes10(512, seed=0)  # warm-up
    rows = []
    for n in (5_000, 12_000):
        started = time.perf_counter()
        generate_shapes10(n, seed=1)
        seconds = time.perf_counter() - started
        rows.append({"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds)})
    started = time.perf_counter()
    load_data("shapes10")
    first = time.perf_counter() - started
    started = time.perf_counter()
    load_data("shapes10")
    cached = time.perf_counter() - started
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "generation": rows,
        "load_data_first_s": round(first, 3),
        "load_data_cached_s": round(cached, 3),
        "target_images_per_s": 5000,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# shapes10 generation",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Date: {result['date']}",
        "",
        "| images | seconds | images/s |",
        "|---|---|---|",
        *[f"| {r['images']} | {r['seconds']} | {r['images_per_s']} |" for r in rows],
        "",
        f"load_data('shapes10'): first call {first:.2f} s (generate + cache), cached {cached:.2f} s. Target >= 5,000 images/s.",
    ]
    (RESULTS / "data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
