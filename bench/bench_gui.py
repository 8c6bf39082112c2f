"""Benchmark of the GUI's server side: Topology figure build time and cached page switches.

For torchvision resnet50 (target <= 1 s) and densenet121 (target <= 2 s) it times, in one process:
  trace      engine.graph.build_topology (once per model; st.cache_resource keeps it)
  layout     collapse to the page's default level (blocks) + Graphviz dot layout (st.cache_data keeps it)
  figure     the plotly figure from the cached layout (runs on every rerun)
and the whole Topology page as Streamlit runs it (AppTest): first visit, then a switch to another page and
back (cached: nothing is traced or laid out again). Writes bench/results/gui.json and gui.md.

Run: .venv/bin/python bench/bench_gui.py [--models resnet50 densenet121] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGETS_S = {"resnet50": 1.0, "densenet121": 2.0}


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_figure(name: str, repeats: int) -> dict:
    """Trace, layout and figure times for one model (pure functions, no Streamlit)."""
    import torch

    from engine.graph import build_topology
    from engine.zoo import build_model, default_input_size
    from gui.plots import graph_view as gv
    from gui.plots import topology as tp

    model = build_model(name).eval()
    size = default_input_size(name)
    x = torch.zeros(1, 3, size, size)
    start = time.perf_counter()
    topo = build_topology(model, x)
    trace_s = time.perf_counter() - start
    row = {
        "model": name,
        "ops": topo.graph.number_of_nodes(),
        "op_edges": topo.graph.number_of_edges(),
        "groups": len(topo.groups),
        "trace_s": round(trace_s, 3),
    }
    mg = gv.module_groups(topo.groups)
    for level in ("blocks", "layers"):

        def layout(level=level):
            view = gv.collapse_graph(topo.graph, level=level)
            return view, gv.layout_positions(view)

        layout_s = _median_s(layout, repeats)
        view, pos = layout()

        def figure(view=view, pos=pos):
            values = tp.node_values(view, "MACs", module_to_group=mg)
            return tp.topology_figure(view, pos, values=values, metric="MACs")

        figure_s = _median_s(figure, repeats)
        row[level] = {
            "nodes": view.number_of_nodes(),
            "edges": view.number_of_edges(),
            "layout_s": round(layout_s, 3),
            "figure_s": round(figure_s, 3),
            "first_render_s": round(layout_s + figure_s, 3),
        }
    return row


def bench_pages(name: str) -> dict:
    """The Topology page run by Streamlit (AppTest): first visit, then Sensitivity and back (cached)."""
    from streamlit.testing.v1 import AppTest

    from gui.state import ModelRef

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["model_ref"] = ModelRef(arch=name)
    at.switch_page("gui/pages/topology.py")
    start = time.perf_counter()
    at.run()
    first_s = time.perf_counter() - start
    errors = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
    at.switch_page("gui/pages/sensitivity.py").run()
    at.switch_page("gui/pages/topology.py")
    start = time.perf_counter()
    at.run()
    cached_s = time.perf_counter() - start
    return {
        "page_first_visit_s": round(first_s, 3),
        "page_switch_back_cached_s": round(cached_s, 3),
        "page_errors": errors,
    }


def machine() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(v, 2) for v in load] if load else None,
    }


def to_markdown(result: dict) -> str:
    lines = [
        "# GUI benchmark: Topology page (server side)",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}",
        "",
        "Times in seconds (median of repeats for layout/figure). `figure built` = trace + layout + figure at "
        "the page's default level (blocks): the server-side work of a first Topology render for an already "
        "loaded model (judged against the target). `page first visit` = the whole Topology page script run "
        "by Streamlit (AppTest), which also constructs the model (random init) on this first visit; `switch "
        "back` = the same page after visiting another one (model, topology and layout all cached).",
        "",
        "| model | ops | trace | blocks: nodes / layout / figure | layers: nodes / layout / figure "
        "| **figure built** | page first visit | switch back (cached) | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
        b, l_ = r["blocks"], r["layers"]
        built = r["trace_s"] + b["first_render_s"]
        met = r["target_s"] is not None and built <= r["target_s"]
        lines.append(
            f"| {r['model']} | {r['ops']} | {r['trace_s']:.2f} | {b['nodes']} / {b['layout_s']:.3f} / "
            f"{b['figure_s']:.3f} | {l_['nodes']} / {l_['layout_s']:.3f} / {l_['figure_s']:.3f} | **{built:.2f}** | "
            f"{r.get('page_first_visit_s', float('nan')):.2f} | {r.get('page_switch_back_cached_s', float('nan')):.3f} "
            f"| {r['target_s']} | {'yes' if met else 'no'} |"
        )
    lines += [
        "",
        "Switching pages recomputes nothing: the model (st.cache_resource), topology (st.cache_resource) "
        "and layout (st.cache_data, keyed by model and level) are reused, so only the figure is rebuilt.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TARGETS_S))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pages", action="store_true", help="skip the AppTest page timings")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    os.environ.setdefault("TOPOPRUNE_HOME", tempfile.mkdtemp(prefix="topoprune-bench-gui-"))
    rows = []
    for name in args.models:
        row = bench_figure(name, args.repeats)
        if not args.no_pages:
            row.update(bench_pages(name))
        row["target_s"] = TARGETS_S.get(name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    exe = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    result = {
        "command": " ".join([exe, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "models": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gui.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gui.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
